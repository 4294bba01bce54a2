"""The Gemini reference model: PyTorch and JAX against an independent float64 numpy model.

Rule (kernels/tolerances.py): a model's fp32 error vs float64 <= 2x the error of the PyTorch
reference-kernel model in fp32 + the fp32 floor; that baseline model is itself held to the fp32
floor (``reference_error``), so a bug in it (or one both frameworks share) cannot widen its own
bound. Covers GQA, RoPE, softcaps, local/global alternation, query scale, segment ids, embeds;
loss + gradients across frameworks (same checkpoint); KV-cache prefill + per-row decode; every
kernel preset. ``forward64`` also knows the image-token head and bidirectional media blocks
(tests/test_multimodal_lm.py).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kernels.tolerances import ATOL_FLOOR, ERROR_RATIO
from model import jax_model
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import KernelConfig, ModelConfig, param_specs
from model.torch_model import GeminiModel, KVCache

# GQA, softcaps, local (window 3) layer 0, global layer 1, non-default scale and theta.
FULL = ModelConfig(name="full", vocab_size=96, width=64, layers=2, heads=4, kv_heads=2, head_dim=16,
                   mlp_dim=96, max_seq_len=64, rope_theta=500.0, attn_softcap=2.0, final_softcap=5.0,
                   local_window=3, local_every=2, query_scale=0.3)
PLAIN = ModelConfig(name="plain", vocab_size=80, width=32, layers=2, heads=2, kv_heads=1, head_dim=16,
                    mlp_dim=64, max_seq_len=64)


def random_params(cfg: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """O(1) activations so softcaps and windows matter: matrices std 1/sqrt(in), norms N(0, 0.3)."""
    r = np.random.default_rng(seed)
    out = {}
    for name, (shape, _) in param_specs(cfg).items():
        std = 0.3 if len(shape) == 1 else (0.5 if "embed" in name else shape[1] ** -0.5)
        out[name] = (r.standard_normal(shape) * std).astype(np.float32)
    return out


def q_end64(media_ids) -> np.ndarray:
    """[B, S]: query i's last visible key, the last index of its contiguous run of equal media
    ids if its id >= 0, else i (kernels/attention/spec.py's bidirectional_ids, kv_len == q_len)."""
    m = np.asarray(media_ids)
    b, s = m.shape
    out = np.broadcast_to(np.arange(s), (b, s)).copy()
    for r in range(b):
        for i in range(s - 2, -1, -1):
            if m[r, i] >= 0 and m[r, i + 1] == m[r, i]:
                out[r, i] = out[r, i + 1]
    return out


def forward64(params, tokens, cfg: ModelConfig, *, segment_ids=None, embeds=None, embed_mask=None,
              media_ids=None):
    """The architecture written out once more in float64 numpy (no kernels); image-token head
    (cfg.image_vocab) and bidirectional media blocks (media_ids) included."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    b, s = tokens.shape
    h_, kvh, d = cfg.heads, cfg.kv_heads, cfg.head_dim
    table = p["model.embed_tokens.weight"]
    if cfg.image_vocab:  # ids >= vocab_size index the image table: one [V + I, W] lookup table
        table = np.concatenate([table, p["model.image_embed_tokens.weight"]])
    x = table[tokens] * math.sqrt(cfg.width)
    if embeds is not None:
        x = np.where(embed_mask[..., None], np.asarray(embeds, np.float64), x)
    norm = lambda x, w: x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps) * (1 + w)  # noqa: E731
    cap = lambda x, c: x if c is None else c * np.tanh(x / c)  # noqa: E731
    inv = cfg.rope_theta ** (-np.arange(d // 2) / (d // 2))
    ang = np.arange(s)[None, :, None, None] * inv  # (1, S, 1, D/2)

    def rope(t):
        t1, t2 = t[..., : d // 2], t[..., d // 2:]
        return np.concatenate([t1 * np.cos(ang) - t2 * np.sin(ang), t2 * np.cos(ang) + t1 * np.sin(ang)], -1)

    qi, ki = np.arange(s)[:, None], np.arange(s)[None, :]
    if media_ids is not None:  # a query sees keys up to the end of its media block
        qi = q_end64(media_ids)[:, None, :, None]  # (B, 1, S, 1)
    for i in range(cfg.layers):
        w = lambda n: p[f"model.layers.{i}.{n}.weight"]  # noqa: E731
        h = norm(x, w("input_layernorm"))
        q = rope((h @ w("self_attn.q_proj").T).reshape(b, s, h_, d))
        k = np.repeat(rope((h @ w("self_attn.k_proj").T).reshape(b, s, kvh, d)), h_ // kvh, axis=2)
        v = np.repeat((h @ w("self_attn.v_proj").T).reshape(b, s, kvh, d), h_ // kvh, axis=2)
        scale = cfg.query_scale if cfg.query_scale is not None else d ** -0.5
        sc = cap(np.einsum("bshd,bthd->bhst", q, k) * scale, cfg.attn_softcap)
        mask = np.broadcast_to(ki <= qi, (b, 1, s, s))
        if cfg.is_local(i):
            mask = mask & (ki > qi - cfg.local_window)
        if segment_ids is not None:
            mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
        sc = np.where(mask, sc, -np.inf)
        pr = np.exp(sc - sc.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        x = x + np.einsum("bhst,bthd->bshd", pr, v).reshape(b, s, h_ * d) @ w("self_attn.o_proj").T
        h = norm(x, w("post_attention_layernorm"))
        g = h @ w("mlp.gate_proj").T
        gelu = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g ** 3)))
        x = x + (gelu * (h @ w("mlp.up_proj").T)) @ w("mlp.down_proj").T
    x = norm(x, p["model.norm.weight"])
    return cap(x @ table.T, cfg.final_softcap)


def torch_model(cfg, params, preset="reference"):
    m = GeminiModel(cfg, KernelConfig(preset))
    m.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    return m


def jax_forward(cfg, params, preset="reference", **kw):
    """Jitted (one compile is cheaper than eager per-op dispatch at these sizes)."""
    fwd = jax.jit(functools.partial(jax_model.forward, cfg=cfg, kernels=KernelConfig(preset)))
    return fwd({k: jnp.asarray(v) for k, v in params.items()}, kw.pop("tokens"), **kw)


def err(x, ref):
    return float(np.max(np.abs(np.asarray(x, np.float64) - ref)))


def bound(baseline_err, ref):
    return ERROR_RATIO * baseline_err + ATOL_FLOOR["float32"] * max(1.0, float(np.abs(ref).max()))


def reference_error(cfg, params, tokens, ref, **kw):
    """The torch reference-kernel model's fp32 error vs float64, the 2x rule's baseline. That
    model is code under test too: it must sit within the fp32 floor itself (measured ~2e-6 vs
    a 1e-4 floor on FULL), else a wrong model would loosen the bound it is checked against."""
    base = err(torch_model(cfg, params)(torch.from_numpy(tokens), **kw).detach(), ref)
    assert base <= bound(0.0, ref), \
        f"torch reference model vs float64: error {base:.3g} > fp32 floor {bound(0.0, ref):.3g}"
    return base


@pytest.fixture(scope="module")
def full_case():
    cfg, params = FULL, random_params(FULL, 0)
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 11))
    ref = forward64(params, tokens, cfg)
    return cfg, params, tokens, ref, reference_error(cfg, params, tokens, ref)


def test_param_names_and_shapes_match_the_spec_table():
    specs = param_specs(FULL)
    sd = GeminiModel(FULL).state_dict()
    assert list(sd) == list(specs)
    assert {n: tuple(t.shape) for n, t in sd.items()} == {n: s for n, (s, _) in specs.items()}
    jp = jax_model.init_params(FULL, jax.random.PRNGKey(0))
    assert {n: a.shape for n, a in jp.items()} == {n: s for n, (s, _) in specs.items()}
    a, b = GeminiModel(PLAIN), GeminiModel(PLAIN)
    a.init_weights(3), b.init_weights(3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_local_global_layer_order_is_gemma2s():
    """HF Gemma 2: even layers slide (layer 0 is local), odd ones are global; local_every=3
    makes every third layer global. A flipped order would still pass the float64 comparisons."""
    import dataclasses

    c = dataclasses.replace(FULL, layers=4, local_every=2)
    assert [c.is_local(i) for i in range(4)] == [True, False, True, False]
    c = dataclasses.replace(FULL, layers=6, local_every=3)
    assert [c.is_local(i) for i in range(6)] == [True, True, False, True, True, False]
    assert not any(dataclasses.replace(FULL, local_every=0).is_local(i) for i in range(4))


def test_features_change_the_float64_model(full_case):
    """Softcaps, the window, the query scale and rope_theta each matter at these sizes (the tests
    can fail)."""
    cfg, params, tokens, ref, _ = full_case
    for change in (dict(attn_softcap=None), dict(final_softcap=None), dict(local_every=0),
                   dict(query_scale=None), dict(rope_theta=10000.0)):
        other = forward64(params, tokens, ModelConfig(**{**cfg.to_dict(), **change}))
        assert err(other, ref) > 1e-2, change


def test_torch_and_jax_from_one_checkpoint_match_float64(full_case, tmp_path):
    cfg, params, tokens, ref, base = full_case
    save_checkpoint(tmp_path / "m.safetensors", params, cfg)
    tp, _ = load_checkpoint(tmp_path / "m.safetensors", framework="torch")
    jp, cfg2 = load_checkpoint(tmp_path / "m.safetensors", framework="jax")
    assert cfg2 == cfg
    m = GeminiModel(cfg)
    m.load_state_dict(tp)
    out_t = m(torch.from_numpy(tokens)).detach().numpy()
    out_j = np.asarray(jax.jit(functools.partial(jax_model.forward, cfg=cfg))(jp, jnp.asarray(tokens)))
    assert out_t.dtype == out_j.dtype == np.float32 and out_t.shape == (2, 11, cfg.vocab_size)
    assert err(out_t, ref) <= bound(base, ref)
    assert err(out_j, ref) <= bound(base, ref)


@pytest.mark.parametrize("framework,preset", [("torch", "triton"), ("torch", "sdpa"),
                                              ("jax", "pallas"), ("jax", "xla"), ("jax", "reference")])
def test_kernel_choice_changes_nothing(full_case, framework, preset):
    cfg, params, tokens, ref, base = full_case
    if preset in ("sdpa", "xla"):  # the peers have no attention softcap (they raise): drop it
        cfg = ModelConfig(**{**cfg.to_dict(), "attn_softcap": None})
        ref = forward64(params, tokens, cfg)
        base = reference_error(cfg, params, tokens, ref)
    if framework == "torch":
        out = torch_model(cfg, params, preset)(torch.from_numpy(tokens)).detach().numpy()
    else:
        out = jax_forward(cfg, params, preset, tokens=jnp.asarray(tokens))
    assert err(out, ref) <= bound(base, ref), (framework, preset)


def test_autotuned_attention_tiles_train_like_the_defaults(full_case):
    """KernelConfig(attention_blocks="autotune"): the first step times the forward and backward
    tile candidates (interpreter: its own two of each); loss and gradients equal the default
    tiles' to fp32 rounding, and a bad value is refused up front."""
    from kernels.attention import triton_autotune

    cfg, params, tokens, _, _ = full_case
    triton_autotune.TUNING.clear()
    grads = []
    for blocks in (None, "autotune"):
        m = GeminiModel(cfg, KernelConfig("triton", attention_blocks=blocks))
        m.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
        m(torch.from_numpy(tokens)).square().mean().backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    assert any(key[-1] == "backward" for key in triton_autotune.TUNING)
    for name, g in grads[1].items():
        torch.testing.assert_close(g, grads[0][name], rtol=1e-4, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="attention_blocks"):
        KernelConfig("triton", attention_blocks="fastest")


def test_segment_ids_and_embeds_in_both_frameworks():
    cfg, params = PLAIN, random_params(PLAIN, 2)
    r = np.random.default_rng(3)
    tokens = r.integers(0, cfg.vocab_size, (2, 9))
    seg = np.array([[0] * 4 + [1] * 5, [0] * 9], np.int32)
    embeds = r.standard_normal((2, 9, cfg.width)).astype(np.float32)
    mask = r.random((2, 9)) < 0.4
    ref = forward64(params, tokens, cfg, segment_ids=seg, embeds=embeds, embed_mask=mask)
    out_t = torch_model(cfg, params)(torch.from_numpy(tokens), segment_ids=torch.from_numpy(seg),
                                     embeds=torch.from_numpy(embeds), embed_mask=torch.from_numpy(mask))
    base = err(out_t.detach(), ref)
    out_j = jax_forward(cfg, params, tokens=jnp.asarray(tokens), segment_ids=jnp.asarray(seg),
                        embeds=jnp.asarray(embeds), embed_mask=jnp.asarray(mask))
    assert err(out_j, ref) <= bound(base, ref)
    assert base <= bound(0.0, ref) * 10  # the fp32 model itself is close to float64
    with pytest.raises(ValueError, match="embed_mask"):
        torch_model(cfg, params)(torch.from_numpy(tokens), embeds=torch.from_numpy(embeds))


def test_loss_and_gradients_match_across_frameworks(full_case):
    cfg, params, tokens, _, _ = full_case
    targets = np.random.default_rng(4).integers(0, cfg.vocab_size, tokens.shape)
    m = torch_model(cfg, params)
    logits = m(torch.from_numpy(tokens))
    loss_t = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size),
                                               torch.from_numpy(targets).reshape(-1))
    loss_t.backward()

    def loss_fn(p):
        lg = jax_model.forward(p, jnp.asarray(tokens), cfg=cfg)
        lp = jax.nn.log_softmax(lg, -1)
        return -jnp.take_along_axis(lp, jnp.asarray(targets)[..., None], -1).mean()

    loss_j, grads = jax.jit(jax.value_and_grad(loss_fn))({k: jnp.asarray(v) for k, v in params.items()})
    assert abs(float(loss_j) - float(loss_t)) <= 1e-5 * max(1.0, abs(float(loss_t)))
    torch_grads = {n: p.grad.numpy() for n, p in m.named_parameters()}
    assert set(grads) == set(torch_grads) == set(param_specs(cfg))
    for name, g in grads.items():
        gt = torch_grads[name]
        scale = max(float(np.abs(gt).max()), 1e-3)
        assert err(g, gt.astype(np.float64)) <= 1e-4 * scale, name  # fp32 accumulation-order noise


def _cached_logits_torch(cfg, params, tokens, prompt_lens, preset):
    """Prefill the right-padded prompts, then decode each row from its own length."""
    m = torch_model(cfg, params, preset)
    b, total = tokens.shape
    cache = KVCache.create(cfg, b, total + 1)
    t = torch.from_numpy(tokens)
    out = np.zeros((b, total, cfg.vocab_size), np.float32)
    pre = m(t[:, : max(prompt_lens)], cache=cache).detach().numpy()
    cache.lengths = torch.tensor(prompt_lens, dtype=torch.int32)
    for r, n in enumerate(prompt_lens):
        out[r, :n] = pre[r, :n]
    for step in range(total - min(prompt_lens)):
        pos = [min(n + step, total - 1) for n in prompt_lens]  # finished rows repeat their last token
        lg = m(t[torch.arange(b), pos][:, None], cache=cache).detach().numpy()
        for r, n in enumerate(prompt_lens):
            if n + step < total:
                out[r, n + step] = lg[r, 0]
        cache.lengths = torch.tensor([min(n + step + 1, total - 1) for n in prompt_lens], dtype=torch.int32)
    return out


def _cached_logits_jax(cfg, params, tokens, prompt_lens, preset):
    p = {k: jnp.asarray(v) for k, v in params.items()}
    b, total = tokens.shape
    fwd = jax.jit(lambda p, t, c: jax_model.forward(p, t, cfg=cfg, kernels=KernelConfig(preset), cache=c))
    cache = jax_model.KVCache.create(cfg, b, total + 1)
    t = jnp.asarray(tokens)
    out = np.zeros((b, total, cfg.vocab_size), np.float32)
    pre, cache = fwd(p, t[:, : max(prompt_lens)], cache)
    cache = cache._replace(lengths=jnp.asarray(prompt_lens, jnp.int32))
    for r, n in enumerate(prompt_lens):
        out[r, :n] = np.asarray(pre)[r, :n]
    for step in range(total - min(prompt_lens)):
        pos = [min(n + step, total - 1) for n in prompt_lens]
        lg, cache = fwd(p, t[jnp.arange(b), jnp.asarray(pos)][:, None], cache)
        for r, n in enumerate(prompt_lens):
            if n + step < total:
                out[r, n + step] = np.asarray(lg)[r, 0]
        cache = cache._replace(lengths=jnp.asarray([min(n + step + 1, total - 1) for n in prompt_lens],
                                                   jnp.int32))
    return out


@pytest.mark.parametrize("framework,preset", [("torch", "reference"), ("jax", "reference"),
                                              ("torch", "triton"), ("jax", "pallas")])
def test_kv_cache_prefill_and_decode_match_the_full_forward(full_case, framework, preset):
    """Rows of different prompt lengths (3 and 6 of 9 tokens); the window (3) is exceeded."""
    cfg, params, tokens, ref, base = full_case
    tokens, ref = tokens[:, :9], forward64(params, tokens[:, :9], cfg)
    fn = _cached_logits_torch if framework == "torch" else _cached_logits_jax
    out = fn(cfg, params, tokens, [3, 6], preset)
    assert err(out, ref) <= bound(base, ref)


def test_cache_misuse_is_refused():
    cfg, params = PLAIN, random_params(PLAIN, 5)
    m = torch_model(cfg, params)
    cache = KVCache.create(cfg, 1, 8)
    m(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="empty cache"):
        m(torch.zeros(1, 2, dtype=torch.long), cache=cache)
    jc = jax_model.KVCache.create(cfg, 1, 4)._replace(lengths=jnp.asarray([4], jnp.int32))
    with pytest.raises(ValueError, match="too short"):
        jax_model.forward({k: jnp.asarray(v) for k, v in params.items()}, jnp.zeros((1, 1), jnp.int32),
                          cfg=cfg, cache=jc)  # eager: the lengths are concrete and checked
    with pytest.raises(ValueError, match="max_len"):
        KVCache.create(cfg, 1, cfg.max_seq_len + 1)


def test_torch_forward_under_bf16_autocast():
    """Mixed precision: bf16 branch outputs join the fp32 residual stream (fused residual norm).
    Autocast ignored would give a zero difference; a bf16 residual stream, fp32 branches or a
    bf16 logits tensor show in the dtypes the hooks record; the logits stay within bf16's floor."""
    from model.config import PRESETS
    from model.torch_model import GeminiModel

    model = GeminiModel(PRESETS["tiny"])
    model.init_weights(0)
    tokens = torch.randint(0, PRESETS["tiny"].vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    dtypes = {}
    hooks = [mod.register_forward_hook(lambda _m, _i, out, name=name: dtypes.__setitem__(name, out.dtype))
             for name, mod in model.named_modules()
             if name.endswith((".self_attn", ".mlp")) or name.count(".") == 2 and name.startswith("model.layers.")]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(tokens)
    for h in hooks:
        h.remove()
    assert len(dtypes) == 3 * PRESETS["tiny"].layers
    for name, dtype in dtypes.items():  # branches bf16; decoder layer outputs (the stream) fp32
        assert dtype == (torch.float32 if name.count(".") == 2 else torch.bfloat16), (name, dtype)
    ref = model(tokens)
    assert logits.dtype == ref.dtype == torch.float32 and torch.isfinite(logits).all()
    diff = float((logits - ref).abs().max())
    assert 0 < diff <= ATOL_FLOOR["bfloat16"] * max(1.0, float(ref.abs().max()))  # measured 0.022 vs 0.13


@pytest.mark.parametrize("loss_impl", ["triton", "reference"])
def test_torch_loss_kernel_equals_the_logits_loss(loss_impl):
    """GeminiModel.loss (the fused linear cross-entropy for triton) == model.losses on the
    full logits, value and gradients (softcapped logits, masked rows holding -100)."""
    import dataclasses

    from model import losses
    from model.config import PRESETS
    from model.torch_model import GeminiModel

    cfg = dataclasses.replace(PRESETS["tiny"], final_softcap=30.0)
    model = GeminiModel(cfg, KernelConfig(preset="reference", loss=loss_impl))
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, cfg.vocab_size, (2, 11), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (2, 11), generator=g)
    mask = torch.rand(2, 11, generator=g) > 0.25
    got = model.loss(tokens, torch.where(mask, targets, -100), mask, normalizer=9.0)
    got_grads = torch.autograd.grad(got, list(model.parameters()))
    want = losses.torch_masked_cross_entropy(model(tokens), targets, mask, normalizer=9.0)
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_kernel_config_refuses_unknown_impls_when_built():
    """A typo in a preset or a per-op override fails where the config is built, naming the op."""
    KernelConfig("triton", attention="ring", decode="sdpa", loss="reference")
    KernelConfig("pallas", attention="pallas_tpu", decode="pallas_tpu", norm="xla")
    with pytest.raises(ValueError, match="kernels preset: expected one of .* got 'trition'"):
        KernelConfig("trition")
    with pytest.raises(ValueError, match="kernels.decode: expected one of .* got 'ring'"):
        KernelConfig("triton", decode="ring")
    with pytest.raises(ValueError, match="kernels.norm: .* got 'sdpa'"):
        KernelConfig("reference", norm="sdpa")
