"""Paged KV cache for generation (vLLM-style), the framework-neutral part: config, sizing, pages.

    pools k, v  [num_pages, page_size, kv_heads, head_dim] per layer
    block_table int32 [batch, pages_per_row]: position t of row b is page table[b, t // page_size],
                slot t % page_size (FlashAttention's convention, ``kernels/decode/spec.py``); -1 = none

``PageTable`` is the host-side block manager: one free list (page i is page i of every layer's
pool); ``reserve(lengths)`` gives row b pages for positions [0, lengths[b]) as it grows, so rows
of different lengths hold different numbers of pages and no page is shared between rows. The
framework caches (``paged_cache_torch.PagedKVCache``, ``paged_cache_jax.PagedKVCache``) hold the
pools and a device copy of the table; the model writes K/V through them and hands their table
to ``decode_attention(..., block_table=...)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np


@dataclass
class CacheConfig:
    """Generation's KV cache: contiguous [batch, max_len, ...] buffers, or a paged pool.

    num_pages None sizes the pool for the request (every row's prompt + max_new_tokens).
    Not frozen: hydra overrides (``cache.paged=true``) must be writable; checked on construction.
    """

    paged: bool = False
    page_size: int = 64
    num_pages: Optional[int] = None

    def __post_init__(self):
        if isinstance(self.page_size, bool) or not isinstance(self.page_size, int) or self.page_size < 1:
            raise ValueError(f"cache.page_size must be an int >= 1, got {self.page_size!r}")
        n = self.num_pages
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"cache.num_pages must be an int >= 1 or None, got {n!r}")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class PagePlan(NamedTuple):
    page_size: int
    pages_per_row: int  # block table dim 1
    num_pages: int  # pool size per layer


def plan_pages(cache: CacheConfig, prompt_lengths: Sequence[int], max_new_tokens: int) -> PagePlan:
    """The pool and table sizes for a generation; ValueError naming cache.num_pages if the pool
    cannot hold every row's prompt_length + max_new_tokens - 1 cached positions."""
    need = [cdiv(n + max_new_tokens - 1, cache.page_size) for n in prompt_lengths]
    total = sum(need)
    if cache.num_pages is not None and cache.num_pages < total:
        raise ValueError(f"cache.num_pages={cache.num_pages} is too small: prompts of lengths "
                         f"{list(prompt_lengths)} with max_new_tokens={max_new_tokens} need {need} pages "
                         f"of cache.page_size={cache.page_size} ({total} in all)")
    return PagePlan(cache.page_size, max(need), cache.num_pages or total)


def check_page_size(page_size: int, impl: str, dtype) -> None:
    """The decode kernel's own page-size rule (the references and peers take any page size)."""
    if impl in ("triton", "pallas"):
        from kernels.decode.spec import check_kernel_page_size

        check_kernel_page_size(page_size, impl)
    elif impl == "pallas_tpu":
        from kernels.decode.pallas_tpu_paged_decode import check_tpu_page_size

        check_tpu_page_size(page_size, dtype)


class PageTable:
    """Host block table [batch, pages_per_row] int32 (-1 unassigned) and the pool's free list."""

    def __init__(self, batch: int, plan: PagePlan):
        self.table = np.full((batch, plan.pages_per_row), -1, np.int32)
        self.free = list(range(plan.num_pages - 1, -1, -1))  # pop() hands out 0, 1, 2, ...
        self.page_size = plan.page_size

    def reserve(self, lengths: Sequence[int]) -> bool:
        """Give row b pages for positions [0, lengths[b]); True if any page was assigned."""
        changed = False
        for b, n in enumerate(lengths):
            need = cdiv(int(n), self.page_size)
            if need > self.table.shape[1]:
                raise ValueError(f"row {b} needs {need} pages for {n} positions; the block table holds "
                                 f"{self.table.shape[1]} per row")
            for c in range(int((self.table[b] >= 0).sum()), need):
                if not self.free:
                    raise ValueError(f"the page pool is exhausted (row {b} needs page {c}); raise "
                                     "cache.num_pages")
                self.table[b, c] = self.free.pop()
                changed = True
        return changed

    def capacity(self) -> np.ndarray:
        """Positions each row can hold now: its assigned pages * page_size, [batch]."""
        return (self.table >= 0).sum(1) * self.page_size
