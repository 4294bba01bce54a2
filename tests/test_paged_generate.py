"""Generation with the paged KV cache (model/paged_cache*.py, ``generate(..., cache=CacheConfig(paged=True))``).

Greedy tokens with the paged cache equal the contiguous cache's, token for token, in PyTorch
and JAX, for prompts of lengths 14, 1 and 30 with page_size 16: rows hold 2, 1 and 3 pages,
and rows 0 and 2 cross a page boundary during decode (positions 16 and 32). With the
``reference`` kernels and the hand-written decode kernels (Triton / Pallas, interpret mode).
"""
from __future__ import annotations

import pytest

from model import tokenizer as tk
from model.config import KernelConfig
from model.generate import generate, parse_args
from model.paged_cache import CacheConfig, PagePlan, PageTable

from test_generate import CFG, _one_torch_thread, jax_params, torch_model  # noqa: F401  (fixtures)

PROMPTS = [[tk.BOS_ID, *range(10, 23)], [tk.BOS_ID], [tk.BOS_ID, *range(40, 69)]]  # lengths 14, 1, 30
NEW = 5  # cached positions up to 18, 5 and 34
PAGED = CacheConfig(paged=True, page_size=16)


def _gen(framework, model, params, kernels=None, **kw):
    if framework == "torch":
        if kernels is not None:
            from model.torch_model import GeminiModel

            m = GeminiModel(CFG, kernels).eval()
            m.load_state_dict(model.state_dict())
            model = m
        return generate(model, PROMPTS, max_new_tokens=NEW, **kw).tokens
    return generate(params, PROMPTS, max_new_tokens=NEW, framework="jax", cfg=CFG, kernels=kernels,
                    **kw).tokens


@pytest.fixture(scope="module")
def contiguous(torch_model, jax_params):
    return {fw: _gen(fw, torch_model, jax_params) for fw in ("torch", "jax")}


@pytest.mark.parametrize("framework,kernels", [
    ("torch", None), ("jax", None),
    ("torch", KernelConfig(decode="triton")), ("jax", KernelConfig(decode="pallas"))],
    ids=["torch-reference", "jax-reference", "torch-triton-decode", "jax-pallas-decode"])
def test_paged_greedy_equals_contiguous(framework, kernels, torch_model, jax_params, contiguous):
    assert _gen(framework, torch_model, jax_params, kernels, cache=PAGED) == contiguous[framework]
    assert len({t for row in contiguous[framework] for t in row}) > NEW  # not degenerate


def test_paged_decode_reads_its_pages(torch_model, jax_params, monkeypatch):
    """Every decode step passes the block table; rows hold 2, 1, 3 distinct pages at the end."""
    from kernels import torch_ops

    tables, decode = [], torch_ops.decode_attention
    def spy(*args, block_table=None, **kw):
        tables.append(None if block_table is None else block_table.clone())
        return decode(*args, block_table=block_table, **kw)

    monkeypatch.setattr(torch_ops, "decode_attention", spy)
    _gen("torch", torch_model, jax_params, cache=PAGED)
    assert len(tables) == CFG.layers * (NEW - 1) and all(t is not None for t in tables)
    assert [(row >= 0).sum().item() for row in tables[0]] == [1, 1, 2]  # the prompts' pages
    last = tables[-1].numpy()
    assert (last >= 0).sum(1).tolist() == [2, 1, 3]
    used = last[last >= 0]
    assert sorted(used.tolist()) == list(range(6))  # from the free list, none shared


def test_page_table():
    pages = PageTable(2, PagePlan(page_size=4, pages_per_row=3, num_pages=4))
    assert pages.reserve([5, 1]) and pages.table.tolist() == [[0, 1, -1], [2, -1, -1]]
    assert not pages.reserve([8, 4])  # no boundary crossed
    assert pages.capacity().tolist() == [8, 4]
    with pytest.raises(ValueError, match=r"page pool is exhausted \(row 1 needs page 1\); raise cache.num_pages"):
        pages.reserve([9, 5])


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_paged_bad_input(framework, torch_model, jax_params):
    with pytest.raises(ValueError, match=r"cache.num_pages=5 is too small: prompts of lengths \[14, 1, 30\] "
                                         r"with max_new_tokens=5 need \[2, 1, 3\] pages of "
                                         r"cache.page_size=16 \(6 in all\)"):
        _gen(framework, torch_model, jax_params, cache=CacheConfig(paged=True, page_size=16, num_pages=5))
    impl = "triton" if framework == "torch" else "pallas"
    with pytest.raises(ValueError, match=rf"impl='{impl}' needs page_size .* a power of two >= 16, got 24"):
        _gen(framework, torch_model, jax_params, KernelConfig(decode=impl),
             cache=CacheConfig(paged=True, page_size=24))
    with pytest.raises(ValueError, match="cache.paged=true needs use_cache=True"):
        _gen(framework, torch_model, jax_params, cache=PAGED, use_cache=False)


def test_cli_cache_options():
    base = ["ckpt=x.safetensors", "prompt=hi"]
    assert parse_args(base).cache == CacheConfig()
    args = parse_args(base + ["cache.paged=true", "cache.page_size=16", "cache.num_pages=9"])
    assert args.cache == CacheConfig(paged=True, page_size=16, num_pages=9)
    with pytest.raises(ValueError, match=r"unknown option 'cache.pagesize'; cache options: \['paged'"):
        parse_args(base + ["cache.pagesize=16"])
    with pytest.raises(ValueError, match="cache.page_size must be an int >= 1, got 0"):
        parse_args(base + ["cache.page_size=0"])
    assert parse_args(base + ["cache.paged=false"]).cache.paged is False
