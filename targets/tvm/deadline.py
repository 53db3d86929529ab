"""--tune-timeout inside MetaSchedule's loop: past the deadline nothing more is searched or built.

`state` is the tuning session's progress (tune._Progress): `expired()`, `end_pending()`, `stopped`, `done`,
`timeout_min`. The task scheduler visits every kernel once per round before it joins their results, and
generating one kernel's candidates (the evolutionary search) takes seconds to tens of seconds: a deadline
checked only when results come back (the measure callback) or when candidates are built let a run with 10 s
left spend 4 minutes searching 25 kernels whose candidates were then thrown away. The search strategy below
returns no candidates past the deadline, which ends that kernel at once.
"""
from __future__ import annotations

from edgecompile.errors import first_line

STOPPED_BY_TIMEOUT = "not built: --tune-timeout reached"


def timeout_reached(minutes: float, trials: int) -> str:
    """What a tuning session that reached --tune-timeout says ("4.6 min", not "4.589499999999999 min")."""
    return f"--tune-timeout {round(float(minutes), 1):g} min reached after {trials} trials"


def stopped_by_failure(state, exc) -> str:
    """Why a session whose MetaSchedule call raised `exc` stopped. Past the deadline, the search ends every
    kernel it is asked about; in its first round over the kernels TVM's gradient task scheduler can then pick one
    it had ended and fail a check ("!task->is_terminated", seen at the end of a 20-minute run): that session
    stopped at the timeout, not on an error."""
    if state.expired():
        return timeout_reached(state.timeout_min, state.done)
    return f"MetaSchedule failed after {state.done} trials: {first_line(exc)}"


def deadline_search(ms, inner, state):
    """`inner` (a SearchStrategy), except that past the deadline it generates no candidates (the kernel ends)."""
    from tvm.ir.utils import derived_object

    @derived_object
    class DeadlineSearch(ms.search_strategy.PySearchStrategy):
        def __init__(self, strategy):
            self.inner = strategy

        def _initialize_with_tune_context(self, context) -> None:
            self.inner._initialize_with_tune_context(context)

        def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None):
            self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

        def post_tuning(self) -> None:
            self.inner.post_tuning()

        def generate_measure_candidates(self):
            if state.expired():
                if state.stopped is None:
                    state.stopped = timeout_reached(state.timeout_min, state.done)
                return None
            return self.inner.generate_measure_candidates()

        def notify_runner_results(self, measure_candidates, results) -> None:
            self.inner.notify_runner_results(measure_candidates, results)

        def clone(self):
            return DeadlineSearch(self.inner.clone())

    return DeadlineSearch(inner)


def deadline_builder(ms, inner, state):
    """The builder, except that past the deadline it builds nothing (the batch comes back as errors)."""
    from tvm.ir.utils import derived_object

    @derived_object
    class DeadlineBuilder(ms.builder.PyBuilder):
        def build(self, build_inputs):
            if state.expired():
                state.end_pending()       # only ever the kernel these candidates are for: all others ended
                return [ms.builder.BuilderResult(None, STOPPED_BY_TIMEOUT) for _ in build_inputs]
            state.before_build(len(build_inputs))
            return inner.build(build_inputs)

    return DeadlineBuilder()


def cost_model(ms, cores: int):
    """MetaSchedule's XGBoost cost model, except that it does not learn from candidates the deadline skipped."""
    from tvm.ir.utils import derived_object

    @derived_object
    class XGBModel(ms.cost_model.XGBModel._cls):
        def update(self, context, candidates, results):
            keep = [i for i, r in enumerate(results) if r.error_msg != STOPPED_BY_TIMEOUT]
            super().update(context, [candidates[i] for i in keep], [results[i] for i in keep])

    return XGBModel(num_tuning_cores=cores, adaptive_training=True)
