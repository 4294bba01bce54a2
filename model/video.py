"""Video encoder: frames sampled at ``fps`` through the vision encoder, one token block per frame.

    frames [batch, time, height, width, channels] float, batch >= 1 and time >= 1
      + source_fps (one number, or a 1-D sequence / array with one per clip)
      (+ num_frames [batch], each in [1, time])
      -> sample_frame_indices: one frame every 1 / fps seconds (default 1 frame per second);
         a clip with more sampled frames than max_frames is subsampled evenly to max_frames.
         Sampling above the source rate (fps > source_fps) repeats source frames: each
         sampled time takes the latest source frame at or before it (no interpolation).
      -> vision encoder on every kept frame: [frames, vision.tokens, lm_dim]
      -> + temporal_embed[frame slot] (learned, [max_frames, lm_dim], broadcast over the block)
      -> embeds [batch, max_kept * vision.tokens, lm_dim], mask [batch, ...] (False past a clip's
         kept frames).

Parameters: the vision encoder's (``vision.*``, shared with images) plus ``video.temporal_embed``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from model.encoder_common import check_int, count
from model.vision import VisionConfig, vision_param_specs


@dataclass(frozen=True)
class VideoConfig:
    name: str = "tiny"
    vision: VisionConfig = field(default_factory=VisionConfig)
    fps: float = 1.0  # sampling rate (frames per second of video kept)
    max_frames: int = 4  # token budget: at most this many frames per clip

    def __post_init__(self):
        check_int("max_frames", self.max_frames)
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not self.fps > 0:
            raise ValueError(f"fps must be a number > 0, got {self.fps!r}")

    @property
    def lm_dim(self) -> int:
        return self.vision.lm_dim

    def tokens(self, num_frames: int, source_fps: float) -> int:
        return len(sample_frame_indices(num_frames, source_fps, self.fps, self.max_frames)) * self.vision.tokens

    def to_dict(self) -> dict:
        return asdict(self)


VIDEO_PRESETS = {
    "tiny": VideoConfig(),
    # Gemma-3-like: SigLIP frames (256 tokens each) at 1 fps, up to 32 frames (8192 tokens).
    "siglip_1fps": VideoConfig(name="siglip_1fps", vision=VisionConfig(
        name="siglip_so400m", image_size=896, patch=14, width=1152, layers=27, heads=16,
        mlp_dim=4304, pool=4, lm_dim=2048), fps=1.0, max_frames=32),
}


def sample_frame_indices(num_frames: int, source_fps: float, fps: float, max_frames: int) -> list[int]:
    """Indices of the frames kept from a clip of ``num_frames`` frames recorded at ``source_fps``.

    Frame k of the sampled stream is the source frame at time k / fps: index
    floor(k * source_fps / fps), for every such index < num_frames (frame 0 always kept).
    With fps > source_fps consecutive k give the same index, so source frames repeat
    (num_frames=5, source_fps=1, fps=2 -> [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]).
    If more than ``max_frames`` remain, ``max_frames`` of them are kept, evenly spread and
    including the first and the last: sampled[round(j * (n - 1) / (max_frames - 1))].
    """
    check_int("num_frames", num_frames)
    check_int("max_frames", max_frames)
    for name, v in (("source_fps", source_fps), ("fps", fps)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    step = source_fps / fps
    sampled = []
    while (idx := int(math.floor(len(sampled) * step + 1e-9))) < num_frames:
        sampled.append(idx)
    n = len(sampled)
    if n <= max_frames:
        return sampled
    if max_frames == 1:
        return [sampled[0]]
    pick = np.round(np.arange(max_frames) * (n - 1) / (max_frames - 1)).astype(int)
    return [sampled[i] for i in pick]


def video_param_specs(cfg: VideoConfig) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    specs = dict(vision_param_specs(cfg.vision))
    specs["video.temporal_embed"] = ((cfg.max_frames, cfg.lm_dim), ("enc_frames", "embed"))
    return specs


def video_param_count(cfg: VideoConfig) -> int:
    return count(video_param_specs(cfg))


def clip_frame_counts(shape, num_frames) -> list[int]:
    """Real frames per clip of a frames batch of ``shape`` [batch, time, height, width,
    channels]: ``num_frames`` [batch] (any 1-D sequence / array, each in [1, time]) or None
    (every clip has ``time`` frames). Refuses an empty batch or time axis up front."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 5:
        raise ValueError(f"frames must be 5-D [batch, time, height, width, channels], got shape {shape}")
    b, t = shape[:2]
    if b < 1:
        raise ValueError(f"frames must hold at least one clip (batch >= 1), got shape {shape}")
    if t < 1:
        raise ValueError(f"frames must hold at least one frame per clip (time >= 1), got shape {shape}")
    if num_frames is None:
        return [t] * b
    counts = [int(v) for v in _per_clip("num_frames", num_frames)]
    if len(counts) != b or not all(1 <= c <= t for c in counts):
        raise ValueError(f"num_frames must give one count in [1, {t}] per clip ({b}), got {counts}")
    return counts


def _per_clip(name: str, values) -> list:
    """A 1-D sequence or array (list, tuple, numpy, torch, jax) as a list of Python scalars."""
    ndim = getattr(values, "ndim", None)
    if ndim is None:
        ndim = np.ndim(values)
    if ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per clip), got {ndim}-D {values!r}")
    return [v.item() if hasattr(v, "item") else v for v in values]


def plan_video_batch(num_frames, source_fps, cfg: VideoConfig) -> list[list[int]]:
    """Kept frame indices per clip; ``num_frames`` per clip, ``source_fps`` one number or a
    1-D sequence / array (list, tuple, numpy, torch, jax) with one per clip."""
    ndim = getattr(source_fps, "ndim", None)
    if ndim is None and not isinstance(source_fps, (str, bytes)):
        ndim = np.ndim(source_fps)
    if ndim == 1:
        fps_list = _per_clip("source_fps", source_fps)
    elif ndim == 0 and hasattr(source_fps, "item"):  # numpy / torch / jax scalar
        fps_list = [source_fps.item()] * len(num_frames)
    elif ndim in (0, None):  # a Python number (or something sample_frame_indices refuses)
        fps_list = [source_fps] * len(num_frames)
    else:
        raise ValueError(f"source_fps must be one number or 1-D with one per clip ({len(num_frames)}), "
                         f"got {ndim}-D {source_fps!r}")
    if len(fps_list) != len(num_frames):
        raise ValueError(f"source_fps must be one number or one per clip ({len(num_frames)}), got {len(fps_list)}")
    return [sample_frame_indices(int(n), f, cfg.fps, cfg.max_frames) for n, f in zip(num_frames, fps_list)]
