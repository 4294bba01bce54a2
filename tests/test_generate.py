"""Tokenizer, sampling and generation (model/tokenizer.py, model/sampling.py, model/generate.py).

Generation: greedy decoding through the KV cache (prefill, then one token per step on the
model's decode path) equals greedy decoding that recomputes the whole sequence each step,
token for token, for a batch of prompts of different lengths, in PyTorch and JAX. Sampling:
a seed reproduces a run and different seeds differ; top_k=1 and a tiny top_p are greedy;
the exponential-race draw follows softmax (frequency test); stop tokens end rows one by one.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model import tokenizer as tk
from model.sampling import SamplingConfig, filter_logits_jax, filter_logits_torch, sample_jax, sample_torch

TEXTS = ["", "hello", "héllo wörld 🙂 \x00\n\t", "a" * 300]


# --- tokenizer ---

@pytest.mark.parametrize("text", TEXTS, ids=["empty", "ascii", "unicode", "long"])
def test_byte_tokenizer_round_trip(text):
    t = tk.ByteTokenizer()
    ids = t.encode(text, bos=True, eos=True)
    assert ids[0] == tk.BOS_ID and ids[-1] == tk.EOS_ID
    assert ids[1:-1] == list(text.encode("utf-8"))
    assert t.decode(ids) == text
    assert tk.decode(np.asarray(ids)) == text == tk.decode(torch.tensor(ids))
    assert t.decode(ids, skip_special=False) == "<bos>" + text + "<eos>"


def test_special_ids_layout():
    ids = list(tk.SPECIAL_IDS.values())
    assert len(set(ids)) == len(ids)
    assert all(tk.BYTE_VOCAB <= i < tk.VOCAB_MIN for i in ids)
    assert tk.ByteTokenizer.vocab_size == tk.VOCAB_MIN
    span = tk.multimodal_span("image", 3)
    assert span == [tk.IMAGE_START_ID] + [tk.MEDIA_PLACEHOLDER_ID] * 3 + [tk.IMAGE_END_ID]
    assert tk.decode(span + list(b"ok")) == "ok"


def test_tokenizer_bad_input():
    t = tk.ByteTokenizer()
    with pytest.raises(ValueError, match=r"token id 272 at position 1 is out of range \[0, 272\)"):
        t.decode([65, 272])
    with pytest.raises(ValueError, match=r"token id -1 at position 0"):
        tk.decode([-1])
    with pytest.raises(TypeError, match="text must be str or bytes, got int"):
        t.encode(3)
    with pytest.raises(ValueError, match="kind must be one of"):
        tk.multimodal_span("smell", 2)


def _tiny_tokenizer_json(folder):
    """A small byte-level BPE trained here and saved as ``folder/tokenizer.json``."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 8, trainer)
    tok.save(str(folder / "tokenizer.json"))


def test_hf_tokenizer_json(tmp_path):
    assert isinstance(tk.load_tokenizer(str(tmp_path)), tk.ByteTokenizer)  # no tokenizer.json
    _tiny_tokenizer_json(tmp_path)
    t = tk.load_tokenizer(str(tmp_path / "model.safetensors"))  # the checkpoint file's folder
    assert isinstance(t, tk.HFTokenizer)
    assert (t.pad_id, t.eos_id, t.bos_id) == (0, 1, 2)
    assert len(t.encode("the quick brown fox")) < len("the quick brown fox")  # merges apply
    for text in TEXTS:
        ids = t.encode(text, bos=True, eos=True)
        assert ids[0] == t.bos_id and ids[-1] == t.eos_id
        assert t.decode(ids) == text
    with pytest.raises(ValueError, match=rf"token id {t.vocab_size} at position 0 is out of range"):
        t.decode([t.vocab_size])


# --- sampling ---

def test_sampling_config_bad_input():
    for bad, msg in [(dict(temperature=-1.0), "temperature must be"), (dict(top_k=0), "top_k must be"),
                     (dict(top_p=0.0), "top_p must be"), (dict(top_p=1.5), "top_p must be"),
                     (dict(temperature=float("nan")), "temperature must be")]:
        with pytest.raises(ValueError, match=msg):
            SamplingConfig(**bad)
    with pytest.raises(ValueError, match=r"unknown sampling option\(s\) \['top_q'\]; known options"):
        SamplingConfig.from_options(temperature=1.0, top_q=0.5)
    with pytest.raises(ValueError, match="top_k 600 exceeds the vocabulary size 512"):
        SamplingConfig(temperature=1.0, top_k=600).check_vocab(512)


def _draw_torch(logits, cfg, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return sample_torch(logits.expand(n, -1), cfg, g).numpy()


def _draw_jax(logits, cfg, n, seed=0):
    import jax
    import jax.numpy as jnp

    return np.asarray(sample_jax(jnp.broadcast_to(jnp.asarray(logits.numpy()), (n, logits.shape[-1])),
                                 cfg, jax.random.key(seed)))


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_sampling_follows_softmax(framework):
    """Frequencies of 40k draws at temperature 0.7 vs softmax(logits / 0.7), within 5 sigma;
    top_k / top_p draws stay in their support and follow the renormalised distribution."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    draw = _draw_torch if framework == "torch" else _draw_jax
    n = 40000
    for cfg, keep in [(SamplingConfig(temperature=0.7), 6), (SamplingConfig(temperature=0.7, top_k=3), 3),
                      (SamplingConfig(temperature=0.7, top_p=0.8), None)]:
        p = torch.softmax(logits[0] / 0.7, -1).double().numpy()
        if keep is None:  # smallest prefix with mass >= 0.8
            keep = int(np.searchsorted(np.cumsum(p), 0.8) + 1)
        p[keep:] = 0
        p /= p.sum()
        counts = np.bincount(draw(logits, cfg, n), minlength=6)
        assert counts[keep:].sum() == 0, f"{cfg}: drew outside the top {keep}: {counts}"
        sigma = np.sqrt(n * p * (1 - p)) + 1
        assert np.all(np.abs(counts - n * p) <= 5 * sigma), f"{cfg}: counts {counts} vs expected {n * p}"


def test_filters_agree_across_frameworks(rng):
    import jax.numpy as jnp

    logits = torch.tensor(rng.standard_normal((4, 97)) * 3, dtype=torch.float32)
    for cfg in [SamplingConfig(temperature=0.9, top_k=5), SamplingConfig(temperature=1.3, top_p=0.7),
                SamplingConfig(temperature=1.0, top_k=20, top_p=0.5)]:
        a = filter_logits_torch(logits, cfg).numpy()
        b = np.asarray(filter_logits_jax(jnp.asarray(logits.numpy()), cfg))
        np.testing.assert_array_equal(np.isinf(a), np.isinf(b))
        np.testing.assert_allclose(a[np.isfinite(a)], b[np.isfinite(b)], rtol=1e-6)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_top_k_1_and_tiny_top_p_are_greedy(framework, rng):
    logits = torch.tensor(rng.standard_normal((64, 300)), dtype=torch.float32)
    greedy = logits.argmax(-1).numpy()
    for cfg in [SamplingConfig(temperature=1.5, top_k=1), SamplingConfig(temperature=1.5, top_p=1e-6)]:
        for seed in range(3):
            if framework == "torch":
                got = sample_torch(logits, cfg, torch.Generator().manual_seed(seed)).numpy()
            else:
                import jax
                import jax.numpy as jnp

                got = np.asarray(sample_jax(jnp.asarray(logits.numpy()), cfg, jax.random.key(seed)))
            np.testing.assert_array_equal(got, greedy)
