"""Test helper (not a test file): attention cases and float64 ground truth shared by the JAX
attention kernel tests (Pallas GPU-style, TPU)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch

from kernels.attention import reference


@dataclasses.dataclass(frozen=True)
class AttentionCase:
    heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    dtype: jnp.dtype
    causal: bool = False
    window: int | None = None
    softcap: float | None = None
    segments: bool = False
    batch: int = 1
    blocks: object | None = None  # a kernel's block-size dataclass, or None for its defaults

    @property
    def id(self) -> str:
        kind = "mqa" if self.kv_heads == 1 else "mha" if self.kv_heads == self.heads else "gqa"
        parts = [f"{kind}{self.heads}x{self.kv_heads}", f"s{self.q_len}x{self.kv_len}",
                 f"d{self.head_dim}", jnp.dtype(self.dtype).name]
        parts += ["causal"] if self.causal else []
        parts += [f"win{self.window}"] if self.window is not None else []
        parts += [f"cap{self.softcap:g}"] if self.softcap is not None else []
        parts += ["seg"] if self.segments else []
        parts += [f"b{self.batch}"] if self.batch > 1 else []
        if self.blocks is not None:
            parts.append(f"blk{self.blocks.block_q}x{self.blocks.block_k}")
        return "-".join(parts)

    @property
    def flags(self) -> dict:
        return dict(causal=self.causal, window=self.window, softcap=self.softcap,
                    scale=self.head_dim**-0.5)


def segment_ids(rng, batch, q_len, kv_len, n_segments=3):
    """Sorted (packed) int32 ids; q ids are those of the last q_len keys (bottom-right aligned);
    with q_len > kv_len the leading queries get a segment no key has."""
    kv = np.sort(rng.integers(0, n_segments, (batch, kv_len)), axis=1)
    q = kv[:, kv_len - q_len:] if q_len <= kv_len else np.concatenate(
        [np.full((batch, q_len - kv_len), n_segments), kv], axis=1)
    return jnp.asarray(q, jnp.int32), jnp.asarray(kv, jnp.int32)


def make_inputs(rng, c: AttentionCase):
    """q, k, v, dO in the case's dtype and (q_ids, kv_ids) or (None, None)."""
    shapes = [(c.batch, c.q_len, c.heads, c.head_dim), (c.batch, c.kv_len, c.kv_heads, c.head_dim),
              (c.batch, c.kv_len, c.kv_heads, c.head_dim), (c.batch, c.q_len, c.heads, c.head_dim)]
    q, k, v, do = (jnp.asarray(rng.standard_normal(s), c.dtype) for s in shapes)
    ids = segment_ids(rng, c.batch, c.q_len, c.kv_len) if c.segments else (None, None)
    return q, k, v, do, ids


def torch_truth(q, k, v, do, ids, **flags):
    """Float64 torch output and (dq, dk, dv) by autograd, on the (rounded) inputs."""
    t = [torch.tensor(np.asarray(x, np.float64), requires_grad=True) for x in (q, k, v)]
    q_ids, kv_ids = (None, None) if ids[0] is None else (torch.tensor(np.asarray(i)) for i in ids)
    o = reference._attention(*t, q_segment_ids=q_ids, kv_segment_ids=kv_ids, **flags)
    o.backward(torch.tensor(np.asarray(do, np.float64)))
    return o.detach(), *(x.grad for x in t)


def jax_vjp(fn, q, k, v, do, *, jit=True):
    """(o, dq, dk, dv) of ``fn`` by jax.vjp, under jax.jit unless ``jit=False``: one compile
    per call instead of one per eager op of a fresh shape (about half the time of eager here)."""
    def run(q, k, v, do):
        o, vjp = jax.vjp(fn, q, k, v)
        return o, *vjp(do.astype(o.dtype))
    return (jax.jit(run) if jit else run)(q, k, v, do)
