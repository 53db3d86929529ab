"""Prometheus metrics of the server, one registry per app, labelled by model.

Names follow Triton's `nv_inference_*` (request/queue/compute durations, inference and execution
counts, pending requests) and Ray Serve's `ray_serve_batch_*` (batch size) with an `edgecompile_`
prefix and Prometheus base units (seconds). The README lists them.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Outcomes of a request, the `outcome` label of edgecompile_inference_requests_total.
OUTCOMES = ("success", "bad_request", "rejected", "timeout", "error")

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry or CollectorRegistry()
        self.requests = Counter("edgecompile_inference_requests", "Inference requests by model and outcome "
                                "(success, bad_request, rejected = queue full, timeout, error = engine failure)",
                                ["model", "outcome"], registry=r)
        self.request_duration = Histogram("edgecompile_inference_request_duration_seconds",
                                          "Request time from receipt of the body to the response, successful requests",
                                          ["model"], buckets=_LATENCY, registry=r)
        self.queue_duration = Histogram("edgecompile_inference_queue_duration_seconds",
                                        "Time a request waited in the model's queue before its batch started",
                                        ["model"], buckets=_LATENCY, registry=r)
        self.compute_duration = Histogram("edgecompile_inference_compute_duration_seconds",
                                          "Engine time of one executed batch", ["model"], buckets=_LATENCY, registry=r)
        self.batch_size = Histogram("edgecompile_batch_size", "Rows per executed batch (Ray Serve's "
                                    "ray_serve_actual_batch_size)", ["model"],
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128), registry=r)
        self.inference_count = Counter("edgecompile_inference_count", "Rows inferred (Triton's nv_inference_count)",
                                       ["model"], registry=r)
        self.exec_count = Counter("edgecompile_inference_exec_count", "Batches executed (Triton's "
                                  "nv_inference_exec_count)", ["model"], registry=r)
        self.queue_depth = Gauge("edgecompile_inference_queue_depth", "Requests waiting in the model's queue "
                                 "(Triton's nv_inference_pending_request_count)", ["model"], registry=r)
        self.in_flight = Gauge("edgecompile_inference_in_flight", "Requests received and not yet answered",
                               ["model"], registry=r)

    def add_model(self, name: str) -> None:
        """Create every labelled series at zero, so scrapes see the model before its first request."""
        for outcome in OUTCOMES:
            self.requests.labels(name, outcome)
        for m in (self.request_duration, self.queue_duration, self.compute_duration, self.batch_size,
                  self.inference_count, self.exec_count, self.queue_depth, self.in_flight):
            m.labels(name)
