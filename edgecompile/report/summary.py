"""The summary rows shared by the CLI table, report.md and report.html."""
from __future__ import annotations

from edgecompile.report.generation import generation_rows


def _fmt(v, spec=".4f", none="n/a"):
    if v is None:
        return none
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def summary_rows(report: dict) -> list[tuple[str, str]]:
    """Label/value pairs shared by the CLI table and report.md."""
    acc, lat = report.get("accuracy"), report.get("latency_ms")
    rows = [
        ("model", report["model"]),
        ("target / backend", f"{report['target']} / {report['backend']}"),
        ("precision", report["precision"] + ("" if report["precision"] == report["requested_precision"]
                                             else f" (requested {report['requested_precision']})")),
    ]
    if report.get("generation"):            # decoder bundles: perplexity, agreement, tokens/s
        return rows + generation_rows(report)
    if acc:
        pct = acc["kind"] == "percentage"
        f = (lambda x: f"{100 * x:.2f} %") if pct else (lambda x: f"{x:.6g}")
        rows += [
            (
                f"accuracy ({acc['metric']})",
                f"{f(acc['candidate'])}  [95% CI {f(acc['ci95'][0])} .. {f(acc['ci95'][1])}], n={acc['n']}",
            ),
            ("reference", f"{f(acc['reference'])} ({acc['reference_model']})"),
            ("delta", f"{100 * acc['delta']:+.2f} pt" if pct else f"{acc['delta']:+.6g}" + (
                f" ({100 * acc['delta'] / abs(acc['reference']):+.2f} % relative)"
                if acc["kind"] == "error" and acc["reference"] else "")),
            ("output cosine", _fmt(acc["similarity"].get("cosine"), ".6f")),
        ]
        rows += [(f"{name} (beside)", f"{b['candidate']:.6g} (reference {b['reference']:.6g}, delta {b['delta']:+.4g})")
                 for name, b in (acc.get("beside") or {}).items()]
        ag = acc.get("agreement")
        if ag:
            conf = ag["confident_agreement"]
            rows.append(("agreement with reference",
                         f"top-1 {100 * ag['top1_agreement']:.2f} %, confident (p>={ag['confident_threshold']:g}, "
                         f"n={ag['confident_samples']}) " + ("n/a" if conf is None else f"{100 * conf:.2f} %")
                         + f", top-5 containment {100 * ag['top5_containment']:.2f} %, mean KL {ag['mean_kl']:.4f}"))
            if ag.get("bound_reason"):
                rows.append(("bound metric", f"{ag['bound_metric']}: {ag['bound_reason']}"))
    else:
        rows.append(
            ("accuracy", "not measured (no evaluation data)" if not report.get("skipped") else report["skipped"])
        )
    if not lat and acc and report.get("skipped"):
        rows.append(("latency", report["skipped"]))
    if lat:
        rows += [("latency p50/p90/p99", f"{lat['p50']:.3f} / {lat['p90']:.3f} / {lat['p99']:.3f} ms "
                                         f"(batch {lat['batch']}, {lat['runs']} runs, {lat['threads']} threads)")]
    if report.get("cold_start_ms") is not None:
        rows.append(("cold start", f"{report['cold_start_ms']:.1f} ms (load + first inference)"))
    if report.get("peak_rss_mb") is not None:
        rows.append(("peak RSS", f"{report['peak_rss_mb']:.1f} MB (runtime process)"))
    choice = report.get("backend_choice")
    if choice:
        n = sum(1 for c in choice["candidates"] if c["p50_ms"] is not None)
        rows.append(("backend choice", f"auto: {choice['chosen']['backend']} {choice['chosen']['precision']}, "
                                       f"{choice['chosen']['reason']} ({n} measured here, bound "
                                       f"{choice['bound']:g} {choice['bound_units']}; see candidates)"))
        for note in choice.get("fit_notes") or []:
            rows.append(("backend note", note))
    if report.get("pruning"):
        pr = report["pruning"]
        rows.append(("pruning", f"{pr['ratio']:.0%} of channels: params {pr['params_ratio']:.2f}x, "
                                f"FLOPs {pr['flops_ratio']:.2f}x"))
    for name, st in (report.get("artifact_status") or {}).items():
        rows.append((name, f"{st['state']}: {st['why']}"))
    for where, what in (report.get("execution") or {}).items():
        if what:
            rows.append((where if where == "activations" else f"runs on {where.replace('_', ' ')}", what))
    rows.append(("size", f"{report['size_bytes'] / 1024:.1f} KiB"))
    cpu = report["machine"]["cpu"]
    rows.append(("measured on", f"{cpu['model']} ({cpu['cores']} cores)"))
    rows.append(("build time", f"{report['build_seconds']:.1f} s"))
    cache = report.get("cache")
    if cache and cache.get("bundle") == "hit":
        rows.append(("build cache", f"hit (bundle {report['bundle_id'][:12]}, first built in "
                                    f"{cache.get('original_build_seconds', 0):.1f} s)"))
    elif cache:
        rows.append(("build cache", f"bundle {cache.get('bundle')}, export {cache.get('export') or 'n/a'}"))
    return rows
