"""PyTorch modality encoders: vision ViT, audio conformer / transformer, video (frames through ViT).

Functional forwards over a flat ``{name: tensor}`` dict whose names, shapes and layouts are
the tables in ``model/vision.py``, ``model/audio.py``, ``model/video.py`` (JAX twin:
``model/encoders_jax.py``), and thin ``nn.Module`` wrappers whose ``state_dict()`` keys are
exactly those names. Every op goes through ``kernels.torch_ops`` with the impl a
``KernelConfig`` picks (``model.encoder_common.resolve_impl``); no fallback between impls.
Each forward returns ``(embeds [batch, tokens, lm_dim], mask [batch, tokens] bool)``.
Inputs are checked (shape, channels, dtype, sample rate, length, finiteness: one host sync)
before any kernel runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels import torch_ops
from model.audio import AudioConfig, audio_param_specs, check_audio
from model.encoder_common import check_finite_host, init_params, resolve_impl
from model.video import VideoConfig, clip_frame_counts, plan_video_batch, video_param_specs
from model.vision import VisionConfig, check_images, vision_param_specs

OPS = ("attention", "norm", "rope", "mlp", "patch_embed", "log_mel")


def _impls(kernels) -> dict:
    return {op: resolve_impl(kernels, op, "torch") for op in OPS}


def _linear(x, w, b=None):
    """x [..., in] @ w.T (+ b): the encoders' one projection entry point (w is [out, in])."""
    return F.linear(x, w, b)


def _ln(x, P, name, eps, ks):
    return torch_ops.layer_norm(x, P[name + ".weight"], P[name + ".bias"], eps=eps, impl=ks["norm"])


def _mha(h, P, p, heads, ks, *, segment_ids=None, positions=None, theta=10000.0):
    """Bidirectional multi-head attention; RoPE on q, k when ``positions`` is given."""
    b, s, d = h.shape
    q, k, v = (_linear(h, P[f"{p}{n}_proj.weight"], P[f"{p}{n}_proj.bias"]).view(b, s, heads, d // heads)
               for n in "qkv")
    if positions is not None:
        q = torch_ops.rope(q, positions, theta=theta, impl=ks["rope"])
        k = torch_ops.rope(k, positions, theta=theta, impl=ks["rope"])
    o = torch_ops.attention(q, k, v, causal=False, segment_ids=segment_ids, impl=ks["attention"])
    return _linear(o.reshape(b, s, d), P[p + "o_proj.weight"], P[p + "o_proj.bias"])


def _mlp(h, P, p, ks):
    h = torch_ops.gelu(_linear(h, P[p + "fc1.weight"], P[p + "fc1.bias"]), approximate="tanh", impl=ks["mlp"])
    return _linear(h, P[p + "fc2.weight"], P[p + "fc2.bias"])


def transformer_block(x, P, p, *, heads, eps, ks, segment_ids=None, positions=None, theta=10000.0):
    """Pre-norm: x += MHA(LN(x)); x += MLP(LN(x)) (the second LN fused with the residual add)."""
    a = _mha(_ln(x, P, p + "ln1", eps, ks), P, p + "attn.", heads, ks, segment_ids=segment_ids,
             positions=positions, theta=theta)
    h, x = torch_ops.layer_norm(a, P[p + "ln2.weight"], P[p + "ln2.bias"], eps=eps, residual=x,
                                impl=ks["norm"])
    return x + _mlp(h, P, p + "mlp.", ks)


def _project(x, P, prefix, eps, ks):
    h = torch_ops.rms_norm(x, P[prefix + "proj_norm.weight"], eps=eps, gemma=True, impl=ks["norm"])
    return _linear(h, P[prefix + "proj.weight"])


def _check_finite(name, x):
    check_finite_host(name, bool(torch.isfinite(x).all()))


# ---- vision ----------------------------------------------------------------------------------

def vision_forward(P: dict, images: torch.Tensor, *, cfg: VisionConfig, kernels=None):
    """images [B, H, W, C] float -> (embeds [B, cfg.tokens, lm_dim], mask [B, cfg.tokens])."""
    check_images(images, cfg, is_float=lambda d: d.is_floating_point)
    _check_finite("images", images)
    ks = _impls(kernels)
    dt = P["vision.pos_embed"].dtype
    w = P["vision.patch_embed.weight"].t().contiguous()  # [K, D]: the kernel's unit-stride layout
    x = torch_ops.patch_embed(images.to(dt), w, P["vision.patch_embed.bias"],
                              P["vision.pos_embed"], patch=cfg.patch, impl=ks["patch_embed"])  # [B, N, D]
    for i in range(cfg.layers):
        x = transformer_block(x, P, f"vision.layers.{i}.", heads=cfg.heads, eps=cfg.norm_eps, ks=ks)
    x = _ln(x, P, "vision.post_layernorm", cfg.norm_eps, ks)
    b, _, d = x.shape
    if cfg.pool > 1:  # average pool x pool patches of the row-major grid
        g, p = cfg.grid, cfg.pool
        x = x.view(b, g // p, p, g // p, p, d).mean(dim=(2, 4)).reshape(b, cfg.tokens, d)
    out = _project(x, P, "vision.", cfg.norm_eps, ks)
    return out, torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)


# ---- audio -----------------------------------------------------------------------------------

def _conv_s2(x, w, b):
    """Conv1d over time, kernel 3, stride 2, zero padding 1: x [B, T, Cin], w [Cout, Cin, 3]
    -> [B, ceil(T / 2), Cout], as one matmul over the three taps."""
    t_out = (x.shape[1] + 1) // 2
    xp = F.pad(x, (0, 0, 1, 1))
    cols = torch.cat([xp[:, j:j + 2 * t_out - 1:2] for j in range(3)], dim=-1)  # taps-major
    return _linear(cols, w.permute(0, 2, 1).reshape(w.shape[0], -1), b)


def _depthwise(x, w, b):
    """'same' depthwise conv over time: x [B, T, D], w [D, K] (K odd), zero padding."""
    k, t = w.shape[1], x.shape[1]
    xp = F.pad(x, (0, 0, k // 2, k // 2))
    return sum(xp[:, j:j + t] * w[:, j] for j in range(k)) + b


def conformer_block(x, P, p, *, cfg: AudioConfig, ks, segment_ids, positions, valid):
    eps = cfg.norm_eps
    x = x + 0.5 * _mlp(_ln(x, P, p + "ff1.norm", eps, ks), P, p + "ff1.", ks)
    x = x + _mha(_ln(x, P, p + "attn_norm", eps, ks), P, p + "attn.", cfg.heads, ks,
                 segment_ids=segment_ids, positions=positions, theta=cfg.rope_theta)
    h = _linear(_ln(x, P, p + "conv.norm", eps, ks), P[p + "conv.pw1.weight"], P[p + "conv.pw1.bias"])
    h = F.glu(h, dim=-1) * valid[..., None]  # padding zeroed before the conv
    h = _depthwise(h, P[p + "conv.dw.weight"], P[p + "conv.dw.bias"])
    h = F.silu(_ln(h, P, p + "conv.dw_norm", eps, ks))
    x = x + _linear(h, P[p + "conv.pw2.weight"], P[p + "conv.pw2.bias"])
    x = x + 0.5 * _mlp(_ln(x, P, p + "ff2.norm", eps, ks), P, p + "ff2.", ks)
    return _ln(x, P, p + "final_norm", eps, ks)


def audio_forward(P: dict, waveform: torch.Tensor, lengths=None, *, cfg: AudioConfig, kernels=None,
                  sample_rate: int = 16000):
    """waveform [B, samples] float at 16 kHz, lengths [B] valid samples (None: all) ->
    (embeds [B, T, lm_dim], mask [B, T]); T = cfg.tokens(samples), clip i valid for
    cfg.tokens(lengths[i]) tokens; padded tokens are zero. A float64 waveform is cast to
    float32 first, whatever the impls (the log_mel kernels take fp16 / bf16 / fp32 and the
    features are float32 anyway), so every preset sees the same samples."""
    _, _, lens = check_audio(waveform, lengths, cfg, sample_rate=sample_rate,
                             is_float=lambda d: d.is_floating_point)
    if waveform.dtype == torch.float64:
        waveform = waveform.to(torch.float32)  # before the finiteness check: catches fp32 overflow
    _check_finite("waveform", waveform)
    ks = _impls(kernels)
    dev, dt = waveform.device, P["audio.subsample.proj.weight"].dtype
    mel = torch_ops.log_mel(waveform, sample_rate=sample_rate, n_mels=cfg.n_mels, win_ms=cfg.win_ms,
                            hop_ms=cfg.hop_ms, impl=ks["log_mel"])  # [B, F, M] fp32
    x = ((mel - cfg.mel_mean) / cfg.mel_std).to(dt)
    n = torch.tensor([cfg.frames(v) for v in lens], device=dev)
    for conv in ("conv1", "conv2"):
        x = x * (torch.arange(x.shape[1], device=dev) < n[:, None])[..., None].to(dt)
        x = torch_ops.gelu(_conv_s2(x, P[f"audio.subsample.{conv}.weight"], P[f"audio.subsample.{conv}.bias"]),
                           approximate="tanh", impl=ks["mlp"])
        n = (n + 1) // 2
    t = x.shape[1]
    valid = torch.arange(t, device=dev) < n[:, None]  # [B, T]
    x = _linear(x, P["audio.subsample.proj.weight"], P["audio.subsample.proj.bias"])
    seg = valid.to(torch.int32)
    pos = torch.arange(t, device=dev).expand(x.shape[0], t)
    validf = valid.to(dt)
    for i in range(cfg.layers):
        p = f"audio.layers.{i}."
        if cfg.block == "conformer":
            x = conformer_block(x, P, p, cfg=cfg, ks=ks, segment_ids=seg, positions=pos, valid=validf)
        else:
            x = transformer_block(x, P, p, heads=cfg.heads, eps=cfg.norm_eps, ks=ks, segment_ids=seg,
                                  positions=pos, theta=cfg.rope_theta)
    out = _project(x, P, "audio.", cfg.norm_eps, ks) * validf[..., None]
    return out, valid


# ---- video -----------------------------------------------------------------------------------

def video_forward(P: dict, frames: torch.Tensor, *, cfg: VideoConfig, source_fps, num_frames=None,
                  kernels=None):
    """frames [B, T, H, W, C] float (B, T >= 1) recorded at ``source_fps`` (one number or a
    1-D sequence / array, one per clip), num_frames [B] real frames per clip (None: T) ->
    (embeds [B, F * tokens, lm_dim], mask), F = the most frames kept by any clip
    (``model.video.sample_frame_indices``)."""
    counts = clip_frame_counts(getattr(frames, "shape", ()), num_frames)  # batch, time >= 1
    plan = plan_video_batch(counts, source_fps, cfg)
    kept = torch.cat([frames[i, torch.tensor(idx, device=frames.device)] for i, idx in enumerate(plan)])
    emb, _ = vision_forward(P, kept, cfg=cfg.vision, kernels=kernels)  # [sum kept, tok, L]
    tok, f_max = cfg.vision.tokens, max(len(idx) for idx in plan)
    temporal = P["video.temporal_embed"]
    blocks, masks, start = [], [], 0
    for idx in plan:
        e = emb[start:start + len(idx)] + temporal[:len(idx), None, :]
        start += len(idx)
        blocks.append(F.pad(e, (0, 0, 0, 0, 0, f_max - len(idx))).reshape(f_max * tok, -1))
        masks.append(torch.arange(f_max * tok, device=e.device) < len(idx) * tok)
    return torch.stack(blocks), torch.stack(masks)


# ---- modules ---------------------------------------------------------------------------------

class _Encoder(nn.Module):
    """Holds one parameter per spec name, nested so ``state_dict()`` keys are the names."""

    def __init__(self, specs: dict):
        super().__init__()
        self._specs = specs
        for name, (shape, _) in specs.items():
            *path, leaf = name.split(".")
            mod = self
            for part in path:
                if not hasattr(mod, part):
                    mod.add_module(part, nn.Module())
                mod = getattr(mod, part)
            mod.register_parameter(leaf, nn.Parameter(torch.empty(shape)))

    def params(self) -> dict:
        return dict(self.named_parameters())

    @torch.no_grad()
    def init_weights(self, seed: int = 0):
        """The deterministic values of ``model.encoder_common.init_params`` (same as JAX)."""
        load_numpy(self, init_params(self._specs, seed))
        return self


def load_numpy(module: nn.Module, arrays: dict) -> None:
    """Copy numpy arrays into ``module``'s parameters by name (names and shapes must match)."""
    state = module.state_dict()
    if set(state) != set(arrays):
        missing = sorted(set(state) ^ set(arrays))
        raise ValueError(f"parameter names differ from the module's; first mismatch: {missing[0]!r}")
    for name, a in arrays.items():
        if tuple(a.shape) != tuple(state[name].shape):
            raise ValueError(f"{name}: shape {tuple(a.shape)} != expected {tuple(state[name].shape)}")
        state[name].copy_(torch.as_tensor(a))


class VisionEncoder(_Encoder):
    def __init__(self, cfg: VisionConfig, kernels=None):
        super().__init__(vision_param_specs(cfg))
        self.cfg, self.kernels = cfg, kernels

    def forward(self, images):
        return vision_forward(self.params(), images, cfg=self.cfg, kernels=self.kernels)


class AudioEncoder(_Encoder):
    def __init__(self, cfg: AudioConfig, kernels=None):
        super().__init__(audio_param_specs(cfg))
        self.cfg, self.kernels = cfg, kernels

    def forward(self, waveform, lengths=None, *, sample_rate=16000):
        return audio_forward(self.params(), waveform, lengths, cfg=self.cfg, kernels=self.kernels,
                             sample_rate=sample_rate)


class VideoEncoder(_Encoder):
    """Owns the vision parameters too (``vision.*``): share them with a VisionEncoder by
    loading the same state, or use ``video_forward`` on one dict holding both."""

    def __init__(self, cfg: VideoConfig, kernels=None):
        super().__init__(video_param_specs(cfg))
        self.cfg, self.kernels = cfg, kernels

    def forward(self, frames, *, source_fps, num_frames=None):
        return video_forward(self.params(), frames, cfg=self.cfg, source_fps=source_fps,
                             num_frames=num_frames, kernels=self.kernels)
