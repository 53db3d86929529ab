"""Example models shipped with EdgeCompile (installed as `edgecompile.models`).

Each sub-package defines `source() -> edgecompile.source.TorchModelSource`: the torch module,
its dataset binding (splits) and its task metric, plus an example config (`<name>.toml`).
"""
