"""Hugging Face interop (model/hf.py): a random GemmaForCausalLM saved with save_pretrained loads
into both models and gives HF's logits to fp32 tolerance; unsupported configs are refused."""
from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kernels.tolerances import ATOL_FLOOR
from model import jax_model
from model.hf import config_from_hf, load_hf, load_hf_torch

transformers = pytest.importorskip("transformers", reason="test-only dependency (requirements-test.txt)")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """Random Gemma (MQA, head_dim != width / heads, theta 500, rms_norm_eps 1e-2 rather than the
    1e-6 default) with non-zero norm scales."""
    torch.manual_seed(0)
    cfg = transformers.GemmaConfig(
        vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
        rms_norm_eps=1e-2, rope_parameters={"rope_theta": 500.0, "rope_type": "default"})
    model = transformers.GemmaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.3 if "norm" in name else 0.2)
    d = tmp_path_factory.mktemp("gemma")
    model.save_pretrained(d)
    (d / "tokenizer.json").write_text("{}")
    tokens = torch.randint(0, cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(tokens).logits.double().numpy()
    return d, tokens, ref


def _tol(ref):
    return 10 * ATOL_FLOOR["float32"] * max(1.0, float(np.abs(ref).max()))  # two fp32 models


def test_hf_gemma_logits_in_both_frameworks(hf_dir):
    d, tokens, ref = hf_dir
    model, tok_path = load_hf_torch(d)
    assert tok_path == d / "tokenizer.json"
    assert (model.cfg.width, model.cfg.heads, model.cfg.kv_heads, model.cfg.head_dim,
            model.cfg.rope_theta, model.cfg.norm_eps) == (48, 4, 1, 16, 500.0, 1e-2)
    out_t = model(tokens).detach().double().numpy()
    assert np.abs(out_t - ref).max() <= _tol(ref)
    ckpt = load_hf(d, framework="jax")
    assert ckpt.cfg.norm_eps == 1e-2
    fwd = jax.jit(functools.partial(jax_model.forward, cfg=ckpt.cfg))
    out_j = np.asarray(fwd(ckpt.params, jnp.asarray(tokens.numpy())), np.float64)
    assert np.abs(out_j - ref).max() <= _tol(ref)


def test_unsupported_hf_configs_are_refused(hf_dir, tmp_path):
    base = json.loads((hf_dir[0] / "config.json").read_text())
    for change, match in ((dict(model_type="gemma2"), "model_type"),
                          (dict(tie_word_embeddings=False), "tie_word_embeddings"),
                          (dict(attention_bias=True), "attention_bias"),
                          (dict(hidden_act="relu"), "gelu_pytorch_tanh"),
                          (dict(rope_parameters={"rope_type": "linear", "factor": 2.0}), "RoPE")):
        with pytest.raises(ValueError, match=match):
            config_from_hf({**base, **change})
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(tmp_path)
