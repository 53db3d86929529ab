"""Structured pruning: latency of pruned resnet18 bundles vs unpruned FP32, and digits accuracy after
pruning / plain fine-tuning / KD fine-tuning. Not run in CI.

    .venv/bin/python bench/pruning.py [--rounds 7] [--calls 20] [--ratios 0.3 0.5] [--teachers 5] [--reuse DIR]

Part 1 builds resnet18 cpu/ort bundles (unpruned FP32; pruned at each ratio in FP32 and INT8) through
`edgecompile.build`, loads them all, and measures batch-1 latency through the runtime's Runners in
interleaved rounds (the order rotates every round); it prints the median per-call time and the median
of per-round ratios against unpruned FP32. INT8 rows need the quantize pass: where the ort target
cannot ship int8 the row says so. resnet18 has random weights and synthetic data, so only speed is
meaningful there (no fine-tuning by default).

Part 2 prunes digits 50 % for several teachers (the built-in one and DigitsNets trained the same way
from other seeds), fine-tunes each pruned model 5 epochs with KD and, separately, with plain
cross-entropy, and prints top-1 on the 360-sample test split.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path


def per_call_ms(runner, feeds, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        runner.run(feeds)
    return (time.perf_counter() - t0) / calls * 1e3


def resnet_latency(args, root: Path) -> None:
    import edgecompile
    from edgecompile.verify.bench import synthetic_feeds
    from edgecompile.report import load_report

    variants = [("unpruned fp32", 0.0, "fp32")]
    for r in args.ratios:
        variants += [(f"pruned {r:.0%} fp32", r, "fp32"), (f"pruned {r:.0%} int8", r, "int8")]
    runners, notes = {}, {}
    from edgecompile.compiler import precision as precision_stage
    from edgecompile.compiler.registry import get_target

    shippable = precision_stage.supported(get_target("ort"))
    for label, ratio, precision in variants:
        out = root / label.replace(" ", "-").replace("%", "")
        if precision not in shippable:
            notes[label] = (
                f"n/a: the ort target cannot ship {precision} in this checkout (it has {', '.join(shippable)})"
            )
            continue
        if not (args.reuse and (out / "manifest.json").is_file()):
            t0 = time.perf_counter()
            try:
                edgecompile.build("models/resnet18", target="cpu", output=out, precision=precision,
                                  prune=ratio or None, finetune_epochs=args.finetune_epochs, threads=args.threads)
            except edgecompile.errors.EdgeCompileError as exc:
                notes[label] = f"not built: {exc.message}"
                continue
            print(f"  built {label} in {time.perf_counter() - t0:.0f} s", flush=True)
        rep = load_report(out)
        if rep["precision"] != precision:
            notes[label] = f"n/a: shipped {rep['precision']} ({rep['precision_notes'].get('reason', '')})"
            continue
        pr = rep.get("pruning") or {}
        notes[label] = (f"params {pr.get('params_ratio', 1):.2f}x, FLOPs {pr.get('flops_ratio', 1):.2f}x, "
                        f"{rep['size_bytes'] / 2**20:.1f} MiB, agreement {rep['accuracy']['candidate']:.3f}")
        runners[label] = edgecompile.runtime.load(out, threads=args.threads)
    feeds = synthetic_feeds(runners["unpruned fp32"].inputs, 1)
    labels = list(runners)
    for label in labels:
        per_call_ms(runners[label], feeds, 3)             # warm-up
    times = {label: [] for label in labels}
    for r in range(args.rounds):                          # interleaved; rotate who goes first
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        for label in order:
            times[label].append(per_call_ms(runners[label], feeds, args.calls))
    base = times["unpruned fp32"]
    print(f"\nresnet18, cpu/ort, batch 1, {args.rounds} interleaved rounds x {args.calls} calls, "
          f"threads {args.threads or 'default'}")
    print("| variant | ms / call (median) | speed-up vs unpruned fp32 | notes |\n|---|---|---|---|")
    for label, *_ in variants:
        if label in times:
            ratio = statistics.median(b / t for b, t in zip(base, times[label]))
            print(f"| {label} | {statistics.median(times[label]):.2f} | {ratio:.2f}x | {notes[label]} |")
        else:
            print(f"| {label} | | | {notes[label]} |")
    for runner in runners.values():
        runner.close()


def digits_accuracy(args) -> None:
    import torch

    from edgecompile.models.digits.model import DigitsNet
    from edgecompile.passes.module.prune import Prune
    from edgecompile.passes.base import PassContext
    from edgecompile.source import resolve_source
    from edgecompile.compiler.training import deterministic, predict, train_classifier

    src = resolve_source("digits")
    train, test = src.dataset("train"), src.dataset("test")

    def top1(m):
        return float((predict(m, test)[0].argmax(1) == test.labels).mean())

    print(f"\ndigits, 50 % of channels pruned (L1, uniform), {args.digits_epochs} fine-tuning epochs; top-1 on "
          f"{len(test)} test samples (1 sample = {100 / len(test):.2f} pt)")
    print(
        "| teacher | unpruned | pruned, no fine-tune | plain fine-tune | KD fine-tune | params |\n"
        "|---|---|---|---|---|---|"
    )
    drops = {"plain": [], "kd": []}
    for seed in range(args.teachers):
        if seed == 0:
            teacher, name = src.module(), "built-in (seed 0)"
        else:
            torch.manual_seed(seed)
            teacher, name = DigitsNet(), f"seed {seed}"
            with deterministic(0):
                train_classifier(teacher, train, epochs=30, lr=1e-2, seed=0)
        ctx = PassContext(config=None, profile=None, backend="ort", source=src, train=train, evaluation=None)
        pruned = Prune(ratio=0.5, finetune_epochs=0)(copy.deepcopy(teacher), ctx)
        kd = Prune(ratio=0.5, finetune_epochs=args.digits_epochs, distill=True)(copy.deepcopy(teacher), ctx).module
        plain = Prune(ratio=0.5, finetune_epochs=args.digits_epochs, distill=False)(copy.deepcopy(teacher), ctx).module
        base = top1(teacher)
        a_kd, a_plain = top1(kd), top1(plain)
        drops["kd"].append(100 * (base - a_kd))
        drops["plain"].append(100 * (base - a_plain))
        print(f"| {name} | {base:.4f} | {top1(pruned.module):.4f} | {a_plain:.4f} | {a_kd:.4f} | "
              f"{pruned.notes['pruning']['params_ratio']:.2f}x |", flush=True)
    print(f"\nmean drop: plain {statistics.mean(drops['plain']):.2f} pt, KD {statistics.mean(drops['kd']):.2f} pt; "
          f"within 0.5 pt: plain {sum(d <= 0.5 for d in drops['plain'])}/{args.teachers}, "
          f"KD {sum(d <= 0.5 for d in drops['kd'])}/{args.teachers}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--finetune-epochs", type=int, default=0, help="resnet18 fine-tuning (synthetic data)")
    ap.add_argument("--teachers", type=int, default=5, help="digits teachers (seed 0 = the built-in model)")
    ap.add_argument("--digits-epochs", type=int, default=5)
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--skip-digits", action="store_true")
    ap.add_argument("--reuse", type=Path, default=None, help="directory with/for the resnet18 bundles")
    args = ap.parse_args()

    from edgecompile.runtime.machine import cpu_info

    cpu = cpu_info()
    print(f"CPU: {cpu['model']} ({cpu['cores']} cores)")
    if not args.skip_resnet:
        if args.reuse:
            args.reuse.mkdir(parents=True, exist_ok=True)
            resnet_latency(args, args.reuse)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                resnet_latency(args, Path(tmp))
    if not args.skip_digits:
        digits_accuracy(args)


if __name__ == "__main__":
    main()
