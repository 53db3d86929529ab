"""`--backend auto` with a board (`--remote HOST:PORT --key KEY`, issue 27): each candidate bundle is scored and
timed on the board through the device farm, not on this host. A tracker hands out one session per board, so
candidates are measured one after another (not interleaved as on the host); the board times its own runs, so
RPC round trips are not counted."""
from __future__ import annotations

from edgecompile.errors import RemoteError


def board_of(plan) -> tuple[str, str] | None:
    """(tracker, key) when the build names a board, else None."""
    tvm = plan.config.tvm
    return (tvm.remote, tvm.remote_key) if tvm.remote and tvm.remote_key else None


def measure_on_board(plan, row, board: tuple[str, str], reference, progress=None) -> dict:
    """Fill row.accuracy and row.samples from the board; returns what the board says about itself."""
    from edgecompile.targets.tvm import remote
    from edgecompile.verify.bench import synthetic_feeds
    from edgecompile.verify.evaluate import choose_metric, compare, run_outputs

    tracker, key = board
    with remote.load(row.staged, tracker, key) as runner:
        arch = runner.board.get("arch")
        if arch and arch != plan.profile.arch:
            raise RemoteError(f"board {key!r} is {arch}, but target {plan.profile.name} is {plan.profile.arch}",
                              hint="use a board of the target's kind, or the target of the board")
        if plan.evaluation is not None and reference is not None:
            metric = choose_metric(plan.source.metric, plan.evaluation, plan.classifier)
            ref_name = "torch fp32" if plan.source.kind == "torch" else "source onnx (ORT fp32)"
            row.accuracy = compare(run_outputs(runner, plan.evaluation, progress=progress), reference,
                                   plan.evaluation, metric, ref_name)
        feeds = ({k: v[:1] for k, v in next(plan.evaluation.batches(1)).items()} if plan.evaluation is not None
                 else synthetic_feeds(runner.inputs, 1))
        res = runner.latency(feeds, runs=max(20, 10 * plan.config.auto.rounds), warmup=10)
        row.samples = list(res["samples"])
        return {k: v for k, v in runner.board.items()}
