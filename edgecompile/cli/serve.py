"""`edgecompile serve DIR [NAME=DIR ...]`: bundles behind HTTP (edgecompile.serve), or on Ray Serve with --ray."""
from __future__ import annotations

import click


@click.command()
@click.argument("bundles", nargs=-1, required=True, metavar="DIR|NAME=DIR...")
@click.option("--host", help="Address to listen on (default 127.0.0.1; others need --token or --insecure).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default 8080; 0 picks a free one).")
@click.option("--max-batch-size", type=click.IntRange(min=1),
              help="Rows per engine call with dynamic batching (default 8; 1 turns batching off).")
@click.option("--max-queue-delay-ms", type=click.FloatRange(min=0),
              help="How long a batch may wait to fill (default 5; a lone request on an idle model never waits).")
@click.option("--instances", type=click.IntRange(min=1), help="Runners per model (default 1).")
@click.option("--max-queue", type=click.IntRange(min=1),
              help="Requests that may wait per model; more are answered 429 with Retry-After (default 256).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True),
              help="Seconds a request may wait for its answer before a 504 (default 30).")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True),
              help="Largest request body in MiB; larger ones get 413 (default 64).")
@click.option("--token", envvar="EDGECOMPILE_SERVE_TOKEN", show_envvar=True,
              help="Require 'Authorization: Bearer TOKEN' on every endpoint except /healthz and /readyz.")
@click.option("--insecure", is_flag=True, default=None, help="Allow a non-loopback --host without a token.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Allow browser requests from this origin (repeatable), e.g. http://localhost:3000.")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads per runner.")
@click.option("-c", "--config", "config_path", type=click.Path(),
              help="TOML config whose [serve] table mirrors these flags (default: ./edgecompile.toml).")
@click.option("--ray", "use_ray", is_flag=True, help="Serve on Ray Serve (local instance, or --ray-address).")
@click.option("--ray-address", metavar="ADDR", help="Join this Ray cluster (e.g. ray://head:10001 or auto).")
@click.option("--replicas", type=click.IntRange(min=1), help="Ray Serve replicas per model (default 1).")
def serve(bundles, config_path, use_ray, ray_address, token, cors_origins, **flags):
    """Serve bundles over HTTP with dynamic batching and Prometheus metrics.

    \b
      edgecompile serve out/digits                       # http://127.0.0.1:8080/v1/models
      edgecompile serve digits=out/digits resnet=out/r18 --max-batch-size 16 --instances 2
      curl -d '{"inputs": {"input": [[[[0.0, ...]]]]}}' localhost:8080/v1/models/digits/infer

    Endpoints: GET /v1/models, POST /v1/models/NAME/infer (JSON, application/x-npy or x-npz),
    POST /v1/models/NAME/generate and /v1/chat/completions (decoder bundles), GET /healthz, /readyz,
    /metrics. SIGTERM drains the queues before exiting."""
    import importlib.util

    from edgecompile.cli.common import _load_config
    from edgecompile.errors import ConfigError, EdgeCompileError
    from edgecompile.serve import ServeOptions, parse_model_args

    needed = ("starlette", "uvicorn", "prometheus_client") + (("ray",) if use_ray else ())
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise EdgeCompileError(f"edgecompile serve needs {', '.join(missing)}, which this installation lacks",
                               hint=f"pip install 'edgecompile[{'ray' if use_ray else 'serve'}]'")

    section = _load_config(config_path).serve
    values = {k: (v if v is not None else getattr(section, k)) for k, v in flags.items() if k != "replicas"}
    replicas = flags["replicas"] or section.replicas
    options = ServeOptions(**values, token=token or None,
                           cors_origins=tuple(cors_origins) or tuple(section.cors_origins))
    options.check()
    models = parse_model_args(bundles)
    if use_ray:
        from edgecompile.serve.ray import run_ray

        run_ray(models, options, replicas=replicas, address=ray_address, log=lambda m: click.echo(m, err=True))
        return
    if ray_address or flags["replicas"]:
        raise ConfigError("--ray-address and --replicas apply to --ray", hint="add --ray, or use --instances")
    from edgecompile.serve import serve as run_serve

    run_serve(models, options, log=lambda m: click.echo(m, err=True))
