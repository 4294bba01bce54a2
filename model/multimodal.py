"""Interleave text, images, audio and video into LM inputs ``(tokens, embeds, embed_mask)``.

A batch is a list of rows; a row is a list of segments: ``Text(ids)``, ``Image(pixels
[H, W, C])``, ``Audio(waveform [samples], sample_rate)``, ``Video(frames [T, H, W, C], fps)``.
Each media segment becomes

    <start marker>  placeholder x n  <end marker>

with n = the encoder's token count for it (image: ``VisionConfig.tokens``; audio:
``AudioConfig.tokens(samples)``; video: kept frames x tokens per frame). Marker ids come
from ``model/tokenizer.py`` (IMAGE_/AUDIO_/VIDEO_START_ID / _END_ID, MEDIA_PLACEHOLDER_ID,
PAD_ID). The encoders' embeddings are placed at the placeholder positions (differentiably:
gradients reach the encoders), and ``embed_mask`` is True exactly there; rows are right-padded
with PAD_ID to the longest row (or ``seq_len``; longer rows are refused, never truncated).

Besides the three LM inputs, ``MultimodalInputs`` carries ``segment_ids`` [B, S] (1 real
token, 0 padding), ``positions`` [B, S] (0..S-1) and ``media_ids`` [B, S] (-1 for text,
markers and padding; k >= 0 on the placeholders of the row's k-th media segment) and
``bidirectional_ids`` (the same, but only on image and video blocks; audio stays causal, a
stream as text is): with ``ModelConfig.bidirectional_media=True`` the LM takes those as
``media_ids`` and query i sees key j when j <= i or ids[i] == ids[j] >= 0 (bidirectional
within each image, as Gemma 3 and PaliGemma, and within each video clip's frames).
``inputs.lm_kwargs(cfg)`` gives forward's keyword arguments (embeds, embed_mask, and the
bidirectional ids when the flag is on): ``lm(inputs.tokens, **inputs.lm_kwargs(cfg))``.

Encoding runs one vision call for all images of the batch, one audio call for all clips
(padded, with lengths: each clip's tokens equal its solo encoding), one video call per clip.
Plan with ``plan_layout`` (framework-neutral), encode with ``multimodal_inputs_torch`` or
``multimodal_inputs_jax``; ``params`` is one flat dict holding the ``vision.*`` /
``audio.*`` / ``video.*`` names the configs need.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from model.tokenizer import (AUDIO_END_ID, AUDIO_START_ID, IMAGE_END_ID, IMAGE_START_ID,
                             MEDIA_PLACEHOLDER_ID, PAD_ID, VIDEO_END_ID, VIDEO_START_ID)

MARKERS = {"image": (IMAGE_START_ID, IMAGE_END_ID), "audio": (AUDIO_START_ID, AUDIO_END_ID),
           "video": (VIDEO_START_ID, VIDEO_END_ID)}
RESERVED_IDS = frozenset({PAD_ID, MEDIA_PLACEHOLDER_ID, *(i for pair in MARKERS.values() for i in pair)})


@dataclass(frozen=True)
class Text:
    ids: Sequence[int]  # token ids (a list, or an integer numpy array / tensor); not a str

    def __post_init__(self):
        """Refuse what is not token ids before ``plan_layout``'s int() could mangle it."""
        if isinstance(self.ids, (str, bytes)):
            raise TypeError(f"Text ids must be a sequence of token ids (ints), got {type(self.ids).__name__} "
                            f"{self.ids[:40]!r}: encode text first, e.g. Text(ByteTokenizer().encode(s))")
        try:
            a = np.asarray(self.ids)
        except (TypeError, ValueError) as e:
            raise TypeError(f"Text ids must be a sequence of token ids (ints), got "
                            f"{type(self.ids).__name__}: {e}") from None
        if a.size and a.dtype.kind not in "iu":
            items = list(self.ids) if isinstance(self.ids, (list, tuple)) else a.reshape(-1).tolist()
            bad = next((x for x in items if isinstance(x, bool) or not isinstance(x, (int, np.integer))),
                       items[0])
            raise TypeError(f"Text ids must be integers (token ids), got element {bad!r} "
                            f"({type(bad).__name__}; array dtype {a.dtype})"
                            + ("; a float is not truncated to an id" if a.dtype.kind == "f" else ""))


@dataclass(frozen=True)
class Image:
    pixels: Any  # [H, W, C] float, channels-last


@dataclass(frozen=True)
class Audio:
    waveform: Any  # [samples] float
    sample_rate: int = 16000


@dataclass(frozen=True)
class Video:
    frames: Any  # [T, H, W, C] float
    fps: float  # the clip's recording rate


@dataclass(frozen=True)
class MediaSlot:
    kind: str  # "image" | "audio" | "video"
    row: int
    start: int  # first placeholder position
    length: int  # placeholders
    index: int  # position among the batch's media of this kind (encoder call order)


@dataclass(frozen=True)
class Layout:
    tokens: np.ndarray  # [B, S] int64
    segment_ids: np.ndarray  # [B, S] int32
    media_ids: np.ndarray  # [B, S] int32
    slots: tuple  # MediaSlot, in batch order
    bidirectional_ids: np.ndarray  # [B, S] int32: media_ids on image / video blocks, -1 elsewhere


@dataclass
class MultimodalInputs:
    tokens: Any  # [B, S] int
    embeds: Any  # [B, S, lm_dim]
    embed_mask: Any  # [B, S] bool
    segment_ids: Any  # [B, S] int32
    positions: Any  # [B, S] int
    media_ids: Any  # [B, S] int32
    bidirectional_ids: Any = None  # [B, S] int32: media_ids of image / video blocks only

    def lm_kwargs(self, cfg) -> dict:
        """Keyword arguments of the LM's ``forward`` / ``loss`` (torch or JAX) for these inputs:
        embeds, embed_mask, and (``cfg.bidirectional_media``) ``media_ids`` = the image / video
        blocks' ids (the flag is off: none, so the model stays causal everywhere)."""
        kw = dict(embeds=self.embeds, embed_mask=self.embed_mask)
        if cfg.bidirectional_media:
            kw["media_ids"] = self.bidirectional_ids
        return kw


BIDIRECTIONAL_KINDS = ("image", "video")  # blocks bidirectional under cfg.bidirectional_media


def _media_tokens(seg, *, vision, audio, video) -> tuple[str, int]:
    if isinstance(seg, Image):
        if vision is None:
            raise ValueError("batch has an Image segment but no vision config was given")
        return "image", vision.tokens
    if isinstance(seg, Audio):
        if audio is None:
            raise ValueError("batch has an Audio segment but no audio config was given")
        shape = tuple(getattr(seg.waveform, "shape", ()))
        if len(shape) != 1:
            raise ValueError(f"Audio.waveform must be 1-D [samples], got shape {shape}")
        if shape[0] < audio.win:
            raise ValueError(f"Audio segment has {shape[0]} samples, fewer than one {audio.win_ms} ms "
                             f"window ({audio.win}); empty or too-short audio is refused")
        return "audio", audio.tokens(shape[0])
    if isinstance(seg, Video):
        if video is None:
            raise ValueError("batch has a Video segment but no video config was given")
        shape = tuple(getattr(seg.frames, "shape", ()))
        if len(shape) != 4:
            raise ValueError(f"Video.frames must be 4-D [time, height, width, channels], got shape {shape}")
        return "video", video.tokens(shape[0], seg.fps)
    raise TypeError(f"segments must be Text, Image, Audio or Video, got {type(seg).__name__}")


def plan_layout(batch, *, vision=None, audio=None, video=None, seq_len: int | None = None) -> Layout:
    """Token ids, padding and placeholder slots of a batch (no encoder runs)."""
    if not isinstance(batch, (list, tuple)) or not batch:
        raise ValueError("batch must be a non-empty list of rows (lists of segments)")
    if vision is not None and video is not None and video.vision != vision:
        raise ValueError("video.vision must equal the vision config (they share the vision.* parameters)")
    rows, media_rows, bidi_rows, slots = [], [], [], []
    counts = {"image": 0, "audio": 0, "video": 0}
    for r, row in enumerate(batch):
        ids, mids, bids, k = [], [], [], 0
        for seg in row:
            if isinstance(seg, Text):
                t = [int(i) for i in np.asarray(seg.ids).reshape(-1)]
                bad = [i for i in t if i < 0 or i in RESERVED_IDS]
                if bad:
                    raise ValueError(f"Text ids must be >= 0 and not a reserved marker / placeholder / pad "
                                     f"id {sorted(RESERVED_IDS)}, got {bad[0]} in row {r}")
                ids += t
                mids += [-1] * len(t)
                bids += [-1] * len(t)
                continue
            kind, n = _media_tokens(seg, vision=vision, audio=audio, video=video)
            start, end = MARKERS[kind]
            slots.append(MediaSlot(kind, r, len(ids) + 1, n, counts[kind]))
            counts[kind] += 1
            ids += [start] + [MEDIA_PLACEHOLDER_ID] * n + [end]
            mids += [-1] + [k] * n + [-1]
            bids += [-1] + [k if kind in BIDIRECTIONAL_KINDS else -1] * n + [-1]
            k += 1
        rows.append(ids)
        media_rows.append(mids)
        bidi_rows.append(bids)
    longest = max(len(r) for r in rows)
    s = longest if seq_len is None else seq_len
    if longest > s:
        raise ValueError(f"a row has {longest} tokens, more than seq_len={s}; rows are never truncated")
    if s < 1:
        raise ValueError("every row is empty")
    b = len(rows)
    tokens = np.full((b, s), PAD_ID, np.int64)
    seg_ids = np.zeros((b, s), np.int32)
    media_ids = np.full((b, s), -1, np.int32)
    bidi_ids = np.full((b, s), -1, np.int32)
    for r, (ids, mids, bids) in enumerate(zip(rows, media_rows, bidi_rows)):
        tokens[r, :len(ids)] = ids
        seg_ids[r, :len(ids)] = 1
        media_ids[r, :len(ids)] = mids
        bidi_ids[r, :len(ids)] = bids
    return Layout(tokens, seg_ids, media_ids, tuple(slots), bidi_ids)


def _media(batch, kind):
    cls = {"image": Image, "audio": Audio, "video": Video}[kind]
    return [seg for row in batch for seg in row if isinstance(seg, cls)]


def _slot_indices(layout: Layout):
    """(rows, cols) of every placeholder, slot by slot, as int64 numpy arrays."""
    rows = [np.full(s.length, s.row) for s in layout.slots]
    cols = [np.arange(s.start, s.start + s.length) for s in layout.slots]
    cat = lambda xs: np.concatenate(xs).astype(np.int64) if xs else np.zeros(0, np.int64)  # noqa: E731
    return cat(rows), cat(cols)


def _sample_rates(clips):
    rates = {int(c.sample_rate) for c in clips}
    if len(rates) != 1:
        raise ValueError(f"audio clips of one batch must share one sample rate, got {sorted(rates)}")
    return rates.pop()


def multimodal_inputs_torch(batch, params: dict, *, vision=None, audio=None, video=None, kernels=None,
                            seq_len=None, lm_dim: int | None = None, device=None) -> MultimodalInputs:
    """PyTorch LM inputs for ``batch``; see the module docstring."""
    import torch

    from model import encoders_torch as E

    layout = plan_layout(batch, vision=vision, audio=audio, video=video, seq_len=seq_len)
    as_t = lambda x: torch.as_tensor(x, device=device)  # noqa: E731
    pieces = {"image": [], "audio": [], "video": []}
    if images := _media(batch, "image"):
        emb, _ = E.vision_forward(params, torch.stack([as_t(i.pixels) for i in images]), cfg=vision, kernels=kernels)
        pieces["image"] = list(emb)
    if clips := _media(batch, "audio"):
        lens = [int(c.waveform.shape[0]) for c in clips]
        wave = torch.zeros(len(clips), max(lens), dtype=as_t(clips[0].waveform).dtype, device=device)
        for i, c in enumerate(clips):
            wave[i, :lens[i]] = as_t(c.waveform)
        emb, _ = E.audio_forward(params, wave, lens, cfg=audio, kernels=kernels, sample_rate=_sample_rates(clips))
        pieces["audio"] = [e[:audio.tokens(n)] for e, n in zip(emb, lens)]
    for v in _media(batch, "video"):
        emb, mask = E.video_forward(params, as_t(v.frames)[None], cfg=video, source_fps=v.fps, kernels=kernels)
        pieces["video"].append(emb[0])
    values = [pieces[s.kind][s.index] for s in layout.slots]
    dim = values[0].shape[-1] if values else lm_dim
    if dim is None:
        raise ValueError("a text-only batch needs lm_dim to shape embeds")
    dtype = values[0].dtype if values else torch.float32
    rows, cols = _slot_indices(layout)
    embeds = torch.zeros(*layout.tokens.shape, dim, dtype=dtype, device=device)
    if values:
        embeds = embeds.index_put((as_t(rows), as_t(cols)), torch.cat(values))
    b, s = layout.tokens.shape
    return MultimodalInputs(tokens=as_t(layout.tokens), embeds=embeds,
                            embed_mask=as_t(layout.media_ids >= 0), segment_ids=as_t(layout.segment_ids),
                            positions=as_t(np.broadcast_to(np.arange(s), (b, s)).copy()),
                            media_ids=as_t(layout.media_ids), bidirectional_ids=as_t(layout.bidirectional_ids))


def multimodal_inputs_jax(batch, params: dict, *, vision=None, audio=None, video=None, kernels=None,
                          seq_len=None, lm_dim: int | None = None) -> MultimodalInputs:
    """JAX LM inputs for ``batch``; same layout and values as ``multimodal_inputs_torch``."""
    import jax.numpy as jnp

    from model import encoders_jax as E

    layout = plan_layout(batch, vision=vision, audio=audio, video=video, seq_len=seq_len)
    pieces = {"image": [], "audio": [], "video": []}
    if images := _media(batch, "image"):
        emb, _ = E.vision_forward(params, jnp.stack([jnp.asarray(i.pixels) for i in images]), cfg=vision,
                                  kernels=kernels)
        pieces["image"] = [emb[i] for i in range(len(images))]
    if clips := _media(batch, "audio"):
        lens = [int(c.waveform.shape[0]) for c in clips]
        wave = jnp.stack([jnp.pad(jnp.asarray(c.waveform), (0, max(lens) - n)) for c, n in zip(clips, lens)])
        emb, _ = E.audio_forward(params, wave, lens, cfg=audio, kernels=kernels, sample_rate=_sample_rates(clips))
        pieces["audio"] = [emb[i, :audio.tokens(n)] for i, n in enumerate(lens)]
    for v in _media(batch, "video"):
        emb, _ = E.video_forward(params, jnp.asarray(v.frames)[None], cfg=video, source_fps=v.fps, kernels=kernels)
        pieces["video"].append(emb[0])
    values = [pieces[s.kind][s.index] for s in layout.slots]
    dim = values[0].shape[-1] if values else lm_dim
    if dim is None:
        raise ValueError("a text-only batch needs lm_dim to shape embeds")
    dtype = values[0].dtype if values else jnp.float32
    rows, cols = _slot_indices(layout)
    embeds = jnp.zeros((*layout.tokens.shape, dim), dtype)
    if values:
        embeds = embeds.at[rows, cols].set(jnp.concatenate(values))
    b, s = layout.tokens.shape
    return MultimodalInputs(tokens=jnp.asarray(layout.tokens, jnp.int32), embeds=embeds,
                            embed_mask=jnp.asarray(layout.media_ids >= 0), segment_ids=jnp.asarray(layout.segment_ids),
                            positions=jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s)),
                            media_ids=jnp.asarray(layout.media_ids),
                            bidirectional_ids=jnp.asarray(layout.bidirectional_ids))
