"""The same bundles on Ray Serve, for more than one machine.

`deployment(bundle_dir, ...)` returns a bound Ray Serve application: each replica loads the bundle with
`edgecompile.runtime.load`, batches requests with `@serve.batch` (rows counted by `batch_size_fn`, the
same `max_batch_size` / `max_queue_delay_ms` as the HTTP server) and answers the same request formats as
`POST /v1/models/NAME/infer` (JSON, application/x-npy, application/x-npz) at the route prefix
`/v1/models/NAME/infer`. Replicas are fixed (`replicas`) or autoscaled (`autoscaling_config`, Ray's dict).

    edgecompile serve out/digits --ray --replicas 2                   # a local Ray instance
    edgecompile serve out/digits --ray --ray-address auto --replicas 8  # join a running cluster (`ray start --head`)
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np

from edgecompile.serve.batcher import batchable
from edgecompile.serve.codec import (
    JSON,
    NPY,
    NPZ,
    RequestError,
    encode,
    feeds_from_binary,
    feeds_from_json,
    media_type,
    parse_json,
)


def _rows(feeds: dict) -> int:
    return int(next(iter(feeds.values())).shape[0])


class BundleModel:
    """A Ray Serve replica serving one bundle (wrapped by `serve.deployment` in `deployment()`)."""

    def __init__(self, bundle_dir: str, name: str, max_batch_size: int, max_queue_delay_ms: float,
                 threads: int | None, max_body_mb: float):
        from edgecompile.verify.bench import synthetic_feeds
        from edgecompile.runtime import load

        self.name = name
        self.runner = load(bundle_dir, threads=threads)
        self.runner.run(synthetic_feeds(self.runner.inputs, 1))
        self.batching = max_batch_size > 1 and batchable(self.runner.inputs, self.runner.outputs)
        self.max_body = int(max_body_mb * 2**20)
        self._run_batch.set_max_batch_size(max_batch_size if self.batching else 1)
        self._run_batch.set_batch_wait_timeout_s(max_queue_delay_ms / 1e3)
        self.replica = f"{os.uname().nodename}:{os.getpid()}"

    async def _run_batch(self, items: list[dict]) -> list:
        """Group by trailing shapes, run each group as one engine call, return per-request outputs or errors."""
        groups: dict[tuple, list[int]] = {}
        for i, feeds in enumerate(items):
            groups.setdefault(tuple((k, a.shape[1:]) for k, a in sorted(feeds.items())), []).append(i)
        results: list = [None] * len(items)
        for idx in groups.values():
            feeds = {k: np.concatenate([items[i][k] for i in idx]) for k in items[idx[0]]}
            try:
                outs = await asyncio.to_thread(self.runner.run, feeds)
            except Exception:
                for i in idx:                # rerun alone so only the failing request gets the error
                    try:
                        results[i] = await asyncio.to_thread(self.runner.run, items[i])
                    except Exception as one:
                        results[i] = RequestError(500, f"engine error: {one.__class__.__name__}: "
                                                       f"{str(one).splitlines()[0] if str(one) else ''}")
                continue
            offset = 0
            for i in idx:
                n = _rows(items[i])
                results[i] = {k: v[offset:offset + n] for k, v in outs.items()}
                offset += n
        return results

    async def __call__(self, request):
        from starlette.responses import JSONResponse, Response

        t0 = time.perf_counter()
        headers = {"x-edgecompile-replica": self.replica}
        try:
            body = await request.body()
            if len(body) > self.max_body:
                raise RequestError(413, f"request body larger than {self.max_body / 2**20:g} MiB")
            kind = media_type(request.headers.get("content-type"))
            if kind in (NPY, NPZ):
                feeds = feeds_from_binary(body, kind, self.runner.inputs)
            elif kind == JSON:
                feeds = feeds_from_json(parse_json(body), self.runner.inputs)
            else:
                raise RequestError(415, f"unsupported Content-Type {kind!r}; send application/json, {NPY} or {NPZ}")
            if self.batching and len({a.shape[0] for a in feeds.values()}) == 1:
                outs = await self._run_batch(feeds)
            else:
                outs = await _run_alone(self.runner, feeds)
            if isinstance(outs, RequestError):
                raise outs
            data, mt = encode(outs, kind)
            headers["x-edgecompile-time-ms"] = f"{(time.perf_counter() - t0) * 1e3:.3f}"
            return Response(data, media_type=mt, headers=headers)
        except RequestError as exc:
            return JSONResponse({"error": {"status": exc.status, "message": exc.message}}, status_code=exc.status,
                                headers={**headers, **exc.headers})


async def _run_alone(runner, feeds: dict):
    try:
        return await asyncio.to_thread(runner.run, feeds)
    except Exception as exc:
        return RequestError(
            500, f"engine error: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )


def deployment(bundle_dir: str | Path, *, name: str | None = None, max_batch_size: int = 8,
               max_queue_delay_ms: float = 5.0, replicas: int = 1, autoscaling_config: dict | None = None,
               threads: int | None = None, max_body_mb: float = 64.0, num_cpus: float = 1.0):
    """A bound Ray Serve application for one bundle (pass it to `ray.serve.run`)."""
    from ray import serve

    from edgecompile.runtime.bundle import Bundle

    bundle_dir = Path(bundle_dir).resolve()
    manifest = Bundle.open(bundle_dir).manifest                 # verified here, and again in every replica
    name = name or (manifest.get("model") or {}).get("name") or bundle_dir.name
    batched = type("BundleModel", (BundleModel,), {
        "_run_batch": serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=max_queue_delay_ms / 1e3,
                                  batch_size_fn=lambda items: sum(_rows(f) for f in items))(BundleModel._run_batch)})
    scale = {"autoscaling_config": autoscaling_config} if autoscaling_config else {"num_replicas": replicas}
    dep = serve.deployment(batched, name=name, ray_actor_options={"num_cpus": num_cpus},
                           max_ongoing_requests=max(32, 4 * max_batch_size), **scale)
    return dep.bind(str(bundle_dir), name, max_batch_size, max_queue_delay_ms, threads, max_body_mb)


def start(models: dict, options, *, replicas: int = 1, address: str | None = None, num_cpus: int | None = None,
          autoscaling_config: dict | None = None) -> dict:
    """Start (or join) Ray, start Serve's HTTP proxy on options.host:port and run one app per model.
    Returns {model name: route prefix}."""
    import logging

    import ray
    from ray import serve

    for logger in ("ray", "ray.serve"):                       # Ray's INFO lines are not ours to print
        logging.getLogger(logger).setLevel(logging.WARNING)
    if not ray.is_initialized():
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    serve.start(http_options={"host": options.host, "port": options.port})
    routes = {}
    for name, path in models.items():
        app = deployment(path, name=name, max_batch_size=options.max_batch_size,
                         max_queue_delay_ms=options.max_queue_delay_ms, replicas=replicas,
                         autoscaling_config=autoscaling_config, threads=options.threads,
                         max_body_mb=options.max_body_mb,
                         num_cpus=min(1.0, (num_cpus or os.cpu_count() or 1) / max(1, replicas * len(models))))
        routes[name] = f"/v1/models/{name}/infer"
        serve.run(app, name=name, route_prefix=routes[name], logging_config={"log_level": "WARNING"})
    return routes


def run_ray(models: dict, options, *, replicas: int = 1, address: str | None = None, log=print) -> None:
    """`edgecompile serve --ray`: serve until SIGTERM/SIGINT, then shut Serve (and a local Ray) down."""
    import signal
    import threading

    import ray
    from ray import serve

    from edgecompile.errors import ConfigError

    if options.token:
        raise ConfigError("--token is not supported with --ray", hint="put Ray Serve behind your own authenticating "
                          "proxy, or bind to loopback")
    stop = threading.Event()
    try:
        routes = start(models, options, replicas=replicas, address=address)
        for sig in (signal.SIGTERM, signal.SIGINT):          # after ray.init, which installs its own
            signal.signal(sig, lambda *_: stop.set())
        for name, route in routes.items():
            log(f"Ray Serve: {name} ({replicas} replica(s)) on http://{options.host}:{options.port}{route}")
        while not stop.wait(0.5):
            pass
        log("stopping Ray Serve")
    finally:
        serve.shutdown()
        if not address:
            ray.shutdown()
