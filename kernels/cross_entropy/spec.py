"""Framework-neutral argument checks for linear_cross_entropy.

Semantics (every impl): for rows i of x [..., W] (leading dims flattened to N rows),
  z_i     = softcap(x_i @ weight.T)            weight [V, W] (the tied embedding), z_i [V]
  nll_i   = logsumexp(z_i) - z_i[targets_i]
  loss    = sum_i mask_i * nll_i / normalizer   (a scalar, fp32)
mask (bool, targets' shape) defaults to all rows; normalizer defaults to the number of
masked rows (at least 1).
normalizer (both frameworks alike): a finite Python number > 0, or a 0-d real (int or float)
array / tensor of x's framework on x's device. An array's value is read on the host (a
device->host copy) and must be finite and > 0 (ValueError naming ``normalizer``), except where
it cannot be read: a JAX tracer (under ``jax.jit``) or a CUDA tensor while a CUDA graph is being
captured -- there it is not checked (a zero gives inf, a negative one a negative loss).
Zero rows (x [0, W] or [B, 0, W]): loss 0 and zero gradients, without a kernel launch.
Masked-out rows may hold any target (e.g. -100); masked-in targets must lie in [0, V).
softcap(z) = cap * tanh(z / cap) (Gemma 2's final-logit cap).
This is ``model.losses.torch_masked_cross_entropy(x @ weight.T, ...)`` without the [N, V]
logits ever existing in full: nano1 at 8k tokens has 2.1e9 of them (8.4 GB in fp32).
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

from .._checks import check_device, check_dtype, check_float, check_integer, check_same_dtype, shape_of


def check_linear_cross_entropy_args(x: Any, weight: Any, targets: Any, mask: Any, *, softcap: Any,
                                    normalizer: Any, dtypes: Sequence[Any], device_of=None) -> tuple[int, int, int]:
    """Validate; return (rows N, width W, vocab V)."""
    xs, ws, ts = shape_of("x", x), shape_of("weight", weight), shape_of("targets", targets)
    check_dtype("x", x, dtypes)
    if len(xs) < 2:
        raise ValueError(f"x must be [..., width] with at least 2 dims, got shape {xs}")
    if len(ws) != 2 or ws[1] != xs[-1] or ws[0] < 1:
        raise ValueError(f"weight must be [vocab, width={xs[-1]}], got shape {ws}")
    check_same_dtype("weight", weight, "x", x)
    check_device("weight", weight, "x", x, device_of)
    if ts != xs[:-1]:
        raise ValueError(f"targets must have x's leading shape {xs[:-1]}, got {ts}")
    check_integer("targets", targets)
    check_device("targets", targets, "x", x, device_of)
    if mask is not None:
        if shape_of("mask", mask) != ts:
            raise ValueError(f"mask must have targets' shape {ts}, got {shape_of('mask', mask)}")
        if "bool" not in str(mask.dtype):
            raise TypeError(f"mask must be a bool array, got {mask.dtype}")
        check_device("mask", mask, "x", x, device_of)
    if softcap is not None:
        check_float("softcap", softcap, positive=True)
    check_normalizer(normalizer, x, device_of)
    n = 1
    for s in ts:
        n *= s
    return n, xs[-1], ws[0]


def check_normalizer(normalizer: Any, x: Any, device_of=None) -> None:
    """None, a finite number > 0, or a 0-d real array of x's framework on x's device whose
    value, where readable (``_host_readable``), is finite and > 0 (see the module docstring)."""
    if normalizer is None or not hasattr(normalizer, "shape"):
        if normalizer is not None:
            check_float("normalizer", normalizer, positive=True)
        return
    import numpy as np

    dtype = getattr(normalizer, "dtype", None)
    if dtype is None or isinstance(dtype, np.dtype) != isinstance(x.dtype, np.dtype):
        raise TypeError(f"normalizer must be a number or a 0-d array of x's framework "
                        f"({type(x).__name__}), got {type(normalizer).__name__}")
    if tuple(normalizer.shape) != ():
        raise ValueError(f"normalizer must be a number or a 0-d array, got shape {tuple(normalizer.shape)}")
    if "bool" in str(dtype) or "complex" in str(dtype):
        raise TypeError(f"normalizer must have an integer or floating dtype, got {dtype}")
    check_device("normalizer", normalizer, "x", x, device_of)
    if _host_readable(normalizer):
        check_float("normalizer", float(normalizer), positive=True)


def _host_readable(a: Any) -> bool:
    """False where reading the value would break a trace: a JAX tracer, or a CUDA tensor while
    the current stream captures a CUDA graph. Frameworks not yet imported cannot own ``a``."""
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(a, jax.core.Tracer):
        return False
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(a, torch.Tensor) and a.is_cuda:
        return not torch.cuda.is_current_stream_capturing()
    return True


def linear_cross_entropy_flops(n: int, width: int, vocab: int, *, backward: bool = True) -> float:
    """The head's matmuls: 2 N V W forward, twice that for dx and dweight."""
    return 2.0 * n * vocab * width * (3 if backward else 1)


def check_chunk_blocks(blocks) -> None:
    """The launch knobs both chunked impls share (Triton's CrossEntropyBlocks, the JAX one):
    num_warps, chunk_rows (0: from chunk_bytes) and chunk_bytes."""
    if blocks.num_warps not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"num_warps={blocks.num_warps!r} must be one of 1, 2, 4, 8, 16, 32")
    if not isinstance(blocks.chunk_rows, int) or blocks.chunk_rows < 0:
        raise ValueError(f"chunk_rows={blocks.chunk_rows!r} must be an int >= 0 (0: from chunk_bytes)")
    if not isinstance(blocks.chunk_bytes, int) or blocks.chunk_bytes < 1:
        raise ValueError(f"chunk_bytes={blocks.chunk_bytes!r} must be a positive int")
