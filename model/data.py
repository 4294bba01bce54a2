"""Training data without downloads: a synthetic long-context retrieval task and byte-level
windows over any local text file. Both yield numpy batches over the byte vocabulary of
``model/tokenizer.py`` and are pure functions of (seed, split, index): batch ``index`` of a
split is the same whatever came before, so a checkpoint's data position is one integer.

Retrieval example (bytes shown as text; keys are lowercase letters, values digits)::

    <bos> 41ab07qx...93mz?qx07mz93 <eos> <pad>...

A context of ``pairs`` distinct key-value pairs, each written VALUE FIRST, then its key,
with no separator (keys and values use disjoint alphabets, so the layout is unambiguous),
then ``?`` and ``queries`` keys drawn (with replacement, so no answer follows by
elimination) from the context, each followed by its value. Keys and values are fresh random
draws per example, so an answer is recoverable only from that example's context. Value
first (measured, 4 pairs, tiny model with mlp 128, batch 16, lr 1e-3): held-out accuracy
0.998 after ~8.9k steps, the transition at ~3k; key first sat at 0.36 after 9.1k steps. With
the value before its key, the query matches the context key by token identity and reads the
value a previous-token head stored there; key first needs the match on a derived feature.
More queries per example give more
supervised positions per step (same task). The loss (and the accuracy) covers only the value tokens
after the query (mask). ``seq_len`` is the model's input length; examples are right-padded.
The held-out split draws from its own seed stream (numpy SeedSequence [seed, split, index]).

Text: ``TextWindows`` cuts windows of ``seq_len + 1`` bytes every ``stride`` bytes; the last
``eval_fraction`` of the file is the held-out split; windows are visited in a seeded
permutation per epoch. Every byte position is a target (no padding).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from model.tokenizer import BOS_ID, EOS_ID, PAD_ID

SPLITS = {"train": 0, "eval": 1}
KEY_ALPHABET = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8).astype(np.int32)
VALUE_ALPHABET = np.frombuffer(b"0123456789", dtype=np.uint8).astype(np.int32)
QUERY = ord("?")


class Batch(NamedTuple):
    inputs: np.ndarray   # int32 [B, S]: the model's tokens
    targets: np.ndarray  # int32 [B, S]: the next token at each position
    mask: np.ndarray     # bool  [B, S]: positions that count in the loss / accuracy

    def split(self, parts: int) -> list["Batch"]:
        """``parts`` equal micro-batches along the batch axis (for gradient accumulation)."""
        b = self.inputs.shape[0]
        if b % parts:
            raise ValueError(f"batch size {b} is not divisible by {parts=}")
        n = b // parts
        return [Batch(*(a[i * n:(i + 1) * n] for a in self)) for i in range(parts)]


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], index]))


@dataclass(frozen=True)
class RetrievalTask:
    """Key-value retrieval over a context of ``pairs`` pairs; see the module docstring."""

    pairs: int = 8
    key_len: int = 2
    value_len: int = 2
    seq_len: int = 64
    queries: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.queries < 1:
            raise ValueError(f"queries must be >= 1, got {self.queries}")
        for name in ("pairs", "key_len", "value_len", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pairs > len(KEY_ALPHABET) ** self.key_len:
            raise ValueError(f"pairs={self.pairs} exceeds the {len(KEY_ALPHABET) ** self.key_len} "
                             f"distinct keys of key_len={self.key_len}")
        if self.example_len > self.seq_len + 1:
            raise ValueError(f"seq_len={self.seq_len} is too short: pairs={self.pairs}, "
                             f"key_len={self.key_len}, value_len={self.value_len} need "
                             f"seq_len >= {self.example_len - 1}")

    @property
    def example_len(self) -> int:
        """Tokens of one example: bos, pairs * (value key), ?, queries * (key value), eos."""
        return 2 + (self.pairs + self.queries) * (self.key_len + self.value_len) + 1

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        rng = _rng(self.seed, split, index)
        b, k, v, n = batch_size, self.key_len, self.value_len, self.pairs
        # Distinct keys per example: sample key codes without replacement.
        space = len(KEY_ALPHABET) ** k
        codes = np.stack([rng.choice(space, size=n, replace=False) for _ in range(b)])  # (B, n)
        digits = (codes[..., None] // len(KEY_ALPHABET) ** np.arange(k - 1, -1, -1)) % len(KEY_ALPHABET)
        keys = KEY_ALPHABET[digits]  # (B, n, k)
        values = VALUE_ALPHABET[rng.integers(0, len(VALUE_ALPHABET), size=(b, n, v))]  # (B, n, v)
        query = rng.integers(0, n, size=(b, self.queries))  # (B, Q), with replacement
        rows = np.arange(b)[:, None]
        context = np.concatenate([values, keys], axis=2).reshape(b, -1)  # value first
        asked = np.concatenate([keys[rows, query], values[rows, query]], axis=2)
        ex = np.concatenate([np.full((b, 1), BOS_ID), context, np.full((b, 1), QUERY),
                             asked.reshape(b, -1), np.full((b, 1), EOS_ID)], axis=1)
        seq = np.full((b, self.seq_len + 1), PAD_ID, dtype=np.int32)
        seq[:, :ex.shape[1]] = ex
        mask = np.zeros((b, self.seq_len), dtype=bool)
        start = 1 + context.shape[1] + 1  # first token of the first query
        for q in range(self.queries):  # input positions whose targets are value tokens
            first = start + q * (k + v) + k - 1
            mask[:, first:first + v] = True
        return Batch(seq[:, :-1].copy(), seq[:, 1:].copy(), mask)


@dataclass(frozen=True)
class TextWindows:
    """Byte windows over a local file; see the module docstring."""

    path: str
    seq_len: int = 256
    stride: int = 128
    eval_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"text data file not found: {self.path!r}")
        if self.seq_len < 1 or self.stride < 1:
            raise ValueError(f"seq_len and stride must be >= 1, got {self.seq_len}, {self.stride}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must lie in (0, 1), got {self.eval_fraction}")
        for split in SPLITS:
            if len(self._starts(split)) == 0:
                raise ValueError(f"{self.path!r} ({os.path.getsize(self.path)} bytes) has no "
                                 f"{split} window of seq_len + 1 = {self.seq_len + 1} bytes "
                                 f"(eval_fraction={self.eval_fraction})")

    def _bytes(self) -> np.ndarray:
        with open(self.path, "rb") as f:
            return np.frombuffer(f.read(), dtype=np.uint8).astype(np.int32)

    def _range(self, split: str) -> tuple[int, int]:
        size = os.path.getsize(self.path)
        cut = int(size * (1.0 - self.eval_fraction))
        return (0, cut) if split == "train" else (cut, size)

    def _starts(self, split: str) -> np.ndarray:
        lo, hi = self._range(split)
        return np.arange(lo, hi - self.seq_len, self.stride)

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        _rng(self.seed, split, index)  # validates split and index
        starts = self._starts(split)
        flat = index * batch_size + np.arange(batch_size)  # positions in the endless window stream
        epochs, within = flat // len(starts), flat % len(starts)
        order = {e: np.random.default_rng([self.seed, SPLITS[split], 1 << 30, int(e)]).permutation(len(starts))
                 for e in np.unique(epochs)}
        chosen = np.array([starts[order[e][w]] for e, w in zip(epochs, within)])
        data = self._bytes()
        win = data[chosen[:, None] + np.arange(self.seq_len + 1)]  # (B, S + 1)
        return Batch(win[:, :-1].copy(), win[:, 1:].copy(), np.ones((batch_size, self.seq_len), bool))


def make_source(kind: str, *, seed: int, retrieval: dict, text: dict):
    """The data source a training config names: ``kind`` is "retrieval" or "text"."""
    if kind == "retrieval":
        return RetrievalTask(seed=seed, **retrieval)
    if kind == "text":
        if not text.get("path"):
            raise ValueError("data.kind=text needs data.text.path (a local text file)")
        return TextWindows(seed=seed, **text)
    raise ValueError(f"data.kind must be 'retrieval' or 'text', got {kind!r}")
