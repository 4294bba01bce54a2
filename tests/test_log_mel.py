"""log_mel (kernels/audio/) against the float64 reference; the mel filterbank by hand.

No torchaudio here: the HTK filterbank is checked against its defining properties, a
scalar re-derivation and hand-computed values. Triton runs in the interpreter (fp32,
fp16), Pallas in interpret mode (fp32, bf16). Accuracy rule (conftest.assert_close):
error vs float64 on the same rounded waveform <= 2x the error of the same math done in
the same precision (frames @ DFT tables in that dtype, fp32 accumulation), plus the floor.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kernels import jax_ops, torch_ops
from kernels.audio import reference_jax, triton_log_mel
from kernels.audio.reference import log_mel_reference, log_mel_stft
from kernels.audio.spec import (LOG_FLOOR, dft_tables, geometry, hann_window, hz_to_mel,
                                mel_filterbank, mel_to_hz, packed_dft_tables)

from conftest import assert_close


# ---- filterbank, window, tables ----------------------------------------------------------------

def test_htk_mel_scale_values():
    assert hz_to_mel(0.0) == 0.0
    assert hz_to_mel(700.0) == pytest.approx(2595.0 * math.log10(2.0), rel=1e-15)
    assert hz_to_mel(1000.0) == pytest.approx(999.9855371396243, rel=1e-12)  # ~1000 mel at 1 kHz
    f = np.array([0.0, 123.4, 1000.0, 7999.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, rtol=1e-12, atol=1e-9)


def test_filterbank_single_filter_by_hand():
    """n_mels = 1: corners 0, c = mel_to_hz(hz_to_mel(8000) / 2), 8000; one triangle."""
    fb = mel_filterbank(257, 1, 16000)
    c = 700.0 * (10 ** ((2595.0 * math.log10(1 + 8000 / 700.0) / 2) / 2595.0) - 1)
    freqs = np.arange(257) * 31.25
    want = np.where(freqs <= c, freqs / c, (8000.0 - freqs) / (8000.0 - c))
    np.testing.assert_allclose(fb[:, 0], want, rtol=1e-12, atol=1e-15)
    assert fb[0, 0] == 0.0 and abs(fb[-1, 0]) < 1e-12  # f_max corner round-trips through mel


@pytest.mark.parametrize("n_mels", [80, 128])
def test_filterbank_properties(n_mels):
    fb = mel_filterbank(257, n_mels, 16000)
    assert fb.shape == (257, n_mels) and fb.dtype == np.float64
    assert fb.min() >= 0.0 and fb.max() <= 1.0
    corners = mel_to_hz(np.linspace(0.0, hz_to_mel(8000.0), n_mels + 2))
    freqs = np.linspace(0, 8000, 257)
    inside = (freqs >= corners[1]) & (freqs <= corners[-2])
    # adjacent triangles overlap as a partition of unity between the first and last peaks
    np.testing.assert_allclose(fb[inside].sum(1), 1.0, atol=1e-12)
    # each filter is zero outside (corner m, corner m + 2) and a triangle inside
    for m in (0, n_mels // 2, n_mels - 1):
        outside = (freqs <= corners[m]) | (freqs >= corners[m + 2])
        assert np.all(fb[outside, m] == 0.0)
        rising = (freqs > corners[m]) & (freqs <= corners[m + 1])
        np.testing.assert_allclose(fb[rising, m], (freqs[rising] - corners[m]) / (corners[m + 1] - corners[m]))


def test_filterbank_matches_scalar_rederivation():
    n_mels, fb = 40, mel_filterbank(257, 40, 16000)
    top = 2595.0 * math.log10(1 + 8000 / 700.0)
    pts = [700.0 * (10 ** (top * i / (n_mels + 1) / 2595.0) - 1) for i in range(n_mels + 2)]
    for f_bin in range(0, 257, 7):
        f = f_bin * 8000 / 256
        for m in range(n_mels):
            lo, mid, hi = pts[m], pts[m + 1], pts[m + 2]
            want = max(0.0, min((f - lo) / (mid - lo), (hi - f) / (hi - mid)))
            assert fb[f_bin, m] == pytest.approx(want, abs=1e-12)


def test_window_and_tables():
    np.testing.assert_allclose(hann_window(400), torch.hann_window(400, periodic=True, dtype=torch.float64))
    frame = np.random.default_rng(0).standard_normal(400)
    cos, sin = dft_tables(400, 512)
    spec = np.fft.rfft(frame * hann_window(400), n=512)
    np.testing.assert_allclose(frame @ cos, spec.real, atol=1e-10)
    np.testing.assert_allclose(-(frame @ sin), spec.imag, atol=1e-10)
    re, im = packed_dft_tables(400, 512)
    assert re.shape == im.shape == (400, 256)
    np.testing.assert_allclose(frame @ im[:, 0], spec.real[256], atol=1e-10)  # Nyquist rides in im[:, 0]


def test_geometry_defaults():
    p = geometry(3217)
    assert (p.win, p.hop, p.n_fft, p.n_freqs, p.frames) == (400, 160, 512, 257, 18)


# ---- kernels against float64 ------------------------------------------------------------------

def _same_precision_baseline(x: np.ndarray, dtype_t, n_mels, device="cpu"):
    """frames @ windowed DFT tables in ``dtype_t`` (fp32 out), then power, mel, log in fp32."""
    p = geometry(x.shape[1], x.shape[0], n_mels=n_mels)
    frames = torch.tensor(x).to(device, dtype_t).unfold(-1, p.win, p.hop)
    cos, sin = (torch.tensor(t).to(device, dtype_t) for t in dft_tables(p.win, p.n_fft))
    re, im = (torch.matmul(frames, t).float() for t in (cos, sin))
    mel = (re * re + im * im) @ torch.tensor(mel_filterbank(p.n_freqs, n_mels, 16000), dtype=torch.float32,
                                             device=device)
    return torch.log(torch.clamp_min(mel, LOG_FLOOR))


@pytest.mark.parametrize("batch,samples,n_mels,dtype", [
    (2, 3217, 80, torch.float32), (1, 2001, 128, torch.float16),
], ids=["b2-3217-80-fp32-strided", "b1-2001-128-fp16"])
def test_triton_matches_float64(rng, batch, samples, n_mels, dtype):
    x = rng.standard_normal((batch, samples))
    wave = torch.tensor(x).to(dtype)
    if dtype == torch.float32:  # non-unit sample stride: a [B, S] view of [S, B] storage
        wave = wave.t().contiguous().t()
    ref = log_mel_reference(wave.double(), n_mels=n_mels)
    base = _same_precision_baseline(x, dtype, n_mels)
    before = triton_log_mel.LAUNCHES.copy()
    out = torch_ops.log_mel(wave, n_mels=n_mels, impl="triton")
    assert triton_log_mel.LAUNCHES["_log_mel_kernel"] == before["_log_mel_kernel"] + 1
    assert out.dtype == torch.float32 and out.shape == (batch, 1 + (samples - 400) // 160, n_mels)
    assert_close(out, ref, base, dtype, "log_mel")


def test_triton_silence_hits_the_floor():
    out = torch_ops.log_mel(torch.zeros(1, 400), impl="triton")
    assert out.shape == (1, 1, 80)
    torch.testing.assert_close(out, torch.full((1, 1, 80), math.log(LOG_FLOOR)))


@pytest.mark.parametrize("batch,samples,dtype", [(2, 3217, jnp.float32), (1, 2001, jnp.bfloat16)],
                         ids=["b2-3217-fp32", "b1-2001-bf16"])
def test_pallas_matches_float64(rng, batch, samples, dtype):
    x = jnp.asarray(rng.standard_normal((batch, samples))).astype(dtype)
    x64 = np.asarray(x.astype(jnp.float32), np.float64)
    ref = log_mel_reference(torch.tensor(x64))
    base = np.asarray(reference_jax.log_mel_xla(x))
    out = jax_ops.log_mel(x, impl="pallas")
    assert out.dtype == jnp.float32
    assert_close(np.asarray(out), ref, base, jnp.dtype(dtype), "log_mel")


@pytest.mark.parametrize("framework", ["triton", "pallas"])
def test_gpu_default_chunking_matches_float64(rng, framework):
    """The GPU blocks: several frequency chunks (block_f 64 of n_fft / 2 = 256) and, for
    Triton, window chunks of 32 with a partial last one (400 = 12 x 32 + 16). The interpret
    defaults take bigger steps, so this is what catches a chunk-offset bug on the CPU."""
    x = rng.standard_normal((1, 1200))
    p = geometry(1200, 1, n_mels=80)
    ref = log_mel_reference(torch.tensor(x))
    if framework == "triton":
        blocks = triton_log_mel.default_blocks(torch.float32, capability=(9, 0))
        assert (blocks.block_k, blocks.block_f) == (32, 64)
        wave = torch.tensor(x, dtype=torch.float32)
        out = triton_log_mel.log_mel_triton(wave, p, blocks=blocks)
        base = _same_precision_baseline(x, torch.float32, 80)
    else:
        from kernels.audio.pallas_log_mel import default_blocks, log_mel_pallas

        blocks = default_blocks(interpret=False)
        assert blocks.block_f == 64
        wave = jnp.asarray(x, jnp.float32)
        out = np.asarray(log_mel_pallas(wave, p, blocks=blocks, interpret=True))
        base = np.asarray(reference_jax.log_mel_xla(wave))
    assert_close(out, ref, base, torch.float32, f"log_mel {framework}")


def test_peers_match_float64(rng):
    x = rng.standard_normal((2, 1000))
    ref = log_mel_reference(torch.tensor(x), n_mels=128)
    torch.testing.assert_close(log_mel_stft(torch.tensor(x), n_mels=128), ref, rtol=0, atol=1e-10)
    x32 = torch.tensor(x, dtype=torch.float32)
    base = log_mel_reference(x32, n_mels=128)
    assert_close(torch_ops.log_mel(x32, n_mels=128, impl="stft"), ref, base, torch.float32, "stft")
    for impl in ("xla", "reference"):
        out = jax_ops.log_mel(jnp.asarray(x, jnp.float32), n_mels=128, impl=impl)
        assert_close(np.asarray(out), ref, base, torch.float32, impl)


# ---- bad input ----------------------------------------------------------------------------------

BAD = [
    ("rate", (1, 1000), "float32", dict(sample_rate=44100), ValueError, r"sample_rate must be 16000.*got 44100"),
    ("empty", (1, 0), "float32", {}, ValueError, r"waveform is empty"),
    ("short", (1, 399), "float32", {}, ValueError, r"399 samples, fewer than one window of win=400"),
    ("int", (1, 1000), "int32", {}, TypeError, r"waveform dtype must be fp16, bf16 or fp32, got .*int32"),
    ("3d", (1, 1, 1000), "float32", {}, ValueError, r"waveform must be 2-D \[batch, samples\]"),
    ("n_mels", (1, 1000), "float32", dict(n_mels=300), ValueError, r"n_mels must be an int in \[1, 256\].*300"),
    ("n_fft", (1, 1000), "float32", dict(n_fft=500), ValueError, r"n_fft must be a power of two.*500"),
    ("nan", (1, 1000), "nan", {}, ValueError, r"waveform contains NaN or inf"),
]


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("what,shape,dtype,kwargs,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused(framework, what, shape, dtype, kwargs, exc, match):
    if framework == "torch":
        x = torch.zeros(shape, dtype=torch.float32 if dtype == "nan" else getattr(torch, dtype))
        ops = torch_ops
    else:
        x = jnp.zeros(shape, jnp.float32 if dtype == "nan" else getattr(jnp, dtype))
        ops = jax_ops
    if dtype == "nan":
        x = x.at[0, 5].set(jnp.inf) if framework == "jax" else x.index_fill(1, torch.tensor([5]), math.nan)
    before = triton_log_mel.LAUNCHES.copy()
    with pytest.raises(exc, match=match):
        ops.log_mel(x, **kwargs)
    assert triton_log_mel.LAUNCHES == before


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_pallas_lowers_to_triton_for_cuda(dtype):
    """The compiled (non-interpret) kernel lowers to Triton for CUDA (export, no GPU needed)."""
    import re

    import jax
    from jax import export

    from kernels.audio.pallas_log_mel import default_blocks, log_mel_pallas

    p = geometry(3217, 2, n_mels=128)
    f = jax.jit(lambda x: log_mel_pallas(x, p, interpret=False, blocks=default_blocks(interpret=False)))
    call = "__gpu$xla.gpu.triton"
    exported = export.export(f, platforms=("cuda",),
                             disabled_checks=[export.DisabledSafetyCheck.custom_call(call)],
                             )(jnp.zeros((2, 3217), dtype))
    assert re.findall(r"custom_call @(\S+)\(", exported.mlir_module()).count(call) == 1


def test_benchmark_suite_checks_then_times():
    """The encoder_kernels suite on its tiny CPU defaults (forward only): every impl passes its
    correctness check before it is timed, and reports its throughput metrics."""
    from benchmarks.suites.encoder_kernels import EncoderKernelsBenchConfig, EncoderKernelsSuite, add_peer_ratios
    from benchmarks.timing import Timer

    class Device:
        kind = "cpu"

    cfg = EncoderKernelsBenchConfig(
        patch_directions=["fwd"], dims=[32], image_sizes=[16], audio_seconds=[0.05],
        torch_patch_impls=["triton", "conv"], jax_patch_impls=["pallas", "xla"],
        torch_mel_impls=["triton", "stft"], jax_mel_impls=["pallas", "xla"])
    timer = lambda framework, interpret=False, cuda_graphs=None: Timer("cpu", warmup=0, min_runs=1, max_runs=1,  # noqa: E731
                                                     budget_s=0.0, flush_l2_mb=0)
    suite = EncoderKernelsSuite(cfg, Device(), timer)
    records = []
    for case, framework, impl in suite.entries():
        rec = suite.run(case, framework, impl)
        records.append({**rec, "case": case.id, "framework": framework, "impl": impl})
    add_peer_ratios(records, EncoderKernelsSuite.peers)
    assert len(records) == 8 and all(r["status"] == "ok" for r in records), records
    for r in records:
        assert r["max_error"] <= r["tolerance"]
        keys = ("tflops",) if r["case"].startswith("patch_embed") else ("audio_s_per_s", "gbps")
        assert all(r[k] > 0 for k in keys)
        # interpret-mode times say nothing about the kernel: no speedup is claimed for them
        assert (r["speedup_vs_peer"] > 0) if r["mode"] != "interpret" else "speedup_vs_peer" not in r
    assert {r["mode"] for r in records if r["impl"] in ("triton", "pallas")} == {"interpret"}
