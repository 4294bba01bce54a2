"""Framework-neutral argument checks for decode attention (PyTorch and JAX front-ends).

Semantics (both frameworks):
  q [batch, heads, head_dim] (one new token per row); k_cache, v_cache
  [batch, max_len, kv_heads, head_dim]; cache_seqlens int [batch]. Row b attends cache
  positions [0, L) with L = cache_seqlens[b] (the new token is position L - 1, already
  written to the cache); with window=W only positions (L - 1 - W, L - 1]. heads % kv_heads
  == 0 (kv_heads == 1 is MQA). softcap=c: s -> c * tanh(s / c) before the softmax.
  A row with L == 0 returns zeros. Output [batch, heads, head_dim] in q's dtype.
  Cache positions a row does not attend may hold anything, NaN and inf included (a cache
  from torch.empty, a reused slot, a page's tail): the kernels and the references never
  let them reach the output (flash_attn_with_kvcache's convention). The peers (sdpa, xla)
  weight them by zero, and 0 * NaN = NaN: for them the whole cache must be finite.

Paged cache (``block_table`` int32/int64 [batch, pages_per_row], FlashAttention's
``flash_attn_with_kvcache(block_table=...)`` convention): k_cache, v_cache are page pools
[num_pages, page_size, kv_heads, head_dim]; logical position t of row b lives in page
block_table[b, t // page_size] at slot t % page_size, so max_len = pages_per_row * page_size.
Only the pages a row uses (the first cdiv(L, page_size)) must index the pool; the entries
after them are never read and may hold anything (-1 padding). Pages may be shared by rows.
The Triton and Pallas kernels also need page_size a power of two >= 16
(``check_kernel_page_size``); the references and peers take any page size.

Length values: 0 <= L <= max_len is checked on the host, which costs one device->host
copy (a sync) of cache_seqlens per call. Under ``jax.jit`` the lengths are tracers and
cannot be read: the value check is then skipped and the kernels clamp L into
[0, max_len] (never reading outside the cache); every other check still runs. The block
table's page indices are checked the same way (host copy; skipped under jit, where the
kernels clamp page indices into [0, num_pages)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .._checks import check_optional_positive
from ..attention.spec import MAX_HEAD_DIM, _devices_differ, _shape, check_impl  # noqa: F401  (re-export)


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
    page_size: Optional[int] = None  # paged cache: k_cache dim 1 (max_len = pages_per_row * page_size)
    num_pages: Optional[int] = None  # paged cache: k_cache dim 0, the pool size

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads


def _is_float_dtype(dtype) -> bool:
    kind = getattr(dtype, "is_floating_point", None)
    if isinstance(kind, bool):
        return kind
    return "float" in str(dtype) or "complex" in str(dtype)


def _check_block_table(block_table: Any, batch: int) -> int:
    """Shape and dtype of a block table; returns pages_per_row."""
    ts = _shape("block_table", block_table)
    if len(ts) != 2 or ts[0] != batch or ts[1] < 1:
        raise ValueError(f"block_table must have shape ({batch}, pages_per_row >= 1) "
                         f"[batch, pages_per_row], got {ts}")
    if str(block_table.dtype).replace("torch.", "") not in ("int32", "int64"):
        raise TypeError(f"block_table dtype must be int32 (or int64, converted), got {block_table.dtype}")
    return ts[1]


def _check_pages(table: np.ndarray, lengths: np.ndarray, page_size: int, num_pages: int) -> None:
    """Every page a row uses (the first cdiv(L, page_size) entries) indexes the pool."""
    used = np.arange(table.shape[1])[None, :] < -(-lengths[:, None] // page_size)
    bad = np.argwhere(used & ((table < 0) | (table >= num_pages)))
    if bad.size:
        r, c = bad[0]
        raise ValueError(
            f"block_table[{r}, {c}] must be a page index in [0, {num_pages}) (k_cache dim 0, the "
            f"pool), got {table[r, c]} (row {r} uses its first {-(-lengths[r] // page_size)} pages "
            f"for cache_seqlens {lengths[r]}; {len(bad)} bad entries in all)")


def check_decode_args(
    q: Any, k_cache: Any, v_cache: Any, cache_seqlens: Any, *,
    window: Any, softcap: Any, scale: Any, dtypes: Sequence[Any],
    device_of: Optional[Callable] = None,
    host_lengths: Optional[Callable] = None,
    block_table: Any = None,
) -> DecodeProblem:
    """Validate a decode call before anything launches; return its DecodeProblem.

    ``dtypes`` lists the accepted floating dtypes. ``device_of`` maps a tensor to a comparable
    device, or to None where unknown (a JAX tracer: not compared); None skips the check.
    ``host_lengths`` maps an integer array (cache_seqlens, block_table) to numpy (the
    device->host sync), or returns None when the values are not readable (traced).
    ``block_table`` not None: the caches are page pools. The returned window is clamped to
    max_len (the same result; keeps it in int32 for the kernels).
    """
    qs, ks, vs = _shape("q", q), _shape("k_cache", k_cache), _shape("v_cache", v_cache)
    if len(qs) != 3:
        raise ValueError(f"q must be 3-D [batch, heads, head_dim], got shape {qs}")
    paged = block_table is not None
    layout = ("[num_pages, page_size, kv_heads, head_dim] (a page pool: block_table is given)"
              if paged else "[batch, max_len, kv_heads, head_dim]")
    for name, s in (("k_cache", ks), ("v_cache", vs)):
        if len(s) != 4:
            raise ValueError(f"{name} must be 4-D {layout}, got shape {s}")
    if ks != vs:
        raise ValueError(f"k_cache and v_cache must have the same shape, got {ks} and {vs}")
    b, h, d = qs
    if paged:
        pages_per_row = _check_block_table(block_table, b)
        num_pages, page_size, kvh, kd = ks
        max_len = pages_per_row * page_size
    else:
        kb, max_len, kvh, kd = ks
        if kb != b:
            raise ValueError(f"k_cache batch must equal q batch {b}, got {kb}")
    if kd != d:
        raise ValueError(f"k_cache head_dim must equal q head_dim {d}, got {kd}")
    if min(b, h, d, *ks) < 1:
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
        others = (("k_cache", k_cache), ("v_cache", v_cache), ("cache_seqlens", cache_seqlens))
        for name, x in others + ((("block_table", block_table),) if paged else ()):
            if _devices_differ(dev, device_of(x)):
                raise ValueError(f"{name} must be on q's device {dev}, got {device_of(x)}")
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
            raise TypeError(f"window must be an int >= 1 or None, got {window!r}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        # Row b sees (L - 1 - W, L - 1] with L <= max_len: W >= max_len masks nothing, so the
        # clamp changes no result and keeps W in int32 for the kernels (W >= 2**31 overflowed).
        window = min(int(window), max_len)
    softcap = check_optional_positive("softcap", softcap)
    scale = d**-0.5 if scale is None else check_optional_positive("scale", scale)
    lengths = None if host_lengths is None else host_lengths(cache_seqlens)
    if lengths is not None:
        lengths = np.asarray(lengths)
        if lengths.size and lengths.min() < 0:
            raise ValueError(f"cache_seqlens must be >= 0, got {lengths.tolist()}")
        if lengths.size and lengths.max() > max_len:
            what = (f"pages_per_row * page_size = {pages_per_row} * {page_size} (block_table dim 1 "
                    f"x k_cache dim 1)" if paged else "the cache's dim 1")
            raise ValueError(f"cache_seqlens must be <= max_len {max_len} ({what}), got {lengths.tolist()}")
        table = host_lengths(block_table) if paged else None
        if table is not None:
            _check_pages(np.asarray(table), lengths.astype(np.int64), page_size, num_pages)
    return DecodeProblem(batch=b, max_len=max_len, heads=h, kv_heads=kvh, head_dim=d,
                         window=window, softcap=softcap, scale=float(scale),
                         page_size=page_size if paged else None,
                         num_pages=num_pages if paged else None)


def check_kernel_page_size(page_size: int, impl: str) -> None:
    """The Triton and Pallas kernels read a K/V tile from one page: tile = min(block, page_size)
    must be a power of two >= 16 (a tl.dot / matrix-product operand) dividing page_size."""
    if page_size < 16 or page_size & (page_size - 1):
        raise ValueError(f"impl={impl!r} needs page_size (k_cache dim 1 of a paged cache) a power of "
                         f"two >= 16, got {page_size}; impl='reference' takes any page size")

