"""PEFT LoRA adapters merged into a Hugging Face model's weights before export (`edgecompile build DIR
--lora ADAPTER_DIR`).

An adapter directory holds `adapter_config.json` (peft_type LORA, r, lora_alpha, target_modules, ...) and
`adapter_model.safetensors` (or `adapter_model.bin`, loaded only with `weights_only=True`). For every targeted
Linear the merge is W += B @ A * scale with scale = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora),
transposed for fan_in_fan_out layers; tensors saved without lora_A/lora_B (modules_to_save, trained biases)
replace the base tensor of the same name. Only torch and safetensors are needed (not the peft package).
The adapter's sha256 (config + weights) is part of the source fingerprint and recorded in the manifest.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from edgecompile.errors import ConfigError, ModelLoadError

_PREFIX = "base_model.model."
_UNSUPPORTED = {"use_dora": "DoRA adapters", "rank_pattern": "per-module ranks (rank_pattern)",
                "alpha_pattern": "per-module alphas (alpha_pattern)"}


@dataclass
class Adapter:
    path: Path
    weights: Path
    config: dict
    sha256: str

    @property
    def scale(self) -> float:
        r = int(self.config["r"])
        alpha = float(self.config.get("lora_alpha", r))
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r

    def record(self) -> dict:
        """What the manifest and report say about the adapter."""
        targets = self.config.get("target_modules")
        return {"path": str(self.path), "sha256": self.sha256, "type": "lora", "r": int(self.config["r"]),
                "lora_alpha": self.config.get("lora_alpha"), "scale": self.scale,
                "target_modules": sorted(targets) if isinstance(targets, (list, tuple)) else targets,
                "base_model": self.config.get("base_model_name_or_path")}


def read_adapter(directory: str | Path) -> Adapter:
    """Check an adapter directory and hash it (no tensors are loaded yet)."""
    path = Path(directory)
    cfg_file = path / "adapter_config.json"
    if not path.is_dir() or not cfg_file.is_file():
        raise ModelLoadError(f"--lora {directory}: no adapter_config.json",
                             hint="pass a PEFT adapter directory (model.save_pretrained of a PeftModel)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{cfg_file}: unreadable ({exc.__class__.__name__})",
                             hint="adapter_config.json must be JSON written by peft") from None
    if not isinstance(cfg, dict) or str(cfg.get("peft_type", "")).upper() != "LORA":
        raise ConfigError(f"--lora {directory}: peft_type {cfg.get('peft_type') if isinstance(cfg, dict) else None!r}"
                          f" is not LORA", hint="only LoRA adapters can be merged")
    if not isinstance(cfg.get("r"), int) or cfg["r"] < 1:
        raise ModelLoadError(f"{cfg_file}: r must be a positive integer, got {cfg.get('r')!r}",
                             hint="adapter_config.json is damaged")
    for key, what in _UNSUPPORTED.items():
        if cfg.get(key):
            raise ConfigError(f"--lora {directory}: {what} are not supported", hint="merge it with peft's "
                              "merge_and_unload() and build the merged model directory")
    weights = next((path / n for n in ("adapter_model.safetensors", "adapter_model.bin") if (path / n).is_file()),
                   None)
    if weights is None:
        raise ModelLoadError(f"--lora {directory}: no adapter_model.safetensors or adapter_model.bin",
                             hint="the adapter directory is incomplete: save it again with save_pretrained")
    h = hashlib.sha256()
    for f in (cfg_file, weights):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return Adapter(path, weights, cfg, h.hexdigest())


def _load_tensors(adapter: Adapter) -> dict:
    try:
        if adapter.weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(adapter.weights))
        import torch

        return torch.load(str(adapter.weights), map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise ModelLoadError(f"{adapter.weights}: unreadable adapter weights ({msg})",
                             hint="the adapter file is damaged or not a tensor file") from None


def _base_name(name: str, params: dict, prefix: str) -> str | None:
    """The base model's parameter for an adapter tensor name (with or without the task head's prefix)."""
    name = name[len(_PREFIX):] if name.startswith(_PREFIX) else name
    name = name.replace(".default.", ".").replace(".modules_to_save.", ".").replace(".original_module.", ".")
    if name in params:
        return name
    if prefix and name.startswith(prefix + "."):         # adapter of XForTask, base loaded as the bare model
        return name[len(prefix) + 1:] if name[len(prefix) + 1:] in params else None
    return f"{prefix}.{name}" if prefix and f"{prefix}.{name}" in params else None


def merge_lora(model, adapter: Adapter) -> dict:
    """Merge `adapter` into `model`'s weights in place; returns counts for the record."""
    import torch

    tensors = _load_tensors(adapter)
    params = dict(model.state_dict())
    prefix = getattr(model, "base_model_prefix", "") or ""
    pairs: dict[str, dict] = {}
    replaced = []
    for name, value in tensors.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in name:
                module = name.split(marker)[0]
                pairs.setdefault(module, {})[part] = value
                break
        else:
            if "lora_embedding" in name or "lora_magnitude" in name:
                raise ConfigError(f"--lora {adapter.path}: {name.split('.')[-2]} adapters are not supported",
                                  hint="only LoRA on Linear layers is merged")
            base = _base_name(name, params, prefix)
            if base is None:
                raise ModelLoadError(f"--lora {adapter.path}: tensor {name} has no counterpart in the base model",
                                     hint="the adapter was trained on another base model")
            replaced.append((base, value))
    if not pairs:
        raise ModelLoadError(f"--lora {adapter.path}: the adapter holds no lora_A/lora_B weights",
                             hint="the adapter file is empty or not a LoRA adapter")
    with torch.no_grad():
        for module, ab in sorted(pairs.items()):
            if set(ab) != {"lora_A", "lora_B"}:
                raise ModelLoadError(f"--lora {adapter.path}: {module} has only {', '.join(ab)}",
                                     hint="the adapter file is incomplete")
            base = _base_name(module + ".weight", params, prefix)
            if base is None:
                raise ModelLoadError(f"--lora {adapter.path}: targets {module}, which the base model does not have",
                                     hint="the adapter was trained on another base model")
            weight = params[base]
            delta = (ab["lora_B"].to(torch.float32) @ ab["lora_A"].to(torch.float32)) * adapter.scale
            if adapter.config.get("fan_in_fan_out"):
                delta = delta.T
            if tuple(delta.shape) != tuple(weight.shape):
                raise ModelLoadError(f"--lora {adapter.path}: {module} update is {tuple(delta.shape)}, the base weight "
                                     f"{base} is {tuple(weight.shape)}",
                                     hint="the adapter was trained on a base model of other dimensions")
            weight.add_(delta.to(weight.dtype))
        for base, value in replaced:
            if tuple(value.shape) != tuple(params[base].shape):
                raise ModelLoadError(f"--lora {adapter.path}: {base} is {tuple(value.shape)} in the adapter, "
                                     f"{tuple(params[base].shape)} in the base model",
                                     hint="the adapter was trained on a base model of other dimensions")
            params[base].copy_(value.to(params[base].dtype))
    return {"merged_modules": len(pairs), "replaced_tensors": len(replaced)}
