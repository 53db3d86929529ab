"""edgecompile.serve.ray: the digits bundle on Ray Serve with 2 replicas, on a local Ray instance over loopback."""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from conftest import free_port


@pytest.fixture(scope="module")
def ray_url(digits_bundle):
    import ray
    from ray import serve

    from edgecompile.serve import ServeOptions
    from edgecompile.serve.ray import start

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        port = free_port()
        routes = start({"digits": digits_bundle.path}, ServeOptions(port=port), replicas=2)
        yield f"http://127.0.0.1:{port}{routes['digits']}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_answer_batched_requests(ray_url, digits_source, digits_bundle):
    from edgecompile.runtime import load

    rows = digits_source.dataset("test").inputs["input"][:48]
    with load(digits_bundle.path) as r:
        expected = r.run({"input": rows})["logits"]

    def one(i):
        buf = io.BytesIO()
        np.save(buf, rows[i:i + 1])
        resp = httpx.post(ray_url, content=buf.getvalue(), headers={"Content-Type": "application/x-npy"}, timeout=60)
        assert resp.status_code == 200, resp.text
        return np.load(io.BytesIO(resp.content)), resp.headers["x-edgecompile-replica"]

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(48)))
    np.testing.assert_allclose(np.concatenate([a for a, _ in answers]), expected, rtol=1e-5, atol=1e-5)
    assert len({rep for _, rep in answers}) == 2


def test_bad_request_is_400_json(ray_url):
    r = httpx.post(ray_url, json={"inputs": {"image": [[1.0]]}}, timeout=60)
    assert r.status_code == 400 and "missing ['input']" in r.json()["error"]["message"]
    r = httpx.post(ray_url, json={"inputs": {"input": [[1.0, 2.0]]}}, timeout=60)
    assert r.status_code == 400 and "shape [1, 2]" in r.json()["error"]["message"]
