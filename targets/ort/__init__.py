"""ONNX Runtime backend: `build` (compile side) and `run` (what the runtime imports)."""
