"""Audio encoder (conformer or transformer) configuration, parameter table and length math.

    waveform [batch, samples] float at 16 kHz + lengths [batch] (valid samples per clip);
      float64 audio is cast to float32 first (the log_mel kernels take fp16 / bf16 / fp32)
      -> log_mel (25 ms window, 10 ms hop, n_mels) -> (x - mel_mean) / mel_std
      -> subsampling: two conv1d over time (kernel 3, stride 2, padding 1, GELU) = 4x fewer
         frames -> linear to width
      -> layers x block, block = "conformer" (Gulati et al. 2020: 1/2 FF, MHSA with RoPE,
         conv module [pointwise -> GLU -> depthwise conv -> LayerNorm -> SiLU -> pointwise],
         1/2 FF, LayerNorm) or "transformer" (the ViT block with RoPE)
      -> RMSNorm (1 + w) -> linear to lm_dim: embeds [batch, tokens, lm_dim], mask [batch, tokens].

Padding never leaks: attention gets segment ids (valid frames 1, padding 0), and the
activations at padded frames are zeroed before every convolution (subsampling and
depthwise), so each clip's tokens equal what the clip gives when encoded alone.
The depthwise conv's normalization is a LayerNorm, not BatchNorm, for the same reason.
Clips shorter than one 25 ms window, other sample rates and non-finite samples are refused.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from kernels.audio.spec import SAMPLE_RATE, geometry
from model.encoder_common import check_int, count, mlp_specs, projection_specs, transformer_block_specs

BLOCKS = ("conformer", "transformer")


@dataclass(frozen=True)
class AudioConfig:
    name: str = "tiny"
    n_mels: int = 16
    sample_rate: int = SAMPLE_RATE
    win_ms: float = 25.0
    hop_ms: float = 10.0
    mel_mean: float = -4.0  # fixed feature normalization (x - mean) / std, per-clip independent
    mel_std: float = 4.0
    conv_dim: int = 32  # channels of the two subsampling convs
    width: int = 32
    layers: int = 2
    heads: int = 2
    mlp_dim: int = 64
    conv_kernel: int = 5  # depthwise conv kernel of the conformer conv module (odd)
    block: str = "conformer"
    rope_theta: float = 10000.0
    lm_dim: int = 128
    norm_eps: float = 1e-6

    def __post_init__(self):
        for name in ("n_mels", "conv_dim", "width", "layers", "heads", "mlp_dim", "conv_kernel", "lm_dim"):
            check_int(name, getattr(self, name))
        if self.sample_rate != SAMPLE_RATE:
            raise ValueError(f"sample_rate must be {SAMPLE_RATE} (the log_mel kernel's), got {self.sample_rate!r}")
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {self.block!r}")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"width={self.width} / heads={self.heads} must give an even head_dim (RoPE)")
        if self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd ('same' padding), got {self.conv_kernel}")
        if not self.mel_std > 0:
            raise ValueError(f"mel_std must be > 0, got {self.mel_std}")
        geometry(400, sample_rate=self.sample_rate, n_mels=self.n_mels, win_ms=self.win_ms,
                 hop_ms=self.hop_ms)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def win(self) -> int:
        return int(round(self.win_ms * self.sample_rate / 1000))

    @property
    def hop(self) -> int:
        return int(round(self.hop_ms * self.sample_rate / 1000))

    def frames(self, samples: int) -> int:
        """log_mel frames of a clip (0 if shorter than one window)."""
        return 0 if samples < self.win else 1 + (samples - self.win) // self.hop

    def tokens(self, samples: int) -> int:
        """Encoder output tokens of a clip of ``samples`` samples: ceil(ceil(frames / 2) / 2)."""
        f = self.frames(samples)
        return ((f + 1) // 2 + 1) // 2

    def to_dict(self) -> dict:
        return asdict(self)


AUDIO_PRESETS = {
    "tiny": AudioConfig(),
    "tiny_transformer": AudioConfig(name="tiny_transformer", block="transformer"),
    # A USM/Conformer-L-sized encoder (~0.6B): 128 mels, width 1024, 24 conformer blocks.
    "conformer_large": AudioConfig(name="conformer_large", n_mels=128, conv_dim=512, width=1024,
                                   layers=24, heads=16, mlp_dim=4096, conv_kernel=31, lm_dim=2048),
}


def conformer_block_specs(prefix: str, width: int, mlp_dim: int, kernel: int) -> dict:
    d = width
    specs = {}
    ln = lambda name: {f"{prefix}{name}.weight": ((d,), ("enc_embed",)),  # noqa: E731
                       f"{prefix}{name}.bias": ((d,), ("enc_embed",))}
    for ff in ("ff1", "ff2"):
        specs.update(ln(f"{ff}.norm"))
        specs.update(mlp_specs(f"{prefix}{ff}.", d, mlp_dim))
    specs.update(ln("attn_norm"))
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
        axes = ("enc_embed", "enc_heads") if proj == "o_proj" else ("enc_heads", "enc_embed")
        specs[f"{prefix}attn.{proj}.weight"] = ((d, d), axes)
        specs[f"{prefix}attn.{proj}.bias"] = ((d,), axes[:1])
    specs.update(ln("conv.norm"))
    specs[f"{prefix}conv.pw1.weight"] = ((2 * d, d), ("enc_mlp", "enc_embed"))
    specs[f"{prefix}conv.pw1.bias"] = ((2 * d,), ("enc_mlp",))
    specs[f"{prefix}conv.dw.weight"] = ((d, kernel), ("enc_embed", "enc_kernel"))
    specs[f"{prefix}conv.dw.bias"] = ((d,), ("enc_embed",))
    specs.update(ln("conv.dw_norm"))
    specs[f"{prefix}conv.pw2.weight"] = ((d, d), ("enc_embed", "enc_mlp"))
    specs[f"{prefix}conv.pw2.bias"] = ((d,), ("enc_embed",))
    specs.update(ln("final_norm"))
    return specs


def audio_param_specs(cfg: AudioConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """name -> (shape, logical axes). Conv weights are [out, in, kernel] (torch Conv1d layout);
    the depthwise kernel is [width, kernel]."""
    c = cfg.conv_dim
    specs = {
        "audio.subsample.conv1.weight": ((c, cfg.n_mels, 3), ("enc_conv", "enc_mel", "enc_kernel")),
        "audio.subsample.conv1.bias": ((c,), ("enc_conv",)),
        "audio.subsample.conv2.weight": ((c, c, 3), ("enc_conv", "enc_conv_in", "enc_kernel")),
        "audio.subsample.conv2.bias": ((c,), ("enc_conv",)),
        "audio.subsample.proj.weight": ((cfg.width, c), ("enc_embed", "enc_conv")),
        "audio.subsample.proj.bias": ((cfg.width,), ("enc_embed",)),
    }
    for i in range(cfg.layers):
        p = f"audio.layers.{i}."
        if cfg.block == "conformer":
            specs.update(conformer_block_specs(p, cfg.width, cfg.mlp_dim, cfg.conv_kernel))
        else:
            specs.update(transformer_block_specs(p, cfg.width, cfg.mlp_dim))
    specs.update(projection_specs("audio.", cfg.width, cfg.lm_dim))
    return specs


def audio_param_count(cfg: AudioConfig) -> int:
    return count(audio_param_specs(cfg))


def _check_lengths(lengths) -> list[int]:
    """``lengths`` as host ints: a 1-D integer array / tensor or a list / tuple of integers (numpy
    integers too); floats, bools, strings and nested sequences are refused, not truncated."""
    vals = lengths.tolist() if hasattr(lengths, "tolist") else lengths  # numpy / torch / JAX -> list
    if not isinstance(vals, (list, tuple)):
        raise TypeError(f"lengths must be a 1-D sequence or array of integers (samples per clip), got "
                        f"{type(lengths).__name__} {lengths!r}")
    for i, v in enumerate(vals):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            got = "a nested sequence (2-D or more)" if isinstance(v, (list, tuple)) else f"{type(v).__name__} {v!r}"
            raise TypeError(f"lengths must be a 1-D sequence or array of integers (samples per clip), "
                            f"got lengths[{i}] = {got}")
    return [int(v) for v in vals]


def check_audio(waveform, lengths, cfg: AudioConfig, *, sample_rate, is_float) -> tuple[int, int, list[int]]:
    """Shape / dtype / length checks before any kernel runs; returns (batch, samples, lengths)
    with ``lengths`` as host ints (None -> every clip is full length)."""
    if sample_rate != cfg.sample_rate:
        raise ValueError(f"sample_rate must be {cfg.sample_rate} Hz (resample first; resampling is "
                         f"not offered), got {sample_rate!r}")
    shape = getattr(waveform, "shape", None)
    if shape is None or not hasattr(waveform, "dtype"):
        raise TypeError(f"waveform must be an array or tensor, got {type(waveform).__name__}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise ValueError(f"waveform must be 2-D [batch, samples] (mono), got shape {shape}")
    if not is_float(waveform.dtype):
        raise TypeError(f"waveform must be floating point, got {waveform.dtype}")
    b, s = shape
    if b < 1 or s < 1:
        raise ValueError(f"waveform is empty: shape {shape}")
    if lengths is None:
        lens = [s] * b
    else:
        lens = _check_lengths(lengths)
        if len(lens) != b:
            raise ValueError(f"lengths must have one entry per clip ({b}), got {len(lens)}")
    for i, n in enumerate(lens):
        if not 0 <= n <= s:
            raise ValueError(f"lengths[{i}]={n} must lie in [0, samples={s}]")
        if n < cfg.win:
            raise ValueError(f"audio clip {i} has {n} samples, fewer than one {cfg.win_ms} ms window "
                             f"({cfg.win} samples at {cfg.sample_rate} Hz); empty or too-short audio is refused")
    return b, s, lens
