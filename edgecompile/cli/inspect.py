"""`edgecompile inspect MODEL|DIR`: inputs, outputs, op histogram, params, FLOPs, opset (+ manifest)."""
from __future__ import annotations

import click

from edgecompile.cli.common import emit_json, json_option


def _shape(t: dict) -> str:
    return f"{t['name']}: {t['dtype']} {t['shape']}"


def render(info: dict) -> str:
    lines = []
    if info["kind"] == "bundle":
        m = info["manifest"]
        lines += [f"bundle {info['path']}",
                  f"  bundle_id  {m['bundle_id']}",
                  f"  schema     {m['schema_version']} ({m['created_by']})",
                  f"  model      {m['model']}  -> target {m['target']}, backend {m['backend']}, precision "
                  f"{m['precision']}" + ("" if m['precision'] == m['requested_precision']
                                         else f" (requested {m['requested_precision']})"),
                  f"  passes     {', '.join(m['passes']) or 'none'}",
                  "  artifacts  " + ", ".join(f"{k} ({v['role']}, {v['size']} B)" for k, v in m["artifacts"].items()),
                  "  verified   " + ("yes (every sha256 matches)" if m["verified"] else f"NO: {m['verify_error']}")]
        model = info["model"]
        if model is None:
            return "\n".join(lines)
        lines.append(f"model {model['file']}")
    else:
        model = info
        lines.append(f"model {info['path']}")
    lines += ["  opset      " + ", ".join(f"{d} {v}" for d, v in model["opset"].items())
              + f" (IR {model['ir_version']}, producer {model['producer'] or 'unknown'})"]
    lines += [f"  input      {_shape(t)}" for t in model["inputs"]]
    lines += [f"  output     {_shape(t)}" for t in model["outputs"]]
    lines += [f"  params     {model['params']:,} ({model['param_bytes'] / 1024:.1f} KiB raw initializer data)",
              f"  FLOPs      {model['flops']:,} ({model['macs']:,} MACs; {model['flops_note']})",
              f"  nodes      {model['nodes']}: " + ", ".join(f"{op} {n}" for op, n in model["ops"].items())]
    return "\n".join(lines)


@click.command()
@click.argument("path", type=click.Path())
@json_option
def inspect(path, json_mode):
    """Describe an ONNX file or a bundle directory (a bundle also gets its manifest summary)."""
    from edgecompile.compiler.inspection import inspect_path

    info = inspect_path(path)
    if json_mode:
        emit_json(info)
    else:
        click.echo(render(info))
