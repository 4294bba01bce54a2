"""Plain-torch patch_embed reference (float64-capable) and the F.conv2d peer.

    patch_embed_reference(images, weight, bias, pos_embed, *, patch)
    patch_embed_conv(images, weight, bias, pos_embed, *, patch)

The reference materializes the unfolded patches [B, N, P*P*C] in (ph, pw, c) order and
multiplies in the inputs' dtype (float64 in, float64 out: the tests' ground truth). The
conv peer is what a torch user writes: NCHW conv2d with stride = patch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def unfold_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, H, W, C] -> [B, (H/P) * (W/P), P * P * C], feature order (ph, pw, c)."""
    b, h, w, c = images.shape
    x = images.reshape(b, h // patch, patch, w // patch, patch, c)  # b gh ph gw pw c
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unfold_patches_aligned(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``unfold_patches`` as a [B * N, K] matrix whose rows start 16 bytes apart (a view of a
    padded buffer): the cuBLAS peer's operand. K = 588 (p14, RGB) in bf16 is 1176-byte rows,
    which a contiguous matrix would leave unaligned for cuBLAS's vectorized kernels."""
    from .spec import padded_row_length

    a = unfold_patches(images, patch)
    k = a.shape[-1]
    buf = a.new_empty((a.shape[0] * a.shape[1], padded_row_length(k, a.element_size())))
    buf[:, :k] = a.reshape(-1, k)
    return buf[:, :k]


def patch_embed_reference(images, weight, bias, pos_embed, *, patch):
    """unfold(images) @ weight + bias + pos_embed, computed in the inputs' dtype."""
    return unfold_patches(images, patch) @ weight + bias + pos_embed  # [B, N, D]


def conv_weight(weight: torch.Tensor, patch: int, channels: int) -> torch.Tensor:
    """[(ph, pw, c), D] -> conv2d weight [D, C, P, P]."""
    return weight.reshape(patch, patch, channels, -1).permute(3, 2, 0, 1)


def patch_embed_conv(images, weight, bias, pos_embed, *, patch):
    """The torch peer: F.conv2d(stride=patch) on an NCHW view, then + pos_embed."""
    b, h, w, c = images.shape
    y = F.conv2d(images.permute(0, 3, 1, 2), conv_weight(weight, patch, c), bias, stride=patch)
    return y.flatten(2).transpose(1, 2) + pos_embed  # [B, N, D]
