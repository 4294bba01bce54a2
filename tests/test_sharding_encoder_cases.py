"""Cases the ring-attention, torch-sharding and encoder suites left open (mutation audit 4D).

Each test names the mutation it catches. Cheap on purpose (the suite is at its time budget):
the ring cases run on a ring of ONE rank / device (in this process: gloo world 1 for torch,
a 1-device mesh for JAX), which is enough to see whether an explicit ``scale`` reaches the
kernel; the TP plan is checked as data and its head check with a stand-in mesh (the check
runs before anything is sharded); audio frame counts against the log_mel kernel's framing
and hand-counted 16 kHz numbers; the video budget pick against its documented formula.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels.tolerances import ATOL_FLOOR, ERROR_RATIO
from conftest import max_err

SCALE = 0.3  # not head_dim ** -0.5 (= 0.25 for head_dim 16): a dropped scale shows


def _ref64(q, k, v, *, causal, scale):
    from kernels.attention import reference

    t = [torch.as_tensor(np.asarray(x, np.float64)) for x in (q, k, v)]
    return reference._attention(*t, causal=causal, window=None, softcap=None, scale=scale,
                                q_segment_ids=None, kv_segment_ids=None, upcast=True).numpy()


def _base32(q, k, v, *, causal, scale):
    """torch's math in fp32: the framework-error baseline of the accuracy rule."""
    from kernels.attention import reference

    t = [torch.as_tensor(np.asarray(x, np.float32)) for x in (q, k, v)]
    return reference._attention(*t, causal=causal, window=None, softcap=None, scale=scale,
                                q_segment_ids=None, kv_segment_ids=None, upcast=False).numpy()


def _assert_accurate(out, q, k, v, *, causal, scale, what):
    ref = _ref64(q, k, v, causal=causal, scale=scale)
    bound = ERROR_RATIO * max_err(_base32(q, k, v, causal=causal, scale=scale), ref) \
        + ATOL_FLOOR["float32"] * max(1.0, float(np.abs(ref).max()))
    err = max_err(out, ref)
    assert err <= bound, f"{what}: error vs float64 {err:.3e} > bound {bound:.3e}"


def _qkv(rng, s=8, h=2, kvh=1, d=16):
    return [rng.standard_normal(shape).astype(np.float32)
            for shape in ((1, s, h, d), (1, s, kvh, d), (1, s, kvh, d))]


@pytest.fixture
def gloo_world_1(tmp_path):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a default process group already exists in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_torch_ring_uses_the_given_scale(rng, gloo_world_1):
    """Catches ring_attention_torch.ring_attention passing head_dim ** -0.5 (or any scale but
    the caller's) to _RingAttention: the ring tests only use the default scale."""
    from sharding.ring_attention_torch import ring_attention

    q, k, v = _qkv(rng)
    out = ring_attention(*(torch.as_tensor(x) for x in (q, k, v)), causal=True, scale=SCALE)
    _assert_accurate(out.numpy(), q, k, v, causal=True, scale=SCALE, what="torch ring, scale 0.3")


def test_jax_ring_uses_the_given_scale(rng):
    """Catches ring_attention_jax.ring_attention handing ring_attention_local a scale other
    than the checked problem.scale (e.g. head_dim ** -0.5)."""
    import jax

    from sharding.ring_attention_jax import ring_attention

    q, k, v = _qkv(rng)
    mesh = jax.make_mesh((1,), ("sp",))
    out = ring_attention(q, k, v, mesh=mesh, axis_name="sp", causal=True, scale=SCALE)
    _assert_accurate(np.asarray(out), q, k, v, causal=True, scale=SCALE, what="jax ring, scale 0.3")


# ---- torch tensor parallel plan ---------------------------------------------------------------

@pytest.mark.parametrize("kv_heads,tp,colwise_kv", [(2, 2, True), (4, 2, True), (1, 2, False), (2, 4, False)])
def test_tp_plan_splits_kv_by_heads_when_divisible(kv_heads, tp, colwise_kv):
    """GQA with tp | kv_heads: k/v column-parallel like q (each rank its own kv heads, so its
    query heads meet their own kv head); otherwise whole on every rank (ReplicatedKV). Catches
    tp_plan always using ReplicatedKV: a GQA layer would then pair rank r's local query heads
    with kv heads 0.. instead of its own (the gloo TP test runs MQA only)."""
    from model.config import ModelConfig
    from sharding.torch_sharding import LinearParallel, ReplicatedKV, tp_plan

    cfg = ModelConfig(vocab_size=256, width=64, layers=1, heads=4, kv_heads=kv_heads, head_dim=16, mlp_dim=128)
    plan = tp_plan(cfg, tp)
    for name in ("self_attn.k_proj", "self_attn.v_proj"):
        style = plan[name]
        if colwise_kv:
            assert isinstance(style, LinearParallel) and style.colwise, (name, style)
        else:
            assert isinstance(style, ReplicatedKV), (name, style)
    assert plan["self_attn.q_proj"].colwise and not plan["self_attn.o_proj"].colwise
    assert plan["mlp.gate_proj"].colwise and plan["mlp.up_proj"].colwise and not plan["mlp.down_proj"].colwise


class _Mesh1D:
    """Stand-in for a 1-D DeviceMesh of ``n`` ranks: apply_tp reads ndim and size() first."""

    def __init__(self, n):
        self.ndim, self.n, self.mesh_dim_names = 1, n, ("tensor",)

    def size(self):
        return self.n


@pytest.mark.parametrize("field,fragment", [("heads", "heads=6"), ("mlp_dim", "mlp_dim=126")])
def test_apply_tp_refuses_an_undivided_dimension(field, fragment):
    """Catches apply_tp's divisibility check removed (heads or mlp_dim not divisible by the
    tensor size): the error must name the size and the dimension, before any module changes."""
    from model.config import KernelConfig, ModelConfig
    from model.torch_model import GeminiModel
    from sharding.torch_sharding import apply_tp

    kw = dict(vocab_size=256, width=64, layers=1, heads=4, kv_heads=1, head_dim=16, mlp_dim=128)
    kw[field] = 6 if field == "heads" else 126
    model = GeminiModel(ModelConfig(**kw), KernelConfig("reference"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"tensor mesh size 4 does not divide .*\({fragment}\)"):
        apply_tp(model, _Mesh1D(4))
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


# ---- video frame sampling -----------------------------------------------------------------------

@pytest.mark.parametrize("n,src,fps,budget,want", [
    # 5 sampled > budget 4: sampled[round(j * 4 / 3)] = [0, 1, 3, 4] (floor would give [0, 1, 2, 4])
    (5, 1.0, 1.0, 4, [0, 1, 3, 4]),
    # 30 sampled seconds kept to 8: round(j * 29 / 7) * 30 (floor: 120, 240, 360, ... drift low)
    (900, 30.0, 1.0, 8, [0, 120, 240, 360, 510, 630, 750, 870]),
    # step 2.4 / 0.8 = 2.9999999999999996 in floating point: still every third frame
    (9, 2.4, 0.8, 16, [0, 3, 6]),
])
def test_sample_frame_indices_rounding(n, src, fps, budget, want):
    """Catches sample_frame_indices picking the budget's frames with floor instead of round
    (the first two cases) and dropping the 1e-9 guard of floor(k * source_fps / fps) (the
    third: a 2.4 fps source sampled at 0.8 fps would keep frames 0, 2, 5, 8)."""
    from model.video import sample_frame_indices

    assert sample_frame_indices(n, src, fps, budget) == want


# ---- audio: a clip shorter than one window ------------------------------------------------------

def test_clip_between_one_hop_and_one_window_is_refused():
    """Catches check_audio comparing a clip's length with the 10 ms hop (160 samples) instead
    of the 25 ms window (400): a 300-sample clip in a batch would encode to zero tokens,
    silently (the existing cases are 100 samples, under both, and a 399-sample waveform, which
    the log_mel kernel itself refuses)."""
    from model.audio import AudioConfig, check_audio

    cfg = AudioConfig()
    wave = torch.zeros(2, 4000)
    with pytest.raises(ValueError, match=r"audio clip 1 has 300 samples, fewer than one 25.0 ms window \(400"):
        check_audio(wave, [4000, 300], cfg, sample_rate=16000, is_float=lambda d: d.is_floating_point)


# ---- vision: average pooling over the row-major patch grid --------------------------------------

@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_vision_pool_averages_row_major_blocks(rng, monkeypatch, framework):
    """Pool 2 on a 6 x 6 patch grid (3 x 3 tokens) equals the float64 mean of each 2 x 2 block
    of the same encoder's pool-1 features (the projector replaced by the identity to expose
    them). Catches the pool view's axes swapped, view(b, p, g // p, p, g // p, d), in either
    framework: identical when g // p == p, as in the tiny config (4 x 4 grid, pool 2) that the
    parity tests use, and a RuntimeError in the reshape otherwise (SigLIP: 64 x 64 grid, pool
    4). Also an independent float64 check of the pooled token order (row-major blocks), which
    the torch-vs-JAX parity tests cannot give when both frameworks share a mistake."""
    from model import encoders_jax as EJ
    from model import encoders_torch as ET
    from model.encoder_common import init_params
    from model.vision import VisionConfig, vision_param_specs

    base = dict(name="pool-case", image_size=96, patch=16, width=24, layers=1, heads=2, mlp_dim=32, lm_dim=8)
    pooled, flat = VisionConfig(**base, pool=2), VisionConfig(**base, pool=1)
    p = init_params(vision_param_specs(pooled), 3)
    img = rng.standard_normal((1, 96, 96, 3)).astype(np.float32)
    if framework == "torch":
        monkeypatch.setattr(ET, "_project", lambda x, *a: x)
        run = lambda cfg: ET.vision_forward({k: torch.as_tensor(v) for k, v in p.items()},  # noqa: E731
                                            torch.as_tensor(img), cfg=cfg)[0].numpy()
    else:
        import jax.numpy as jnp

        monkeypatch.setattr(EJ, "_project", lambda x, *a: x)
        run = lambda cfg: np.asarray(EJ.vision_forward({k: jnp.asarray(v) for k, v in p.items()},  # noqa: E731
                                                       jnp.asarray(img), cfg=cfg)[0])
    feats = run(flat).astype(np.float64).reshape(6, 6, 24)  # row-major patch grid
    want = feats.reshape(3, 2, 3, 2, 24).mean(axis=(1, 3)).reshape(1, 9, 24)
    got = run(pooled)
    assert got.shape == (1, 9, 24)
    err = max_err(got, want)
    assert err <= ATOL_FLOOR["float32"] * max(1.0, float(np.abs(want).max())), f"pooled vs block means: {err:.3e}"
