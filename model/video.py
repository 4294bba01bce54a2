"""Video encoder: frames sampled at ``fps`` through the vision encoder, one token block per frame.

    frames [batch, time, height, width, channels] float + source_fps (+ num_frames [batch])
      -> sample_frame_indices: one frame every 1 / fps seconds (default 1 frame per second);
         a clip with more sampled frames than max_frames is subsampled evenly to max_frames
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


def plan_video_batch(num_frames, source_fps, cfg: VideoConfig) -> list[list[int]]:
    """Kept frame indices per clip; ``num_frames`` and ``source_fps`` are per clip (or one fps)."""
    fps_list = list(source_fps) if isinstance(source_fps, (list, tuple)) else [source_fps] * len(num_frames)
    if len(fps_list) != len(num_frames):
        raise ValueError(f"source_fps must be one number or one per clip ({len(num_frames)}), got {len(fps_list)}")
    return [sample_frame_indices(int(n), f, cfg.fps, cfg.max_frames) for n, f in zip(num_frames, fps_list)]
