"""Module passes: prune (+ fine-tune), distill (teacher -> student) and QAT (fake-quant), on the torch
module before export. Each subclasses `edgecompile.passes.base.ModulePass`:
`__call__(module, ctx) -> ModuleResult`."""
