"""`edgecompile serve` over loopback HTTP: formats, errors, auth, CORS, metrics, batching, backpressure, drain."""
from __future__ import annotations

import io
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import run_cli
from serving import TOKEN, Server


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.fixture(scope="module")
def digits_rows(digits_source):
    return digits_source.dataset("test").inputs["input"][:64]


@pytest.fixture(scope="module")
def reference(digits_bundle, digits_rows):
    from edgecompile.runtime import load

    with load(digits_bundle.path) as r:
        return r.run({"input": digits_rows})["logits"]


def metric(client, name: str, **labels) -> float:
    text = client.get("/metrics").text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_models_lists_names_io_precision_backend(client, digits_bundle):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) == {"digits", "pair"}
    d = models["digits"]
    assert d["inputs"] == [{"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]
    assert d["outputs"][0]["name"] == "logits"
    assert (d["precision"], d["backend"]) == ("fp32", "ort")
    assert d["batching"] == {"enabled": True, "max_batch_size": 8, "max_queue_delay_ms": 5.0, "instances": 1,
                             "max_queue": 256, "inline": True}     # digits runs in ~0.03 ms: on the event loop
    assert client.get("/v1/models/pair").json()["inputs"][1]["name"] == "y"


def test_json_infer_matches_in_process_runner(client, digits_rows, reference):
    r = client.post("/v1/models/digits/infer", json={"inputs": {"input": digits_rows[:3].tolist()}})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.asarray(r.json()["outputs"]["logits"]), reference[:3], rtol=1e-5, atol=1e-5)


def test_npy_and_npz_bodies_are_answered_in_kind(client, digits_rows, reference):
    r = client.post("/v1/models/digits/infer", content=npy(digits_rows[:5]),
                    headers={"Content-Type": "application/x-npy"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
    np.testing.assert_allclose(np.load(io.BytesIO(r.content)), reference[:5], rtol=1e-5, atol=1e-5)
    x, y = np.ones((2, 3), np.float32), np.full((2, 3), 2.0, np.float32)
    r = client.post("/v1/models/pair/infer", content=npz(x=x, y=y), headers={"Content-Type": "application/x-npz"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npz"
    with np.load(io.BytesIO(r.content)) as z:
        np.testing.assert_array_equal(z["z"], x + y)


BAD = [
    ("wrong input name", "digits", {"json": {"inputs": {"image": [[[[0.0] * 8] * 8]]}}}, 400,
     ["missing ['input']", "unexpected ['image']"]),
    ("wrong shape", "digits", {"json": {"inputs": {"input": [[1.0, 2.0]]}}}, 400, ["shape [1, 2]", "'batch', 1, 8, 8"]),
    ("wrong dtype", "digits", {"content": npy(np.zeros((1, 1, 8, 8), np.float64)),
                               "headers": {"Content-Type": "application/x-npy"}}, 400, ["dtype float64", "float32"]),
    ("strings", "digits", {"json": {"inputs": {"input": [["a"]]}}}, 400, ["must be numbers"]),
    ("ragged list", "digits", {"json": {"inputs": {"input": [[1.0], [1.0, 2.0]]}}}, 400, ["ragged"]),
    ("malformed JSON", "digits", {"content": b'{"inputs": ', "headers": {"Content-Type": "application/json"}}, 400,
     ["malformed JSON"]),
    ("not an object", "digits", {"json": [1, 2]}, 400, ['{"inputs"']),
    ("npy for two inputs", "pair", {"content": npy(np.zeros((1, 4), np.float32)),
                                    "headers": {"Content-Type": "application/x-npy"}}, 400, ["inputs ['x', 'y']"]),
    ("corrupt npz", "pair", {"content": b"PK\x03\x04garbage", "headers": {"Content-Type": "application/x-npz"}}, 400,
     ["not a readable application/x-npz"]),
    ("unknown model", "nope", {"json": {"inputs": {}}}, 404, ["unknown model 'nope'", "digits"]),
    ("oversized body", "digits", {"content": b"0" * (1 << 20 + 1), "headers": {"Content-Type": "application/json"}},
     413, ["1 MiB", "--max-body-mb"]),
    ("unsupported type", "digits", {"content": b"x", "headers": {"Content-Type": "text/csv"}}, 415, ["text/csv"]),
]


@pytest.mark.parametrize("what,model,kw,status,words", BAD, ids=[b[0] for b in BAD])
def test_bad_request_is_4xx_json_naming_the_problem(client, what, model, kw, status, words):
    r = client.post(f"/v1/models/{model}/infer", **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status
    for w in words:
        assert w in err["message"], (w, err["message"])


def test_server_is_healthy_after_bad_requests(client, digits_rows, reference):
    for _, model, kw, _, _ in BAD:
        client.post(f"/v1/models/{model}/infer", **kw)
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.post("/v1/models/digits/infer", json={"inputs": {"input": digits_rows[:1].tolist()}})
    np.testing.assert_allclose(r.json()["outputs"]["logits"], reference[:1], rtol=1e-5, atol=1e-5)
    assert metric(client, "edgecompile_inference_requests_total", model="digits", outcome="bad_request") >= 8


def test_engine_error_is_500_for_that_request_only(client):
    before = metric(client, "edgecompile_inference_requests_total", model="pair", outcome="error")
    good = {"inputs": {"x": [[1.0, 2.0, 3.0, 4.0]], "y": [[1.0, 1.0, 1.0, 1.0]]}}
    bad = {"inputs": {"x": [[1.0, 2.0, 3.0]], "y": [[1.0, 1.0, 1.0, 1.0]]}}   # widths 3 vs 4: Add fails
    bodies = [good] * 6 + [bad] + [good] * 6
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: client.post("/v1/models/pair/infer", json=b), bodies))
    for body, r in zip(bodies, answers):
        if body is bad:
            assert r.status_code == 500 and "engine error" in r.json()["error"]["message"], r.text
        else:
            assert r.status_code == 200 and r.json()["outputs"]["z"] == [[2.0, 3.0, 4.0, 5.0]], r.text
    assert metric(client, "edgecompile_inference_requests_total", model="pair", outcome="error") == before + 1


def test_concurrent_requests_get_their_own_rows(client, digits_rows, reference):
    """32 clients at once: every answer is its own row's (batches are split back correctly)."""
    def one(i):
        r = client.post("/v1/models/digits/infer", content=npy(digits_rows[i:i + 1]),
                        headers={"Content-Type": "application/x-npy"})
        assert r.status_code == 200, r.text
        return np.load(io.BytesIO(r.content))

    rows_before = metric(client, "edgecompile_inference_count_total", model="digits")
    with ThreadPoolExecutor(32) as pool:
        outs = list(pool.map(one, range(64)))
    np.testing.assert_allclose(np.concatenate(outs), reference, rtol=1e-5, atol=1e-5)
    assert metric(client, "edgecompile_inference_count_total", model="digits") == rows_before + 64
    assert metric(client, "edgecompile_inference_in_flight", model="digits") == 0
    assert metric(client, "edgecompile_inference_queue_depth", model="digits") == 0


def test_metrics_names(client):
    names = {f.name for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert {"edgecompile_inference_requests", "edgecompile_inference_request_duration_seconds",
            "edgecompile_inference_queue_duration_seconds", "edgecompile_inference_compute_duration_seconds",
            "edgecompile_batch_size", "edgecompile_inference_count", "edgecompile_inference_exec_count",
            "edgecompile_inference_queue_depth", "edgecompile_inference_in_flight"} <= names


def test_token_required_except_probes(server):
    assert httpx.get(server.base + "/healthz").status_code == 200
    assert httpx.get(server.base + "/readyz").json()["status"] == "ready"
    for path in ("/v1/models", "/metrics"):
        r = httpx.get(server.base + path)
        assert r.status_code == 401 and "bearer token" in r.json()["error"]["message"]
    r = httpx.get(server.base + "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert httpx.get(server.base + "/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_cors_preflight_for_configured_origin_only(server):
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    r = httpx.options(server.base + "/v1/models/digits/infer", headers={"Origin": "http://app.example", **pre})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
    r = httpx.options(server.base + "/v1/models/digits/infer", headers={"Origin": "http://evil.example", **pre})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


def test_non_loopback_needs_token_or_insecure(digits_bundle):
    rc, out, err = run_cli("serve", digits_bundle.path, "--host", "0.0.0.0", env={"EDGECOMPILE_SERVE_TOKEN": ""})
    assert rc == 2, err
    assert "0.0.0.0" in err and "--insecure" in err and "Traceback" not in err


def test_bad_serve_config_key_is_exit_2(digits_bundle, tmp_path):
    (tmp_path / "bad.toml").write_text("[serve]\nmax_batchsize = 4\n")
    rc, _, err = run_cli("serve", digits_bundle.path, "-c", tmp_path / "bad.toml")
    assert rc == 2 and "serve.max_batchsize" in err and "Traceback" not in err


def test_not_a_bundle_is_one_line_error(tmp_path):
    rc, _, err = run_cli("serve", tmp_path)
    assert rc == 1 and "not a bundle" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def tight(digits_bundle, tmp_path_factory):
    """Batching off and a queue of 2 from the [serve] table."""
    cfg = tmp_path_factory.mktemp("cfg") / "edgecompile.toml"
    cfg.write_text("[serve]\nmax_batch_size = 1\nmax_queue = 2\n")
    s = Server(["-c", cfg, digits_bundle.path])
    yield s
    assert s.stop() == 0, s.output()


def test_serve_table_sets_batching_and_queue(tight):
    (model,) = httpx.get(tight.base + "/v1/models").json()["models"]
    assert model["batching"] == {"enabled": False, "max_batch_size": 1, "max_queue_delay_ms": 5.0, "instances": 1,
                                 "max_queue": 2, "inline": True}


def test_full_queue_answers_429_with_retry_after(tight):
    big = npy(np.random.default_rng(0).random((10000, 1, 8, 8), dtype=np.float32))    # 2.5 MB, a few ms each
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: httpx.post(tight.base + "/v1/models/digits/infer", content=big, timeout=60,
                                                     headers={"Content-Type": "application/x-npy"}), range(16)))
    codes = [r.status_code for r in answers]
    assert set(codes) == {200, 429}, codes
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["retry-after"] == "1" and "queue full" in refused.json()["error"]["message"]


def test_sigterm_drains_accepted_requests(digits_bundle):
    s = Server([digits_bundle.path, "--max-batch-size", "1"])
    big = npy(np.zeros((20000, 1, 8, 8), np.float32))

    def post(_):
        return httpx.post(s.base + "/v1/models/digits/infer", content=big, timeout=60,
                          headers={"Content-Type": "application/x-npy"})

    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(post, i) for i in range(6)]
            deadline = time.monotonic() + 30
            while True:          # wait until several requests are inside the server, then SIGTERM
                text = httpx.get(s.base + "/metrics").text
                inflight = [x.value for f in text_string_to_metric_families(text) for x in f.samples
                            if x.name == "edgecompile_inference_in_flight"][0]
                if inflight >= 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.005)
            assert inflight >= 3
            s.proc.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        assert s.proc.wait(30) == 0
    finally:
        s.stop()
    assert [r.status_code for r in answers] == [200] * 6
    assert all(np.load(io.BytesIO(r.content)).shape == (20000, 10) for r in answers)
    assert "Traceback" not in s.output()


def test_front_end_endpoints_on_an_array_bundle_are_400(client):
    """The text/generate/chat endpoints go through Runner.encode/generate/stream; digits has no front-end."""
    r = client.post("/v1/models/digits/infer", json={"texts": ["hello"]})
    assert r.status_code == 400 and "no text front-end" in r.json()["error"]["message"]
    r = client.post("/v1/models/digits/infer", json={"texts": "hello"})
    assert r.status_code == 400 and "list of strings" in r.json()["error"]["message"]
    r = client.post("/v1/models/digits/generate", json={"prompt": "hi", "max_new_tokens": 4})
    assert r.status_code == 400 and "no generation front-end" in r.json()["error"]["message"]
    r = client.post("/v1/models/digits/generate", json={"prompt": "hi", "stream": True})
    assert r.status_code == 400 and "no generation front-end" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json={"model": "digits", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "no generation front-end" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json={"model": "digits", "messages": "hi"})
    assert r.status_code == 400 and '"messages"' in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and '"model"' in r.json()["error"]["message"]      # two models served


def test_sequential_round_trip_has_no_nagle_delay(client, digits_rows):
    """Responses go out in two writes; without TCP_NODELAY each round trip waited ~40 ms for a delayed ACK."""
    body = npy(digits_rows[:1])
    times = []
    for _ in range(21):
        t0 = time.perf_counter()
        r = client.post("/v1/models/digits/infer", content=body, headers={"Content-Type": "application/x-npy"})
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200
    assert sorted(times)[10] < 0.025, sorted(times)
