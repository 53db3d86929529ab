"""OpenVINO backend: `build` (ONNX -> IR, compiled once to check), `run` (IR compiled on the device)."""
