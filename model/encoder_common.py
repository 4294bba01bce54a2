"""Pieces the modality encoders (vision, audio, video) share, framework-neutral.

Parameter tables follow ``model/config.py``'s convention: name -> (shape, logical axes),
matrices stored (out, in) as ``torch.nn.Linear`` keeps them (JAX computes ``x @ w.T``); the
PyTorch and JAX encoders (``model/encoders_torch.py``, ``model/encoders_jax.py``) read the same
names. ``init_params`` draws one deterministic numpy parameter set from such a table, so both
frameworks can start from identical values.

Kernel choice: ``resolve_impl(kernels, op, framework)`` reads a ``KernelConfig``; the encoder
ops that ``KernelConfig`` has no field for (``patch_embed``, ``log_mel``) follow its preset
(torch: triton | reference, sdpa -> reference; JAX: pallas | reference | xla) unless the
config carries an attribute of that name.
"""
from __future__ import annotations

import zlib

import numpy as np

Specs = dict  # name -> (shape, logical axes)

_TORCH_ENCODER_OPS = {"triton": "triton", "reference": "reference", "sdpa": "reference"}
_JAX_ENCODER_OPS = {"pallas": "pallas", "reference": "reference", "xla": "xla"}


def resolve_impl(kernels, op: str, framework: str) -> str:
    """The impl name ``op`` uses under ``kernels`` (a ``KernelConfig`` or None = reference)."""
    if kernels is None:
        return "reference"
    chosen = getattr(kernels, op, None)
    if chosen is not None:
        return chosen
    if op in ("patch_embed", "log_mel"):
        table = _TORCH_ENCODER_OPS if framework == "torch" else _JAX_ENCODER_OPS
        if kernels.preset not in table:
            raise ValueError(f"KernelConfig preset {kernels.preset!r} is not a {framework} preset "
                             f"(one of {sorted(table)})")
        return table[kernels.preset]
    return kernels.impl(op)


def check_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def transformer_block_specs(prefix: str, width: int, mlp_dim: int) -> Specs:
    """Pre-norm block: LayerNorm -> MHA (q, k, v, o with biases) -> LayerNorm -> GELU MLP."""
    d, m = width, mlp_dim
    specs = {}
    for ln in ("ln1", "ln2"):
        specs[f"{prefix}{ln}.weight"] = ((d,), ("enc_embed",))
        specs[f"{prefix}{ln}.bias"] = ((d,), ("enc_embed",))
    for proj, axes in (("q_proj", ("enc_heads", "enc_embed")), ("k_proj", ("enc_heads", "enc_embed")),
                       ("v_proj", ("enc_heads", "enc_embed")), ("o_proj", ("enc_embed", "enc_heads"))):
        specs[f"{prefix}attn.{proj}.weight"] = ((d, d), axes)
        specs[f"{prefix}attn.{proj}.bias"] = ((d,), axes[:1])
    specs.update(mlp_specs(prefix + "mlp.", d, m))
    return specs


def mlp_specs(prefix: str, width: int, mlp_dim: int) -> Specs:
    return {
        prefix + "fc1.weight": ((mlp_dim, width), ("enc_mlp", "enc_embed")),
        prefix + "fc1.bias": ((mlp_dim,), ("enc_mlp",)),
        prefix + "fc2.weight": ((width, mlp_dim), ("enc_embed", "enc_mlp")),
        prefix + "fc2.bias": ((width,), ("enc_embed",)),
    }


def projection_specs(prefix: str, width: int, lm_dim: int) -> Specs:
    """Gemma-3-style multimodal projector: RMSNorm (1 + w) then a bias-free linear to lm_dim."""
    return {
        prefix + "proj_norm.weight": ((width,), ("enc_embed",)),
        prefix + "proj.weight": ((lm_dim, width), ("embed", "enc_embed")),
    }


def count(specs: Specs) -> int:
    """Parameter count from shapes alone (nothing allocated)."""
    return sum(int(np.prod(shape, dtype=np.int64)) for shape, _ in specs.values())


def init_params(specs: Specs, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Deterministic numpy parameters: matrices / conv kernels ~ N(0, 1/fan_in), biases 0,
    LayerNorm weights 1, Gemma RMSNorm weights (``proj_norm``) 0, position embeddings
    N(0, 0.02^2). Each array's stream depends on (seed, name) only, so adding a parameter
    does not change the others."""
    out = {}
    for name, (shape, _) in specs.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        leaf = name.rsplit(".", 2)
        if name.endswith("proj_norm.weight"):
            a = np.zeros(shape)
        elif name.endswith(".bias"):
            a = np.zeros(shape)
        elif len(shape) == 1 or "norm" in leaf[-2] or leaf[-2].startswith("ln"):
            a = np.ones(shape)
        elif "embed" in name and not name.endswith("patch_embed.weight"):
            a = rng.standard_normal(shape) * 0.02
        else:
            fan_in = int(np.prod(shape[1:]))
            a = rng.standard_normal(shape) / np.sqrt(fan_in)
        out[name] = a.astype(dtype)
    return out


def check_finite_host(name: str, finite: bool) -> None:
    if not finite:
        raise ValueError(f"{name} contains NaN or inf values; the encoders refuse non-finite input")
