"""Autotuning of the Triton attention passes: ``attention_triton(..., blocks="autotune")``.

The first call of a problem class times every ``candidate_blocks`` of the device on the
caller's own tensors, for the forward and, when the inputs require grad, for the backward
(its launches alone, from one forward's output and a random dO), and keeps the fastest of
each; later calls of the class reuse them, as ``triton.autotune`` does. A class is (device
capability, dtype, head_dim, group size, causal, window, softcap, segments, and Sq and Skv
rounded up to powers of two). Candidates the problem cannot run (a TMA tile that does not
fit its group size or alignment) or the device cannot launch (shared memory) are skipped,
with the reason kept in ``TUNING``; so is a candidate whose compile fails (a ptxas crash),
and no candidate running is an error (``kernels/_autotune.py``). Timing: ``triton.testing.
do_bench`` (CUDA events, L2 flushed) on a GPU; one wall-clock call under the CPU
interpreter, where the pick means nothing about speed but the path is exercised.
"""
from __future__ import annotations

import dataclasses

from .._autotune import fastest, summary
from .._platform import configure_triton_interpret

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


def _candidates(q, backward: bool, bidirectional: bool = False) -> list:
    """The device's candidates; with bidirectional ids (q_end) only the pointer tiles."""
    cap = ta._capability(q)
    if cap is None:  # the interpreter: its own default plus a TMA form / a two-pass dK-dV form
        base = ta.default_blocks(q.shape[-1], q.dtype, backward=backward, capability=None)
        other = dataclasses.replace(base, dkdv_passes=2) if backward else ta.tma_blocks(base)
        if bidirectional and not backward:  # the TMA form cannot take q_end: a wider pointer tile
            other = dataclasses.replace(base, block_n=base.block_n * 2)
        return [base, other]
    out = ta.candidate_blocks(q.shape[-1], q.dtype, backward=backward, capability=cap)
    if bidirectional:
        out = ta.pointer_tiles(out) or [ta.default_blocks(q.shape[-1], q.dtype, backward=backward, capability=cap)]
    return out


def autotuned_forward_blocks(q, k, v, q_seg, kv_seg, *, causal, window, softcap, scale, q_end=None):
    """The fastest forward candidate for this problem class (timed on the first call); with
    q_end (bidirectional ids) among the pointer tiles, timed with q_end, its own class."""
    key = problem_class(q, k, causal, window, softcap, q_seg is not None)
    key += ("bidirectional",) if q_end is not None else ()
    if key in TUNING:
        return TUNING[key]["blocks"]

    def launch(blocks):
        return ta._flash_fwd(q, k, v, q_seg, kv_seg, causal=causal, window=window,
                             softcap=softcap, scale=scale, blocks=blocks, q_end=q_end)
    return fastest(key, _candidates(q, backward=False, bidirectional=q_end is not None), launch, TUNING)


def autotuned_backward_blocks(q, k, v, q_seg, kv_seg, *, causal, window, softcap, scale, fwd_blocks,
                              q_end=None):
    """The fastest backward candidate for this problem class, timed on the first call from
    one forward (``fwd_blocks``) of these inputs and a random output gradient (q_end: as the
    forward's)."""
    key = (problem_class(q, k, causal, window, softcap, q_seg is not None)
           + (("bidirectional",) if q_end is not None else ()) + ("backward",))
    if key in TUNING:
        return TUNING[key]["blocks"]
    opts = dict(causal=causal, window=window, softcap=softcap, scale=scale, q_end=q_end)
    with torch.no_grad():
        o, lse = ta._flash_fwd(q, k, v, q_seg, kv_seg, **opts, blocks=fwd_blocks)
        gen = torch.Generator(device=o.device).manual_seed(0)  # leaves the global RNG alone
        do = torch.randn(o.shape, generator=gen, device=o.device, dtype=o.dtype)

    def launch(blocks):
        return ta._flash_bwd(do, q, k, v, o, lse, q_seg, kv_seg, **opts, blocks=blocks)
    return fastest(key, _candidates(q, backward=True, bidirectional=q_end is not None), launch, TUNING)


def tuning_record(q, k, *, causal, window=None, softcap=None, segments=False,
                  backward: bool = False) -> dict | None:
    """JSON-ready pick and candidate times of a tuned problem class and pass (None if not
    tuned yet)."""
    key = problem_class(q, k, causal, window, softcap, segments) + (("backward",) if backward else ())
    entry = TUNING.get(key)
    if entry is None:
        return None
    return {"pick": dataclasses.asdict(entry["blocks"]),
            "candidates": [{"blocks": dataclasses.asdict(b), "ms": ms, "skipped": why}
                           for b, ms, why in entry["times_ms"]]}


def tuning_summary() -> list[dict]:
    """Every tuned problem class and pass of this process: JSON-ready pick and candidate times."""
    return summary(TUNING)
