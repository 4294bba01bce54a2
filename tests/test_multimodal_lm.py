"""The LM's multimodal options: the image-token head (``ModelConfig.image_vocab``) and
bidirectional attention within media blocks (``ModelConfig.bidirectional_media``).

Both frameworks against the float64 numpy model of ``tests/test_model.py`` (``forward64``
knows both options) with the same tolerance rule (its baseline held to the fp32 floor); loss
and gradients across frameworks from one checkpoint; a tiny model learning to emit an
image-token sequence; perturbation tests of the attention pattern (an image token sees its
whole block, nothing after it; text stays causal); the options off leave the parameters and
outputs as before.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from model import jax_model
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import KernelConfig, ModelConfig, param_specs
from model.torch_model import GeminiModel, KVCache
from test_model import FULL, PLAIN, bound, err, forward64, random_params, reference_error, torch_model

IMG = dataclasses.replace(FULL, name="full_img", image_vocab=7)  # V + I = 103
BIDI = dataclasses.replace(FULL, name="full_bidi", bidirectional_media=True)


def _jax_fn(fn, cfg, preset="reference"):
    return jax.jit(functools.partial(fn, cfg=cfg, kernels=KernelConfig(preset)))


def _jp(params):
    return {k: jnp.asarray(v) for k, v in params.items()}


# --- image-token head ---------------------------------------------------------------------

def _image_tokens(cfg, shape, seed):
    """Ids drawn over the whole [0, V + I), at least a third of them image tokens."""
    r = np.random.default_rng(seed)
    t = r.integers(0, cfg.vocab_size, shape)
    img = r.random(shape) < 0.4
    return np.where(img, r.integers(cfg.vocab_size, cfg.total_vocab, shape), t)


def test_image_vocab_zero_leaves_param_specs_unchanged():
    with_img, without = param_specs(dataclasses.replace(PLAIN, image_vocab=5)), param_specs(PLAIN)
    assert "model.image_embed_tokens.weight" not in without
    assert all(not n.startswith("model.image") for n in without)
    assert list(with_img) == [list(without)[0], "model.image_embed_tokens.weight", *list(without)[1:]]
    assert with_img["model.image_embed_tokens.weight"] == ((5, PLAIN.width), ("image_vocab", "embed"))
    assert {n: with_img[n] for n in without} == without
    sd = GeminiModel(dataclasses.replace(PLAIN, image_vocab=5)).state_dict()
    assert {n: tuple(t.shape) for n, t in sd.items()} == {n: s for n, (s, _) in with_img.items()}
    assert list(sd) == list(with_img)
    assert list(GeminiModel(PLAIN).state_dict()) == list(without)
    for bad in (-1, True, 2.0):
        with pytest.raises(ValueError, match="image_vocab must be an int >= 0"):
            dataclasses.replace(PLAIN, image_vocab=bad)
    with pytest.raises(ValueError, match="bidirectional_media must be a bool"):
        dataclasses.replace(PLAIN, bidirectional_media=1)


def test_image_checkpoint_mismatch_is_refused(tmp_path):
    cfg = dataclasses.replace(PLAIN, image_vocab=5)
    save_checkpoint(tmp_path / "img.safetensors", random_params(cfg, 0), cfg)
    with pytest.raises(ValueError, match="unexpected parameter 'model.image_embed_tokens.weight'"):
        load_checkpoint(tmp_path / "img.safetensors", PLAIN)
    with pytest.raises(ValueError, match="missing parameter 'model.image_embed_tokens.weight'"):
        save_checkpoint(tmp_path / "bad.safetensors", random_params(PLAIN, 0), cfg)


@pytest.fixture(scope="module")
def img_case(tmp_path_factory):
    cfg, params = IMG, random_params(IMG, 10)
    path = tmp_path_factory.mktemp("img") / "m.safetensors"
    save_checkpoint(path, params, cfg)
    tokens = _image_tokens(cfg, (2, 11), 11)
    ref = forward64(params, tokens, cfg)
    return cfg, params, path, tokens, ref, reference_error(cfg, params, tokens, ref)


def test_image_head_logits_match_float64_from_one_checkpoint(img_case):
    cfg, params, path, tokens, ref, base = img_case
    assert ref.shape == (2, 11, cfg.vocab_size + cfg.image_vocab)
    # the image table matters for both the input embedding and the head
    text_only = forward64(params, np.where(tokens >= cfg.vocab_size, 0, tokens), cfg)
    assert err(text_only, ref) > 1e-2
    tp, _ = load_checkpoint(path, framework="torch")
    jp, cfg2 = load_checkpoint(path, framework="jax")
    assert cfg2 == cfg
    m = GeminiModel(cfg, KernelConfig("reference"))
    m.load_state_dict(tp)
    out_t = m(torch.from_numpy(tokens)).detach().numpy()
    out_j = np.asarray(_jax_fn(jax_model.forward, cfg)(jp, jnp.asarray(tokens)))
    assert out_t.shape == out_j.shape == ref.shape and out_t.dtype == out_j.dtype == np.float32
    assert err(out_t, ref) <= bound(base, ref)
    assert err(out_j, ref) <= bound(base, ref)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_image_head_kv_cache_prefill_and_decode(img_case, framework):
    """Prefill + decode steps that feed image tokens back in equal the float64 forward (the
    head's kernel is a matmul in every preset; the loss kernels are checked below)."""
    cfg, params, _, tokens, ref, base = img_case
    p = 6  # prompt length; the rest is decoded one token at a time
    if framework == "torch":
        m = torch_model(cfg, params)
        t = torch.from_numpy(tokens)
        cache = KVCache.create(cfg, 2, tokens.shape[1])
        steps = [m(t[:, :p], cache=cache).detach().numpy()]
        steps += [m(t[:, i:i + 1], cache=cache).detach().numpy() for i in range(p, tokens.shape[1])]
    else:
        fwd = _jax_fn(jax_model.forward, cfg)
        jp, t = _jp(params), jnp.asarray(tokens)
        cache = jax_model.KVCache.create(cfg, 2, tokens.shape[1])
        lg, cache = fwd(jp, t[:, :p], cache=cache)
        steps = [np.asarray(lg)]
        for i in range(p, tokens.shape[1]):
            lg, cache = fwd(jp, t[:, i:i + 1], cache=cache)
            steps.append(np.asarray(lg))
    assert err(np.concatenate(steps, axis=1), ref) <= bound(base, ref)


@pytest.mark.parametrize("torch_loss,jax_loss", [("reference", "xla"), ("triton", "pallas")])
def test_image_head_loss_and_gradients_match_across_frameworks(img_case, torch_loss, jax_loss):
    """The fused loss over the combined [V + I] vocabulary (image-token targets included):
    value against float64, gradients (both tables included) torch vs JAX."""
    cfg, params, path, tokens, _, _ = img_case
    r = np.random.default_rng(12)
    targets = _image_tokens(cfg, tokens.shape, 13)
    mask = r.random(tokens.shape) < 0.8
    logits64 = forward64(params, tokens, cfg)
    lp = logits64 - logits64.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    want = -(np.take_along_axis(lp, targets[..., None], -1)[..., 0] * mask).sum() / mask.sum()
    tp, _ = load_checkpoint(path, framework="torch")
    m = GeminiModel(cfg, KernelConfig("reference", loss=torch_loss))
    m.load_state_dict(tp)
    loss_t = m.loss(torch.from_numpy(tokens), torch.from_numpy(np.where(mask, targets, -100)),
                    torch.from_numpy(mask))
    loss_t.backward()
    jp, _ = load_checkpoint(path, framework="jax")
    lfn = jax.jit(jax.value_and_grad(functools.partial(jax_model.loss, cfg=cfg,
                                                       kernels=KernelConfig("reference", loss=jax_loss))))
    loss_j, grads = lfn(jp, jnp.asarray(tokens), jnp.asarray(targets), jnp.asarray(mask))
    assert abs(float(loss_t.detach()) - want) <= 1e-5 * max(1.0, abs(want))
    assert abs(float(loss_j) - want) <= 1e-5 * max(1.0, abs(want))
    torch_grads = {n: p.grad.numpy() for n, p in m.named_parameters()}
    assert set(grads) == set(torch_grads) == set(param_specs(cfg))
    assert np.abs(torch_grads["model.image_embed_tokens.weight"]).max() > 0
    for name, g in grads.items():
        gt = torch_grads[name]
        scale = max(float(np.abs(gt).max()), 1e-3)
        assert err(g, gt.astype(np.float64)) <= 1e-4 * scale, name  # fp32 accumulation-order noise


def test_jax_head_loss_refuses_the_text_only_table(img_case):
    cfg, params, _, tokens, _, _ = img_case
    jp = _jp(params)
    assert jax_model.head_table(jp, cfg).shape == (cfg.total_vocab, cfg.width)
    h = jnp.zeros((1, 3, cfg.width))
    with pytest.raises(ValueError, match=r"cfg.total_vocab = vocab_size 96 \+ image_vocab 7 = 103 rows"):
        jax_model.head_loss(h, jp["model.embed_tokens.weight"], jnp.zeros((1, 3), jnp.int32), cfg=cfg,
                            kernels=KernelConfig("reference"))


STEPS, LR = 20, 5e-2


def test_tiny_model_learns_to_emit_an_image_token_sequence():
    """Overfit one "<bos> draw <image_start> i_0..i_7 <image_end>" row, then greedy-decode it
    with the KV cache (image tokens are fed back in) through model.sampling."""
    from model.sampling import SamplingConfig, sample_torch
    from model.tokenizer import BOS_ID, IMAGE_END_ID, IMAGE_START_ID, VOCAB_MIN, ByteTokenizer

    cfg = ModelConfig(name="emit", vocab_size=VOCAB_MIN, image_vocab=16, width=32, layers=1, heads=2,
                      kv_heads=1, head_dim=16, mlp_dim=64, max_seq_len=32)
    tok = ByteTokenizer(image_ids=cfg.image_token_ids)
    code = [tok.image_token_id(k) for k in (3, 14, 0, 9, 9, 5, 11, 7)]
    prompt = [BOS_ID, *tok.encode("draw"), IMAGE_START_ID]
    row = torch.tensor([prompt + code + [IMAGE_END_ID]])
    model = GeminiModel(cfg, KernelConfig("reference"), seed=0)
    params = list(model.parameters())
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    mask = torch.zeros(1, row.shape[1] - 1, dtype=torch.bool)
    mask[:, len(prompt) - 1:] = True  # the image tokens and the end marker are the targets
    losses = []
    for step in range(1, STEPS + 1):  # Adam (b1 0.9, b2 0.99) by hand: torch.optim imports dynamo (~5 s)
        loss = model.loss(row[:, :-1], row[:, 1:], mask)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g, (m1, m2) in zip(params, grads, moments):
                m1.lerp_(g, 0.1)
                m2.lerp_(g * g, 0.01)
                p -= LR * (m1 / (1 - 0.9 ** step)) / ((m2 / (1 - 0.99 ** step)).sqrt() + 1e-8)
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.05 * losses[0], losses
    with torch.no_grad():
        cache = KVCache.create(cfg, 1, cfg.max_seq_len)
        last = model(torch.tensor([prompt]), cache=cache)[:, -1]
        out = []
        for _ in range(len(code) + 1):
            assert last.shape == (1, cfg.total_vocab)
            nxt = sample_torch(last, SamplingConfig())  # greedy over text + image ids
            out.append(int(nxt))
            last = model(nxt[:, None], cache=cache)[:, 0]
    assert out == code + [IMAGE_END_ID]
    from model.generate import generate  # the same emission through model.generate, both frameworks

    jp = {k: jnp.asarray(v.detach().numpy()) for k, v in model.state_dict().items()}
    for gen in (generate(model, [prompt], max_new_tokens=12, stop_tokens=[IMAGE_END_ID]),
                generate(jp, [prompt], max_new_tokens=12, stop_tokens=[IMAGE_END_ID], framework="jax", cfg=cfg)):
        assert gen.tokens == [code + [IMAGE_END_ID]] and gen.finish_reasons == ["stop"]
        assert gen.texts == [""]  # the default tokenizer knows the image block: decode drops it
    assert tok.decode(out, skip_special=False) == "<image_3><image_14><image_0><image_9><image_9><image_5>" \
                                                  "<image_11><image_7><image_end>"
    assert tok.decode(prompt + out) == "draw"


def test_generate_runs_with_the_image_head():
    """model/generate.py with logits [.., V + I] (both frameworks, cached == recomputed): the
    text table's padding rows [tokenizer.vocab_size, cfg.vocab_size) are never drawn, image ids
    may be (sampled at a high temperature here), and prompts may hold image ids."""
    from model.generate import generate
    from model.tokenizer import VOCAB_MIN

    cfg = ModelConfig(name="gen", vocab_size=VOCAB_MIN + 8, image_vocab=8, width=32, layers=1, heads=2,
                      kv_heads=1, head_dim=16, mlp_dim=64, max_seq_len=32)
    m = GeminiModel(cfg, KernelConfig("reference"), seed=1)
    jp = {k: jnp.asarray(v.detach().numpy()) for k, v in m.state_dict().items()}
    prompts = [[1, 2, 3], [cfg.vocab_size - 1, 5]]
    outs = [generate(m, prompts, max_new_tokens=4, stop_tokens=[], use_cache=c).tokens for c in (True, False)]
    outs.append(generate(jp, prompts, max_new_tokens=4, stop_tokens=[], framework="jax", cfg=cfg).tokens)
    assert outs[0] == outs[1] == outs[2] and all(len(r) == 4 for r in outs[0])
    assert all(0 <= i < cfg.total_vocab for r in outs[0] for i in r)
    drawn = {i for seed in range(3) for r in generate(
        m, [[1, cfg.vocab_size + 2, 3]] * 8, max_new_tokens=8, stop_tokens=[], temperature=50.0, seed=seed).tokens
        for i in r}
    assert not drawn & set(range(VOCAB_MIN, cfg.vocab_size))  # padding rows: never
    assert drawn & set(cfg.image_token_ids)  # image tokens: drawn (64 x 3 draws near uniform over 280 ids)


def test_generate_prefills_media_blocks_bidirectionally():
    """generate(media_ids=...) makes a prompt's media block bidirectional in the prefill, as
    forward(media_ids=...) does; cached == recomputed == torch == JAX; misuse refused."""
    from model.generate import generate

    cfg = ModelConfig(name="bidi-gen", vocab_size=300, width=32, layers=2, heads=2, kv_heads=1, head_dim=16,
                      mlp_dim=64, max_seq_len=32, bidirectional_media=True)
    m = GeminiModel(cfg, KernelConfig("reference"), seed=3)
    jp = {k: jnp.asarray(v.detach().numpy()) for k, v in m.state_dict().items()}
    prompts = [[1, 20, 21, 22, 23, 5, 6], [1, 7, 30, 31, 8]]
    media = np.full((2, 7), -1, np.int32)
    media[0, 1:5] = 0
    media[1, 2:4] = 0
    full = torch.tensor([prompts[0]])
    with torch.no_grad():
        bidi, causal = m(full, media_ids=torch.from_numpy(media[:1]))[0, -1], m(full)[0, -1]
    assert (bidi - causal).abs().max() > 1e-4  # the block's two-way attention reaches the last token
    want = int(bidi.argmax())
    runs = [generate(m, prompts, max_new_tokens=4, stop_tokens=[], media_ids=media, use_cache=c).tokens
            for c in (True, False)]
    runs.append(generate(jp, prompts, max_new_tokens=4, stop_tokens=[], media_ids=media, framework="jax",
                         cfg=cfg).tokens)
    assert runs[0] == runs[1] == runs[2]
    assert runs[0][0][0] == want  # the first draw comes from the bidirectional prefill
    with pytest.raises(ValueError, match="past its prompt length"):
        bad = media.copy()
        bad[1, 6] = 1
        generate(m, prompts, max_new_tokens=2, media_ids=bad)
    with pytest.raises(ValueError, match="flag is off"):
        generate(GeminiModel(dataclasses.replace(cfg, bidirectional_media=False), KernelConfig("reference")),
                 prompts, max_new_tokens=2, media_ids=media)


def test_tokenizer_image_token_block(tmp_path):
    from model import tokenizer as tk
    from test_generate import _tiny_tokenizer_json

    cfg = dataclasses.replace(PLAIN, vocab_size=300, image_vocab=4)
    assert cfg.image_token_ids == range(300, 304) and cfg.total_vocab == 304
    t = tk.ByteTokenizer(image_ids=cfg.image_token_ids)
    assert t.vocab_size == tk.VOCAB_MIN and t.is_image_token(302) and not t.is_image_token(299)
    assert t.decode([104, 301, 105, 303], skip_special=False) == "h<image_1>i<image_3>"
    assert t.decode([104, 301, 105]) == "hi"
    with pytest.raises(ValueError, match=r"token id 299 at position 1 is out of range \[0, 272\) and not in "
                                         r"the image-token block range\(300, 304\)"):
        t.decode([104, 299])
    with pytest.raises(ValueError, match=r"image token index must be an int in \[0, 4\), got 4"):
        t.image_token_id(4)
    with pytest.raises(ValueError, match="token id 300 at position 0 is out of range"):
        tk.ByteTokenizer().decode([300])  # no image block: as before
    with pytest.raises(ValueError, match="image_ids must start at or after the text vocab_size 272"):
        tk.ByteTokenizer(image_ids=range(200, 210))
    with pytest.raises(ValueError, match="image_ids must be a range of consecutive ids"):
        tk.ByteTokenizer(image_ids=[300, 301])
    _tiny_tokenizer_json(tmp_path)
    h = tk.load_tokenizer(str(tmp_path), image_ids=range(400, 402))
    assert isinstance(h, tk.HFTokenizer) and h.image_ids == range(400, 402)
    ids = h.encode("the fox")
    assert h.decode(ids[:2] + [401] + ids[2:]) == "the fox"
    assert "<image_1>" in h.decode(ids + [401], skip_special=False)


# --- bidirectional media blocks ------------------------------------------------------------

def _media_ids():
    """Row 0: text, a 5-token block (longer than the local window 3), text, a 2-token block,
    text; row 1: text only until a block that runs to the end."""
    m = np.full((2, 13), -1, np.int32)
    m[0, 2:7], m[0, 9:11] = 0, 1
    m[1, 8:13] = 0
    return m


@pytest.fixture(scope="module")
def bidi_case():
    cfg, params = BIDI, random_params(BIDI, 20)
    tokens = np.random.default_rng(21).integers(0, cfg.vocab_size, (2, 13))
    media = _media_ids()
    ref = forward64(params, tokens, cfg, media_ids=media)
    return cfg, params, tokens, media, ref, reference_error(cfg, params, tokens, ref,
                                                             media_ids=torch.from_numpy(media))


def test_bidirectional_reference_differs_from_causal(bidi_case):
    cfg, params, tokens, media, ref, _ = bidi_case
    causal = forward64(params, tokens, cfg)
    d = np.abs(causal - ref).max(-1)  # (B, S)
    np.testing.assert_array_equal(d[0, :2], 0.0)  # text before the first block: untouched
    assert d[0, 2:6].min() > 1e-3  # block positions that now see later block tokens
    assert d[1, :8].max() == 0.0 and d[1, 8:12].min() > 1e-3


@pytest.mark.parametrize("framework,preset", [("torch", "reference"), ("torch", "triton"),
                                              ("jax", "reference"), ("jax", "pallas")])
def test_bidirectional_matches_float64(bidi_case, framework, preset):
    cfg, params, tokens, media, ref, base = bidi_case
    if framework == "torch":
        out = torch_model(cfg, params, preset)(torch.from_numpy(tokens), media_ids=torch.from_numpy(media))
        out = out.detach().numpy()
    else:
        out = _jax_fn(jax_model.forward, cfg, preset)(_jp(params), jnp.asarray(tokens),
                                                     media_ids=jnp.asarray(media))
    assert err(out, ref) <= bound(base, ref), (framework, preset)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_bidirectional_perturbation(framework):
    """With the flag on, an image position's output depends on later positions of its own
    block and on nothing after the block; text stays causal. Flag off: causal everywhere."""
    cfg = dataclasses.replace(PLAIN, bidirectional_media=True)
    params = random_params(cfg, 30)
    r = np.random.default_rng(31)
    tokens = r.integers(0, cfg.vocab_size, (1, 12))
    media = np.full((1, 12), -1, np.int32)
    media[0, 3:8] = 0  # block at 3..7, text at 0..2 and 8..11
    embeds = r.standard_normal((1, 12, cfg.width)).astype(np.float32)
    mask = media >= 0
    if framework == "torch":
        m = torch_model(cfg, params)

        def run(tok, emb, ids=media):
            kw = {} if ids is None else dict(media_ids=torch.from_numpy(ids))
            return m(torch.from_numpy(tok), embeds=torch.from_numpy(emb), embed_mask=torch.from_numpy(mask),
                     **kw).detach().numpy()[0]
    else:
        fwd = _jax_fn(jax_model.forward, cfg)
        jp = _jp(params)

        def run(tok, emb, ids=media):
            kw = {} if ids is None else dict(media_ids=jnp.asarray(ids))
            return np.asarray(fwd(jp, jnp.asarray(tok), embeds=jnp.asarray(emb), embed_mask=jnp.asarray(mask),
                                  **kw))[0]

    base = run(tokens, embeds)
    late = embeds.copy()
    late[0, 7] += 1.0  # the block's last placeholder
    d = np.abs(run(tokens, late) - base).max(-1)
    np.testing.assert_array_equal(d[:3], 0.0)  # text before the block: causal
    assert d[3:].min() > 0  # every block position sees its last one; text after does too
    after = tokens.copy()
    after[0, 8] = (after[0, 8] + 1) % cfg.vocab_size  # the text token right after the block
    d = np.abs(run(after, embeds) - base).max(-1)
    np.testing.assert_array_equal(d[:8], 0.0)  # nothing before it, block included, sees it
    assert d[8:].min() > 0
    d = np.abs(run(tokens, late, None) - run(tokens, embeds, None)).max(-1)  # no media_ids: causal
    np.testing.assert_array_equal(d[:7], 0.0)
    assert d[7:].min() > 0


def test_bidirectional_all_text_ids_and_flag_off_change_nothing(bidi_case):
    cfg, params, tokens, _, _, _ = bidi_case
    off = dataclasses.replace(cfg, bidirectional_media=False)
    t = torch.from_numpy(tokens)
    want = torch_model(off, params)(t).detach()
    text = torch.full(t.shape, -1, dtype=torch.int32)
    assert torch.equal(torch_model(cfg, params)(t, media_ids=text).detach(), want)
    assert torch.equal(torch_model(cfg, params)(t).detach(), want)  # flag on, no media: causal
    jwant = np.asarray(_jax_fn(jax_model.forward, off)(_jp(params), jnp.asarray(tokens)))
    np.testing.assert_array_equal(jwant, np.asarray(_jax_fn(jax_model.forward, cfg)(
        _jp(params), jnp.asarray(tokens), media_ids=jnp.full(tokens.shape, -1, jnp.int32))))


def test_bidirectional_kv_cache_prefill_then_decode(bidi_case):
    """Prefill with media_ids (blocks in the prompt), then causal decode steps of text."""
    cfg, params, tokens, media, _, _ = bidi_case
    p = 9
    media = media.copy()
    media[:, p:] = -1  # decoded tokens are text (a decode step is causal)
    media[1, 3:6] = 2  # row 1: a block inside the prompt; row 0's first block ends at 6
    ref = forward64(params, tokens, cfg, media_ids=media)
    m = torch_model(cfg, params)
    t, mt = torch.from_numpy(tokens), torch.from_numpy(media)
    base = reference_error(cfg, params, tokens, ref, media_ids=mt)
    cache = KVCache.create(cfg, 2, tokens.shape[1])
    steps = [m(t[:, :p], media_ids=mt[:, :p], cache=cache).detach().numpy()]
    steps += [m(t[:, i:i + 1], cache=cache).detach().numpy() for i in range(p, tokens.shape[1])]
    assert err(np.concatenate(steps, 1), ref) <= bound(base, ref)
    fwd = _jax_fn(jax_model.forward, cfg)
    jp, jt, jm = _jp(params), jnp.asarray(tokens), jnp.asarray(media)
    lg, jc = fwd(jp, jt[:, :p], media_ids=jm[:, :p], cache=jax_model.KVCache.create(cfg, 2, tokens.shape[1]))
    out = [np.asarray(lg)]
    for i in range(p, tokens.shape[1]):
        lg, jc = fwd(jp, jt[:, i:i + 1], cache=jc)
        out.append(np.asarray(lg))
    assert err(np.concatenate(out, 1), ref) <= bound(base, ref)


def test_media_ids_misuse_is_refused(bidi_case):
    from model.jax_layers import attention as jax_attention

    cfg, params, tokens, media, _, _ = bidi_case
    t, mt = torch.from_numpy(tokens), torch.from_numpy(media)
    off = dataclasses.replace(cfg, bidirectional_media=False)
    with pytest.raises(ValueError, match="only used with ModelConfig.bidirectional_media=True"):
        torch_model(off, params)(t, media_ids=mt)
    with pytest.raises(ValueError, match="only used with ModelConfig.bidirectional_media=True"):
        jax_model.forward(_jp(params), jnp.asarray(tokens), cfg=off, media_ids=jnp.asarray(media))
    with pytest.raises(ValueError, match=r"media_ids must be an integer array \[B, S\] = \(2, 13\)"):
        torch_model(cfg, params)(t, media_ids=mt[:, :5])
    with pytest.raises(ValueError, match=r"media_ids must be an integer array \[B, S\] = \(2, 13\)"):
        jax_model.forward(_jp(params), jnp.asarray(tokens), cfg=cfg, media_ids=jnp.asarray(media, jnp.float32))
    m = torch_model(cfg, params)
    cache = KVCache.create(cfg, 2, 16)
    m(t, cache=cache)
    with pytest.raises(ValueError, match="a decode step .* is causal; pass none"):
        m(t[:, :1], media_ids=mt[:, :1], cache=cache)
    q = jnp.zeros((1, 4, 2, 16))
    with pytest.raises(ValueError, match='impl "ring" .* does not support bidirectional_ids'):
        jax_attention(q, q, q, impl="ring", causal=True, bidirectional_ids=jnp.zeros((1, 4), jnp.int32))
