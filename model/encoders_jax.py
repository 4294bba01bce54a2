"""JAX modality encoders: the twin of ``model/encoders_torch.py`` (same math, same names).

Pure functions over a flat ``{name: jax.Array}`` dict (the tables in ``model/vision.py``,
``model/audio.py``, ``model/video.py``): ``vision_forward``, ``audio_forward``,
``video_forward`` each return ``(embeds [batch, tokens, lm_dim], mask [batch, tokens] bool)``.
Every op goes through ``kernels.jax_ops`` with the impl a ``KernelConfig`` picks. Inputs
are checked (shapes, dtype, sample rate, lengths) before any kernel runs; finiteness is
checked when the inputs are concrete (under an outer ``jax.jit`` it cannot be, as for
log_mel). The model math runs as one jitted core per (config, impls) and input shape.
``init_params(specs, seed)`` gives the same values as the torch modules' ``init_weights``.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from kernels import jax_ops
from model.audio import AudioConfig, check_audio
from model.encoder_common import check_finite_host, resolve_impl
from model.encoder_common import init_params as _init_numpy
from model.video import VideoConfig, clip_frame_counts, plan_video_batch
from model.vision import VisionConfig, check_images

OPS = ("attention", "norm", "rope", "mlp", "patch_embed", "log_mel")


def init_params(specs: dict, seed: int = 0, dtype=jnp.float32) -> dict:
    return {k: jnp.asarray(v, dtype) for k, v in _init_numpy(specs, seed).items()}


def _impls(kernels) -> tuple:
    """Hashable (op, impl) pairs: a static argument of the jitted cores."""
    return tuple((op, resolve_impl(kernels, op, "jax")) for op in OPS)


def _is_float(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating)


def _check_finite(name, x):
    if not isinstance(x, jax.core.Tracer):
        check_finite_host(name, bool(jnp.isfinite(x).all()))


def _linear(x, w, b=None):
    """x [..., in] @ w.T (+ b): the encoders' one projection entry point (w is [out, in])."""
    y = x @ w.T
    return y if b is None else y + b


def _ln(x, P, name, eps, ks):
    return jax_ops.layer_norm(x, P[name + ".weight"], P[name + ".bias"], eps=eps, impl=ks["norm"])


def _mha(h, P, p, heads, ks, *, segment_ids=None, positions=None, theta=10000.0):
    b, s, d = h.shape
    q, k, v = (_linear(h, P[f"{p}{n}_proj.weight"], P[f"{p}{n}_proj.bias"]).reshape(b, s, heads, d // heads)
               for n in "qkv")
    if positions is not None:
        q = jax_ops.rope(q, positions, theta=theta, impl=ks["rope"])
        k = jax_ops.rope(k, positions, theta=theta, impl=ks["rope"])
    o = jax_ops.attention(q, k, v, causal=False, segment_ids=segment_ids, impl=ks["attention"])
    return _linear(o.reshape(b, s, d), P[p + "o_proj.weight"], P[p + "o_proj.bias"])


def _mlp(h, P, p, ks):
    h = jax_ops.gelu(_linear(h, P[p + "fc1.weight"], P[p + "fc1.bias"]), approximate="tanh", impl=ks["mlp"])
    return _linear(h, P[p + "fc2.weight"], P[p + "fc2.bias"])


def transformer_block(x, P, p, *, heads, eps, ks, segment_ids=None, positions=None, theta=10000.0):
    a = _mha(_ln(x, P, p + "ln1", eps, ks), P, p + "attn.", heads, ks, segment_ids=segment_ids,
             positions=positions, theta=theta)
    h, x = jax_ops.layer_norm(a, P[p + "ln2.weight"], P[p + "ln2.bias"], eps=eps, residual=x, impl=ks["norm"])
    return x + _mlp(h, P, p + "mlp.", ks)


def _project(x, P, prefix, eps, ks):
    h = jax_ops.rms_norm(x, P[prefix + "proj_norm.weight"], eps=eps, gemma=True, impl=ks["norm"])
    return _linear(h, P[prefix + "proj.weight"])


# ---- vision ----------------------------------------------------------------------------------

def vision_forward(P: dict, images, *, cfg: VisionConfig, kernels=None):
    """images [B, H, W, C] float -> (embeds [B, cfg.tokens, lm_dim], mask [B, cfg.tokens])."""
    check_images(images, cfg, is_float=_is_float)
    _check_finite("images", images)
    return _vision_core(P, images, cfg=cfg, ks=_impls(kernels))


@partial(jax.jit, static_argnames=("cfg", "ks"))
def _vision_core(P, images, *, cfg: VisionConfig, ks: tuple):
    ks = dict(ks)
    dt = P["vision.pos_embed"].dtype
    x = jax_ops.patch_embed(images.astype(dt), P["vision.patch_embed.weight"].T, P["vision.patch_embed.bias"],
                            P["vision.pos_embed"], patch=cfg.patch, impl=ks["patch_embed"])  # [B, N, D]
    for i in range(cfg.layers):
        x = transformer_block(x, P, f"vision.layers.{i}.", heads=cfg.heads, eps=cfg.norm_eps, ks=ks)
    x = _ln(x, P, "vision.post_layernorm", cfg.norm_eps, ks)
    b, _, d = x.shape
    if cfg.pool > 1:
        g, p = cfg.grid, cfg.pool
        x = x.reshape(b, g // p, p, g // p, p, d).mean(axis=(2, 4)).reshape(b, cfg.tokens, d)
    out = _project(x, P, "vision.", cfg.norm_eps, ks)
    return out, jnp.ones(out.shape[:2], bool)


# ---- audio -----------------------------------------------------------------------------------

def _conv_s2(x, w, b):
    """Conv1d, kernel 3, stride 2, zero padding 1: [B, T, Cin] -> [B, ceil(T / 2), Cout]."""
    t_out = (x.shape[1] + 1) // 2
    xp = jnp.pad(x, ((0, 0), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, j:j + 2 * t_out - 1:2] for j in range(3)], axis=-1)
    return _linear(cols, jnp.transpose(w, (0, 2, 1)).reshape(w.shape[0], -1), b)


def _depthwise(x, w, b):
    k, t = w.shape[1], x.shape[1]
    xp = jnp.pad(x, ((0, 0), (k // 2, k // 2), (0, 0)))
    return sum(xp[:, j:j + t] * w[:, j] for j in range(k)) + b


def conformer_block(x, P, p, *, cfg: AudioConfig, ks, segment_ids, positions, valid):
    eps = cfg.norm_eps
    x = x + 0.5 * _mlp(_ln(x, P, p + "ff1.norm", eps, ks), P, p + "ff1.", ks)
    x = x + _mha(_ln(x, P, p + "attn_norm", eps, ks), P, p + "attn.", cfg.heads, ks,
                 segment_ids=segment_ids, positions=positions, theta=cfg.rope_theta)
    h = _linear(_ln(x, P, p + "conv.norm", eps, ks), P[p + "conv.pw1.weight"], P[p + "conv.pw1.bias"])
    h = jax.nn.glu(h, axis=-1) * valid[..., None]
    h = _depthwise(h, P[p + "conv.dw.weight"], P[p + "conv.dw.bias"])
    h = jax.nn.silu(_ln(h, P, p + "conv.dw_norm", eps, ks))
    x = x + _linear(h, P[p + "conv.pw2.weight"], P[p + "conv.pw2.bias"])
    x = x + 0.5 * _mlp(_ln(x, P, p + "ff2.norm", eps, ks), P, p + "ff2.", ks)
    return _ln(x, P, p + "final_norm", eps, ks)


def audio_forward(P: dict, waveform, lengths=None, *, cfg: AudioConfig, kernels=None, sample_rate: int = 16000):
    """waveform [B, samples] at 16 kHz, lengths [B] valid samples (None: all; host values) ->
    (embeds [B, T, lm_dim], mask [B, T]); padded tokens are zero. A float64 waveform (numpy,
    or jax with x64 enabled) is cast to float32 first, as in ``encoders_torch.audio_forward``."""
    _, _, lens = check_audio(waveform, lengths, cfg, sample_rate=sample_rate, is_float=_is_float)
    if jnp.dtype(waveform.dtype) == jnp.float64:
        waveform = jnp.asarray(waveform, jnp.float32)  # before the finiteness check (fp32 overflow)
    _check_finite("waveform", waveform)
    n_frames = jnp.asarray([cfg.frames(v) for v in lens], jnp.int32)
    return _audio_core(P, waveform, n_frames, cfg=cfg, ks=_impls(kernels))


@partial(jax.jit, static_argnames=("cfg", "ks"))
def _audio_core(P, waveform, n, *, cfg: AudioConfig, ks: tuple):
    """n [B]: valid log-mel frames per clip (a traced value: new lengths do not recompile)."""
    ks = dict(ks)
    dt = P["audio.subsample.proj.weight"].dtype
    mel = jax_ops.log_mel(waveform, sample_rate=cfg.sample_rate, n_mels=cfg.n_mels, win_ms=cfg.win_ms,
                          hop_ms=cfg.hop_ms, impl=ks["log_mel"])
    x = ((mel - cfg.mel_mean) / cfg.mel_std).astype(dt)
    for conv in ("conv1", "conv2"):
        x = x * (jnp.arange(x.shape[1]) < n[:, None])[..., None].astype(dt)
        x = jax_ops.gelu(_conv_s2(x, P[f"audio.subsample.{conv}.weight"], P[f"audio.subsample.{conv}.bias"]),
                         approximate="tanh", impl=ks["mlp"])
        n = (n + 1) // 2
    t = x.shape[1]
    valid = jnp.arange(t) < n[:, None]
    x = _linear(x, P["audio.subsample.proj.weight"], P["audio.subsample.proj.bias"])
    seg = valid.astype(jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (x.shape[0], t))
    validf = valid.astype(dt)
    for i in range(cfg.layers):
        p = f"audio.layers.{i}."
        if cfg.block == "conformer":
            x = conformer_block(x, P, p, cfg=cfg, ks=ks, segment_ids=seg, positions=pos, valid=validf)
        else:
            x = transformer_block(x, P, p, heads=cfg.heads, eps=cfg.norm_eps, ks=ks, segment_ids=seg,
                                  positions=pos, theta=cfg.rope_theta)
    return _project(x, P, "audio.", cfg.norm_eps, ks) * validf[..., None], valid


# ---- video -----------------------------------------------------------------------------------

def video_forward(P: dict, frames, *, cfg: VideoConfig, source_fps, num_frames=None, kernels=None):
    """frames [B, T, H, W, C] at ``source_fps`` -> (embeds [B, F * tokens, lm_dim], mask); see
    ``model.encoders_torch.video_forward``."""
    counts = clip_frame_counts(getattr(frames, "shape", ()), num_frames)  # batch, time >= 1
    plan = plan_video_batch(counts, source_fps, cfg)
    kept = jnp.concatenate([frames[i, jnp.asarray(idx)] for i, idx in enumerate(plan)])
    emb, _ = vision_forward(P, kept, cfg=cfg.vision, kernels=kernels)
    tok, f_max = cfg.vision.tokens, max(len(idx) for idx in plan)
    temporal = P["video.temporal_embed"]
    blocks, masks, start = [], [], 0
    for idx in plan:
        e = emb[start:start + len(idx)] + temporal[:len(idx), None, :]
        start += len(idx)
        blocks.append(jnp.pad(e, ((0, f_max - len(idx)), (0, 0), (0, 0))).reshape(f_max * tok, -1))
        masks.append(jnp.arange(f_max * tok) < len(idx) * tok)
    return jnp.stack(blocks), jnp.stack(masks)
