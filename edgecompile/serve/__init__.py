"""`edgecompile serve`: bundles behind HTTP (starlette + uvicorn) with dynamic batching, Prometheus
metrics and backpressure; `edgecompile.serve.ray` puts the same bundles on Ray Serve.

    from edgecompile.serve import ServeOptions, serve
    serve({"digits": "out/digits"}, ServeOptions(port=8080))

Bundles are verified and loaded (`--instances` Runners each) and warmed with one synthetic run before
the port opens; /readyz answers 200 from then until a SIGTERM/SIGINT starts the drain: the listening
socket closes, queued and running requests are answered, then the runners are closed.
"""
from __future__ import annotations

import asyncio
import ipaddress
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edgecompile.compiler.config import ServeSection
from edgecompile.errors import ConfigError


@dataclass(frozen=True)
class ServeOptions(ServeSection):
    """The `[serve]` table's settings (defaults there: one source) plus what only a running server has."""
    token: str | None = None
    cors_origins: tuple[str, ...] = ()
    drain_timeout_s: float = 30.0

    def check(self) -> None:
        for key, low in (("max_batch_size", 1), ("instances", 1), ("max_queue", 1)):
            if getattr(self, key) < low:
                raise ConfigError(f"serve option {key} must be >= {low}, got {getattr(self, key)}")
        for key in ("max_queue_delay_ms", "timeout_s", "max_body_mb"):
            if not getattr(self, key) >= 0 or (key != "max_queue_delay_ms" and getattr(self, key) == 0):
                raise ConfigError(f"serve option {key} must be {'>= 0' if key == 'max_queue_delay_ms' else '> 0'}, "
                                  f"got {getattr(self, key)}")
        if not is_loopback(self.host) and not self.token and not self.insecure:
            raise ConfigError(f"binding to {self.host} exposes the models beyond this machine without authentication",
                              hint="set a bearer token (--token or EDGECOMPILE_SERVE_TOKEN), or pass --insecure "
                                   "if the network is trusted")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_model_args(args) -> dict[str, Path]:
    """`DIR` or `NAME=DIR` -> {name: dir}; a bare DIR is named after its manifest's model.name."""
    from edgecompile.runtime.bundle import Bundle

    models: dict[str, Path] = {}
    for arg in args:
        name, sep, path = str(arg).partition("=")
        if not sep or not name or "/" in name:
            name, path = None, str(arg)
        if name is None:
            bundle = Bundle.open(path, verify=False)
            name = (bundle.manifest.get("model") or {}).get("name") or Path(path).resolve().name
        if name in models:
            raise ConfigError(f"two bundles are named {name!r} ({models[name]} and {path})",
                              hint="name them on the command line: NAME=DIR")
        models[name] = Path(path)
    if not models:
        raise ConfigError("no bundle to serve", hint="edgecompile serve DIR [DIR ...] (or NAME=DIR)")
    return models


def load_models(models: dict[str, Path], options: ServeOptions, metrics) -> dict:
    """Verify and load every bundle (`instances` Runners each), warm each Runner with one synthetic run."""
    from edgecompile.verify.bench import synthetic_feeds
    from edgecompile.runtime.bundle import Bundle
    from edgecompile.runtime import load
    from edgecompile.serve.app import ServedModel
    from edgecompile.serve.batcher import Batcher

    served = {}
    try:
        for name, path in models.items():
            runners = []
            served_model = None
            try:
                for _ in range(options.instances):
                    runners.append(load(path, threads=options.threads))
                manifest = Bundle.open(path, verify=False).manifest
                warm = _warm_up(manifest, runners[0], synthetic_feeds)
                for r in runners:
                    _checked_warm_up(warm, r, path)
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    warm(runners[0])
                    times.append(time.perf_counter() - t0)
                served_model = ServedModel(name, manifest, Batcher(
                    name, runners, max_batch_size=options.max_batch_size, max_queue_delay_ms=options.max_queue_delay_ms,
                    max_queue=options.max_queue, timeout_s=options.timeout_s, metrics=metrics,
                    run_s=sorted(times)[2]))
            finally:
                if served_model is None:
                    for r in runners:
                        r.close()
            served[name] = served_model
    except BaseException:
        _close_all(served)
        raise
    return served


def _warm_up(manifest: dict, runner, synthetic_feeds):
    """One representative call: a one-token generation for decoder bundles (their graph takes a KV cache
    that synthetic arrays cannot fill), one synthetic batch-1 run for every other bundle."""
    if (manifest.get("frontend") or {}).get("kind") == "generation":
        return lambda r: r.generate("Hello", max_new_tokens=1)
    feeds = synthetic_feeds(runner.inputs, 1)
    return lambda r: r.run(feeds)


def _checked_warm_up(warm, runner, path) -> None:
    from edgecompile.errors import BundleError, EdgeCompileError

    try:
        warm(runner)
    except EdgeCompileError:
        raise
    except Exception as exc:
        msg = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
        raise BundleError(f"{path}: the warm-up run failed: {msg}",
                          hint="check the bundle with `edgecompile run DIR` / `edgecompile verify DIR`") from None


def serve(models: dict[str, str | Path], options: ServeOptions = ServeOptions(), *, log=None) -> None:
    """Serve the bundles until SIGTERM/SIGINT, then drain. Blocks."""
    import uvicorn

    from edgecompile.serve.app import create_app
    from edgecompile.serve.metrics import Metrics

    options.check()
    sock = bind(options.host, options.port)
    port = sock.getsockname()[1]
    metrics = Metrics()
    try:
        served = load_models({k: Path(v) for k, v in models.items()}, options, metrics)
    except BaseException:
        sock.close()
        raise
    app = create_app(served, metrics=metrics, max_body_mb=options.max_body_mb, token=options.token,
                     cors_origins=options.cors_origins)
    state = app.state.serve
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=options.drain_timeout_s, lifespan="on",
                            server_header=False)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            state.draining = True          # /readyz says 503 while the queues drain
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:      # a completed drain exits 0 (uvicorn would re-raise the signal)
                self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    server = Server(config)

    async def main():
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            desc = ", ".join(
                f"{n} ({'batch<=' + str(m.batcher.max_batch_size) if m.batcher.batching else 'no batching'})"
                for n, m in served.items()
            )
            say(f"serving {desc} on http://{options.host}:{port} (SIGTERM or Ctrl-C drains and stops)")
        await task

    try:
        asyncio.run(main())
    finally:
        sock.close()
        _close_all(served)                 # drained already on a clean shutdown; close() is idempotent


def bind(host: str, port: int):
    """The listening socket, bound here so that a taken port is a one-line error."""
    import socket

    from edgecompile.errors import EdgeCompileError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY only on such sockets; without it, Nagle + delayed
    # ACKs add ~40 ms to every response written in two parts.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise EdgeCompileError(f"cannot listen on {host}:{port}: {exc.strerror}",
                               hint="choose another --port (or --host)") from None
    sock.set_inheritable(True)
    return sock


def _close_all(served: dict) -> None:
    for m in served.values():
        for r in m.batcher.runners:
            r.close()
