"""Cases the multimodal and encoder suites left open (mutation audit, area "multimodal").

Covers model/multimodal.py (layout edge cases: an all-empty batch, seq_len equal to the
longest row, every reserved id refused inside Text, a clip of exactly one 25 ms window, a
5-D video segment, mixed audio sample rates, a text-only batch, the encoders' dtype carried
into ``embeds``, JAX's bidirectional ids and per-clip video rate), model/vision.py and
model/audio.py (config validation, a one-channel image tower, a zero-image batch, a
non-square image, frame counts against the log_mel kernel's framing), model/video.py (fps
validation) and model/encoder_common.py (``resolve_impl``'s encoder-op table, ``check_int``
refusing bools, ``init_params``' documented distributions). Each test names the mutation it
catches. Tiny configs only; the encoders run the reference kernels on the CPU.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import jax.numpy as jnp
from kernels.tolerances import BENCH_RTOL
from model import encoders_jax as EJ
from model import encoders_torch as ET
from model.audio import AudioConfig, audio_param_specs, check_audio
from model.config import KernelConfig
from model.encoder_common import init_params, resolve_impl
from model.multimodal import (RESERVED_IDS, Audio, Image, Text, Video, multimodal_inputs_jax,
                              multimodal_inputs_torch, plan_layout)
from model.tokenizer import MEDIA_PLACEHOLDER_ID, PAD_ID
from model.video import VideoConfig, sample_frame_indices, video_param_specs
from model.vision import VisionConfig, vision_param_specs

VISION, AUDIO = VisionConfig(), AudioConfig()
VIDEO = VideoConfig(vision=VISION, fps=1.0, max_frames=4)
REF = KernelConfig(preset="reference")


def assert_near(out, ref, what):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, f"{what}: shape {out.shape} != {ref.shape}"
    err, bound = float(np.abs(out - ref).max()), BENCH_RTOL["float32"] * max(1.0, float(np.abs(ref).max()))
    assert err <= bound, f"{what}: {err:.3e} > {bound:.3e}"


def noisy_params(specs, rng):
    return {k: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in init_params(specs).items()}


# ---- plan_layout edge cases ------------------------------------------------------------------------

def test_all_empty_rows_refused():
    """Catches the ``s < 1`` check dropped: a batch of empty rows gave [B, 0] arrays."""
    with pytest.raises(ValueError, match="every row is empty"):
        plan_layout([[Text([])], []])


def test_seq_len_equal_to_the_longest_row_is_accepted():
    lay = plan_layout([[Text([1, 2, 3])], [Text([4])]], seq_len=3)
    np.testing.assert_array_equal(lay.tokens, [[1, 2, 3], [4, PAD_ID, PAD_ID]])
    np.testing.assert_array_equal(lay.segment_ids, [[1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize("rid", sorted(RESERVED_IDS))
def test_every_reserved_id_refused_in_text(rid):
    """Catches PAD_ID (or any marker) left out of the reserved set: a PAD inside a row's text
    would be read as padding, a marker as a media block with no embedding."""
    with pytest.raises(ValueError, match="reserved"):
        plan_layout([[Text([1, rid, 2])]])


def test_audio_of_exactly_one_window_gets_one_token(rng):
    """Catches ``shape[0] <= audio.win``: a 400-sample clip (one 25 ms window, one frame) is valid
    and gives one token; the encoder agrees."""
    assert AUDIO.win == 400 and AUDIO.frames(400) == 1 and AUDIO.tokens(400) == 1
    clip = (rng.standard_normal(400) * 0.3).astype(np.float32)
    lay = plan_layout([[Text([1]), Audio(clip)]], audio=AUDIO)
    assert [(s.kind, s.start, s.length) for s in lay.slots] == [("audio", 2, 1)]
    p = {k: torch.as_tensor(v) for k, v in noisy_params(audio_param_specs(AUDIO), rng).items()}
    inp = multimodal_inputs_torch([[Text([1]), Audio(clip)]], p, audio=AUDIO, kernels=REF)
    alone, _ = ET.audio_forward(p, torch.as_tensor(clip)[None], cfg=AUDIO, kernels=REF)
    assert_near(inp.embeds[0, 2:3].numpy(), alone[0].numpy(), "one-window clip")


def test_video_segment_must_be_4d():
    """Catches ``len(shape) < 4``: a batched 5-D array in one Video segment was planned."""
    with pytest.raises(ValueError, match="4-D"):
        plan_layout([[Video(np.zeros((1, 2, 64, 64, 3), np.float32), fps=1.0)]], vision=VISION, video=VIDEO)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_mixed_audio_sample_rates_refused(framework):
    """Catches the one-rate check of ``_sample_rates`` loosened: a 16 kHz and an 8 kHz clip in one
    batch must be refused by name, not encoded at whichever rate the set gives back."""
    p = init_params(audio_param_specs(AUDIO))
    batch = [[Audio(np.zeros(800, np.float32), 16000)], [Audio(np.zeros(800, np.float32), 8000)]]
    with pytest.raises(ValueError, match="share one sample rate"):
        if framework == "torch":
            multimodal_inputs_torch(batch, {k: torch.as_tensor(v) for k, v in p.items()}, audio=AUDIO)
        else:
            multimodal_inputs_jax(batch, {k: jnp.asarray(v) for k, v in p.items()}, audio=AUDIO)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_text_only_batch(framework):
    """A text-only batch needs lm_dim (refused by name without it: catches the check dropped, which
    gave a TypeError from zeros(..., None)); with it: zero embeds, no mask, positions 0..S-1."""
    batch = [[Text([1, 2, 3])], [Text([4])]]
    make = multimodal_inputs_torch if framework == "torch" else multimodal_inputs_jax
    with pytest.raises(ValueError, match="needs lm_dim"):
        make(batch, {})
    inp = make(batch, {}, lm_dim=8)
    assert tuple(inp.embeds.shape) == (2, 3, 8) and not np.asarray(inp.embed_mask).any()
    assert float(np.abs(np.asarray(inp.embeds)).max()) == 0.0
    np.testing.assert_array_equal(np.asarray(inp.positions), [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(np.asarray(inp.tokens), [[1, 2, 3], [4, PAD_ID, PAD_ID]])


def test_embeds_keep_the_encoders_dtype(rng):
    """Catches ``embeds`` always float32: bfloat16 encoders must give bfloat16 embeds (the fp32
    buffer made index_put refuse the bf16 values)."""
    p = {k: torch.as_tensor(v).to(torch.bfloat16) for k, v in noisy_params(vision_param_specs(VISION), rng).items()}
    img = torch.as_tensor(rng.standard_normal((64, 64, 3)) * 0.5).to(torch.bfloat16)
    inp = multimodal_inputs_torch([[Text([1]), Image(img)]], p, vision=VISION, kernels=REF)
    assert inp.embeds.dtype == torch.bfloat16
    alone, _ = ET.vision_forward(p, img[None], cfg=VISION, kernels=REF)
    assert torch.equal(inp.embeds[0, 2:2 + VISION.tokens], alone[0])


# ---- JAX inputs: bidirectional ids and a per-clip video rate -------------------------------------------

@pytest.fixture(scope="module")
def mixed():
    """Row 0: text, image, audio; row 1: a 4-frame video recorded at 2 fps (VIDEO samples 1 fps:
    frames 0 and 2 kept), text. Torch and JAX inputs from the same parameters."""
    rng = np.random.default_rng(int.from_bytes(np.random.bytes(4), "little"))
    params = noisy_params({**video_param_specs(VIDEO), **audio_param_specs(AUDIO)}, rng)
    f32 = lambda *s: (rng.standard_normal(s) * 0.5).astype(np.float32)  # noqa: E731
    batch = [[Text([1, 2]), Image(f32(64, 64, 3)), Audio(f32(3000))],
             [Video(f32(4, 64, 64, 3), fps=2.0), Text([3])]]
    kw = dict(vision=VISION, audio=AUDIO, video=VIDEO, kernels=REF)
    tin = multimodal_inputs_torch(batch, {k: torch.as_tensor(v) for k, v in params.items()}, **kw)
    jin = multimodal_inputs_jax(batch, {k: jnp.asarray(v) for k, v in params.items()}, **kw)
    return params, batch, tin, jin


def test_jax_bidirectional_ids_are_the_image_and_video_blocks(mixed):
    """Catches JAX's ``bidirectional_ids`` taken from media_ids (audio made bidirectional)."""
    _, batch, tin, jin = mixed
    lay = plan_layout(batch, vision=VISION, audio=AUDIO, video=VIDEO)
    want = np.where(lay.media_ids >= 0, lay.media_ids, -1)
    want[0][lay.media_ids[0] == 1] = -1  # row 0's audio stays causal
    np.testing.assert_array_equal(lay.bidirectional_ids, want)
    np.testing.assert_array_equal(np.asarray(jin.bidirectional_ids), want)
    np.testing.assert_array_equal(tin.bidirectional_ids.numpy(), want)


def test_video_uses_each_clips_own_rate_in_both_frameworks(mixed):
    """Catches a framework encoding a clip at the config's sampling rate instead of the clip's
    recording rate: 4 frames at 2 fps sampled at 1 fps keep frames [0, 2] (2 blocks)."""
    params, batch, tin, jin = mixed
    assert sample_frame_indices(4, 2.0, VIDEO.fps, VIDEO.max_frames) == [0, 2]
    slot = plan_layout(batch, vision=VISION, audio=AUDIO, video=VIDEO).slots[-1]
    assert (slot.kind, slot.row, slot.length) == ("video", 1, 2 * VISION.tokens)
    frames = np.asarray(batch[1][0].frames)
    img, _ = ET.vision_forward({k: torch.as_tensor(v) for k, v in params.items()},
                               torch.as_tensor(frames[[0, 2]]), cfg=VISION, kernels=REF)
    want = img.numpy() + params["video.temporal_embed"][:2, None]
    got = slice(slot.start, slot.start + slot.length)
    assert_near(tin.embeds[1, got].numpy().reshape(2, VISION.tokens, -1), want, "torch video block")
    assert_near(np.asarray(jin.embeds)[1, got].reshape(2, VISION.tokens, -1), want, "jax video block")
    assert_near(jin.embeds, tin.embeds.numpy(), "jax vs torch embeds")


# ---- vision ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(width=30, heads=4), "multiple of heads"),  # catches the heads check dropped
    (dict(image_size=72), "multiple of patch"),  # catches the patch check dropped
    (dict(lm_dim=0), "lm_dim must be an int >= 1"),  # catches lm_dim left out of check_int
    (dict(layers=True), r"layers must be an int >= 1, got True"),  # catches check_int taking bools
], ids=["heads", "patch", "lm_dim", "bool"])
def test_bad_vision_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VisionConfig(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(width=30, heads=2), "even head_dim"),  # catches the odd head_dim (RoPE) check dropped
    (dict(mel_std=0.0), "mel_std must be > 0"),  # catches mel_std < 0 (0 divides by zero)
    (dict(heads=True), r"heads must be an int >= 1, got True"),
], ids=["odd-head-dim", "mel-std-0", "bool"])
def test_bad_audio_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AudioConfig(**kwargs)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_zero_images_and_non_square_images_refused(framework):
    """Catches the batch >= 1 check dropped and the size check reading the height only."""
    p = init_params(vision_param_specs(VISION))
    run = ((lambda x: ET.vision_forward({k: torch.as_tensor(v) for k, v in p.items()}, torch.as_tensor(x), cfg=VISION))
           if framework == "torch" else
           (lambda x: EJ.vision_forward({k: jnp.asarray(v) for k, v in p.items()}, jnp.asarray(x), cfg=VISION)))
    with pytest.raises(ValueError, match=r"batch must be >= 1"):
        run(np.zeros((0, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="must be 64x64 pixels"):
        run(np.zeros((1, 64, 32, 3), np.float32))


def test_one_channel_vision_tower(rng):
    """Catches the patch_embed fan-in fixed at 3 channels: a grayscale config's weight is
    [width, patch * patch * 1], and it encodes 1-channel images (torch == JAX)."""
    cfg = VisionConfig(channels=1)
    specs = vision_param_specs(cfg)
    assert specs["vision.patch_embed.weight"][0] == (cfg.width, 16 * 16)
    p = noisy_params(specs, rng)
    img = rng.standard_normal((2, 64, 64, 1)).astype(np.float32)
    et, _ = ET.vision_forward({k: torch.as_tensor(v) for k, v in p.items()}, torch.as_tensor(img), cfg=cfg)
    ej, _ = EJ.vision_forward({k: jnp.asarray(v) for k, v in p.items()}, jnp.asarray(img), cfg=cfg)
    assert et.shape == (2, cfg.tokens, cfg.lm_dim)
    assert_near(ej, et.numpy(), "one-channel vision jax vs torch")


# ---- audio ----------------------------------------------------------------------------------------------

def test_lengths_past_the_waveform_refused():
    """Catches the upper bound of ``0 <= n <= samples`` dropped: a clip cannot be longer than
    the padded waveform it lives in."""
    with pytest.raises(ValueError, match=r"lengths\[1\]=5000 must lie in \[0, samples=4000\]"):
        check_audio(np.zeros((2, 4000), np.float32), [4000, 5000], AUDIO, sample_rate=16000,
                    is_float=lambda d: d.kind == "f")


@pytest.mark.parametrize("win_ms,hop_ms", [(24.99, 10.0), (25.0, 10.01), (30.0, 12.5)])
def test_frame_counts_match_the_log_mel_kernel(win_ms, hop_ms):
    """Catches win / hop truncated instead of rounded: the config's frame count must be the
    log_mel kernel's (kernels/audio/spec.geometry) for ms values that are not whole samples."""
    from kernels.audio.spec import geometry

    cfg = AudioConfig(win_ms=win_ms, hop_ms=hop_ms)
    for n in (400, 401, 1000, 4000, 16000):
        g = geometry(n, n_mels=cfg.n_mels, win_ms=win_ms, hop_ms=hop_ms)
        assert (cfg.win, cfg.hop) == (g.win, g.hop)
        assert cfg.frames(n) == (g.frames if n >= g.win else 0), n


# ---- video ----------------------------------------------------------------------------------------------

def test_video_rates_refused():
    """Catches VideoConfig taking fps=0 (``fps < 0``) and sample_frame_indices taking an
    infinite source rate (the finiteness check dropped: int(nan) blew up instead)."""
    with pytest.raises(ValueError, match="fps must be a number > 0, got 0.0"):
        VideoConfig(fps=0.0)
    with pytest.raises(ValueError, match="source_fps must be a finite number > 0, got inf"):
        sample_frame_indices(10, math.inf, 1.0, 4)


# ---- encoder_common -------------------------------------------------------------------------------------

def test_resolve_impl_encoder_ops():
    """Catches torch's sdpa preset mapped to triton for the encoder-only ops (patch_embed,
    log_mel) and ``kernels=None`` not meaning the reference."""
    assert resolve_impl(None, "attention", "torch") == "reference"
    assert resolve_impl(None, "patch_embed", "jax") == "reference"
    for op in ("patch_embed", "log_mel"):
        assert resolve_impl(KernelConfig(preset="sdpa"), op, "torch") == "reference"
        assert resolve_impl(KernelConfig(preset="triton"), op, "torch") == "triton"
        assert resolve_impl(KernelConfig(preset="xla"), op, "jax") == "xla"
        assert resolve_impl(KernelConfig(preset="pallas"), op, "jax") == "pallas"
        with pytest.raises(ValueError, match="not a jax preset"):
            resolve_impl(KernelConfig(preset="triton"), op, "jax")


def test_init_params_distributions(rng):
    """init_params as documented: matrices / conv kernels N(0, 1/fan_in) with fan_in the
    product of the non-output axes (catches fan_in = out features), position / temporal
    embeddings N(0, 0.02^2) (catches the scale), the projector's Gemma RMSNorm weight 0
    (catches it drawn as ones), and each name its own stream (catches one stream per seed:
    same-shape matrices equal)."""
    seed = int(rng.integers(2**31))
    p = init_params({**video_param_specs(VIDEO), **audio_param_specs(AUDIO)}, seed)
    for name, fan_in in (("vision.patch_embed.weight", 16 * 16 * 3), ("vision.layers.0.mlp.fc1.weight", 32),
                         ("vision.layers.0.mlp.fc2.weight", 64), ("audio.subsample.conv1.weight", 16 * 3),
                         ("audio.subsample.conv2.weight", 32 * 3), ("vision.proj.weight", 32)):
        std = float(p[name].std())
        assert abs(std * math.sqrt(fan_in) - 1) < 0.15, (name, std, fan_in)
    for name in ("vision.pos_embed", "video.temporal_embed"):
        assert abs(float(p[name].std()) / 0.02 - 1) < 0.15, (name, float(p[name].std()))
    for name in ("vision.proj_norm.weight", "audio.proj_norm.weight"):
        assert not p[name].any(), name
    assert float(np.abs(p["vision.layers.0.attn.q_proj.weight"] - p["vision.layers.0.attn.k_proj.weight"]).max()) > 0
    assert float(np.abs(p["vision.layers.0.attn.q_proj.weight"] - p["vision.layers.1.attn.q_proj.weight"]).max()) > 0
    assert all(p[k].dtype == np.float32 for k in p)
