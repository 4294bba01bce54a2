"""The model's input/output plumbing, case by case: Hugging Face directories (model/hf.py),
checkpoint files (model/checkpoint.py), tokenizers (model/tokenizer.py), training data
(model/data.py), sampling filters (model/sampling.py) and the paged KV cache
(model/paged_cache*.py). Each test names the mutation (a plausible bug) it catches; the
expected values come from the test's own reasoning or a float64 reference, never from the
code under test. Micro shapes, no model runs."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kernels.tolerances import ATOL_FLOOR
from model.config import ModelConfig, param_specs

# --------------------------------------------------------------------------- Hugging Face

HF_CFG = ModelConfig(name="hfc", vocab_size=24, width=8, layers=1, heads=2, kv_heads=1, head_dim=4,
                     mlp_dim=12, max_seq_len=96, rope_theta=500.0)


def _hf_config(**over):
    """A minimal Gemma config.json for HF_CFG (no rms_norm_eps: the default applies)."""
    c = {"model_type": "gemma", "vocab_size": HF_CFG.vocab_size, "hidden_size": HF_CFG.width,
         "num_hidden_layers": HF_CFG.layers, "num_attention_heads": HF_CFG.heads,
         "num_key_value_heads": HF_CFG.kv_heads, "head_dim": HF_CFG.head_dim,
         "intermediate_size": HF_CFG.mlp_dim, "max_position_embeddings": HF_CFG.max_seq_len,
         "rope_theta": HF_CFG.rope_theta}
    c.update(over)
    return c


def _hf_tensors(seed):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, (s, _) in param_specs(HF_CFG).items()}


def _hf_dir(path, **over):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(_hf_config(**over)))
    return path


def test_hf_config_defaults_and_top_level_rope_theta():
    """Mutations H4 (max_position_embeddings ignored), H5 (a top-level ``rope_theta``, the
    layout of transformers < 5 config.json files, ignored for 10000) and H6 (the
    rms_norm_eps default not Gemma's 1e-6): each gives a model that silently differs."""
    from model.hf import config_from_hf

    cfg = config_from_hf(_hf_config(), name="hfc")
    assert cfg == HF_CFG
    assert cfg.norm_eps == 1e-6 and cfg.rope_theta == 500.0 and cfg.max_seq_len == 96
    assert config_from_hf({**_hf_config(), "rms_norm_eps": 1e-2}).norm_eps == 1e-2


def test_hf_refuses_bidirectional_attention():
    """Mutation H2: ``use_bidirectional_attention: true`` (an encoder-style Gemma) must be
    refused, not loaded as a causal model."""
    from model.hf import config_from_hf

    with pytest.raises(ValueError, match="use_bidirectional_attention=True is not supported"):
        config_from_hf(_hf_config(use_bidirectional_attention=True))
    assert config_from_hf(_hf_config(use_bidirectional_attention=False), name="hfc") == HF_CFG


def test_hf_tied_lm_head_is_accepted_and_an_untied_one_refused(tmp_path):
    """Mutations H7 (a saved lm_head.weight that differs from the embedding silently dropped:
    the model would produce other logits than the checkpoint's) and H8 (an equal, tied
    lm_head.weight kept and then refused as an unexpected parameter)."""
    from model.hf import load_hf

    tensors = _hf_tensors(0)
    d = _hf_dir(tmp_path / "tied")
    save_file({**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"].clone()}, d / "model.safetensors")
    ckpt = load_hf(d, framework="torch")
    assert list(ckpt.params) == list(param_specs(HF_CFG))
    assert all(torch.equal(ckpt.params[n], t) for n, t in tensors.items())
    d2 = _hf_dir(tmp_path / "untied")
    head = tensors["model.embed_tokens.weight"].clone()
    head[3, 1] += 0.5
    save_file({**tensors, "lm_head.weight": head}, d2 / "model.safetensors")
    with pytest.raises(ValueError, match="lm_head.weight differs from model.embed_tokens.weight"):
        load_hf(d2)


def test_hf_sharded_directory_reads_every_shard(tmp_path):
    """Mutation H9: only the first shard of ``model.safetensors.index.json`` read. Every
    tensor, from either shard, must come back bit for bit (numpy framework too); no
    tokenizer.json gives tokenizer_path None (mutation H10)."""
    from model.hf import load_hf

    tensors = _hf_tensors(1)
    d = _hf_dir(tmp_path / "sharded")
    names = list(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, d / file)
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: f for f, part in shards.items() for n in part}}))
    ckpt = load_hf(d, framework="numpy")
    assert ckpt.tokenizer_path is None
    assert list(ckpt.params) == list(param_specs(HF_CFG))
    for n, t in tensors.items():
        assert isinstance(ckpt.params[n], np.ndarray) and np.array_equal(ckpt.params[n], t.numpy()), n


# --------------------------------------------------------------------------- checkpoints

CK = ModelConfig(name="ck", vocab_size=20, width=8, layers=1, heads=2, kv_heads=1, head_dim=4, mlp_dim=12,
                 max_seq_len=32)


def _ck_params(seed):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, (s, _) in param_specs(CK).items()}


def test_checkpoint_saves_non_contiguous_tensors(tmp_path):
    """Mutation C1: a non-contiguous parameter (a transposed view, e.g. from a weight
    conversion) must be saved by value; safetensors refuses non-contiguous tensors."""
    from model.checkpoint import load_checkpoint, save_checkpoint

    params = _ck_params(2)
    name = "model.layers.0.mlp.down_proj.weight"  # (8, 12)
    view = params[name].t().contiguous().t()
    assert not view.is_contiguous() and torch.equal(view, params[name])
    path = save_checkpoint(tmp_path / "a.safetensors", {**params, name: view}, CK)
    loaded, _ = load_checkpoint(path, CK)
    assert all(torch.equal(loaded[n], t) for n, t in params.items())


def test_checkpoint_numpy_framework_gives_numpy_arrays(tmp_path):
    """Mutation C7: framework="numpy" must return numpy arrays (bf16 as ml_dtypes bfloat16),
    not jax.Arrays, with the saved values."""
    from model.checkpoint import load_checkpoint, save_checkpoint

    params = _ck_params(3)
    path = save_checkpoint(tmp_path / "a.safetensors", {n: t.bfloat16() for n, t in params.items()}, CK)
    loaded, _ = load_checkpoint(path, framework="numpy")
    for n, t in params.items():
        a = loaded[n]
        assert type(a) is np.ndarray and a.dtype.name == "bfloat16", (n, type(a), a.dtype)
        assert np.array_equal(a.astype(np.float32), t.bfloat16().float().numpy()), n


def test_checkpoint_refuses_integer_arrays(tmp_path):
    """Mutation C2: an integer numpy array saved as a parameter must be refused by name (a
    weight truncated to integers would silently load as another model)."""
    from model.checkpoint import save_checkpoint

    params = {n: t.numpy() for n, t in _ck_params(4).items()}
    params["model.norm.weight"] = np.arange(8, dtype=np.int32)
    with pytest.raises(TypeError, match="parameter 'model.norm.weight' must be floating point, got dtype int32"):
        save_checkpoint(tmp_path / "a.safetensors", params, CK)
    assert not (tmp_path / "a.safetensors").exists()


_OTHER_VALUES = {"vocab_size": 21, "width": 12, "layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 6,
                 "mlp_dim": 10, "max_seq_len": 64, "rope_theta": 123.0, "norm_eps": 1e-3,
                 "attn_softcap": 20.0, "final_softcap": 9.0, "local_window": 4, "query_scale": 0.3,
                 "image_vocab": 3, "bidirectional_media": True}


def test_checkpoint_refuses_a_config_that_differs_in_any_field(tmp_path):
    """Mutation C4: a config field left out of the stored-vs-given comparison (here the last,
    ``bidirectional_media``, which changes no shape): every ModelConfig field but ``name``
    must be compared, so a file loads only into the architecture it was saved with."""
    from model.checkpoint import load_checkpoint, save_checkpoint

    path = save_checkpoint(tmp_path / "a.safetensors", _ck_params(5), CK)
    fields = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("name", "local_every")]
    assert sorted(fields) == sorted(_OTHER_VALUES), "a new ModelConfig field: give it a value here"
    for field in fields:
        other = dataclasses.replace(CK, **{field: _OTHER_VALUES[field]})
        same_shapes = {n: s for n, (s, _) in param_specs(other).items()} == \
            {n: s for n, (s, _) in param_specs(CK).items()}
        match = rf"in {field}: the file's config has" if same_shapes else "parameter"
        with pytest.raises(ValueError, match=match):
            load_checkpoint(path, other)
    windowed = dataclasses.replace(CK, local_window=4, local_every=2)
    with pytest.raises(ValueError, match="in local_window"):
        load_checkpoint(path, windowed)


# --------------------------------------------------------------------------- tokenizers

def _tokenizer_json(folder, specials, template_bos=False):
    """A small byte-level BPE with the given special tokens saved as folder/tokenizer.json;
    ``template_bos``: a post-processor that adds <bos> (like Gemma's tokenizer.json)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=290, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["a small sample of text for a small tokenizer"] * 4, trainer)
    if template_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def test_hf_tokenizer_without_pad_and_with_a_bos_template(tmp_path):
    """Mutations T6 (a tokenizer.json without a pad token refused: pad is optional), T5 (the
    file's own post-processor applied by encode: Gemma-style files add <bos>, so
    ``encode(bos=True)`` would start with two) and T7 (decode ignores skip_special=False)."""
    from model import tokenizer as tk

    path = _tokenizer_json(tmp_path, ["<eos>", "<bos>", "<unk>"], template_bos=True)
    t = tk.HFTokenizer(str(path))
    assert t.pad_id is None and (t.eos_id, t.bos_id) == (0, 1)
    text = "a small text"
    plain = t.encode(text)
    assert t.bos_id not in plain and t.decode(plain) == text
    ids = t.encode(text, bos=True, eos=True)
    assert ids == [t.bos_id, *plain, t.eos_id]
    assert t.decode(ids) == text
    kept = t.decode(ids, skip_special=False)
    assert kept.startswith("<bos>") and kept.endswith("<eos>") and text in kept


def test_byte_tokenizer_pad_scalar_and_empty_span():
    """Mutations T3 (the pad id 256 taken for a byte: decode fails or emits a byte), T4 (a
    0-d array / single id not decoded), T9 (a span of 0 placeholders refused: n >= 0 is
    allowed) and T10 (a nested batch of ids not refused with a clear error)."""
    from model import tokenizer as tk

    t = tk.ByteTokenizer()
    assert t.decode([104, tk.PAD_ID, 105, tk.PAD_ID]) == "hi"
    assert t.decode([104, tk.PAD_ID, 105], skip_special=False) == "h<pad>i"
    assert tk.decode(torch.tensor(65)) == "A" == tk.decode(np.int64(65)) == t.decode(65)
    assert tk.multimodal_span("audio", 0) == [tk.AUDIO_START_ID, tk.AUDIO_END_ID]
    with pytest.raises(ValueError, match="decode takes one sequence of ids, got a nested sequence of 2"):
        t.decode([[104], [105]])


def test_image_block_may_start_at_the_text_vocab():
    """Mutation T2: ``cfg.image_token_ids`` starts at cfg.vocab_size, which equals the byte
    tokenizer's 272 for a model whose text table is exactly the byte vocabulary: allowed."""
    from model import tokenizer as tk

    cfg = ModelConfig(name="img", vocab_size=tk.VOCAB_MIN, width=8, layers=1, heads=2, kv_heads=1, head_dim=4,
                      mlp_dim=8, max_seq_len=16, image_vocab=3)
    t = tk.ByteTokenizer(image_ids=cfg.image_token_ids)
    assert t.image_ids == range(272, 275) and t.image_token_id(0) == 272
    assert t.decode([104, 272, 274, 105], skip_special=False) == "h<image_0><image_2>i"
    with pytest.raises(ValueError, match="image_ids must start at or after the text vocab_size 272"):
        tk.ByteTokenizer(image_ids=range(271, 274))


# --------------------------------------------------------------------------- training data

def test_batch_split_refuses_an_uneven_split():
    """Mutation D1: a batch of 4 split in 3 must be refused (the check dropped gives micro-
    batches of 1 that silently skip a row)."""
    from model.data import RetrievalTask

    b = RetrievalTask(pairs=2, key_len=1, value_len=1, seq_len=12).batch("train", 0, 4)
    with pytest.raises(ValueError, match="batch size 4 is not divisible by parts=3"):
        b.split(3)
    parts = b.split(2)
    assert all(np.array_equal(np.concatenate([p[i] for p in parts]), b[i]) for i in range(3))


def test_retrieval_seq_len_bound_is_exact():
    """Mutation D8 (example length one short): the shortest accepted seq_len is the example
    (bos, pairs x (key value), ?, queries x (key value), eos) minus one, counted here, and
    that seq_len holds the whole example: the last target is EOS."""
    from model.data import RetrievalTask
    from model.tokenizer import EOS_ID

    pairs, k, v, q = 3, 1, 2, 2
    example = 1 + pairs * (k + v) + 1 + q * (k + v) + 1
    task = RetrievalTask(pairs=pairs, key_len=k, value_len=v, queries=q, seq_len=example - 1)
    b = task.batch("train", 0, 3)
    assert b.inputs.shape == (3, example - 1) and (b.targets[:, -1] == EOS_ID).all()
    with pytest.raises(ValueError, match=f"seq_len={example - 2} is too short"):
        RetrievalTask(pairs=pairs, key_len=k, value_len=v, queries=q, seq_len=example - 2)


def test_text_windows_cover_each_split_once_per_epoch_without_crossing_the_cut(tmp_path):
    """Mutations D5 (a window one byte too far: the last training window reads the held-out
    split's first byte), D6 (the cut at eval_fraction instead of 1 - eval_fraction) and D7
    (batch index not scaled by batch size: consecutive batches overlap). Byte i of the file
    is i, so a window's first input is its start; one epoch of batches must visit exactly
    the windows of seq_len + 1 bytes at multiples of the stride inside the split."""
    from model.data import TextWindows

    path = tmp_path / "t.bin"
    path.write_bytes(bytes(range(200)))
    seq, stride, cut = 9, 3, 150  # eval_fraction 0.25 of 200 bytes
    src = TextWindows(str(path), seq_len=seq, stride=stride, eval_fraction=0.25, seed=4)
    for split, lo, hi in (("train", 0, cut), ("eval", cut, 200)):
        want = [s for s in range(lo, hi) if (s - lo) % stride == 0 and s + seq + 1 <= hi]
        batch = 4 if split == "eval" else 5
        n = -(-len(want) // batch)
        batches = [src.batch(split, i, batch) for i in range(n)]
        starts = np.concatenate([b.inputs[:, 0] for b in batches])[:len(want)]
        assert sorted(starts.tolist()) == want, split
        for b in batches:
            assert (b.inputs >= lo).all() and (b.targets < hi).all()
            assert np.array_equal(b.targets, b.inputs + 1)


# --------------------------------------------------------------------------- sampling

def _filter_ref(logits, temperature, top_k=None, top_p=None):
    """Float64 reference of the documented filter: logits / T, keep values >= the k-th
    largest, then the smallest prefix (by descending probability, ties by id) whose mass
    reaches top_p (top_p = 1 keeps everything); -inf where removed. Also returns the
    smallest distance of a cumulative mass to top_p (how far the choice is from a tie)."""
    x = np.asarray(logits, np.float64) / temperature
    out, margin = x.copy(), np.inf
    for r in range(x.shape[0]):
        keep = np.ones(x.shape[1], bool)
        if top_k is not None:
            keep &= x[r] >= np.sort(x[r])[::-1][top_k - 1]
        if top_p is not None and top_p < 1.0:
            order = np.asarray(sorted(np.flatnonzero(keep), key=lambda i: (-x[r, i], i)))
            p = np.exp(x[r, order] - x[r, order].max())
            p /= p.sum()
            before = np.concatenate([[0.0], np.cumsum(p)[:-1]])
            margin = min(margin, float(np.abs(before - top_p).min()))
            keep[:] = False
            keep[order[before < top_p]] = True
        out[r, ~keep] = -np.inf
    return out, margin


def _filters(logits, cfg):
    import jax.numpy as jnp

    from model.sampling import filter_logits_jax, filter_logits_torch

    return {"torch": filter_logits_torch(torch.from_numpy(logits), cfg).double().numpy(),
            "jax": np.asarray(filter_logits_jax(jnp.asarray(logits), cfg), np.float64)}


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.5, None, 0.7), (2.0, 6, None), (0.8, 10, 0.6),
                                                     (1.7, None, 0.9)])
def test_filters_match_a_float64_reference(temperature, top_k, top_p):
    """Mutations S1 (temperature applied twice), S7 / S8 (top-p chosen on untempered logits,
    temperature applied after the filter): the kept set and the kept values equal the float64
    reference in both frameworks. Logits spread widely (x 4) so the kept sets differ with
    the temperature, and no top-p boundary is within rounding of a cumulative mass."""
    from model.sampling import SamplingConfig

    rng = np.random.default_rng(11)
    logits = (rng.standard_normal((5, 33)) * 4).astype(np.float32)
    ref, margin = _filter_ref(logits, temperature, top_k, top_p)
    assert margin > 1e-4  # no kept set within fp32 rounding of the top_p boundary
    assert 0 < np.isfinite(ref).sum() < ref.size
    cfg = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    for framework, out in _filters(logits, cfg).items():
        np.testing.assert_array_equal(np.isfinite(out), np.isfinite(ref), err_msg=framework)
        fin = np.isfinite(ref)
        tol = ATOL_FLOOR["float32"] * max(1.0, float(np.abs(ref[fin]).max()))
        assert np.abs(out[fin] - ref[fin]).max() <= tol, framework


def test_top_p_one_keeps_every_token():
    """Found by this audit (no mutation needed): top_p=1.0 (allowed, "keep everything", as
    Hugging Face skips top-p at 1.0) removed tokens whose fp32 mass-before rounds to 1.0:
    logits [0, -20, -30] kept only token 0. Fixed: top_p >= 1 filters nothing."""
    from model.sampling import SamplingConfig

    logits = np.array([[0.0, -20.0, -30.0], [3.0, -17.0, 2.5]], np.float32)
    cfg = SamplingConfig(temperature=1.0, top_p=1.0)
    for framework, out in _filters(logits, cfg).items():
        np.testing.assert_array_equal(out, logits.astype(np.float64), err_msg=framework)


def test_sampling_config_edges():
    """Mutations S4 (top_k equal to the vocabulary refused), S5 (top_p=1.0 refused) and S6
    (an infinite temperature accepted: every logit becomes 0 or nan)."""
    from model.sampling import SamplingConfig

    SamplingConfig(temperature=1.0, top_k=512).check_vocab(512)
    assert SamplingConfig(temperature=1.0, top_p=1.0).top_p == 1.0
    for t in (float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
            SamplingConfig(temperature=t)


# --------------------------------------------------------------------------- paged KV cache

def test_plan_pages_sizes_exactly_the_cached_positions():
    """Mutations P1 (one page too many: a prompt of 12 plus 5 new tokens caches positions
    0..15, the last token is never fed back, so one page of 16 is enough) and P2 (a pool of
    exactly the needed size refused)."""
    from model.paged_cache import CacheConfig, PagePlan, plan_pages

    assert plan_pages(CacheConfig(paged=True, page_size=16), [12, 1], 5) == PagePlan(16, 1, 2)
    assert plan_pages(CacheConfig(paged=True, page_size=16), [12, 13], 5) == PagePlan(16, 2, 3)
    assert plan_pages(CacheConfig(paged=True, page_size=16, num_pages=3), [12, 13], 5).num_pages == 3
    with pytest.raises(ValueError, match=r"cache.num_pages=2 is too small"):
        plan_pages(CacheConfig(paged=True, page_size=16, num_pages=2), [12, 13], 5)


PAGE, D = 4, 2
PCFG = ModelConfig(name="pc", vocab_size=16, width=8, layers=1, heads=2, kv_heads=1, head_dim=D, mlp_dim=8,
                   max_seq_len=16)


PAGED_LENGTHS = [[8, 1], [1, 8]]  # both orders: duplicate scatter writes may resolve either way


def _paged_data(lengths):
    """(plan, K, V [2, 8, 1, D], one decode step's K [2, 1, D]) for rows of ``lengths`` in a
    pool of exactly the pages they need (4 positions a page): the row of length 1 holds one
    page, so prefilling 8 positions puts its positions 4..7 in no page at all, and the pool's
    last page (what a -1 index reaches) is live."""
    from model.paged_cache import PagePlan

    plan = PagePlan(page_size=PAGE, pages_per_row=2, num_pages=sum(-(-n // PAGE) for n in lengths))
    rng = np.random.default_rng(7)
    k = rng.standard_normal((2, 8, 1, D)).astype(np.float32)
    v = rng.standard_normal((2, 8, 1, D)).astype(np.float32)
    step_k = rng.standard_normal((2, 1, D)).astype(np.float32)
    return plan, k, v, step_k


def _check_pool(pool, table, k, lengths):
    pool = np.asarray(pool)
    for b, n in enumerate(lengths):
        for t in range(n):
            page = table[b][t // PAGE]
            np.testing.assert_array_equal(pool[page, t % PAGE], k[b, t], err_msg=f"row {b} position {t}")


def _stepped(k, step_k, lengths):
    """k with each row's last valid position replaced by the decode step's K."""
    k2 = k.copy()
    for b, n in enumerate(lengths):
        k2[b, n - 1] = step_k[b]
    return k2


@pytest.mark.parametrize("lengths", PAGED_LENGTHS)
def test_torch_paged_prefill_never_writes_a_live_page(lengths):
    """Mutation PT1: positions without a page (-1 in the block table) written anyway land in
    page -1, the pool's last page, which here is live: a row's K/V is overwritten by padding.
    An append then writes exactly its row's slot."""
    from model.paged_cache_torch import PagedKVCache

    plan, k, v, step_k = _paged_data(lengths)
    cache = PagedKVCache.create(PCFG, 2, plan)
    cache.reserve(lengths)
    table = cache.pages.table
    assert cache.block_table.tolist() == table.tolist() and sorted(table[table >= 0].tolist()) == [0, 1, 2]
    cache.prefill(0, torch.from_numpy(k), torch.from_numpy(v))
    _check_pool(cache.k[0].numpy(), table, k, lengths)
    _check_pool(cache.v[0].numpy(), table, v, lengths)
    cache.lengths = torch.tensor([n - 1 for n in lengths], dtype=torch.int32)
    cache.append(0, torch.from_numpy(step_k), torch.from_numpy(step_k))
    _check_pool(cache.k[0].numpy(), table, _stepped(k, step_k, lengths), lengths)


@pytest.mark.parametrize("lengths", PAGED_LENGTHS)
def test_jax_paged_prefill_drops_positions_without_a_page(lengths):
    """Mutations PJ1 (a -1 table entry not mapped to the dropped index: JAX wraps it to the
    pool's last page, which is live here) and PJ2 (the out-of-pool index clipped onto the
    last page instead of dropped). An append writes its row's slot; appends past the block
    table (position 8) are dropped."""
    import jax.numpy as jnp

    from model.paged_cache import PageTable
    from model.paged_cache_jax import PagedKVCache

    plan, k, v, step_k = _paged_data(lengths)
    pages = PageTable(2, plan)
    assert pages.reserve(lengths) and sorted(pages.table[pages.table >= 0].tolist()) == [0, 1, 2]
    cache = PagedKVCache.create(PCFG, pages.table, plan)
    kp, vp = cache.prefill(0, jnp.asarray(k), jnp.asarray(v))
    _check_pool(kp, pages.table, k, lengths)
    _check_pool(vp, pages.table, v, lengths)
    cache = cache._replace(k=(kp,), v=(vp,), lengths=jnp.asarray([n - 1 for n in lengths], jnp.int32))
    kp2, _, extra = cache.append(0, jnp.asarray(step_k), jnp.asarray(step_k))
    _check_pool(kp2, pages.table, _stepped(k, step_k, lengths), lengths)
    np.testing.assert_array_equal(np.asarray(extra["block_table"]), pages.table)
    past = cache._replace(k=(kp2,), lengths=jnp.asarray([8, 8], jnp.int32))
    np.testing.assert_array_equal(np.asarray(past.append(0, jnp.asarray(step_k), jnp.asarray(step_k))[0]),
                                  np.asarray(kp2))
