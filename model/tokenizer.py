"""Tokenizers: a byte-level default and a checkpoint's ``tokenizer.json``.

Byte-level ids (``ByteTokenizer``, and the module functions ``encode`` / ``decode``):
ids 0..255 are the bytes of UTF-8 text, special ids follow:

    PAD_ID 256, BOS_ID 257, EOS_ID 258, then multimodal markers (image/audio/video
    begin and end, and the placeholder id whose positions ``embeds`` replace), then
    reserved ids up to ``NUM_RESERVED``. Every model vocabulary must be >= VOCAB_MIN.

No download, no merges: ``encode``/``decode`` are exact inverses on text (``decode``
drops special ids, or names them with ``skip_special=False``, and replaces invalid UTF-8
with U+FFFD). ``multimodal_span`` builds start + n x placeholder + end for one encoded item.

A checkpoint directory holding ``tokenizer.json`` (a Hugging Face ``tokenizers`` file, e.g.
Gemma's) is read with the ``tokenizers`` package by ``load_tokenizer``; its pad/bos/eos ids
come from the file's special tokens (``<pad>``, ``<bos>``, ``<eos>`` and common spellings;
no bos or eos is an error, no pad gives ``pad_id`` None). Every decode checks that ids lie
in [0, vocab_size) (or the image-token block) and names the first one that does not.

Image tokens (a model with ``ModelConfig.image_vocab > 0``): the block of discrete image-token
ids is the model's, right after its embedding table: ``cfg.image_token_ids`` = [cfg.vocab_size,
cfg.vocab_size + image_vocab). Give it to a tokenizer (``ByteTokenizer(image_ids=...)``,
``HFTokenizer(path, image_ids=...)``, ``load_tokenizer(ckpt, image_ids=...)``) and it exposes
``image_ids`` / ``is_image_token`` / ``image_token_id(k)``, and decode treats those ids as
specials: dropped, or written ``<image_k>`` with ``skip_special=False``. ``vocab_size`` stays
the text vocabulary (ids a text decode can produce); turning image tokens into pixels is not
the tokenizer's job.
"""
from __future__ import annotations

import os
from typing import Iterable

BYTE_VOCAB = 256
PAD_ID = 256
BOS_ID = 257
EOS_ID = 258
IMAGE_START_ID = 259
IMAGE_END_ID = 260
AUDIO_START_ID = 261
AUDIO_END_ID = 262
VIDEO_START_ID = 263
VIDEO_END_ID = 264
MEDIA_PLACEHOLDER_ID = 265  # positions whose embedding an encoder output replaces
NUM_RESERVED = 16  # ids 256..271 are special; 266..271 are free for later markers
VOCAB_MIN = BYTE_VOCAB + NUM_RESERVED
SPECIAL_IDS = {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID, "image_start": IMAGE_START_ID,
               "image_end": IMAGE_END_ID, "audio_start": AUDIO_START_ID, "audio_end": AUDIO_END_ID,
               "video_start": VIDEO_START_ID, "video_end": VIDEO_END_ID,
               "media_placeholder": MEDIA_PLACEHOLDER_ID}
_SPANS = {"image": (IMAGE_START_ID, IMAGE_END_ID), "audio": (AUDIO_START_ID, AUDIO_END_ID),
          "video": (VIDEO_START_ID, VIDEO_END_ID)}


def multimodal_span(kind: str, n: int) -> list[int]:
    """Ids for one encoded item: [start] + n x [MEDIA_PLACEHOLDER_ID] + [end]."""
    if kind not in _SPANS:
        raise ValueError(f"kind must be one of {sorted(_SPANS)}, got {kind!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n (placeholder count) must be an int >= 0, got {n!r}")
    start, end = _SPANS[kind]
    return [start] + [MEDIA_PLACEHOLDER_ID] * n + [end]


def check_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    """``ids`` as a list of Python ints, or ValueError naming the first id outside the vocab."""
    out = []
    for pos, i in enumerate(ids):
        i = int(i)
        if not 0 <= i < vocab_size:
            raise ValueError(f"token id {i} at position {pos} is out of range [0, {vocab_size})")
        out.append(i)
    return out


def _image_block(image_ids, vocab_size: int) -> range:
    """The checked image-token id block: a step-1 range starting at or after the text vocab."""
    if image_ids is None:
        return range(0)
    if not isinstance(image_ids, range) or image_ids.step != 1:
        raise ValueError(f"image_ids must be a range of consecutive ids (ModelConfig.image_token_ids), "
                         f"got {image_ids!r}")
    if len(image_ids) and image_ids.start < vocab_size:
        raise ValueError(f"image_ids must start at or after the text vocab_size {vocab_size} "
                         f"(ModelConfig.image_token_ids starts at cfg.vocab_size), got {image_ids!r}")
    return image_ids


class _ImageTokens:
    """The image-token block of a tokenizer (``image_ids``, empty when the model has none)."""

    image_ids: range = range(0)

    def is_image_token(self, i: int) -> bool:
        return int(i) in self.image_ids

    def image_token_id(self, k: int) -> int:
        """Id of the k-th image token (k in [0, len(image_ids)))."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(self.image_ids):
            raise ValueError(f"image token index must be an int in [0, {len(self.image_ids)}), got {k!r}")
        return self.image_ids[k]

    def _split_image_tokens(self, ids, decode_text, skip_special: bool) -> str:
        """Decode ``ids`` (checked against text vocab + image block): runs of text ids through
        ``decode_text``, image ids dropped or written ``<image_k>``."""
        ids = _flat(ids)
        if not len(self.image_ids):
            return decode_text(check_ids(ids, self.vocab_size))
        parts, run = [], []
        for pos, i in enumerate(ids):
            i = int(i)
            if i in self.image_ids:
                if not skip_special:
                    parts.append(decode_text(run))
                    parts.append(f"<image_{i - self.image_ids.start}>")
                    run = []
            elif 0 <= i < self.vocab_size:
                run.append(i)
            else:
                raise ValueError(f"token id {i} at position {pos} is out of range [0, {self.vocab_size}) "
                                 f"and not in the image-token block {self.image_ids}")
        parts.append(decode_text(run))
        return "".join(parts)


def _flat(ids) -> list:
    if hasattr(ids, "tolist"):  # numpy / torch / jax arrays
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    if ids and isinstance(ids[0], (list, tuple)):
        raise ValueError(f"decode takes one sequence of ids, got a nested sequence of {len(ids)}")
    return list(ids)


class ByteTokenizer(_ImageTokens):
    """UTF-8 bytes as ids 0..255 plus the special ids above (vocab_size = VOCAB_MIN); optionally
    the model's image-token block (``image_ids``, e.g. ``cfg.image_token_ids``)."""

    vocab_size = VOCAB_MIN
    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

    def __init__(self, *, image_ids: range | None = None):
        self.image_ids = _image_block(image_ids, self.vocab_size)

    def encode(self, text: str | bytes, *, bos: bool = False, eos: bool = False) -> list[int]:
        """UTF-8 bytes of ``text`` as ids, optionally framed by BOS / EOS."""
        if isinstance(text, str):
            text = text.encode("utf-8")
        elif not isinstance(text, (bytes, bytearray)):
            raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
        return ([BOS_ID] if bos else []) + list(text) + ([EOS_ID] if eos else [])

    def decode(self, ids, *, skip_special: bool = True) -> str:
        """Text of ``ids``: bytes as UTF-8, special ids dropped or written as ``<name>``."""
        return self._split_image_tokens(ids, lambda t: self._decode_text(t, skip_special), skip_special)

    def _decode_text(self, ids: list[int], skip_special: bool) -> str:
        names = {v: f"<{k}>" for k, v in SPECIAL_IDS.items()}
        parts, run = [], bytearray()
        for i in ids:
            if i < BYTE_VOCAB:
                run.append(i)
            elif not skip_special:
                parts.append(run.decode("utf-8", errors="replace"))
                parts.append(names.get(i, f"<reserved_{i}>"))
                run = bytearray()
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)


_BYTES = ByteTokenizer()


def encode(text: str | bytes, *, bos: bool = False, eos: bool = False) -> list[int]:
    """UTF-8 bytes of ``text`` as ids, optionally framed by BOS / EOS."""
    return _BYTES.encode(text, bos=bos, eos=eos)


def decode(ids) -> str:
    """Text of the byte ids in ``ids`` (special ids skipped)."""
    return _BYTES.decode(ids)


class HFTokenizer(_ImageTokens):
    """A ``tokenizer.json`` read through the ``tokenizers`` package; ByteTokenizer's interface."""

    def __init__(self, path: str, *, image_ids: range | None = None):
        try:
            from tokenizers import Tokenizer
        except ImportError as e:  # pinned in requirements.txt; say what is missing
            raise ImportError(f"reading {path} needs the 'tokenizers' package") from e
        self.path = path
        self._tok = Tokenizer.from_file(path)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.pad_id = self._find("<pad>", "[PAD]", "<|pad|>", required=False)
        self.bos_id = self._find("<bos>", "<s>", "[BOS]", "<|begin_of_text|>", required=True)
        self.eos_id = self._find("<eos>", "</s>", "[EOS]", "<|end_of_text|>", required=True)
        self.image_ids = _image_block(image_ids, self.vocab_size)

    def _find(self, *names: str, required: bool):
        for name in names:
            i = self._tok.token_to_id(name)
            if i is not None:
                return i
        if required:
            raise ValueError(f"{self.path} has none of the special tokens {names}")
        return None

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids, *, skip_special: bool = True) -> str:
        return self._split_image_tokens(
            ids, lambda t: self._tok.decode(t, skip_special_tokens=skip_special), skip_special)


def load_tokenizer(ckpt: str | None = None, *, image_ids: range | None = None):
    """``tokenizer.json`` beside the checkpoint (``ckpt``: the checkpoint file or its folder)
    through ``tokenizers`` when present, else ``ByteTokenizer()``; ``image_ids``: the model's
    image-token block (``cfg.image_token_ids``), None for none."""
    if ckpt is not None:
        folder = ckpt if os.path.isdir(ckpt) else os.path.dirname(os.path.abspath(ckpt))
        path = os.path.join(folder, "tokenizer.json")
        if os.path.isfile(path):
            return HFTokenizer(path, image_ids=image_ids)
    return ByteTokenizer(image_ids=image_ids)
