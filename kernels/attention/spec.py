"""Framework-neutral argument checks for attention, shared by the PyTorch and JAX front-ends.

Every public entry point calls :func:`check_attention_args` before any kernel launches,
so bad input fails the same way in both frameworks with a message that names the
argument, what was expected and what came.

Semantics (both frameworks):
  q [batch, q_len, heads, head_dim]; k, v [batch, kv_len, kv_heads, head_dim];
  heads % kv_heads == 0 (kv_heads == 1 is MQA). Query i sits at absolute position
  i + kv_len - q_len (bottom-right aligned). causal: keys at positions <= its own.
  window=W: keys in (p - W, p] (implies the causal upper bound). softcap=c:
  s -> c * tanh(s / c) before the softmax. segment_ids: a query sees only keys of its
  own segment. A query that sees no key returns zeros.
  bidirectional_ids (needs causal=True; :func:`check_bidirectional_ids`): int [batch, q_len];
  a contiguous run of equal ids >= 0 is a bidirectional block (an image, prefix-LM style),
  ids < 0 are text. Query i sees keys at positions <= q_end[i] = (kv_len - q_len) + (the
  last index of i's run if its id >= 0, else i); a window keeps its meaning relative to
  q_end (keys in (q_end - W, q_end]); segment ids still apply on top.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .._checks import check_optional_positive

MAX_HEAD_DIM = 256


@dataclass(frozen=True)
class AttentionProblem:
    """The checked, static description of one attention call."""

    batch: int
    q_len: int
    kv_len: int
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool
    window: int | None
    softcap: float | None
    scale: float
    has_segments: bool

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads


def _shape(name: str, x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{name} must be an array or tensor, got {type(x).__name__}")
    return tuple(int(s) for s in shape)


def check_impl(impl: Any, impls: Sequence[str], op: str | None = None) -> None:
    """``op`` (e.g. "attention") names the op in the message: "attention impl must be one of ..."."""
    if impl not in impls:
        raise ValueError(f"{op + ' ' if op else ''}impl must be one of {sorted(impls)}, got {impl!r}")


def check_attention_args(
    q: Any,
    k: Any,
    v: Any,
    *,
    causal: Any,
    window: Any,
    softcap: Any,
    scale: Any,
    segment_ids: Any,
    dtypes: Sequence[Any],
    device_of=None,
) -> tuple[AttentionProblem, Any, Any]:
    """Validate an attention call; return (problem, q_segment_ids, kv_segment_ids).

    ``dtypes`` lists the accepted floating dtypes (framework objects). ``device_of``
    maps a tensor to a comparable device, or to None where it is unknown (a JAX tracer or
    uncommitted array: not compared); device_of=None skips the device check.
    The returned problem's window is clamped to q_len + kv_len (a longer one masks nothing
    beyond the causal bound) so impls never see a window that overflows int32.
    """
    qs, ks, vs = _shape("q", q), _shape("k", k), _shape("v", v)
    for name, s in (("q", qs), ("k", ks), ("v", vs)):
        if len(s) != 4:
            raise ValueError(
                f"{name} must be 4-D [batch, len, heads, head_dim], got shape {s}"
            )
    if ks != vs:
        raise ValueError(f"k and v must have the same shape, got k {ks} and v {vs}")
    b, q_len, h, d = qs
    kb, kv_len, kvh, kd = ks
    if kb != b:
        raise ValueError(f"k batch must equal q batch {b}, got {kb}")
    if kd != d:
        raise ValueError(f"k head_dim must equal q head_dim {d}, got {kd}")
    if min(b, q_len, kv_len, h, kvh, d) < 1:
        raise ValueError(
            f"every dimension must be >= 1, got q {qs} and k {ks}"
        )
    if h % kvh != 0:
        raise ValueError(
            f"heads % kv_heads must be 0 (q heads {h}, k/v kv_heads {kvh})"
        )
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be <= {MAX_HEAD_DIM}, got {d}")
    if q.dtype not in dtypes:
        raise TypeError(f"q dtype must be one of {[str(t) for t in dtypes]}, got {q.dtype}")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name} dtype must equal q dtype {q.dtype}, got {x.dtype}")
    if device_of is not None:
        dev = device_of(q)
        for name, x in (("k", k), ("v", v)):
            if _devices_differ(dev, device_of(x)):
                raise ValueError(f"{name} must be on q's device {dev}, got {device_of(x)}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    if window is not None:
        # a Python or numpy integer (as decode's spec), a plain int from here on
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
            raise TypeError(f"window must be an int >= 1 or None, got {window!r}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        # Keys sit at [0, kv_len) and every query at p <= kv_len - 1, so W >= kv_len keeps
        # (p - W, p] whole: clamping changes no result and keeps W (and c_last + W) in int32.
        window = min(int(window), q_len + kv_len)
    softcap = check_optional_positive("softcap", softcap)
    scale = d**-0.5 if scale is None else check_optional_positive("scale", scale)
    q_ids, kv_ids = _check_segments(segment_ids, b, q_len, kv_len, device_of, q)
    problem = AttentionProblem(
        batch=b, q_len=q_len, kv_len=kv_len, heads=h, kv_heads=kvh, head_dim=d,
        causal=causal, window=window, softcap=softcap, scale=float(scale),
        has_segments=q_ids is not None,
    )
    return problem, q_ids, kv_ids


def _check_segments(segment_ids, b, q_len, kv_len, device_of, q):
    if segment_ids is None:
        return None, None
    if isinstance(segment_ids, (tuple, list)):
        if len(segment_ids) != 2:
            raise ValueError(
                f"segment_ids as a sequence must be a (q_ids, kv_ids) pair, got {len(segment_ids)} items"
            )
        q_ids, kv_ids = segment_ids
    else:
        if q_len != kv_len:
            raise ValueError(
                "segment_ids as one array needs q_len == kv_len "
                f"(got q_len {q_len}, kv_len {kv_len}); pass a (q_ids, kv_ids) pair"
            )
        q_ids = kv_ids = segment_ids
    for name, ids, n in (("q segment_ids", q_ids, q_len), ("kv segment_ids", kv_ids, kv_len)):
        s = _shape(name, ids)
        if s != (b, n):
            raise ValueError(f"{name} must have shape {(b, n)}, got {s}")
        _check_int_ids(name, ids, q, device_of)
    return q_ids, kv_ids


def _check_int_ids(name: str, ids: Any, q: Any, device_of) -> None:
    """An integer array (not float, bool or complex) on q's device (``device_of`` None: unchecked)."""
    kind = getattr(ids.dtype, "is_floating_point", None)
    is_float = kind if isinstance(kind, bool) else "float" in str(ids.dtype)
    if is_float or "bool" in str(ids.dtype) or "complex" in str(ids.dtype):
        raise TypeError(f"{name} must be an integer array, got {ids.dtype}")
    if device_of is not None and _devices_differ(device_of(q), device_of(ids)):
        raise ValueError(f"{name} must be on q's device {device_of(q)}, got {device_of(ids)}")


def _devices_differ(a: Any, b: Any) -> bool:
    """Two device_of results differ; None (unknown: a JAX tracer) matches anything."""
    return a is not None and b is not None and a != b


def check_bidirectional_ids(ids: Any, problem: AttentionProblem, device_of=None, q: Any = None) -> None:
    """Validate ``bidirectional_ids`` (None passes): int [batch, q_len], causal=True, on q's device."""
    if ids is None:
        return
    if not problem.causal:
        raise ValueError("bidirectional_ids needs causal=True (bidirectional blocks inside causal "
                         f"attention), got causal={problem.causal}")
    s = _shape("bidirectional_ids", ids)
    if s != (problem.batch, problem.q_len):
        raise ValueError(f"bidirectional_ids must have shape [batch, q_len] = {(problem.batch, problem.q_len)}, "
                         f"got {s}")
    _check_int_ids("bidirectional_ids", ids, q, device_of)


def attention_flops(problem: AttentionProblem, *, backward: bool = False) -> float:
    """Model FLOPs by the convention peers use: 4·B·H·Sq·Skv·D, halved when causal, ×2.5 for backward."""
    f = 4.0 * problem.batch * problem.heads * problem.q_len * problem.kv_len * problem.head_dim
    if problem.causal:
        f /= 2
    return f * 2.5 if backward else f
