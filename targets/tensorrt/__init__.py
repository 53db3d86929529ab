"""TensorRT backend (Jetson): `build` (prepare, compat checks, engine when the GPU matches), `run` (engine on
the device, CPU fallback)."""
