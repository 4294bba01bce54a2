"""Modality encoders (model/vision.py, audio.py, video.py; encoders_torch / encoders_jax).

Torch vs JAX from the same parameters, kernel impls vs the references, batched audio vs
each clip alone, float64 audio (cast to fp32 by every preset), video frame sampling and
per-clip rates, parameter tables (the big config shape-only) and bad input. fp32
throughout; the bound is the benchmark tolerance of the one table (BENCH_RTOL: fp32 paths
doing the same math in a different order), relative to max|ref|.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import jax.numpy as jnp
from kernels.tolerances import BENCH_RTOL
from model import encoders_jax as EJ
from model import encoders_torch as ET
from model.audio import AUDIO_PRESETS, AudioConfig, audio_param_count, audio_param_specs
from model.config import KernelConfig
from model.encoder_common import init_params
from model.video import VideoConfig, sample_frame_indices, video_param_specs
from model.vision import VISION_PRESETS, VisionConfig, vision_param_count, vision_param_specs

VISION = VisionConfig()
AUDIO = AudioConfig()
AUDIO_TF = AUDIO_PRESETS["tiny_transformer"]
VIDEO = VideoConfig()


def random_params(specs, rng) -> dict[str, np.ndarray]:
    """The deterministic init plus noise everywhere (non-zero biases, non-unit norms)."""
    return {k: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
            for k, v in init_params(specs, 0).items()}


def to_torch(p):
    return {k: torch.as_tensor(v) for k, v in p.items()}


def to_jax(p):
    return {k: jnp.asarray(v) for k, v in p.items()}


def assert_near(out, ref, what):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, f"{what}: shape {out.shape} != {ref.shape}"
    assert np.isfinite(out).all(), f"{what}: non-finite values"
    bound = BENCH_RTOL["float32"] * max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(out - ref).max())
    assert err <= bound, f"{what}: max error {err:.3e} > {bound:.3e}"


def clips(rng, lengths, samples=None):
    s = samples or max(lengths)
    w = np.zeros((len(lengths), s), np.float32)
    for i, n in enumerate(lengths):
        w[i, :n] = rng.standard_normal(n) * 0.3
    return w


# ---- parameter tables --------------------------------------------------------------------------

@pytest.mark.parametrize("make,specs", [(lambda: ET.VisionEncoder(VISION), vision_param_specs(VISION)),
                                         (lambda: ET.AudioEncoder(AUDIO), audio_param_specs(AUDIO)),
                                         (lambda: ET.AudioEncoder(AUDIO_TF), audio_param_specs(AUDIO_TF)),
                                         (lambda: ET.VideoEncoder(VIDEO), video_param_specs(VIDEO))],
                         ids=["vision", "conformer", "transformer", "video"])
def test_state_dict_is_the_spec_table(make, specs):
    state = make().init_weights(3).state_dict()
    assert list(sorted(state)) == sorted(specs)
    ref = init_params(specs, 3)
    for name, (shape, axes) in specs.items():
        assert tuple(state[name].shape) == shape and len(axes) == len(shape), name
        np.testing.assert_array_equal(state[name].numpy(), ref[name])


def test_siglip_so400m_counted_from_specs():
    cfg = VISION_PRESETS["siglip_so400m"]
    d, m, k = 1152, 4304, 14 * 14 * 3
    layer = 4 * (d * d + d) + 4 * d + 2 * d * m + m + d
    expected = d * k + d + 64 * 64 * d + 27 * layer + 2 * d + d + 2048 * d
    assert cfg.tokens == 256 and cfg.patches == 4096 and cfg.head_dim == 72
    assert vision_param_count(cfg) == expected
    assert 4.1e8 < expected < 4.3e8  # SigLIP-So400m's tower (~0.4B) plus the projector
    assert audio_param_count(AUDIO_PRESETS["conformer_large"]) > 5e8


# ---- torch vs JAX, same parameters --------------------------------------------------------------

def test_vision_torch_matches_jax(rng):
    p = random_params(vision_param_specs(VISION), rng)
    img = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
    et, mt = ET.vision_forward(to_torch(p), torch.as_tensor(img), cfg=VISION)
    ej, mj = EJ.vision_forward(to_jax(p), jnp.asarray(img), cfg=VISION)
    assert et.shape == (2, VISION.tokens, VISION.lm_dim) and bool(mt.all()) and bool(mj.all())
    assert_near(ej, et.numpy(), "vision jax vs torch")


@pytest.mark.parametrize("cfg", [AUDIO, AUDIO_TF], ids=["conformer", "transformer"])
def test_audio_torch_matches_jax(rng, cfg):
    p = random_params(audio_param_specs(cfg), rng)
    lens = [6000, 3300]
    w = clips(rng, lens)
    et, mt = ET.audio_forward(to_torch(p), torch.as_tensor(w), lens, cfg=cfg)
    ej, mj = EJ.audio_forward(to_jax(p), jnp.asarray(w), lens, cfg=cfg)
    assert et.shape == (2, cfg.tokens(6000), cfg.lm_dim)
    assert mt.sum(1).tolist() == [cfg.tokens(n) for n in lens] == np.asarray(mj).sum(1).tolist()
    assert_near(ej, et.numpy(), "audio jax vs torch")


def test_video_torch_matches_jax_and_vision(rng):
    p = random_params(video_param_specs(VIDEO), rng)
    frames = rng.standard_normal((2, 7, 64, 64, 3)).astype(np.float32)
    et, mt = ET.video_forward(to_torch(p), torch.as_tensor(frames), cfg=VIDEO, source_fps=2.0, num_frames=[7, 2])
    ej, mj = EJ.video_forward(to_jax(p), jnp.asarray(frames), cfg=VIDEO, source_fps=2.0, num_frames=[7, 2])
    tok = VISION.tokens
    kept = [sample_frame_indices(7, 2.0, 1.0, 4), sample_frame_indices(2, 2.0, 1.0, 4)]
    assert kept == [[0, 2, 4, 6], [0]]
    assert et.shape == (2, 4 * tok, VISION.lm_dim)
    assert mt.sum(1).tolist() == [4 * tok, tok] == np.asarray(mj).sum(1).tolist()
    assert_near(ej, et.numpy(), "video jax vs torch")
    # each kept frame's block = the image encoding of that frame + its temporal embedding
    img, _ = ET.vision_forward(to_torch(p), torch.as_tensor(frames[0, kept[0]]), cfg=VISION)
    want = img.numpy() + p["video.temporal_embed"][:4, None]
    assert_near(et[0].numpy().reshape(4, tok, -1), want, "video blocks vs images")
    assert float(et[1, tok:].abs().max()) == 0.0


# ---- kernels vs references ----------------------------------------------------------------------

@pytest.mark.parametrize("framework,preset", [("torch", "triton"), ("jax", "pallas"), ("jax", "xla")])
def test_vision_kernel_impls_match_reference(rng, framework, preset):
    p = random_params(vision_param_specs(VISION), rng)
    img = rng.standard_normal((1, 64, 64, 3)).astype(np.float32)
    if framework == "torch":
        f = lambda k: ET.vision_forward(to_torch(p), torch.as_tensor(img), cfg=VISION, kernels=k)[0].numpy()  # noqa: E731
    else:
        f = lambda k: np.asarray(EJ.vision_forward(to_jax(p), jnp.asarray(img), cfg=VISION, kernels=k)[0])  # noqa: E731
    assert_near(f(KernelConfig(preset=preset)), f(KernelConfig(preset="reference")), f"vision {preset}")


@pytest.mark.parametrize("framework,preset", [("torch", "triton"), ("jax", "pallas")])
def test_audio_kernel_impls_match_reference(rng, framework, preset):
    p = random_params(audio_param_specs(AUDIO), rng)
    lens = [4000, 2500]
    w = clips(rng, lens)
    if framework == "torch":
        f = lambda k: ET.audio_forward(to_torch(p), torch.as_tensor(w), lens, cfg=AUDIO, kernels=k)[0].numpy()  # noqa: E731
    else:
        f = lambda k: np.asarray(EJ.audio_forward(to_jax(p), jnp.asarray(w), lens, cfg=AUDIO, kernels=k)[0])  # noqa: E731
    assert_near(f(KernelConfig(preset=preset)), f(KernelConfig(preset="reference")), f"audio {preset}")


@pytest.mark.parametrize("framework,preset", [("torch", "triton"), ("jax", "pallas")])
def test_float64_waveform_is_cast_like_the_reference(rng, framework, preset):
    """float64 audio (refused by the fp16/bf16/fp32 log_mel kernels) is cast to float32 in
    audio_forward: the kernel preset equals the reference preset, and both equal the float32 run."""
    p = random_params(audio_param_specs(AUDIO), rng)
    lens = [3000, 1900]
    w64 = clips(rng, lens).astype(np.float64) + 1e-9  # not exactly representable in fp32
    if framework == "torch":
        f = lambda w, k: ET.audio_forward(to_torch(p), torch.as_tensor(w), lens, cfg=AUDIO, kernels=k)[0].numpy()  # noqa: E731
    else:  # numpy float64 (jax without x64 has no float64 arrays)
        f = lambda w, k: np.asarray(EJ.audio_forward(to_jax(p), w, lens, cfg=AUDIO, kernels=k)[0])  # noqa: E731
    got = f(w64, KernelConfig(preset=preset))
    ref = f(w64, KernelConfig(preset="reference"))
    assert got.dtype == np.float32
    assert_near(got, ref, f"audio {preset} float64 waveform")
    np.testing.assert_array_equal(got, f(w64.astype(np.float32), KernelConfig(preset=preset)))


def test_float64_waveform_under_jax_x64_is_cast():
    """With x64 enabled a jax float64 array reaches audio_forward; the pallas log_mel runs it
    (attention by XLA: the Pallas attention kernel is not written for x64 index types)."""
    import jax

    p = to_jax(init_params(audio_param_specs(AUDIO)))
    w = clips(np.random.default_rng(0), [2000])
    ks = KernelConfig(preset="pallas", attention="xla")
    want = np.asarray(EJ.audio_forward(p, jnp.asarray(w), cfg=AUDIO, kernels=ks)[0])
    with jax.enable_x64(True):
        w64 = jnp.asarray(w, jnp.float64)
        assert w64.dtype == jnp.float64
        got = np.asarray(EJ.audio_forward(p, w64, cfg=AUDIO, kernels=ks)[0])
    np.testing.assert_array_equal(got, want)


def test_float64_waveform_refused_by_the_triton_kernel_with_a_clear_message():
    from kernels import torch_ops

    with pytest.raises(TypeError, match=r"waveform dtype must be fp16, bf16 or fp32, got torch.float64"):
        torch_ops.log_mel(torch.zeros(1, 1000, dtype=torch.float64), impl="triton")


# ---- batched audio == each clip alone --------------------------------------------------------------

@pytest.mark.parametrize("framework,cfg", [("torch", AUDIO), ("torch", AUDIO_TF), ("jax", AUDIO)],
                         ids=["torch-conformer", "torch-transformer", "jax-conformer"])
def test_batched_audio_equals_each_clip_alone(rng, framework, cfg):
    p = random_params(audio_param_specs(cfg), rng)
    lens = [5100, 400] if framework == "jax" else [5100, 400, 2810]  # one clip of exactly one window
    w = clips(rng, lens, samples=5300)  # every clip padded, even the longest
    if framework == "torch":
        run = lambda x, n: ET.audio_forward(to_torch(p), torch.as_tensor(x), n, cfg=cfg)  # noqa: E731
    else:
        run = lambda x, n: EJ.audio_forward(to_jax(p), jnp.asarray(x), n, cfg=cfg)  # noqa: E731
    out, mask = (np.asarray(t) for t in run(w, lens))
    for i, n in enumerate(lens):
        alone, alone_mask = (np.asarray(t) for t in run(w[i:i + 1, :n], None))
        t = cfg.tokens(n)
        assert alone.shape[1] == t and alone_mask.all() and mask[i].sum() == t
        assert_near(out[i, :t], alone[0], f"clip {i} batched vs alone")
        assert np.abs(out[i, t:]).max(initial=0.0) == 0.0


def test_padding_content_does_not_leak(rng):
    """Garbage in the padded samples changes nothing in the valid tokens."""
    p = to_torch(random_params(audio_param_specs(AUDIO), rng))
    w = clips(rng, [5000, 2000])
    noisy = w.copy()
    noisy[1, 2000:] = rng.standard_normal(3000) * 5
    a, _ = ET.audio_forward(p, torch.as_tensor(w), [5000, 2000], cfg=AUDIO)
    b, _ = ET.audio_forward(p, torch.as_tensor(noisy), [5000, 2000], cfg=AUDIO)
    assert torch.equal(a, b)


# ---- video sampling ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n,src,fps,budget,want", [
    (10, 1.0, 1.0, 16, list(range(10))),  # 1 fps source, 1 fps sampling: every frame
    (90, 30.0, 1.0, 16, [0, 30, 60]),  # 3 s at 30 fps -> one frame per second
    (91, 30.0, 1.0, 16, [0, 30, 60, 90]),
    (10, 2.5, 1.0, 16, [0, 2, 5, 7]),  # non-integer step: floor(k * 2.5)
    (5, 1.0, 2.0, 16, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]),  # sampling above the source rate repeats
    (300, 30.0, 1.0, 4, [0, 90, 180, 270]),  # 10 sampled frames > budget 4: evenly subsampled
    (300, 30.0, 1.0, 1, [0]),
    (1, 30.0, 1.0, 4, [0]),
])
def test_sample_frame_indices(n, src, fps, budget, want):
    got = sample_frame_indices(n, src, fps, budget)
    assert got == want and len(got) <= budget


def test_video_empty_batch_and_time_refused_up_front():
    p = to_torch(init_params(video_param_specs(VIDEO)))
    pj = to_jax(init_params(video_param_specs(VIDEO)))
    for fw, enc, P, zeros in (("torch", ET, p, torch.zeros), ("jax", EJ, pj, jnp.zeros)):
        with pytest.raises(ValueError, match=r"at least one clip \(batch >= 1\), got shape \(0, 3, 64, 64, 3\)"):
            enc.video_forward(P, zeros((0, 3, 64, 64, 3)), cfg=VIDEO, source_fps=1.0)
        with pytest.raises(ValueError, match=r"at least one frame per clip \(time >= 1\), got shape \(2, 0,"):
            enc.video_forward(P, zeros((2, 0, 64, 64, 3)), cfg=VIDEO, source_fps=1.0)
        with pytest.raises(ValueError, match=r"source_fps must be one number or 1-D .*got 2-D"):
            enc.video_forward(P, zeros((2, 3, 64, 64, 3)), cfg=VIDEO, source_fps=np.ones((2, 1)))


@pytest.mark.parametrize("kind", ["numpy", "torch", "jax", "numpy-int", "tuple"])
def test_video_per_clip_source_fps_as_any_1d_array(rng, kind):
    p = random_params(video_param_specs(VIDEO), rng)
    frames = rng.standard_normal((2, 5, 64, 64, 3)).astype(np.float32)
    fps = {"numpy": np.array([2.0, 1.0]), "torch": torch.tensor([2.0, 1.0]), "jax": jnp.asarray([2.0, 1.0]),
           "numpy-int": np.array([2, 1]), "tuple": (2.0, 1)}[kind]
    want, want_mask = ET.video_forward(to_torch(p), torch.as_tensor(frames), cfg=VIDEO, source_fps=[2.0, 1.0])
    got, mask = ET.video_forward(to_torch(p), torch.as_tensor(frames), cfg=VIDEO, source_fps=fps)
    assert torch.equal(got, want) and torch.equal(mask, want_mask)
    assert mask.sum(1).tolist() == [3 * VISION.tokens, 4 * VISION.tokens]  # [0, 2, 4] and 4 of 5 (budget)
    gj, mj = EJ.video_forward(to_jax(p), jnp.asarray(frames), cfg=VIDEO, source_fps=fps)
    assert_near(gj, want.numpy(), f"video jax, source_fps {kind}")
    assert np.array_equal(np.asarray(mj), want_mask.numpy())
    # a numpy scalar is one rate for every clip; a wrong count or a bad rate is refused
    one, _ = ET.video_forward(to_torch(p), torch.as_tensor(frames), cfg=VIDEO, source_fps=np.float32(2.0))
    assert torch.equal(one, ET.video_forward(to_torch(p), torch.as_tensor(frames), cfg=VIDEO, source_fps=2.0)[0])
    with pytest.raises(ValueError, match=r"one per clip \(2\), got 3"):
        ET.video_forward(to_torch(p), torch.as_tensor(frames), cfg=VIDEO, source_fps=np.ones(3))
    with pytest.raises(ValueError, match=r"source_fps must be a finite number > 0, got 0.0"):
        ET.video_forward(to_torch(p), torch.as_tensor(frames), cfg=VIDEO, source_fps=np.array([1.0, 0.0]))


def test_video_budget_keeps_first_and_last_sampled():
    got = sample_frame_indices(3600, 30.0, 1.0, 32)  # 2 minutes: 120 sampled seconds -> 32
    assert len(got) == 32 and got[0] == 0 and got[-1] == 119 * 30
    assert all(b > a for a, b in zip(got, got[1:]))
    steps = np.diff(got) / 30
    assert steps.max() - steps.min() <= 1  # evenly spread


# ---- gradients ----------------------------------------------------------------------------------------

def test_vision_backward_reaches_every_parameter(rng):
    enc = ET.VisionEncoder(VISION).init_weights(1)
    with torch.no_grad():
        for prm in enc.parameters():
            prm.add_(0.1 * torch.randn_like(prm))
    out, _ = enc(torch.as_tensor(rng.standard_normal((1, 64, 64, 3)).astype(np.float32)))
    out.square().sum().backward()
    for name, prm in enc.named_parameters():
        assert prm.grad is not None and torch.isfinite(prm.grad).all() and prm.grad.abs().max() > 0, name


# ---- bad input ------------------------------------------------------------------------------------------

IMG = np.zeros((1, 64, 64, 3), np.float32)


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("images,err,match", [
    (np.zeros((1, 64, 64, 4), np.float32), ValueError, "3 channels"),
    (np.zeros((1, 3, 64, 64), np.float32), ValueError, "3 channels"),  # channels-first
    (np.zeros((1, 64, 64, 3), np.uint8), TypeError, "floating point"),
    (np.zeros((1, 8, 8, 3), np.float32), ValueError, "smaller than one 16x16 patch"),
    (np.zeros((1, 32, 32, 3), np.float32), ValueError, "must be 64x64"),
    (np.zeros((64, 64, 3), np.float32), ValueError, "4-D"),
    (np.where(np.arange(64)[None, :, None, None] == 5, np.nan, IMG).astype(np.float32), ValueError, "NaN or inf"),
], ids=["4ch", "chfirst", "uint8", "tiny", "size", "3d", "nan"])
def test_bad_images(framework, images, err, match):
    p = init_params(vision_param_specs(VISION))
    with pytest.raises(err, match=match):
        if framework == "torch":
            ET.vision_forward(to_torch(p), torch.as_tensor(images), cfg=VISION)
        else:
            EJ.vision_forward(to_jax(p), jnp.asarray(images), cfg=VISION)


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("wave,lengths,rate,err,match", [
    (np.zeros((1, 4000), np.float32), None, 44100, ValueError, "16000 Hz"),
    (np.zeros((1, 0), np.float32), None, 16000, ValueError, "empty"),
    (np.zeros((1, 399), np.float32), None, 16000, ValueError, "fewer than one"),
    (np.zeros((2, 4000), np.float32), [4000, 100], 16000, ValueError, "clip 1 has 100 samples"),
    (np.zeros((2, 4000), np.float32), [4000], 16000, ValueError, "one entry per clip"),
    (np.zeros((1, 4000), np.int16), None, 16000, TypeError, "floating point"),
    (np.zeros((4000,), np.float32), None, 16000, ValueError, "2-D"),
    (np.where(np.arange(4000) == 7, np.inf, 0.0)[None].astype(np.float32), None, 16000, ValueError, "NaN or inf"),
    (np.zeros((2, 4000), np.float32), [4000, 3999.5], 16000, TypeError, r"lengths\[1\] = float 3999.5"),
    (np.zeros((2, 4000), np.float32), np.array([4000.0, 4000.0]), 16000, TypeError, r"lengths\[0\] = float"),
    (np.zeros((2, 4000), np.float32), [4000, True], 16000, TypeError, r"lengths\[1\] = bool"),
    (np.zeros((1, 4000), np.float32), "4000", 16000, TypeError, "lengths must be a 1-D sequence.*got str"),
    (np.zeros((1, 4000), np.float32), 4000, 16000, TypeError, "lengths must be a 1-D sequence.*got int"),
    (np.zeros((2, 4000), np.float32), [[4000], [4000]], 16000, TypeError, r"lengths\[0\] = a nested"),
    (np.zeros((2, 4000), np.float32), np.full((2, 1), 4000), 16000, TypeError, r"lengths\[0\] = a nested"),
], ids=["rate", "empty", "short", "short-clip", "lengths", "int16", "1d", "inf", "lengths-float",
        "lengths-float-array", "lengths-bool", "lengths-str", "lengths-scalar", "lengths-2d", "lengths-2d-array"])
def test_bad_audio(framework, wave, lengths, rate, err, match):
    p = init_params(audio_param_specs(AUDIO))
    with pytest.raises(err, match=match):
        if framework == "torch":
            ET.audio_forward(to_torch(p), torch.as_tensor(wave), lengths, cfg=AUDIO, sample_rate=rate)
        else:
            EJ.audio_forward(to_jax(p), jnp.asarray(wave), lengths, cfg=AUDIO, sample_rate=rate)


def test_audio_lengths_take_integer_arrays_of_any_framework():
    from model.audio import check_audio

    wave = np.zeros((2, 4000), np.float32)
    for lengths in ([4000, 3999], (np.int64(4000), np.int32(3999)), np.array([4000, 3999], np.int64),
                    torch.tensor([4000, 3999]), jnp.asarray([4000, 3999], jnp.int32)):
        lens = check_audio(wave, lengths, AUDIO, sample_rate=16000, is_float=lambda d: d.kind == "f")[2]
        assert lens == [4000, 3999] and all(type(n) is int for n in lens)


def test_bad_configs_and_video():
    with pytest.raises(ValueError, match="patch must be one of"):
        VisionConfig(patch=8, image_size=64)
    with pytest.raises(ValueError, match="multiple of pool"):
        VisionConfig(pool=3)
    with pytest.raises(ValueError, match="conv_kernel must be odd"):
        AudioConfig(conv_kernel=4)
    with pytest.raises(ValueError, match="sample_rate must be 16000"):
        AudioConfig(sample_rate=8000)
    with pytest.raises(ValueError, match="source_fps"):
        sample_frame_indices(10, 0.0, 1.0, 4)
    p = to_torch(init_params(video_param_specs(VIDEO)))
    with pytest.raises(ValueError, match="5-D"):
        ET.video_forward(p, torch.zeros(2, 64, 64, 3), cfg=VIDEO, source_fps=1.0)
    with pytest.raises(ValueError, match="num_frames"):
        ET.video_forward(p, torch.zeros(1, 2, 64, 64, 3), cfg=VIDEO, source_fps=1.0, num_frames=[3])


# ---- configs and the benchmark suite ---------------------------------------------------------------

def test_conf_encoder_yaml_mirrors_the_presets():
    from pathlib import Path

    from omegaconf import OmegaConf

    from model.video import VIDEO_PRESETS

    tables = {"vision": VISION_PRESETS, "audio": AUDIO_PRESETS, "video": VIDEO_PRESETS}
    files = sorted(Path(__file__).resolve().parents[1].glob("conf/encoder/*.yaml"))
    assert {f.stem for f in files} == {f"{k}_{n}" for k, t in tables.items() for n in t}
    for f in files:
        kind, name = f.stem.split("_", 1)
        d = OmegaConf.to_container(OmegaConf.load(f))
        if kind == "video":
            cfg = VideoConfig(**{**d, "vision": VisionConfig(**d["vision"])})
        else:
            cfg = (VisionConfig if kind == "vision" else AudioConfig)(**d)
        assert cfg == tables[kind][name], f.name


def test_benchmark_suite_checks_before_timing():
    from benchmarks.suites.common import Skip
    from benchmarks.suites.encoders import EncodersBenchConfig, EncodersSuite

    class Cpu:
        kind = "cpu"

    cfg = EncodersBenchConfig(audio_seconds=[0.1], image_batch=1, audio_batch=1)
    suite = EncodersSuite(cfg, Cpu(), timer_factory=None)
    entries = list(suite.entries())
    assert len(entries) == 2 * (len(cfg.torch_impls) + len(cfg.jax_impls))
    for case in {c for c, _, _ in entries}:
        rec, timed = suite.check(case, "torch", "sdpa")
        assert rec["max_error"] <= rec["tolerance"] and callable(timed)
    with pytest.raises(Skip):
        suite.check(entries[0][0], "torch", "pallas")
    with pytest.raises(ValueError, match="unknown vision config"):
        EncodersSuite(EncodersBenchConfig(vision_configs=["nope"]), Cpu(), None)
