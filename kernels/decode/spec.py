"""Framework-neutral argument checks for decode attention (PyTorch and JAX front-ends).

Semantics (both frameworks):
  q [batch, heads, head_dim] (one new token per row); k_cache, v_cache
  [batch, max_len, kv_heads, head_dim]; cache_seqlens int [batch]. Row b attends cache
  positions [0, L) with L = cache_seqlens[b] (the new token is position L - 1, already
  written to the cache); with window=W only positions (L - 1 - W, L - 1]. heads % kv_heads
  == 0 (kv_heads == 1 is MQA). softcap=c: s -> c * tanh(s / c) before the softmax.
  A row with L == 0 returns zeros. Output [batch, heads, head_dim] in q's dtype.

Length values: 0 <= L <= max_len is checked on the host, which costs one device->host
copy (a sync) of cache_seqlens per call. Under ``jax.jit`` the lengths are tracers and
cannot be read: the value check is then skipped and the kernels clamp L into
[0, max_len] (never reading outside the cache); every other check still runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..attention.spec import MAX_HEAD_DIM, _shape, check_impl  # noqa: F401  (re-export)


@dataclass(frozen=True)
class DecodeProblem:
    """The checked, static description of one decode call."""

    batch: int
    max_len: int
    heads: int
    kv_heads: int
    head_dim: int
    window: Optional[int]
    softcap: Optional[float]
    scale: float

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads


def _is_float_dtype(dtype) -> bool:
    kind = getattr(dtype, "is_floating_point", None)
    if isinstance(kind, bool):
        return kind
    return "float" in str(dtype) or "complex" in str(dtype)


def check_decode_args(
    q: Any, k_cache: Any, v_cache: Any, cache_seqlens: Any, *,
    window: Any, softcap: Any, scale: Any, dtypes: Sequence[Any],
    device_of: Optional[Callable] = None,
    host_lengths: Optional[Callable] = None,
) -> DecodeProblem:
    """Validate a decode call before anything launches; return its DecodeProblem.

    ``dtypes`` lists the accepted floating dtypes. ``device_of`` maps a tensor to a comparable
    device (PyTorch; None skips the check). ``host_lengths`` maps cache_seqlens to a numpy
    array (the device->host sync), or returns None when the values are not readable (traced).
    """
    qs, ks, vs = _shape("q", q), _shape("k_cache", k_cache), _shape("v_cache", v_cache)
    if len(qs) != 3:
        raise ValueError(f"q must be 3-D [batch, heads, head_dim], got shape {qs}")
    for name, s in (("k_cache", ks), ("v_cache", vs)):
        if len(s) != 4:
            raise ValueError(f"{name} must be 4-D [batch, max_len, kv_heads, head_dim], got shape {s}")
    if ks != vs:
        raise ValueError(f"k_cache and v_cache must have the same shape, got {ks} and {vs}")
    b, h, d = qs
    kb, max_len, kvh, kd = ks
    if kb != b:
        raise ValueError(f"k_cache batch must equal q batch {b}, got {kb}")
    if kd != d:
        raise ValueError(f"k_cache head_dim must equal q head_dim {d}, got {kd}")
    if min(b, h, d, max_len, kvh) < 1:
        raise ValueError(f"every dimension must be >= 1, got q {qs} and k_cache {ks}")
    if h % kvh != 0:
        raise ValueError(f"heads % kv_heads must be 0 (q heads {h}, cache kv_heads {kvh})")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be <= {MAX_HEAD_DIM}, got {d}")
    if q.dtype not in dtypes:
        raise TypeError(f"q dtype must be one of {[str(t) for t in dtypes]}, got {q.dtype}")
    for name, x in (("k_cache", k_cache), ("v_cache", v_cache)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name} dtype must equal q dtype {q.dtype}, got {x.dtype}")
    ls = _shape("cache_seqlens", cache_seqlens)
    if ls != (b,):
        raise ValueError(f"cache_seqlens must have shape ({b},) [batch], got {ls}")
    if _is_float_dtype(cache_seqlens.dtype) or "bool" in str(cache_seqlens.dtype):
        raise TypeError(f"cache_seqlens must be an integer array, got {cache_seqlens.dtype}")
    if device_of is not None:
        dev = device_of(q)
        for name, x in (("k_cache", k_cache), ("v_cache", v_cache), ("cache_seqlens", cache_seqlens)):
            if device_of(x) != dev:
                raise ValueError(f"{name} must be on q's device {dev}, got {device_of(x)}")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
            raise TypeError(f"window must be an int >= 1 or None, got {window!r}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        window = int(window)
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not softcap > 0:
            raise ValueError(f"softcap must be a float > 0 or None, got {softcap!r}")
        softcap = float(softcap)
    if scale is None:
        scale = d**-0.5
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"scale must be a float > 0 or None, got {scale!r}")
    lengths = None if host_lengths is None else host_lengths(cache_seqlens)
    if lengths is not None:
        lengths = np.asarray(lengths)
        if lengths.size and lengths.min() < 0:
            raise ValueError(f"cache_seqlens must be >= 0, got {lengths.tolist()}")
        if lengths.size and lengths.max() > max_len:
            raise ValueError(
                f"cache_seqlens must be <= max_len {max_len} (the cache's dim 1), got {lengths.tolist()}")
    return DecodeProblem(batch=b, max_len=max_len, heads=h, kv_heads=kvh, head_dim=d,
                         window=window, softcap=softcap, scale=float(scale))

