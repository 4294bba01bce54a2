"""Multimodal interleaving (model/multimodal.py) and the encoders feeding the LM end to end."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import jax.numpy as jnp
from kernels.tolerances import BENCH_RTOL
from model import encoders_torch as ET
from model.audio import AudioConfig, audio_param_specs
from model.config import KernelConfig, ModelConfig
from model.encoder_common import init_params
from model.multimodal import (Audio, Image, Text, Video, multimodal_inputs_jax, multimodal_inputs_torch,
                              plan_layout)
from model.tokenizer import (AUDIO_END_ID, AUDIO_START_ID, IMAGE_END_ID, IMAGE_START_ID,
                             MEDIA_PLACEHOLDER_ID, PAD_ID, VIDEO_END_ID, VIDEO_START_ID)
from model.video import VideoConfig, video_param_specs
from model.vision import VisionConfig

VISION, AUDIO = VisionConfig(), AudioConfig()
VIDEO = VideoConfig(vision=VISION, max_frames=4)
REF = KernelConfig(preset="reference")
IMG_T, VID_FRAMES = VISION.tokens, 3


def make_params(rng):
    specs = {**video_param_specs(VIDEO), **audio_param_specs(AUDIO)}
    return {k: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in init_params(specs, 0).items()}


def make_batch(rng):
    f32 = lambda *s: (rng.standard_normal(s) * 0.5).astype(np.float32)  # noqa: E731
    return [
        [Text([1, 2, 3]), Image(f32(64, 64, 3)), Text([4, 5]), Audio(f32(6000))],
        [Audio(f32(2500)), Text([6]), Video(f32(VID_FRAMES, 64, 64, 3), fps=1.0), Text([7, 8])],
    ]


def assert_near(out, ref, what):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, what
    err, bound = np.abs(out - ref).max(), BENCH_RTOL["float32"] * max(1.0, np.abs(ref).max())
    assert err <= bound, f"{what}: {err:.3e} > {bound:.3e}"


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(int.from_bytes(np.random.bytes(4), "little"))
    params, batch = make_params(rng), make_batch(rng)
    tp = {k: torch.as_tensor(v) for k, v in params.items()}
    inputs = multimodal_inputs_torch(batch, tp, vision=VISION, audio=AUDIO, video=VIDEO, kernels=REF)
    return params, tp, batch, inputs


def test_layout_markers_placeholders_and_padding(case):
    _, _, batch, _ = case
    lay = plan_layout(batch, vision=VISION, audio=AUDIO, video=VIDEO)
    a0, a1, vt = AUDIO.tokens(6000), AUDIO.tokens(2500), VID_FRAMES * IMG_T
    row0 = ([1, 2, 3, IMAGE_START_ID] + [MEDIA_PLACEHOLDER_ID] * IMG_T + [IMAGE_END_ID, 4, 5, AUDIO_START_ID]
            + [MEDIA_PLACEHOLDER_ID] * a0 + [AUDIO_END_ID])
    row1 = ([AUDIO_START_ID] + [MEDIA_PLACEHOLDER_ID] * a1 + [AUDIO_END_ID, 6, VIDEO_START_ID]
            + [MEDIA_PLACEHOLDER_ID] * vt + [VIDEO_END_ID, 7, 8])
    s = max(len(row0), len(row1))
    want = np.full((2, s), PAD_ID)
    want[0, :len(row0)], want[1, :len(row1)] = row0, row1
    np.testing.assert_array_equal(lay.tokens, want)
    np.testing.assert_array_equal(lay.segment_ids, want != PAD_ID)
    np.testing.assert_array_equal(lay.media_ids >= 0, want == MEDIA_PLACEHOLDER_ID)
    assert set(lay.media_ids[0][lay.media_ids[0] >= 0]) == {0, 1}
    # bidirectional blocks: the image (row 0, block 0) and the video (row 1, block 1); audio stays causal
    bidi = np.where(lay.media_ids >= 0, lay.media_ids, -1)
    bidi[0][lay.media_ids[0] == 1] = -1  # row 0's audio
    bidi[1][lay.media_ids[1] == 0] = -1  # row 1's audio
    np.testing.assert_array_equal(lay.bidirectional_ids, bidi)
    assert set(lay.bidirectional_ids[1][lay.bidirectional_ids[1] >= 0]) == {1}
    assert [(s.kind, s.row, s.length, s.index) for s in lay.slots] == [
        ("image", 0, IMG_T, 0), ("audio", 0, a0, 0), ("audio", 1, a1, 1), ("video", 1, vt, 0)]
    assert plan_layout(batch, vision=VISION, audio=AUDIO, video=VIDEO, seq_len=s + 5).tokens.shape == (2, s + 5)


def test_embeds_are_each_media_encoded_alone(case):
    params, tp, batch, inp = case
    assert inp.embeds.shape == (*inp.tokens.shape, VISION.lm_dim)
    np.testing.assert_array_equal(inp.embed_mask.numpy(), inp.tokens.numpy() == MEDIA_PLACEHOLDER_ID)
    assert float(inp.embeds[~inp.embed_mask].abs().max()) == 0.0
    lay = plan_layout(batch, vision=VISION, audio=AUDIO, video=VIDEO)
    img, _ = ET.vision_forward(tp, torch.as_tensor(batch[0][1].pixels)[None], cfg=VISION, kernels=REF)
    aud, _ = ET.audio_forward(tp, torch.as_tensor(batch[1][0].waveform)[None], cfg=AUDIO, kernels=REF)
    vid, _ = ET.video_forward(tp, torch.as_tensor(batch[1][2].frames)[None], cfg=VIDEO, source_fps=1.0, kernels=REF)
    for slot, alone in zip([lay.slots[0], lay.slots[2], lay.slots[3]], [img, aud, vid]):
        got = inp.embeds[slot.row, slot.start:slot.start + slot.length]
        assert_near(got.numpy(), alone[0].numpy(), f"{slot.kind} in the batch vs alone")


def test_jax_inputs_match_torch(case):
    params, _, batch, inp = case
    jp = {k: jnp.asarray(v) for k, v in params.items()}
    out = multimodal_inputs_jax(batch, jp, vision=VISION, audio=AUDIO, video=VIDEO, kernels=REF)
    for name in ("tokens", "embed_mask", "segment_ids", "positions", "media_ids"):
        np.testing.assert_array_equal(np.asarray(getattr(out, name)), getattr(inp, name).numpy(), name)
    assert_near(out.embeds, inp.embeds.numpy(), "embeds jax vs torch")


def test_gradients_reach_the_encoders(case):
    _, _, batch, _ = case
    tp = {k: torch.as_tensor(v).requires_grad_() for k, v in make_params(np.random.default_rng(1)).items()}
    inp = multimodal_inputs_torch(batch[:1], tp, vision=VISION, audio=AUDIO, kernels=REF)
    inp.embeds.square().sum().backward()
    assert tp["vision.proj.weight"].grad.abs().max() > 0 and tp["audio.proj.weight"].grad.abs().max() > 0


def test_lm_end_to_end_image_influence_is_causal(case):
    from model.torch_model import GeminiModel

    params, tp, batch, inp = case
    lm = GeminiModel(ModelConfig(), REF).eval()
    with torch.no_grad():
        logits = lm(inp.tokens, embeds=inp.embeds, embed_mask=inp.embed_mask)
        assert logits.shape == (*inp.tokens.shape, ModelConfig().vocab_size) and logits.dtype == torch.float32
        other = [list(batch[0]), batch[1]]
        other[0][1] = Image((np.asarray(batch[0][1].pixels) + 1.0).astype(np.float32))
        inp2 = multimodal_inputs_torch(other, tp, vision=VISION, audio=AUDIO, video=VIDEO, kernels=REF)
        logits2 = lm(inp2.tokens, embeds=inp2.embeds, embed_mask=inp2.embed_mask)
    first = int(np.argmax(inp.media_ids[0].numpy() == 0))  # first image placeholder
    assert torch.equal(logits[0, :first], logits2[0, :first])  # before the image: untouched
    assert (logits[0, first:] - logits2[0, first:]).abs().amax(-1).min() > 0  # at and after: changed
    assert torch.equal(logits[1], logits2[1])  # the other row never sees it


def test_lm_end_to_end_jax_matches_torch(case):
    from model import jax_model
    from model.torch_model import GeminiModel

    params, _, batch, inp = case
    cfg = ModelConfig()
    lm = GeminiModel(cfg, REF).eval()
    lm.init_weights(3)
    with torch.no_grad():
        want = lm(inp.tokens, embeds=inp.embeds, embed_mask=inp.embed_mask).numpy()
    lm_params = {k: jnp.asarray(v.numpy()) for k, v in lm.state_dict().items()}
    jp = {k: jnp.asarray(v) for k, v in params.items()}
    jin = multimodal_inputs_jax(batch, jp, vision=VISION, audio=AUDIO, video=VIDEO, kernels=REF)
    got = jax_model.forward(lm_params, jin.tokens, cfg=cfg, kernels=REF, embeds=jin.embeds, embed_mask=jin.embed_mask)
    assert_near(got, want, "LM logits jax vs torch on multimodal inputs")


@pytest.mark.parametrize("rows,kwargs,err,match", [
    ([[Text([1]), Image(np.zeros((64, 64, 3), np.float32))]], {}, ValueError, "no vision config"),
    ([[Audio(np.zeros(100, np.float32))]], {"audio": AUDIO}, ValueError, "fewer than one"),
    ([[Audio(np.zeros((2, 800), np.float32))]], {"audio": AUDIO}, ValueError, "1-D"),
    ([[Text([1, MEDIA_PLACEHOLDER_ID])]], {}, ValueError, "reserved"),
    ([[Text([-1])]], {}, ValueError, ">= 0"),
    ([[Text([1, 2, 3])]], {"seq_len": 2}, ValueError, "never truncated"),
    ([["hello"]], {}, TypeError, "Text, Image, Audio or Video"),
    ([], {}, ValueError, "non-empty"),
    ([[Text([1])]], {"vision": VISION, "video": VideoConfig(vision=VisionConfig(pool=1))}, ValueError,
     "share the vision"),
], ids=["no-vision", "short-audio", "stereo", "placeholder-in-text", "negative", "too-long", "str", "empty",
        "vision-mismatch"])
def test_bad_batches(rows, kwargs, err, match):
    with pytest.raises(err, match=match):
        plan_layout(rows, **kwargs)


def test_bad_media_values_refused_before_the_lm():
    bad = np.zeros((64, 64, 3), np.float32)
    bad[3, 3, 0] = np.nan
    p = {k: torch.as_tensor(v) for k, v in init_params(video_param_specs(VIDEO)).items()}
    with pytest.raises(ValueError, match="NaN or inf"):
        multimodal_inputs_torch([[Image(bad)]], p, vision=VISION)
    with pytest.raises(ValueError, match="16000 Hz"):
        multimodal_inputs_torch([[Audio(np.zeros(4000, np.float32), sample_rate=8000)]],
                                {k: torch.as_tensor(v) for k, v in init_params(audio_param_specs(AUDIO)).items()},
                                audio=AUDIO)


def test_lm_bidirectional_media_through_lm_kwargs(case):
    """``ModelConfig(bidirectional_media=True)`` with ``inputs.lm_kwargs(cfg)``: the image's
    first placeholder sees its last one (with the flag off it does not); text before the
    image and the other row do not; JAX
    (media_ids from ``multimodal_inputs_jax``) matches torch."""
    from model import jax_model
    from model.torch_model import GeminiModel

    params, _, batch, inp = case
    off, cfg = ModelConfig(), ModelConfig(bidirectional_media=True)
    assert set(inp.lm_kwargs(off)) == {"embeds", "embed_mask"}
    assert set(inp.lm_kwargs(cfg)) == {"embeds", "embed_mask", "media_ids"}
    assert inp.lm_kwargs(cfg)["media_ids"] is inp.bidirectional_ids  # image / video blocks only
    lm = GeminiModel(cfg, REF).eval()
    first = int(np.argmax(inp.media_ids[0].numpy() == 0))  # the image's placeholders: first..last
    last = first + IMG_T - 1
    late = inp.embeds.clone()
    late[0, last] += 1.0
    with torch.no_grad():
        logits = lm(inp.tokens, **inp.lm_kwargs(cfg))
        moved = lm(inp.tokens, **{**inp.lm_kwargs(cfg), "embeds": late})
        causal = [lm(inp.tokens, **{**inp.lm_kwargs(off), "embeds": e}) for e in (inp.embeds, late)]
    d = (logits - moved).abs().amax(-1)
    assert float(d[0, :first].max()) == 0.0 and float(d[1].max()) == 0.0
    assert float(d[0, first:last + 1].min()) > 0  # every placeholder of the image sees its last one
    assert float((causal[0] - causal[1]).abs().amax(-1)[0, :last].max()) == 0.0  # flag off: causal
    audio_last = int(np.flatnonzero(inp.media_ids[0].numpy() == 1)[-1])  # row 0's audio: causal anyway
    late_audio = inp.embeds.clone()
    late_audio[0, audio_last] += 1.0
    with torch.no_grad():
        d = (logits - lm(inp.tokens, **{**inp.lm_kwargs(cfg), "embeds": late_audio})).abs().amax(-1)
    assert float(d[0, :audio_last].max()) == 0.0 and float(d[0, audio_last:].min()) > 0
    jp = {k: jnp.asarray(v) for k, v in params.items()}
    jin = multimodal_inputs_jax(batch, jp, vision=VISION, audio=AUDIO, video=VIDEO, kernels=REF)
    lm_params = {k: jnp.asarray(v.numpy()) for k, v in lm.state_dict().items()}
    got = jax_model.forward(lm_params, jin.tokens, cfg=cfg, kernels=REF, **jin.lm_kwargs(cfg))
    assert_near(got, logits.numpy(), "bidirectional LM logits jax vs torch on multimodal inputs")
