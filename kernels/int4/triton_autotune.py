"""Autotuning of the Triton int4 matmul: ``int4_matmul_triton(..., blocks="autotune")``.

The first call of a problem class times every ``candidate_blocks`` of the device on the
caller's own tensors and keeps the fastest; later calls reuse it (``kernels/_autotune.py``:
skips and errors as there). A class is (device capability, x dtype, rows rounded up to a
power of two, in, out, group size, zero points or not, scales dtype). Timing: each call
replayed as a CUDA graph after an L2 flush that reads (``time_ms_graph``): a decode call is
a few microseconds, less than an eager launch. Under the CPU interpreter the candidates are
the interpreter default and one variant (split-K, or the scale after the dot for 16-bit x),
timed once by wall clock: the pick means nothing about speed, the path runs.
"""
from __future__ import annotations

import dataclasses

from .._autotune import fastest, summary, time_ms_graph
from .._platform import configure_triton_interpret

configure_triton_interpret()  # before triton is imported: the interpreter when there is no GPU

import torch  # noqa: E402
import triton  # noqa: E402

from . import triton_int4 as ti  # noqa: E402

# problem class -> {"blocks": the pick, "times_ms": [(candidate, ms or None, reason)]}
TUNING: dict = {}


def problem_class(x2, packed_w, scales, zeros, group_size: int) -> tuple:
    return (ti._capability(x2), str(x2.dtype), triton.next_power_of_2(max(1, x2.shape[0])), x2.shape[1],
            packed_w.shape[0], int(group_size), zeros is not None, str(scales.dtype))


def _candidates(rows: int, dtype, cap) -> list:
    if cap is None:
        base = ti.default_blocks(rows, dtype, capability=None)
        if dtype in (torch.float16, torch.bfloat16):
            return [base, dataclasses.replace(base, scale_after_dot=True, split_k=2)]
        return [base, dataclasses.replace(base, split_k=2)]
    return ti.candidate_blocks(rows, dtype, capability=cap)


def autotuned_blocks(x2, packed_w, scales, zeros, group_size: int) -> "ti.Int4Blocks":
    """The fastest candidate for this problem class (timed on the first call); x2 is [rows, in]."""
    key = problem_class(x2, packed_w, scales, zeros, group_size)
    if key in TUNING:
        return TUNING[key]["blocks"]

    def launch(blocks):
        return ti._int4_matmul(x2, packed_w, scales, zeros, group_size, blocks)
    return fastest(key, _candidates(x2.shape[0], x2.dtype, key[0]), launch, TUNING, timer=time_ms_graph)


def tuning_summary() -> list[dict]:
    """Every tuned problem class of this process: JSON-ready pick and candidate times."""
    return summary(TUNING)
