"""`edgecompile device tracker|serve|list`: a device farm through TVM's RPC tracker (loopback only)."""
from __future__ import annotations

import click

from edgecompile.cli.common import emit_json, json_option


@click.group()
def device():
    """Boards behind a TVM RPC tracker: start a tracker, serve this machine as a board, list boards.

    \b
      edgecompile device tracker --port 9190                       # once, on the host
      edgecompile device serve --tracker 127.0.0.1:9190 --key rpi5  # on each board
      edgecompile device list --tracker 127.0.0.1:9190
      edgecompile bench OUT --remote 127.0.0.1:9190 --key rpi5

    Addresses must be loopback: reach a board's tracker through an SSH tunnel. TVM's RPC server
    runs whatever code it is sent, so serve only on machines and tunnels you trust."""


@device.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=9190, show_default=True)
def tracker(host, port):
    """Run a TVM RPC tracker until interrupted (Ctrl-C)."""
    from edgecompile.targets.tvm.remote import run_tracker

    def ready(t):
        click.echo(f"tracker listening on {host}:{t.port} (Ctrl-C to stop)", err=True)

    try:
        run_tracker(host=host, port=port, ready=ready)
    except KeyboardInterrupt:
        pass


@device.command()
@click.option("--tracker", "tracker_addr", required=True, metavar="HOST:PORT", help="The tracker to register with.")
@click.option("--key", required=True, help="The board's key, e.g. rpi5 (builds and benchmarks ask for it).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=9090, show_default=True,
              help="First port to try (up to --port-end).")
@click.option("--port-end", type=click.IntRange(1, 65535), help="Last port to try (default: --port + 100).")
@click.option("--emulated", is_flag=True, help="Label this board's timings as emulated (e.g. under qemu).")
@click.option("--token", envvar="EDGECOMPILE_BOARD_TOKEN", metavar="SECRET",
              help="Shared secret: the board proves it is the expected one to clients that set "
                   "EDGECOMPILE_BOARD_TOKEN to the same value (default: $EDGECOMPILE_BOARD_TOKEN).")
def serve(tracker_addr, key, host, port, port_end, emulated, token):
    """Serve this machine as a board: a TVM RPC server registered with the tracker under KEY."""
    from edgecompile.targets.tvm.remote import serve as run_serve

    def ready(server, info):
        click.echo(f"board {key!r} ({info['arch']}{', emulated' if info['emulated'] else ''}) serving on "
                   f"{host}:{server.port}, registered with {tracker_addr} (Ctrl-C to stop)", err=True)

    try:
        run_serve(tracker_addr, key, host=host, port=port, port_end=port_end or min(65535, port + 100),
                  emulated=emulated, token=token, ready=ready)
    except KeyboardInterrupt:
        pass


@device.command("list")
@click.option("--tracker", "tracker_addr", default="127.0.0.1:9190", show_default=True, metavar="HOST:PORT")
@json_option
def list_(tracker_addr, json_mode):
    """The tracker's boards: per key, free boards, queued requests and the servers' addresses."""
    from edgecompile.targets.tvm.remote import boards, tracker_summary

    rows = boards(tracker_summary(tracker_addr))
    if json_mode:
        emit_json({"tracker": tracker_addr, "boards": rows})
        return
    if not rows:
        click.echo(f"no boards on the tracker at {tracker_addr} "
                   f"(start one: edgecompile device serve --tracker {tracker_addr} --key KEY)")
        return
    click.echo(f"{'key':<16} {'free':>4} {'queued':>6}  servers")
    for r in rows:
        click.echo(f"{r['key']:<16} {r['free']:>4} {r['pending']:>6}  {', '.join(r['servers']) or '-'}")
