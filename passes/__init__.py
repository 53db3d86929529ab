"""Graph passes (onnx_ir model -> PassResult) and module passes (torch module -> ModuleResult),
one per file. The framework (PassContext, PassManager, instruments) is `edgecompile.passes.base`."""
