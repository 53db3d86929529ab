"""Per kernel, what tuning left in a cache: trials measured, best time, weight and GFLOP/s, per graph database.

    .venv/bin/python bench/tvm_kernels.py --cache /tmp/edgecompile-bench-tvm-XXXX --out bench/results/NAME.txt

Reads `<cache>/tvm/db/*/edgecompile.json` (written by every TVM build; see targets/tvm/tune.py): the graph's
kernels with the trials their valid records hold, the best measured time and the FLOPs TVM estimated. Shows
where a tuning budget went (e.g. bench/tvm_vs_ort.py's cache, named in its results file): a kernel with few
trials and low GFLOP/s is the one to tune. Graphs are listed by total trials, duplicates (same key) once.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _results import Lines, write_results  # noqa: E402  (bench/ is the script's directory on sys.path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True, help="the EDGECOMPILE_CACHE directory to read")
    ap.add_argument("--top", type=int, default=8, help="kernels per graph, by best time x weight (default 8)")
    ap.add_argument("--out", type=Path, required=True, help="results file to write")
    args = ap.parse_args(argv)
    from edgecompile.runtime.machine import cpu_info

    metas = [json.loads(p.read_text()) for p in sorted((args.cache / "tvm" / "db").glob("*/edgecompile.json"))]
    out = Lines()
    out(f"# bench/tvm_kernels.py  {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    out(f"# CPU (reading only; the times were measured where the cache was tuned): {cpu_info()['model']}")
    out(f"# command: bench/tvm_kernels.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    for meta in sorted(metas, key=lambda m: -int(m.get("trials", 0))):
        tasks = meta.get("tasks", {})
        total = sum((t["best_us"] or 0) * t["weight"] for t in tasks.values())
        untuned = [name for name, t in tasks.items() if not t["trials"]]
        out(f"\n== graph database {meta['key'][:12]}: {meta.get('trials', 0)} trials in {len(tasks)} kernels, "
            f"{float(meta.get('tuning_seconds', 0)):.0f} s of tuning; sum of best x weight {total / 1e3:.1f} ms; "
            f"kernels without a record: {len(untuned)} {sorted(n[:40] for n in untuned)}")
        out(f"  {'kernel':<62} {'weight':>6} {'trials':>6} {'best us':>9} {'GFLOP/s':>8}")
        ranked = sorted(tasks.items(), key=lambda kv: -(kv[1]["best_us"] or 0) * kv[1]["weight"])
        for name, t in ranked[:args.top]:
            best = t["best_us"]
            gflops = f"{t['flops'] / best / 1e3:.1f}" if best and t["flops"] else "-"
            out(f"  {name[:62]:<62} {t['weight']:>6} {t['trials']:>6} {best if best is None else round(best):>9} "
                f"{gflops:>8}")
    write_results(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
