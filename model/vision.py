"""Vision encoder (ViT, SigLIP-style) configuration, parameter table and input checks.

    images [batch, height, width, channels] float (channels-last, values already normalized)
      -> patch_embed (conv as a gather-matmul, + bias + learned position embedding)
      -> layers x pre-norm block: LayerNorm -> bidirectional MHA (attention kernel,
         causal=False) -> residual; LayerNorm -> GELU(tanh) MLP -> residual
      -> post LayerNorm -> optional pool x pool average over the patch grid (Gemma 3:
         64 x 64 patches -> 16 x 16 = 256 tokens) -> RMSNorm (1 + w) -> linear to lm_dim
      -> embeds [batch, tokens, lm_dim] and mask [batch, tokens] (all True).

Forward passes: ``model.encoders_torch.vision_forward`` / ``VisionEncoder`` and
``model.encoders_jax.vision_forward`` over the same names (``vision_param_specs``).
Images must have exactly ``image_size`` x ``image_size`` pixels (the position embedding is
learned per patch; resize beforehand) and ``channels`` channels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from kernels.patch_embed.spec import PATCH_SIZES
from model.encoder_common import check_int, count, projection_specs, transformer_block_specs


@dataclass(frozen=True)
class VisionConfig:
    name: str = "tiny"
    image_size: int = 64
    patch: int = 16
    channels: int = 3
    width: int = 32
    layers: int = 2
    heads: int = 2
    mlp_dim: int = 64
    pool: int = 2  # average pool window over the patch grid (1 = none)
    lm_dim: int = 128
    norm_eps: float = 1e-6

    def __post_init__(self):
        for name in ("image_size", "channels", "width", "layers", "heads", "mlp_dim", "pool", "lm_dim"):
            check_int(name, getattr(self, name))
        if self.patch not in PATCH_SIZES:
            raise ValueError(f"patch must be one of {PATCH_SIZES} (the patch_embed kernel's), got {self.patch!r}")
        if self.image_size % self.patch:
            raise ValueError(f"image_size={self.image_size} must be a multiple of patch={self.patch}")
        if self.width % self.heads:
            raise ValueError(f"width={self.width} must be a multiple of heads={self.heads}")
        if self.grid % self.pool:
            raise ValueError(f"the patch grid ({self.grid}) must be a multiple of pool={self.pool}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def patches(self) -> int:
        return self.grid * self.grid

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def tokens(self) -> int:
        """Output tokens per image."""
        return (self.grid // self.pool) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


VISION_PRESETS = {
    "tiny": VisionConfig(),
    # SigLIP-So400m/14 at 896 px as in Gemma 3: 64 x 64 patches pooled 4 x 4 -> 256 tokens.
    "siglip_so400m": VisionConfig(name="siglip_so400m", image_size=896, patch=14, channels=3,
                                  width=1152, layers=27, heads=16, mlp_dim=4304, pool=4,
                                  lm_dim=2048),
}


def vision_param_specs(cfg: VisionConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """name -> (shape, logical axes). patch_embed.weight is [width, patch * patch * channels]
    (out, in) with the input flattened (ph, pw, c), the patch_embed kernel's order transposed."""
    k = cfg.patch * cfg.patch * cfg.channels
    specs = {
        "vision.patch_embed.weight": ((cfg.width, k), ("enc_embed", "enc_patch")),
        "vision.patch_embed.bias": ((cfg.width,), ("enc_embed",)),
        "vision.pos_embed": ((cfg.patches, cfg.width), ("enc_seq", "enc_embed")),
    }
    for i in range(cfg.layers):
        specs.update(transformer_block_specs(f"vision.layers.{i}.", cfg.width, cfg.mlp_dim))
    specs["vision.post_layernorm.weight"] = ((cfg.width,), ("enc_embed",))
    specs["vision.post_layernorm.bias"] = ((cfg.width,), ("enc_embed",))
    specs.update(projection_specs("vision.", cfg.width, cfg.lm_dim))
    return specs


def vision_param_count(cfg: VisionConfig) -> int:
    return count(vision_param_specs(cfg))


def check_images(images, cfg: VisionConfig, *, is_float, what: str = "images") -> tuple[int, ...]:
    """Shape / dtype checks before any kernel runs; returns the shape. ``is_float(dtype)``."""
    shape = getattr(images, "shape", None)
    if shape is None or not hasattr(images, "dtype"):
        raise TypeError(f"{what} must be an array or tensor, got {type(images).__name__}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4:
        raise ValueError(f"{what} must be 4-D [batch, height, width, channels] (channels-last), "
                         f"got shape {shape}")
    if not is_float(images.dtype):
        raise TypeError(f"{what} must be floating point (normalized pixel values), got {images.dtype}; "
                        f"convert uint8 pixels to float first")
    b, h, w, c = shape
    if b < 1:
        raise ValueError(f"{what} batch must be >= 1, got shape {shape}")
    if c != cfg.channels:
        raise ValueError(f"{what} must have {cfg.channels} channels (last axis, channels-last), "
                         f"got {c} in shape {shape}")
    if h < cfg.patch or w < cfg.patch:
        raise ValueError(f"{what} of {h}x{w} pixels are smaller than one {cfg.patch}x{cfg.patch} patch")
    if (h, w) != (cfg.image_size, cfg.image_size):
        raise ValueError(f"{what} must be {cfg.image_size}x{cfg.image_size} pixels for vision config "
                         f"{cfg.name!r} (resize first), got {h}x{w}")
    return shape
