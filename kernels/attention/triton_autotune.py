"""Autotuning of the Triton attention forward: ``attention_triton(..., blocks="autotune")``.

The first call of a problem class times every forward ``candidate_blocks`` of the device on
the caller's own tensors (pointer and, on sm_90+, TMA variants) and keeps the fastest; later
calls of the class reuse it, as ``triton.autotune`` does. A class is (device capability,
dtype, head_dim, group size, causal, window, softcap, segments, and Sq and Skv rounded up to
powers of two). Candidates the problem cannot run (a TMA tile that does not fit its group
size or alignment) or the device cannot launch (shared memory) are skipped, with the reason
kept in ``TUNING``. Timing: ``triton.testing.do_bench`` (CUDA events, L2 flushed) on a GPU;
one wall-clock call under the CPU interpreter, where the pick means nothing about speed but
the path is exercised. The backward keeps its default blocks.
"""
from __future__ import annotations

import dataclasses
import time

from .._platform import configure_triton_interpret, triton_interpreting

configure_triton_interpret()  # before triton is imported: the interpreter when there is no GPU

import torch  # noqa: E402
import triton  # noqa: E402

from . import triton_attention as ta  # noqa: E402

# problem class -> {"blocks": the pick, "times_ms": [(candidate, ms or None, reason)]}
TUNING: dict = {}


def problem_class(q, k, causal, window, softcap, segments) -> tuple:
    cap = ta._capability(q)
    return (cap, str(q.dtype), q.shape[-1], q.shape[2] // k.shape[2], bool(causal),
            window is not None, softcap is not None, bool(segments),
            triton.next_power_of_2(q.shape[1]), triton.next_power_of_2(k.shape[1]))


def _time_ms(fn) -> float:
    if torch.cuda.is_available() and not triton_interpreting():
        return float(triton.testing.do_bench(fn, warmup=5, rep=25))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def autotuned_forward_blocks(q, k, v, q_seg, kv_seg, *, causal, window, softcap, scale):
    """The fastest forward candidate for this problem class (timed on the first call)."""
    key = problem_class(q, k, causal, window, softcap, q_seg is not None)
    if key in TUNING:
        return TUNING[key]["blocks"]
    cap = ta._capability(q)
    if cap is None:  # the interpreter: its own default plus the TMA form of it
        base = ta.default_blocks(q.shape[-1], q.dtype, capability=None)
        candidates = [base, ta.tma_blocks(base)]
    else:
        candidates = ta.candidate_blocks(q.shape[-1], q.dtype, capability=cap)
    times = []
    with torch.no_grad():
        for blocks in candidates:
            why = ta.tma_problem(q, k, v, blocks) if blocks.tma else None
            if why is not None:
                times.append((blocks, None, why))
                continue

            def run(blocks=blocks):
                return ta._flash_fwd(q, k, v, q_seg, kv_seg, causal=causal, window=window,
                                     softcap=softcap, scale=scale, blocks=blocks)
            try:
                run()  # compile outside the timing
            except triton.runtime.errors.OutOfResources as e:
                times.append((blocks, None, f"cannot launch: {e}"))
                continue
            times.append((blocks, _time_ms(run), None))
    timed = [(ms, i) for i, (_, ms, _) in enumerate(times) if ms is not None]
    if not timed:
        raise RuntimeError(f"autotune: no forward candidate runs this problem: {times}")
    best = times[min(timed)[1]][0]
    TUNING[key] = {"blocks": best, "times_ms": times}
    return best


def tuning_record(q, k, *, causal, window=None, softcap=None, segments=False) -> dict | None:
    """JSON-ready pick and candidate times of a tuned problem class (None if not tuned yet)."""
    entry = TUNING.get(problem_class(q, k, causal, window, softcap, segments))
    if entry is None:
        return None
    return {"pick": dataclasses.asdict(entry["blocks"]),
            "candidates": [{"blocks": dataclasses.asdict(b), "ms": ms, "skipped": why}
                           for b, ms, why in entry["times_ms"]]}
