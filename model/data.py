"""Training data without downloads: a synthetic long-context retrieval task and byte-level
windows over any local text file. Both yield numpy batches over the byte vocabulary of
``model/tokenizer.py`` and are pure functions of (seed, split, index): batch ``index`` of a
split is the same whatever came before, so a checkpoint's data position is one integer.

Retrieval example (bytes shown as text; keys are lowercase letters, values digits)::

    <bos> a4b0q7...m3?q7a4q7m3 <eos> <pad>...

A context of ``pairs`` distinct key-value pairs, each written KEY FIRST (``order``;
"value_first" writes v k), with no separator (keys and values use disjoint alphabets, so
the layout is unambiguous), then ``?`` and ``queries`` keys drawn (with replacement, so no
answer follows by elimination) from the context, each followed by its value. Keys and
values are fresh random draws per example, so an answer is recoverable only from that
example's context: by an induction circuit (a previous-token head marks each value with its
key; a second-layer head matches the query key against those marks and copies the value).
``min_pairs`` mixes context lengths on the training split: each row holds a uniform draw of
2..``pairs`` pairs (right-padded); the held-out split always holds ``pairs``, the training
length. Measured on the tiny model (batch 16, lr 1e-3): with 8 or 16 pairs in every row the
circuit had not formed after 1.4-2.8k steps (held-out accuracy 0.2-0.3); with rows of
2..N pairs (N = 16, 20, 24) it formed at 1-3k steps and reached 100% at N pairs. More queries per example give more supervised
positions per step (same task). The loss (and the accuracy) covers only the value tokens
after the query (mask). ``seq_len`` is the model's input length; examples are right-padded. ``vocab_needed`` (both
sources) is the smallest model vocab_size their ids fit (the trainer checks it).
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
ORDERS = ("key_first", "value_first")


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
    min_pairs: int | None = None  # training rows draw their pair count from [min_pairs, pairs]
    order: str = "key_first"  # "key_first" (k v, as the queries) or "value_first" (v k)
    seed: int = 0

    def __post_init__(self):
        if self.queries < 1:
            raise ValueError(f"queries must be >= 1, got {self.queries}")
        for name in ("pairs", "key_len", "value_len", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.min_pairs is not None and not 1 <= self.min_pairs <= self.pairs:
            raise ValueError(f"min_pairs must lie in [1, pairs={self.pairs}], got {self.min_pairs}")
        if self.pairs > len(KEY_ALPHABET) ** self.key_len:
            raise ValueError(f"pairs={self.pairs} exceeds the {len(KEY_ALPHABET) ** self.key_len} "
                             f"distinct keys of key_len={self.key_len}")
        if self.example_len > self.seq_len + 1:
            raise ValueError(f"seq_len={self.seq_len} is too short: pairs={self.pairs}, "
                             f"key_len={self.key_len}, value_len={self.value_len} need "
                             f"seq_len >= {self.example_len - 1}")

    @property
    def vocab_needed(self) -> int:
        """The smallest model vocab_size that holds every id here: bytes, pad, bos and eos."""
        return max(PAD_ID, BOS_ID, EOS_ID) + 1

    @property
    def example_len(self) -> int:
        """Tokens of one example: bos, pairs * (value key), ?, queries * (key value), eos."""
        return 2 + (self.pairs + self.queries) * (self.key_len + self.value_len) + 1

    def batch(self, split: str, index: int, batch_size: int) -> Batch:
        rng = _rng(self.seed, split, index)
        b, k, v, n = batch_size, self.key_len, self.value_len, self.pairs
        # Pairs per row: ``pairs`` on the held-out split; on the training split a draw from
        # [min_pairs, pairs] per row when min_pairs is set (a mixture of context lengths)
        lo = n if (split == "eval" or self.min_pairs is None) else self.min_pairs
        counts = rng.integers(lo, n + 1, size=b)
        # Distinct keys per example: sample key codes without replacement.
        space = len(KEY_ALPHABET) ** k
        codes = np.stack([rng.choice(space, size=n, replace=False) for _ in range(b)])  # (B, n)
        digits = (codes[..., None] // len(KEY_ALPHABET) ** np.arange(k - 1, -1, -1)) % len(KEY_ALPHABET)
        keys = KEY_ALPHABET[digits]  # (B, n, k)
        values = VALUE_ALPHABET[rng.integers(0, len(VALUE_ALPHABET), size=(b, n, v))]  # (B, n, v)
        query = (rng.random((b, self.queries)) * counts[:, None]).astype(np.int64)  # (B, Q), with replacement
        rows = np.arange(b)[:, None]
        pair = [keys, values] if self.order == "key_first" else [values, keys]
        context = np.concatenate(pair, axis=2).reshape(b, -1)
        asked = np.concatenate([keys[rows, query], values[rows, query]], axis=2).reshape(b, -1)
        seq = np.full((b, self.seq_len + 1), PAD_ID, dtype=np.int32)
        mask = np.zeros((b, self.seq_len), dtype=bool)
        for r, c in enumerate(counts):
            ex = np.concatenate([[BOS_ID], context[r, :c * (k + v)], [QUERY], asked[r], [EOS_ID]])
            seq[r, :ex.size] = ex
            start = 1 + c * (k + v) + 1  # first token of the first query
            for q in range(self.queries):  # input positions whose targets are value tokens
                first = start + q * (k + v) + k - 1
                mask[r, first:first + v] = True
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

    @property
    def vocab_needed(self) -> int:
        """The smallest model vocab_size that holds every id here: any byte (no specials)."""
        return 256

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
