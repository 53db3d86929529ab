"""Weight-only MatMulNBits with GGUF Q4_1's grid, on ORT's fast integer-zero-point kernels.

"minmax-float-zp": per block (B rows of K, one column) scale = (max - min) / (2**bits - 1) and a FLOAT
zero point -min / scale, i.e. Q4_1's `m + d*q`: a model that was already 4-bit keeps its grid exactly,
where ORT's RTN (integer zero points) rounds every block a second time (+48 % perplexity on SmolLM2).
ORT dequantizes float zero points on every call (0.11-0.15x FP32 decode), so the graph is then rewritten by
`passes/zero_point_split.py`: integer zero points plus an exact block-sum correction S(X) @ E.

Measured on SmolLM2-135M (bench/results/generation_int4.txt): accuracy_level 0 (fp32 compute) keeps the
float-zero-point perplexity exactly (+7.88 % vs FP32) at 1.54x FP32 decode; 4 (int8 activations per
block) +8.20 % at 2.04x (two runs on a loaded host: 2.12x and 2.65x in the other), the faster, so it is
the default. E is stored in float16 (ORT folds the Cast at
load): 0.195x the FP32 size, where the float32 E of the accuracy_level 0 row gives 0.207x.
"""
from __future__ import annotations

from pathlib import Path

SPLIT_ACCURACY_LEVEL = 4
SPLIT_CORRECTION_DTYPE = "float16"


def quantize_float_zp(src: Path, dst: Path, bits: int, block_size: int, exclude: list[str], split: bool = True,
                      accuracy_level: int = SPLIT_ACCURACY_LEVEL,
                      correction_dtype: str = SPLIT_CORRECTION_DTYPE) -> dict:
    """MatMuls -> MatMulNBits with float zero points (built with ORT's HQQ node writer, its optimisation
    switched off), split into integer zero points + correction unless `split` is False; the embedding
    Gather -> GatherBlockQuantized with "rtn" (it takes integer zero points only)."""
    import onnx
    import onnx_ir as ir
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    q = MatMulNBitsQuantizer(
        onnx.load(str(src)), nodes_to_exclude=exclude,
        algo_config=HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits, op_types_to_quantize=("MatMul",)),
    )
    q.node_quantizer = _min_max_float_zero(q.algo_config)
    q.process()
    proto = q.model.model
    info = {"scheme": "weight-only", "op": "MatMulNBits", "algorithm": "minmax-float-zp", "bits": bits,
            "block_size": block_size, "symmetric": False, "accuracy_level": 0}
    if split:
        from edgecompile.passes.zero_point_split import ZeroPointSplit

        res = ZeroPointSplit(accuracy_level=accuracy_level, correction_dtype=correction_dtype)(ir.from_proto(proto))
        proto = ir.to_proto(res.model)
        info.update(algorithm="minmax-float-zp+split", accuracy_level=accuracy_level, zero_points="uint8",
                    correction=f"block sums @ E ({correction_dtype}), {res.notes['split']} MatMulNBits")
    q2 = MatMulNBitsQuantizer(proto, bits=bits, block_size=block_size, is_symmetric=False,
                              nodes_to_exclude=exclude, op_types_to_quantize=("Gather",),
                              quant_axes=(("Gather", 1),))
    q2.process()
    q2.model.save_model_to_file(str(dst), use_external_data_format=False)
    return {**info, "embedding": "GatherBlockQuantized (rtn)", "float_nodes": exclude}


def _min_max_float_zero(config):
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantizer

    class MinMaxFloatZero(HQQWeightOnlyQuantizer):
        def quantize_internal(self, tensor, bits=4, channel_wise=True, group_size=64, optimize=True,
                              round_zero=True, axis=1):
            return super().quantize_internal(tensor, bits=bits, channel_wise=channel_wise, group_size=group_size,
                                             optimize=False, round_zero=False, axis=axis)

    return MinMaxFloatZero(config)
