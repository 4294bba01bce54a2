"""The paged KV cache for ``model/jax_model.py`` (see ``model/paged_cache.py`` for the layout).

A NamedTuple pytree like the contiguous ``jax_model.KVCache``, with the same interface:
  prefill(layer, k, v) -> (k_pool, v_pool)  k, v [B, S, KVH, D] at positions [0, S); positions
                        in no assigned page (the padding of prompts shorter than S) are dropped
  append(layer, k, v) -> (k_pool, v_pool, {"block_table": ...})  k, v [B, KVH, D] at lengths[b]
The host ``PageTable`` (free list) stays outside the pytree: the caller reserves pages before a
step and swaps the new table in (``cache._replace(block_table=...)``). Under jit a write to a
position with no page is dropped, like the contiguous cache's writes past max_len.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from model.config import ModelConfig
from model.paged_cache import PagePlan


class PagedKVCache(NamedTuple):
    k: tuple  # per layer (num_pages, page_size, KVH, D)
    v: tuple
    lengths: jax.Array  # (B,) int32
    block_table: jax.Array  # (B, pages_per_row) int32, -1: no page

    @classmethod
    def create(cls, cfg: ModelConfig, block_table, plan: PagePlan, *, dtype=jnp.float32) -> "PagedKVCache":
        pools = tuple(jnp.zeros((plan.num_pages, plan.page_size, cfg.kv_heads, cfg.head_dim), dtype)
                      for _ in range(cfg.layers))
        table = jnp.asarray(block_table, jnp.int32)
        return cls(pools, pools, jnp.zeros((table.shape[0],), jnp.int32), table)

    @property
    def batch(self) -> int:
        return self.block_table.shape[0]

    @property
    def max_len(self) -> int:
        return self.block_table.shape[1] * self.k[0].shape[1]

    @property
    def capacity(self) -> np.ndarray:  # concrete tables only (outside jit)
        return (np.asarray(self.block_table) >= 0).sum(1) * self.k[0].shape[1]

    def _slots(self, pos):  # pos (B, T) -> page (B, T) (num_pages: no page, dropped), slot (B, T)
        num_pages, page_size = self.k[0].shape[:2]
        col = pos // page_size
        page = jnp.take_along_axis(self.block_table, jnp.minimum(col, self.block_table.shape[1] - 1), 1)
        return jnp.where((page < 0) | (col >= self.block_table.shape[1]), num_pages, page), pos % page_size

    def _write(self, layer, page, slot, k, v):
        return tuple(c[layer].at[page, slot].set(x.astype(c[layer].dtype), mode="drop")
                     for c, x in ((self.k, k), (self.v, v)))

    def prefill(self, layer: int, k, v):
        b, s = k.shape[:2]
        page, slot = self._slots(jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s)))
        return self._write(layer, page, slot, k, v)

    def append(self, layer: int, k, v):
        page, slot = self._slots(self.lengths[:, None])  # (B, 1)
        return (*self._write(layer, page[:, 0], slot[:, 0], k, v), {"block_table": self.block_table})
