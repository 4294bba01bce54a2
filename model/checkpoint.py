"""Checkpoints: one safetensors file for both frameworks, Hugging Face Gemma names and layouts.

    save_checkpoint(path, params, cfg)                     params: name -> torch / jax / numpy
    params, cfg = load_checkpoint(path, cfg=None, framework="torch" | "jax" | "numpy")
    load_into_torch(model, path)                           validated, then load_state_dict

The file holds exactly the tensors of ``param_specs(cfg)`` (same names, shapes, dtype as
saved) and the ``ModelConfig`` as JSON in the metadata (key "config"). Writes are atomic: a
temp file in the same folder, fsync, then ``os.replace`` — a failed write leaves the old file.
Loads build a fresh dict and check every name and shape before anything is returned or
assigned; a mismatch names the first offending parameter (in ``param_specs`` order). A load
given a ``cfg`` also compares it with the file's stored config, field by field (``name``
aside: a label, not an architecture), and refuses the first differing field, since configs
that differ only in scalars (rope_theta, softcaps, local windows, norm_eps...) share every
shape. ``check_file(path)`` reads only the header: a missing path, a directory, a short or
truncated file is an error naming the path, before any reader (e.g. ``safe_open``) sees it.
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


def config_difference(stored: ModelConfig, cfg: ModelConfig) -> str | None:
    """``"field: stored X, given Y"`` for the first ``ModelConfig`` field (``name`` aside) where
    the two differ; None when they agree."""
    import dataclasses

    for f in dataclasses.fields(ModelConfig):
        a, b = getattr(stored, f.name), getattr(cfg, f.name)
        if f.name != "name" and a != b:
            return f"{f.name}: the file's config has {a!r}, the given config {b!r}"
    return None


def check_config(meta: dict, cfg: ModelConfig, path) -> None:
    """Refuse ``cfg`` when the file's stored config (if it has one) differs in any field."""
    if CONFIG_KEY not in meta:
        return
    stored = _config_from_meta(meta, path)
    diff = config_difference(stored, cfg)
    if diff is not None:
        raise ValueError(f"{path} was saved with config {stored.name!r}, which differs from the given "
                         f"config {cfg.name!r} in {diff}. Load it with cfg=None (or "
                         f"read_config(path)) to use the file's own config, or pass the config it was "
                         f"saved with")


def check_file(path) -> dict[str, str]:
    """The metadata of the safetensors file at ``path``, after checking (from its header and
    size only) that it is one: a missing path, a directory, a short file, a header that is not
    JSON or tensors past the end of the file raise errors naming the path and the cause."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a safetensors checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise ValueError(f"{path} is not a valid safetensors file (corrupt or truncated): "
                             f"{size} bytes cannot hold its {max(n, 0)}-byte header")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a valid safetensors file (corrupt header): {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a valid safetensors file: its header is not a JSON object")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise ValueError(f"{path} is not a valid safetensors file (corrupt header: a tensor entry without "
                         f"valid data_offsets: {e!r})") from None
    if 8 + n + end != size:
        raise ValueError(f"{path} is not a valid safetensors file (corrupt or truncated): its header "
                         f"describes {8 + n + end} bytes, the file has {size}")
    return header.get("__metadata__") or {}


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
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a safetensors checkpoint file")
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

    cfg=None takes the config from the file's metadata; a given cfg must equal it (``name``
    aside; see the module docstring)."""
    if framework not in ("torch", "jax", "numpy"):
        raise ValueError(f"framework must be 'torch', 'jax' or 'numpy', got {framework!r}")
    tensors, meta = read_tensors(path)
    from model.quantize import check_not_quantized

    check_not_quantized(meta, path)  # an int4 file is refused by name, not by a missing tensor
    given = cfg is not None
    cfg = cfg if given else _config_from_meta(meta, path)
    check_params({n: tuple(t.shape) for n, t in tensors.items()}, cfg, where=f"load_checkpoint({path})")
    if given:  # equal shapes do not make equal models (rope_theta, softcaps, windows, ...)
        check_config(meta, cfg, path)
    return convert({n: tensors[n] for n in param_specs(cfg)}, framework), cfg  # param_specs order


def load_into_torch(model: torch.nn.Module, path) -> None:
    """Load ``path`` into a ``GeminiModel`` (values cast to each parameter's dtype); nothing is
    assigned unless every name and shape matches ``model.cfg``."""
    params, _ = load_checkpoint(path, model.cfg, framework="torch")
    model.load_state_dict(params, strict=True)
