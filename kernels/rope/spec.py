"""Framework-neutral argument checks for rope / rope_2d (PyTorch and JAX front-ends).

Convention (rotate-half, as HF Llama/Gemma): x [batch, seq, heads, head_dim] and integer
positions [batch, seq] (any values, not only 0..seq-1). With half = head_dim / 2,
inv_freq[i] = theta^(-i / half) and angle[i] = position * inv_freq[i], element pairs
(i, i + half) rotate by angle[i]:
    out[i]        = x[i] cos - x[i + half] sin
    out[i + half] = x[i + half] cos + x[i] sin            for i < half.
rope_2d (image patches): positions_hw [batch, seq, 2] = (row, col); head_dim splits into two
sections of head_dim / 2; the first is rotated (same convention, half = head_dim / 4) by the
row, the second by the column. The backward is the inverse rotation (angle -> -angle).
inv_freq is computed in float64 and rounded to fp32; angles, cos and sin are fp32.
Position range: the Triton and Pallas kernels read positions as int32, so |position| < 2^31
(``check_position_range``). It is refused when it can be checked without a device sync --
positions in host memory (torch CPU tensors, as in the Triton interpreter; numpy arrays and
concrete CPU jax arrays for Pallas). On a GPU the check would need a sync, so there int64
positions >= 2^31 are not checked and wrap modulo 2^32 (jax arrays are int32 anyway unless
x64 is enabled). The references take any int64 position.
NaN / inf in x (no check, no sync): propagated, confined to its rotation pair
(i, i + half) of the same (token, head) row, forward and backward; other rows stay exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .._checks import check_device, check_dtype, check_float, check_integer, shape_of

# Angle range reduction to [-pi, pi] (Cody-Waite): 2 pi = HI + LO, HI with few mantissa bits
# so k * HI is exact in fp32; keeps fast hardware sin/cos accurate at large positions.
TWO_PI_HI = 6.28125
TWO_PI_LO = 0.0019353071795864769
INV_TWO_PI = 0.15915494309189535


@dataclass(frozen=True)
class RopeProblem:
    batch: int
    seq: int
    heads: int
    head_dim: int
    sections: int  # 1: rope, 2: rope_2d
    theta: float

    @property
    def half(self) -> int:
        """Rotation pairs per section: (i, i + half)."""
        return self.head_dim // (2 * self.sections)


def check_rope_args(x: Any, positions: Any, *, theta: Any, sections: int, dtypes: Sequence[Any],
                    device_of=None) -> RopeProblem:
    xs = shape_of("x", x)
    if len(xs) != 4 or min(xs) < 1:
        raise ValueError(f"x must be 4-D [batch, seq, heads, head_dim] with dims >= 1, got shape {xs}")
    b, s, h, d = xs
    if d % (2 * sections):
        what = "head_dim must be even" if sections == 1 else "head_dim must be a multiple of 4 for rope_2d"
        raise ValueError(f"{what}, got {d}")
    check_dtype("x", x, dtypes)
    name = "positions" if sections == 1 else "positions_hw"
    want = (b, s) if sections == 1 else (b, s, 2)
    ps = shape_of(name, positions)
    if ps != want:
        raise ValueError(f"{name} must have shape {want} (x's batch, seq{'' if sections == 1 else ', 2'}), got {ps}")
    check_integer(name, positions)
    check_device(name, positions, "x", x, device_of)
    theta = check_float("theta", theta, positive=True)
    return RopeProblem(b, s, h, d, sections, theta)


POSITION_LIMIT = 2 ** 31  # the kernels read positions as int32


def check_position_range(name: str, lo: int, hi: int) -> None:
    """Refuse positions the kernels' int32 read would wrap: lo, hi = min and max of ``name``."""
    if lo <= -POSITION_LIMIT or hi >= POSITION_LIMIT:
        raise ValueError(f"{name} must satisfy |{name}| < 2^31 (the rope kernels read int32 "
                         f"positions), got values in [{lo}, {hi}]")


def inv_freq64(half: int, theta: float):
    """numpy float64 inv_freq[i] = theta^(-i / half), i < half."""
    import numpy as np

    return theta ** (-np.arange(half, dtype=np.float64) / half)


def rope_bytes(problem: RopeProblem, itemsize: int) -> int:
    """HBM bytes moved (fwd or bwd): read x, write y; positions are negligible."""
    return 2 * problem.batch * problem.seq * problem.heads * problem.head_dim * itemsize
