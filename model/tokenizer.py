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
in [0, vocab_size) and names the first one that does not.
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


def _flat(ids) -> list:
    if hasattr(ids, "tolist"):  # numpy / torch / jax arrays
        ids = ids.tolist()
    if isinstance(ids, int):
        return [ids]
    if ids and isinstance(ids[0], (list, tuple)):
        raise ValueError(f"decode takes one sequence of ids, got a nested sequence of {len(ids)}")
    return list(ids)


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 plus the special ids above (vocab_size = VOCAB_MIN)."""

    vocab_size = VOCAB_MIN
    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

    def encode(self, text: str | bytes, *, bos: bool = False, eos: bool = False) -> list[int]:
        """UTF-8 bytes of ``text`` as ids, optionally framed by BOS / EOS."""
        if isinstance(text, str):
            text = text.encode("utf-8")
        elif not isinstance(text, (bytes, bytearray)):
            raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
        return ([BOS_ID] if bos else []) + list(text) + ([EOS_ID] if eos else [])

    def decode(self, ids, *, skip_special: bool = True) -> str:
        """Text of ``ids``: bytes as UTF-8, special ids dropped or written as ``<name>``."""
        names = {v: f"<{k}>" for k, v in SPECIAL_IDS.items()}
        parts, run = [], bytearray()
        for i in check_ids(_flat(ids), self.vocab_size):
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


class HFTokenizer:
    """A ``tokenizer.json`` read through the ``tokenizers`` package; ByteTokenizer's interface."""

    def __init__(self, path: str):
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
        return self._tok.decode(check_ids(_flat(ids), self.vocab_size), skip_special_tokens=skip_special)


def load_tokenizer(ckpt: str | None = None):
    """``tokenizer.json`` beside the checkpoint (``ckpt``: the checkpoint file or its folder)
    through ``tokenizers`` when present, else ``ByteTokenizer()``."""
    if ckpt is not None:
        folder = ckpt if os.path.isdir(ckpt) else os.path.dirname(os.path.abspath(ckpt))
        path = os.path.join(folder, "tokenizer.json")
        if os.path.isfile(path):
            return HFTokenizer(path)
    return ByteTokenizer()
