"""Weight-only MatMulNBits with GGUF Q4_1's grid, on ORT's fast integer-zero-point kernels.

"minmax-float-zp": per block (B rows of K, one column) scale = (max - min) / (2**bits - 1) and a FLOAT
zero point -min / scale, i.e. Q4_1's `m + d*q`: a model that was already 4-bit keeps its grid exactly,
where ORT's RTN (integer zero points) rounds every block a second time (+48 % perplexity on SmolLM2).
ORT dequantizes float zero points on every call (0.11-0.15x FP32 decode), so the graph is then rewritten by
`passes/zero_point_split.py`: integer zero points plus an exact block-sum correction S(X) @ E.

Two forms of that correction (passes/zero_point_split.py, passes/zero_point_fold.py):
- "split": a BlockSum MatMul per input, then per node a Correction MatMul (S(X) @ E, E float16: ORT
  folds the Cast at load) and an Add: ~20 small extra nodes per layer, which cost ~6-8 ms of a ~20 ms
  decode step on SmolLM2-135M (2.07x and 1.73x FP32 decode in two quiet runs, +8.20 % perplexity).
- "fold" (the default): the correction inside the MatMulNBits itself: input Concat(X, block sums of X),
  E appended to the weights as P more rows quantized to the node's bits with integer zero points (its
  rounding is tiny next to a second rounding of W: +8.05 % perplexity vs the split's +8.20 %), then the
  nodes reading one input (q/k/v, gate/up) fused into one wider MatMulNBits + Split
  (passes/matmulnbits_fuse.py): 2 extra nodes per input instead of 3 per node.
The MatMul producing the logits is quantized apart to 8 bits (`head_bits`; llama.cpp keeps a model's
output layer at 8 bits too: SmolLM2's tied embedding is Q8_0 in the .gguf): +1.84 % perplexity instead of
+8.05 % at the same decode speed, 0.218x size instead of 0.198x.
accuracy_level 4 (int8 activations per block) is the faster; level 0 (fp32 compute) keeps the float
zero points' perplexity exactly with the split (+7.88 %). Numbers: bench/results/generation_int4.txt.
"""
from __future__ import annotations

from pathlib import Path

SPLIT_ACCURACY_LEVEL = 4
SPLIT_CORRECTION_DTYPE = "float16"
CORRECTION_FORMS = ("fold", "split")
DEFAULT_CORRECTION_FORM = "fold"
DEFAULT_HEAD_BITS = 8            # lm_head: +1.84 % perplexity on SmolLM2 where 4 bits give +8.05 %, same speed


def quantize_float_zp(src: Path, dst: Path, bits: int, block_size: int, exclude: list[str], split: bool = True,
                      accuracy_level: int = SPLIT_ACCURACY_LEVEL,
                      correction_dtype: str = SPLIT_CORRECTION_DTYPE, form: str = DEFAULT_CORRECTION_FORM,
                      head_bits: int | None | str = "default") -> dict:
    """MatMuls -> MatMulNBits with float zero points (built with ORT's HQQ node writer, its optimisation
    switched off), rewritten to integer zero points + the correction in `form` ("fold" or "split",
    see above) unless `split` is False; the embedding Gather -> GatherBlockQuantized with "rtn" (it
    takes integer zero points only). `correction_dtype` is the split form's E dtype. `head_bits` (default
    DEFAULT_HEAD_BITS; None: like the rest): the MatMul producing the logits quantized apart with that
    many bits (ORT's RTN, integer zero points), as llama.cpp keeps a model's output layer at 8 bits."""
    import onnx
    import onnx_ir as ir
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    head = []
    head_bits = DEFAULT_HEAD_BITS if head_bits == "default" else head_bits
    model = onnx.load(str(src))
    if head_bits:
        head = [n for n in lm_head_nodes(model)[:1] if n not in exclude]
    q = MatMulNBitsQuantizer(
        model, nodes_to_exclude=exclude + head,
        algo_config=HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits, op_types_to_quantize=("MatMul",)),
    )
    q.node_quantizer = _min_max_float_zero(q.algo_config)
    q.process()
    proto = q.model.model
    info = {"scheme": "weight-only", "op": "MatMulNBits", "algorithm": "minmax-float-zp", "bits": bits,
            "block_size": block_size, "symmetric": False, "accuracy_level": 0}
    if split:
        proto, correction = _correct(ir.from_proto(proto), form, accuracy_level, correction_dtype)
        info.update(algorithm=f"minmax-float-zp+{form}", accuracy_level=accuracy_level, zero_points="uint8",
                    correction_form=form, correction=correction)
    if head:
        others = [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.name not in head]
        qh = MatMulNBitsQuantizer(proto, bits=head_bits, block_size=block_size, is_symmetric=False, accuracy_level=4,
                                  nodes_to_exclude=others, op_types_to_quantize=("MatMul",),
                                  quant_axes=(("MatMul", 0),))
        qh.process()
        proto = qh.model.model
        info["head"] = f"{head[0]}: {head_bits}-bit rtn (integer zero points), accuracy_level 4"
    q2 = MatMulNBitsQuantizer(proto, bits=bits, block_size=block_size, is_symmetric=False,
                              nodes_to_exclude=exclude, op_types_to_quantize=("Gather",),
                              quant_axes=(("Gather", 1),))
    q2.process()
    q2.model.save_model_to_file(str(dst), use_external_data_format=False)
    return {**info, "embedding": "GatherBlockQuantized (rtn)", "float_nodes": exclude}


def lm_head_nodes(model) -> list[str]:
    """The MatMul producing the logits (and the embedding Gather): the most sensitive layers. `model`: a
    loaded ModelProto, or a path (read without its external data)."""
    import onnx

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    producer = {o: n for n in proto.graph.node for o in n.output}
    names = []
    node = producer.get("logits")
    while node is not None and node.op_type != "MatMul" and node.input:
        node = producer.get(node.input[0])
    if node is not None:
        names.append(node.name)
    names += [
        n.name
        for n in proto.graph.node
        if n.op_type == "Gather" and n.input and n.input[0].endswith("embed_tokens.weight")
    ]
    return names


def _correct(model, form: str, accuracy_level: int, correction_dtype: str):
    """The float-zero-point graph rewritten to integer zero points + the correction -> (proto, description)."""
    import onnx_ir as ir

    if form == "split":
        from edgecompile.passes.zero_point_split import ZeroPointSplit

        res = ZeroPointSplit(accuracy_level=accuracy_level, correction_dtype=correction_dtype)(model)
        return ir.to_proto(res.model), f"block sums @ E ({correction_dtype}), {res.notes['split']} MatMulNBits"
    if form != "fold":
        raise ValueError(f"correction form must be one of {CORRECTION_FORMS}, got {form!r}")
    from edgecompile.passes.matmulnbits_fuse import MatMulNBitsFuse
    from edgecompile.passes.zero_point_fold import ZeroPointFold

    res = ZeroPointFold(accuracy_level=accuracy_level)(model)
    fused = MatMulNBitsFuse()(res.model)
    n_split = len(res.notes.get("split (K not a multiple of the block)", []))
    return ir.to_proto(fused.model), (
        f"E quantized into the MatMulNBits weights on [X, block sums of X], {res.notes['folded']} MatMulNBits"
        + (f" (+{n_split} split: K not a multiple of the block)" if n_split else "")
        + f"; {fused.notes['nodes']} reading a shared input fused into {fused.notes['fused']}")


def _min_max_float_zero(config):
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantizer

    class MinMaxFloatZero(HQQWeightOnlyQuantizer):
        def quantize_internal(self, tensor, bits=4, channel_wise=True, group_size=64, optimize=True,
                              round_zero=True, axis=1):
            return super().quantize_internal(tensor, bits=bits, channel_wise=channel_wise, group_size=group_size,
                                             optimize=False, round_zero=False, axis=axis)

    return MinMaxFloatZero(config)
