"""Activation ranges for static quantization, computed by our own calibrator.

Why our own: ONNX Runtime's `quantize_static` routes every method through calibrators whose
histogram handling has changed between releases (and in some paths silently used MinMax for
Entropy). Here each method is a few lines of numpy on the same statistics, so it is easy to see
(and to test) that they differ:

* ``minmax``     -- the observed [min, max];
* ``percentile`` -- clip |x| at the given percentile of its histogram;
* ``entropy``    -- clip |x| at the threshold whose quantized histogram has the smallest KL
                    divergence from the original (the TensorRT-style calibration);
* ``search``     -- per tensor, the candidate (min-max, percentiles, entropy) with the smallest
                    expected quantization MSE (edgecompile.compiler.range_search);
* ``sample-mean`` -- the mean over samples of each sample's own min and max (NNCF's default estimator).

Statistics come from one or two passes of ONNX Runtime over the calibration feeds with every
tensor to calibrate exposed as a graph output: pass 1 gathers min/max, pass 2 (histogram methods
only) a 2048-bin histogram of |x| on [0, max|x|]. The result is a plain ``{tensor: (lo, hi)}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from edgecompile.compiler.thresholds import entropy_threshold, percentile_threshold
from edgecompile.errors import DataError

METHODS = ("minmax", "entropy", "percentile", "search", "sample-mean")
HIST_BINS = 2048
FLOAT_TYPES = (1, 10)            # onnx.TensorProto.FLOAT, FLOAT16


# -- calibration feeds --------------------------------------------------------------------------

@dataclass
class InputSpec:
    name: str
    shape: tuple              # int, or None for a symbolic/unknown dimension
    dtype: np.dtype


def graph_input_specs(proto) -> list[InputSpec]:
    """The real (non-initializer) inputs of an ONNX ModelProto."""
    from edgecompile.compiler.inspection import graph_inputs

    from edgecompile.runtime.specs import np_dtype

    return [InputSpec(name, tuple(d if isinstance(d, int) else None for d in dims), np_dtype(dtype))
            for name, dims, dtype in graph_inputs(proto)]


def collect_feeds(source: Iterable[Mapping[str, np.ndarray]], specs: Sequence[InputSpec], limit: int,
                  what: str, whole: frozenset = frozenset()) -> tuple[list[dict[str, np.ndarray]], int]:
    """Validate feed dicts (first axis = samples; the inputs in `whole` are passed unsliced with every
    feed, and a feed without batched inputs is one sample) and keep at most `limit` samples.

    Raises DataError for a missing/unknown input, a wrong shape or dtype, non-finite values, or
    zero samples in total. Returns (batches, sample count).
    """
    if limit < 1:
        raise DataError(f"calib_samples must be at least 1, got {limit}", hint="set --calib-samples N with N >= 1")
    names = [s.name for s in specs]
    batches: list[dict[str, np.ndarray]] = []
    total = 0
    try:
        iterator = iter(source)
    except TypeError:
        raise DataError(f"{what}: expected an iterable of {{input name: array}} dicts, got {type(source).__name__}",
                        hint="pass e.g. calibration_data=[{'input': x}] or a generator of such dicts") from None
    for i, feeds in enumerate(iterator):
        if not isinstance(feeds, Mapping):
            raise DataError(f"{what}: item {i} is a {type(feeds).__name__}, not a dict of input arrays",
                            hint=f"yield dicts keyed by the model inputs: {', '.join(names)}")
        missing = [n for n in names if n not in feeds]
        extra = [k for k in feeds if k not in names]
        if missing or extra:
            raise DataError(f"{what}: item {i} has inputs {sorted(feeds)}, the model expects {names}",
                            hint="name the arrays after the model inputs")
        batch = {}
        n = None
        for spec in specs:
            arr = np.asarray(feeds[spec.name])
            if arr.dtype != spec.dtype:
                if arr.dtype.kind == spec.dtype.kind == "f":
                    arr = arr.astype(spec.dtype)
                else:
                    raise DataError(
                        f"{what}: item {i}: {spec.name!r} has dtype {arr.dtype}, the model expects {spec.dtype}",
                        hint=f"convert with arr.astype('{spec.dtype}')",
                    )
            skip = 0 if spec.name in whole else 1
            if arr.ndim != len(spec.shape) or any(
                d is not None and d != a for d, a in zip(spec.shape[skip:], arr.shape[skip:])
            ):
                want = ["N" if d is None else d for d in spec.shape]
                raise DataError(
                    f"{what}: item {i}: {spec.name!r} has shape {list(arr.shape)}, the model expects {want}",
                    hint="the first axis is the sample axis; the others must match the model input",
                )
            if arr.dtype.kind == "f" and not np.isfinite(arr.astype(np.float32)).all():
                raise DataError(f"{what}: item {i}: {spec.name!r} contains NaN or infinite values",
                                hint="clean or drop the non-finite samples before calibrating")
            batch[spec.name] = arr
            if spec.name in whole:
                continue
            if n is not None and arr.shape[0] != n:
                raise DataError(f"{what}: item {i}: inputs have different sample counts",
                                hint="every batched input array needs the same first dimension")
            n = arr.shape[0]
        if n is None:                     # nothing batched: the feed is one sample in the model's shapes
            batches.append(batch)
            total += 1
            if total >= limit:
                break
            continue
        if not n:
            continue
        take = min(n, limit - total)
        batches.append({k: v if k in whole else v[:take] for k, v in batch.items()} if take < n else batch)
        total += take
        if total >= limit:
            break
    if total == 0:
        raise DataError(f"{what}: contains zero samples", hint="provide at least one calibration sample")
    return batches, total


def rebatch(batches: list[dict[str, np.ndarray]], size: int,
            whole: frozenset = frozenset()) -> Iterator[dict[str, np.ndarray]]:
    """Re-split feeds into batches of `size` samples (the caller's batches may be 1 or 10 000); the
    inputs in `whole` are passed as they are with every batch; feeds with nothing batched go one by one."""
    names = [k for k in batches[0] if k not in whole]
    if not names:
        yield from batches
        return
    joined = {k: np.concatenate([b[k] for b in batches]) for k in names}
    fixed = {k: batches[0][k] for k in batches[0] if k in whole}
    n = len(joined[names[0]])
    for i in range(0, n, size):
        yield {**fixed, **{k: v[i:i + size] for k, v in joined.items()}}


def fixed_batch(proto, whole: frozenset = frozenset()) -> int | None:
    """The static first dimension of the model's batched inputs (an export with batch fixed at N), else None."""
    dims = {sp.shape[0] for sp in graph_input_specs(proto) if sp.name not in whole and sp.shape}
    return next((d for d in dims if isinstance(d, int)), None)


def model_batches(proto, feeds, size: int, whole: frozenset = frozenset()) -> Iterator[dict[str, np.ndarray]]:
    """`rebatch` for an ONNX Runtime session of `proto`: batches of `size` samples, or of exactly the
    model's fixed batch N when its export fixed one (the last batch filled up with the first samples
    of that batch again, so every sample is seen and none is invented)."""
    feeds = list(feeds)
    n_fixed = fixed_batch(proto, whole)
    if n_fixed is None:
        yield from rebatch(feeds, size, whole)
        return
    for batch in rebatch(feeds, n_fixed, whole):
        n = _samples(batch, whole)
        if n < n_fixed:
            batch = {k: v if k in whole else np.take(v, np.arange(n_fixed) % n, axis=0) for k, v in batch.items()}
        yield batch


# -- statistics ----------------------------------------------------------------------------------

def tensors_to_calibrate(proto, op_types: Iterable[str]) -> list[str]:
    """Float, non-constant inputs/outputs of the nodes whose op type will be quantized."""
    op_types = set(op_types)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output)}
    inits = {i.name for i in proto.graph.initializer}
    consts = {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    seen: dict[str, None] = {}
    for node in proto.graph.node:
        if node.op_type not in op_types:
            continue
        for name in list(node.input) + list(node.output):
            if name and name not in inits and name not in consts and types.get(name) in FLOAT_TYPES:
                seen.setdefault(name, None)
    return list(seen)


def unranged_nodes(proto, ranges: Mapping, op_types) -> list[str]:
    """Nodes of `op_types` with a float activation input or output that has no range in `ranges`
    (it took a non-finite value in calibration): the QDQ quantizer needs a range for every one, so
    these nodes stay float."""
    need = set(tensors_to_calibrate(proto, op_types))
    return [n.name for n in proto.graph.node if n.op_type in op_types
            and any(t in need and t not in ranges for t in (*n.input, *n.output))]


def _augmented(proto, names: Sequence[str]) -> bytes:
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return model.SerializeToString()


def sample_extremes(arr: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's own minimum and maximum: `arr`'s first axis holds `n` samples, else it is one sample."""
    per = arr.reshape(n, -1) if arr.ndim and arr.shape[0] == n else arr.reshape(1, -1)
    return per.min(axis=1), per.max(axis=1)


@dataclass
class TensorStats:
    lo: float
    hi: float
    hist: np.ndarray | None = None       # counts of |x| on [0, absmax] in HIST_BINS bins
    lo_sum: float = 0.0                  # sums of each sample's own min and max (the per-sample mean extremes)
    hi_sum: float = 0.0
    samples: int = 0

    def add_samples(self, arr: np.ndarray, n: int) -> None:
        """Add `arr`, whose first axis holds `n` samples (else it is one sample), to the range and to the
        per-sample extremes."""
        self.add_extremes(*sample_extremes(arr, n))

    def add_extremes(self, mins: np.ndarray, maxs: np.ndarray) -> None:
        """Add samples given by their own minima and maxima (`sample_extremes`)."""
        self.lo, self.hi = min(self.lo, float(mins.min())), max(self.hi, float(maxs.max()))
        self.lo_sum += float(mins.sum())
        self.hi_sum += float(maxs.sum())
        self.samples += len(mins)

    @property
    def sample_mean_range(self) -> tuple[float, float]:
        """(mean over samples of each one's min, same of max), 0 included; the min-max range without samples."""
        if not self.samples:
            return min(self.lo, 0.0), max(self.hi, 0.0)
        return min(self.lo_sum / self.samples, 0.0), max(self.hi_sum / self.samples, 0.0)

    @property
    def absmax(self) -> float:
        return max(abs(self.lo), abs(self.hi))


def _samples(batch: dict, whole: frozenset) -> int:
    sizes = [len(v) for k, v in batch.items() if k not in whole]
    return sizes[0] if sizes else 1


# |x| at or above this is a fill value (finfo(float32).min/max masks), never a quantizable signal
SENTINEL = 1e30


def collect_stats(proto, names: Sequence[str], batches: list[dict[str, np.ndarray]], *, histograms: bool,
                  batch_size: int = 32, threads: int | None = None, progress=None,
                  whole: frozenset = frozenset(), nonfinite: set | None = None) -> dict[str, TensorStats]:
    """Range (and |x| histogram) statistics per tensor. A tensor that takes an infinite or NaN value
    on the calibration data (e.g. an attention-mask bias filled with -inf), or a sentinel of float32's
    own magnitude (the same bias filled with finfo(float32).min, as optimum's BERT exports do), has
    no INT8 range: a step of 1e36 would flatten every real value to zero. It is left out of the
    result, so it stays float, and its name goes into `nonfinite` when given."""
    from edgecompile.targets.ort.run import create_session

    sess = create_session(_augmented(proto, names), threads=threads, level="disable")
    out_names = list(names)
    stats: dict[str, TensorStats] = {}

    batch_size = fixed_batch(proto, whole) or batch_size      # an export with a fixed batch gets exactly that
    n = sum(_samples(b, whole) for b in batches)
    total = -(-n // batch_size)

    def runs(label: str):
        it = model_batches(proto, batches, batch_size, whole)
        if progress is not None:
            it = progress.iterate(it, total, label)
        for feeds in it:
            yield _samples(feeds, whole), dict(zip(out_names, sess.run(out_names, feeds)))

    bad: set[str] = set()
    for n_feed, outs in runs("calibration (ranges)"):     # pass 1: range, and each sample's extremes
        for name, arr in outs.items():
            if arr.size == 0 or name in bad:
                continue
            mins, maxs = sample_extremes(arr, n_feed)       # one scan: the range and each sample's extremes
            lo, hi = float(mins.min()), float(maxs.max())
            if not (abs(lo) < SENTINEL and abs(hi) < SENTINEL):     # also catches inf and NaN
                bad.add(name)
                stats.pop(name, None)
                continue
            stats.setdefault(name, TensorStats(lo, hi)).add_extremes(mins, maxs)
    if nonfinite is not None:
        nonfinite.update(bad)
    if histograms:                                        # pass 2: |x| histogram on the final range
        for s in stats.values():
            s.hist = np.zeros(HIST_BINS, np.int64)
        for _, outs in runs("calibration (histograms)"):
            for name, arr in outs.items():
                s = stats.get(name)
                if s is None or s.absmax == 0:
                    continue
                h, _ = np.histogram(np.abs(arr.astype(np.float32, copy=False)), bins=HIST_BINS, range=(0.0, s.absmax))
                s.hist += h
    return stats


# -- range selection -----------------------------------------------------------------------------

def compute_ranges(stats: Mapping[str, TensorStats], method: str, *, percentile: float = 99.99,
                   unsigned_activations: bool = True, symmetric: bool = False,
                   keep: tuple[str, ...] = ()) -> dict[str, tuple[float, float]]:
    """{tensor: (lo, hi)} for `method`; clipping never widens the observed range."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}")
    if method == "search":               # per-tensor choice minimising quantization MSE
        from edgecompile.compiler.range_search import search_ranges

        return search_ranges(stats, unsigned_activations=unsigned_activations, symmetric=symmetric, keep=keep)[0]
    if method == "sample-mean":
        from edgecompile.compiler.range_search import sample_mean_ranges

        return sample_mean_ranges(stats, keep)
    ranges = {}
    for name, s in stats.items():
        lo, hi = min(s.lo, 0.0), max(s.hi, 0.0)
        if method != "minmax" and s.hist is not None and s.absmax > 0:
            if method == "percentile":
                t = percentile_threshold(s.hist, s.absmax, percentile)
            else:
                # non-negative data on an asymmetric uint8 scale uses all 256 levels; otherwise 128 per sign
                levels = 256 if (s.lo >= 0 and unsigned_activations and not symmetric) else 128
                t = entropy_threshold(s.hist, s.absmax, levels)
            lo, hi = max(lo, -t), min(hi, t)
        ranges[name] = (lo, hi)
    return ranges
