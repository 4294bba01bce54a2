"""jax.numpy patch_embed reference and the XLA convolution peer.

    patch_embed_reference(images, weight, bias, pos_embed, *, patch)   # reshape + matmul
    patch_embed_xla(images, weight, bias, pos_embed, *, patch)         # lax.conv, NHWC

Same contract as ``spec.py``. fp32 matmuls run at HIGHEST precision; fp16/bf16 inputs are
multiplied in their dtype with fp32 accumulation (preferred_element_type).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def _precision(dtype):
    return lax.Precision.HIGHEST if dtype in (jnp.float32, jnp.float64) else None


def unfold_patches(images, patch: int):
    """[B, H, W, C] -> [B, N, P * P * C], feature order (ph, pw, c)."""
    b, h, w, c = images.shape
    x = images.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def patch_embed_reference(images, weight, bias, pos_embed, *, patch):
    y = jnp.einsum("bnk,kd->bnd", unfold_patches(images, patch), weight,
                   precision=_precision(images.dtype), preferred_element_type=jnp.float32)
    return (y + bias.astype(jnp.float32) + pos_embed.astype(jnp.float32)).astype(images.dtype)


def patch_embed_xla(images, weight, bias, pos_embed, *, patch):
    b, h, w, c = images.shape
    kernel = weight.reshape(patch, patch, c, -1)  # HWIO
    y = lax.conv_general_dilated(images, kernel, (patch, patch), "VALID",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 precision=_precision(images.dtype),
                                 preferred_element_type=jnp.float32)
    y = y.reshape(b, -1, weight.shape[1])
    return (y + bias.astype(jnp.float32) + pos_embed.astype(jnp.float32)).astype(images.dtype)
