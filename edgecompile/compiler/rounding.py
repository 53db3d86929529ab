"""`[passes.quantize] adaround = "auto"`: learned rounding (passes/adaround.py) when static INT8 with
round-to-nearest is over the accuracy bound, before the precision search falls back to float."""
from __future__ import annotations

import dataclasses


def maybe_adaround(plan, qpass, rec, qmodel, drop_of, bound, ctx, records, progress):
    """(record, model) of the quantize step, with AdaRound's result when it ran and measured better:
    the record's metric_after and notes become AdaRound's, its own record goes to `records` (a
    waterfall step). `drop_of(metric)` is the accuracy drop of a metric value against FP32."""
    from edgecompile.passes.adaround import LearnedRounding
    from edgecompile.passes.base import PassManager, default_instruments

    qcfg = plan.config.passes.quantize
    drop = drop_of(rec.metric_after)
    if (qcfg.mode != "static" or qcfg.adaround != "auto" or bound is None or drop is None or drop <= bound
            or ctx.evaluator is None):
        return rec, qmodel
    with progress.step("adaround", f"learned rounding: int8 drop {drop:.3g} > {bound:g}"):
        pm = PassManager([LearnedRounding(qpass)], default_instruments(ctx.evaluator))
        out = pm.run(qmodel)
    ada = pm.records[-1]
    after = drop_of(ada.metric_after)
    if after is None or after >= drop:        # learned rounding measured no better: round-to-nearest stays
        qpass.keep_nearest()
        got = "unmeasured" if after is None else f"{after:.3g}"
        rec.notes["adaround"] = {**ada.notes.get("adaround", {}), "reverted": f"accuracy drop {got} with "
                                 f"learned rounding, {drop:.3g} with round-to-nearest"}   # in the report's record
        return rec, qmodel
    records.extend(pm.records)
    return dataclasses.replace(rec, metric_after=ada.metric_after, notes=ada.notes), out
