"""The paged KV cache for ``model/torch_model.py`` (see ``model/paged_cache.py`` for the layout).

Same interface as the contiguous ``torch_model.KVCache`` (updated in place):
  prefill(layer, k, v)  k, v [B, S, KVH, D] at positions [0, S); positions in no assigned page
                        (the padding of prompts shorter than S) are dropped
  append(layer, k, v)   k, v [B, KVH, D] at each row's position lengths[b]; returns
                        (k_pool, v_pool, {"block_table": ...}) for ``decode_attention``
  reserve(lengths)      host: give each row pages for positions [0, lengths[b]) before writing them
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.config import ModelConfig
from model.paged_cache import PagePlan, PageTable


@dataclass
class PagedKVCache:
    k: list[torch.Tensor]  # per layer (num_pages, page_size, KVH, D)
    v: list[torch.Tensor]
    lengths: torch.Tensor  # (B,) int32
    block_table: torch.Tensor  # (B, pages_per_row) int32, the device copy of pages.table
    pages: PageTable

    @classmethod
    def create(cls, cfg: ModelConfig, batch: int, plan: PagePlan, *, dtype=torch.float32,
               device=None) -> "PagedKVCache":
        shape = (plan.num_pages, plan.page_size, cfg.kv_heads, cfg.head_dim)
        pool = lambda: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
        pages = PageTable(batch, plan)
        return cls([pool() for _ in range(cfg.layers)], [pool() for _ in range(cfg.layers)],
                   torch.zeros(batch, dtype=torch.int32, device=device),
                   torch.tensor(pages.table, device=device), pages)

    @property
    def batch(self) -> int:
        return self.block_table.shape[0]

    @property
    def max_len(self) -> int:
        return self.block_table.shape[1] * self.pages.page_size

    @property
    def capacity(self) -> np.ndarray:
        return self.pages.capacity()

    def reserve(self, lengths) -> None:
        if self.pages.reserve(lengths):
            self.block_table = torch.tensor(self.pages.table, device=self.block_table.device)

    def _slots(self, pos):  # pos (B, T) -> page (B, T) (-1: none), slot (B, T)
        return self.block_table.long().gather(1, pos // self.pages.page_size), pos % self.pages.page_size

    def prefill(self, layer: int, k, v) -> None:
        b, s = k.shape[:2]
        page, slot = self._slots(torch.arange(s, device=k.device).expand(b, s))
        keep = page >= 0
        self.k[layer][page[keep], slot[keep]] = k[keep].to(self.k[layer].dtype)
        self.v[layer][page[keep], slot[keep]] = v[keep].to(self.v[layer].dtype)

    def append(self, layer: int, k, v):
        page, slot = self._slots(self.lengths.long()[:, None])  # (B, 1); assigned (checked by the model)
        self.k[layer][page[:, 0], slot[:, 0]] = k.to(self.k[layer].dtype)
        self.v[layer][page[:, 0], slot[:, 0]] = v.to(self.v[layer].dtype)
        return self.k[layer], self.v[layer], {"block_table": self.block_table}
