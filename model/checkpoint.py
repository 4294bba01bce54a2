"""Checkpoints: one safetensors file for both frameworks, Hugging Face Gemma names and layouts.

    save_checkpoint(path, params, cfg)                     params: name -> torch / jax / numpy
    params, cfg = load_checkpoint(path, cfg=None, framework="torch" | "jax" | "numpy")
    load_into_torch(model, path)                           validated, then load_state_dict

The file holds exactly the tensors of ``param_specs(cfg)`` (same names, shapes, dtype as
saved) and the ``ModelConfig`` as JSON in the metadata (key "config"). Writes are atomic: a
temp file in the same folder, fsync, then ``os.replace`` — a failed write leaves the old file.
Loads build a fresh dict and check every name and shape before anything is returned or
assigned; a mismatch names the first offending parameter (in ``param_specs`` order).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from benchmarks.results import write_bytes_atomic
from model.config import ModelConfig, param_specs

CONFIG_KEY = "config"


def _to_torch(name: str, x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu").contiguous()
    a = np.asarray(x)  # jax.Array or numpy
    if a.dtype.name == "bfloat16":  # ml_dtypes bf16 has no torch twin in numpy: go via fp32 (exact)
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    if a.dtype.kind != "f":
        raise TypeError(f"parameter {name!r} must be floating point, got dtype {a.dtype}")
    return torch.from_numpy(np.ascontiguousarray(a))


def check_params(shapes: dict[str, tuple], cfg: ModelConfig, *, where: str) -> None:
    """Refuse names or shapes that differ from ``param_specs(cfg)``, naming the first mismatch."""
    specs = param_specs(cfg)
    for name, (shape, _) in specs.items():
        if name not in shapes:
            raise ValueError(f"{where}: missing parameter {name!r} (expected shape {shape}) for "
                             f"config {cfg.name!r}")
        if tuple(shapes[name]) != shape:
            raise ValueError(f"{where}: parameter {name!r} has shape {tuple(shapes[name])}, config "
                             f"{cfg.name!r} expects {shape}")
    extra = [n for n in shapes if n not in specs]
    if extra:
        raise ValueError(f"{where}: unexpected parameter {extra[0]!r} (not in param_specs of config "
                         f"{cfg.name!r}; {len(extra)} unexpected in all)")


def save_checkpoint(path, params, cfg: ModelConfig) -> Path:
    """Write ``params`` (dict name -> tensor/array, or a torch module) atomically to ``path``."""
    if isinstance(params, torch.nn.Module):
        params = params.state_dict()
    check_params({n: tuple(x.shape) for n, x in params.items()}, cfg, where=f"save_checkpoint({path})")
    tensors = {name: _to_torch(name, params[name]) for name in param_specs(cfg)}
    blob = st_save(tensors, metadata={CONFIG_KEY: json.dumps(cfg.to_dict()), "format": "pt"})
    path = Path(path)
    write_bytes_atomic(path, blob)
    return path


def read_tensors(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(name -> torch tensor, metadata) of a safetensors file; clear errors for missing/corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    blob = path.read_bytes()
    try:
        tensors = st_load(blob)
    except SafetensorError as e:
        raise ValueError(f"{path} is not a valid safetensors file (corrupt or truncated): {e}") from None
    meta = _read_metadata(blob, path)
    return tensors, meta


def _read_metadata(blob: bytes, path: Path) -> dict[str, str]:
    n = int.from_bytes(blob[:8], "little")  # safetensors: u64 header size, then the JSON header
    return json.loads(blob[8:8 + n]).get("__metadata__") or {}


def read_config(path) -> ModelConfig:
    _, meta = read_tensors(path)
    return _config_from_meta(meta, path)


def _config_from_meta(meta: dict, path) -> ModelConfig:
    if CONFIG_KEY not in meta:
        raise ValueError(f"{path} has no model config in its metadata (key {CONFIG_KEY!r}); pass cfg=")
    try:
        return ModelConfig(**json.loads(meta[CONFIG_KEY]))
    except (TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: metadata config is not a valid ModelConfig: {e}") from None


def convert(tensors: dict[str, torch.Tensor], framework: str) -> dict:
    """name -> torch tensor to the framework's arrays (bf16 kept as bf16)."""
    if framework == "torch":
        return dict(tensors)
    if framework not in ("jax", "numpy"):
        raise ValueError(f"framework must be 'torch', 'jax' or 'numpy', got {framework!r}")
    import jax.numpy as jnp

    out = {}
    for name, t in tensors.items():
        if t.dtype == torch.bfloat16:
            a = t.float().numpy().astype(jnp.bfloat16)  # exact round trip
        else:
            a = t.numpy()
        out[name] = jnp.asarray(a) if framework == "jax" else a
    return out


def load_checkpoint(path, cfg: ModelConfig | None = None, *, framework: str = "torch"):
    """(params, cfg): a fresh dict of every ``param_specs(cfg)`` tensor, checked before return.

    cfg=None takes the config from the file's metadata."""
    if framework not in ("torch", "jax", "numpy"):
        raise ValueError(f"framework must be 'torch', 'jax' or 'numpy', got {framework!r}")
    tensors, meta = read_tensors(path)
    from model.quantize import check_not_quantized

    check_not_quantized(meta, path)  # an int4 file is refused by name, not by a missing tensor
    cfg = cfg if cfg is not None else _config_from_meta(meta, path)
    check_params({n: tuple(t.shape) for n, t in tensors.items()}, cfg, where=f"load_checkpoint({path})")
    return convert({n: tensors[n] for n in param_specs(cfg)}, framework), cfg  # param_specs order


def load_into_torch(model: torch.nn.Module, path) -> None:
    """Load ``path`` into a ``GeminiModel`` (values cast to each parameter's dtype); nothing is
    assigned unless every name and shape matches ``model.cfg``."""
    params, _ = load_checkpoint(path, model.cfg, framework="torch")
    model.load_state_dict(params, strict=True)
