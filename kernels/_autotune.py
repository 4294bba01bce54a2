"""Shared autotuning machinery for the Triton ops' ``blocks="autotune"`` (attention, int4).

``fastest(key, candidates, launch, tuning, time_ms)`` times ``launch(blocks)`` for each
candidate, keeps the fastest in ``tuning[key]`` with every candidate's time or the reason it
was skipped, and returns it; later calls of the problem class look ``tuning`` up first, as
``triton.autotune`` does. A candidate the launcher refuses (a TMA tile that does not fit the
problem), the device cannot launch (shared memory) or the compiler fails on (a ptxas crash)
is skipped with its reason; no candidate running is an error. So is a candidate whose output
disagrees with the first running candidate's (the default, which the GPU tests check against
float64) by more than twice the benchmarks' tolerance (``kernels/tolerances.py``): timing
alone must never pick a fast wrong tile (a miscompile, a race in an atomic reduction). And a
candidate that a canary run saw kill its process (an illegal address ends the CUDA context:
``benchmarks/canary.py``, listed in the JSON file ``$KERNELS_EXCLUDED_BLOCKS_FILE`` names) is
skipped before it launches.

Timers (a GPU; one wall-clock call under the CPU interpreter, where the pick means nothing
about speed but the path runs):
- ``time_ms``: ``triton.testing.do_bench`` (CUDA events around eager calls, L2 flushed),
  for kernels of a millisecond or more, where Python launch cost is noise;
- ``time_ms_graph``: the call captured once as a CUDA graph and replayed, each replay after
  an L2 flush that reads a 256 MiB buffer (a zeroing flush leaves dirty lines whose
  write-back the kernel would pay, see benchmarks/timing.py), median of CUDA-event times:
  for microsecond kernels (int4 decode), where an eager launch costs more than the kernel;
  a call that cannot be captured is timed by ``time_ms`` instead.
"""
from __future__ import annotations

import json
import os
import statistics
import time

from ._platform import configure_triton_interpret, triton_interpreting

configure_triton_interpret()  # before triton is imported: the interpreter when there is no GPU

import torch  # noqa: E402
import triton  # noqa: E402

from .tolerances import BENCH_RTOL, dtype_name  # noqa: E402


def _on_gpu() -> bool:
    return torch.cuda.is_available() and not triton_interpreting()


def _wall_ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_ms(fn) -> float:
    if _on_gpu():
        return float(triton.testing.do_bench(fn, warmup=5, rep=25))
    return _wall_ms(fn)


_FLUSH: dict = {}


def time_ms_graph(fn, reps: int = 20) -> float:
    if not _on_gpu():
        return _wall_ms(fn)
    dev = torch.cuda.current_device()
    flush = _FLUSH.get(dev)
    if flush is None:
        flush = _FLUSH[dev] = torch.empty(2**26, dtype=torch.int32, device="cuda")  # 256 MiB, only read
    fn()  # compile and allocate outside the capture
    torch.cuda.synchronize()
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except Exception:  # noqa: BLE001 - a call that cannot be captured is timed eagerly
        torch.cuda.synchronize()
        return time_ms(fn)
    samples = []
    for _ in range(reps):
        flush.sum()  # read: L2 left holding clean lines
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return float(statistics.median(samples))


EXCLUDED_ENV = "KERNELS_EXCLUDED_BLOCKS_FILE"


def excluded_blocks() -> dict:
    """repr(blocks) -> why, for the candidates a canary run marked crashed or hung, or left
    "running" when its stage's time ran out (the JSON state of ``benchmarks/canary.py`` at
    ``$KERNELS_EXCLUDED_BLOCKS_FILE``); empty without the file."""
    path = os.environ.get(EXCLUDED_ENV)
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        state = json.load(f)
    out = {}
    for c in state.get("candidates", []):
        if c.get("status") in ("crashed", "hung"):
            out[c["blocks"]] = c.get("why", c["status"])
        elif c.get("status") == "running":
            out[c["blocks"]] = "still running when the canary stage's time ran out (hung or killed)"
    return out


def _tensors(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for t in out if isinstance(t, torch.Tensor)]
    return []


def disagreement(ref, out) -> str | None:
    """Why ``out`` (a launch's tensor or tuple of tensors) disagrees with ``ref``, or None:
    a shape change, a NaN or infinity where ``ref`` has none, or a largest difference above
    2 * BENCH_RTOL[dtype] of max|ref|. Equal entries agree (the +inf lse of a row that sees
    no key)."""
    for i, (r, o) in enumerate(zip(_tensors(ref), _tensors(out))):
        if r.shape != o.shape:
            return f"output {i} has shape {tuple(o.shape)}, the first candidate's {tuple(r.shape)}"
        r32, o32 = r.float(), o.float()
        diff = torch.where(r32 == o32, 0.0, (o32 - r32).abs())
        if bool(diff.isnan().any()):
            return f"output {i} has NaN or infinity where the first candidate's has none"
        finite = r32[torch.isfinite(r32)]
        scale = float(finite.abs().max()) if finite.numel() else 0.0
        rtol = 2 * BENCH_RTOL.get(dtype_name(r.dtype), BENCH_RTOL["float32"])
        err = float(diff.max()) if diff.numel() else 0.0
        if err > rtol * scale:
            return (f"output {i} differs from the first candidate's by {err:.3g}, above {rtol:g} of "
                    f"its max |value| {scale:.3g}")
    return None


def _snapshot(out):
    return [t.clone() for t in _tensors(out)]


def fastest(key, candidates, launch, tuning: dict, timer=time_ms):
    """Time ``launch(blocks)`` for each candidate with ``timer``; keep and return the fastest
    of those whose output agrees with the first running candidate's (``disagreement``)."""
    times = []
    ref = None
    excluded = excluded_blocks()
    with torch.no_grad():
        for blocks in candidates:
            if repr(blocks) in excluded:
                times.append((blocks, None, f"excluded: {excluded[repr(blocks)]}"))
                continue
            try:
                out = launch(blocks)  # compile outside the timing
            except triton.runtime.errors.OutOfResources as e:
                times.append((blocks, None, f"cannot launch: {e}"))
                continue
            except Exception as e:  # noqa: BLE001 - the launcher's refusal of this problem (a TMA tile
                # it cannot address) or a compiler failure (ptxas) rules out this candidate only
                times.append((blocks, None, f"{type(e).__name__}: {str(e)[:300]}"))
                continue
            if ref is None:
                ref = _snapshot(out)
            else:
                why = disagreement(ref, out)
                del out
                if why is not None:
                    times.append((blocks, None, f"disagrees: {why}"))
                    continue
            try:
                times.append((blocks, timer(lambda blocks=blocks: launch(blocks)), None))
            except Exception as e:  # noqa: BLE001 - a failure while timing rules out this candidate only
                times.append((blocks, None, f"timing: {type(e).__name__}: {str(e)[:300]}"))
    timed = [(ms, i) for i, (_, ms, _) in enumerate(times) if ms is not None]
    if not timed:
        raise RuntimeError(f"autotune: no candidate runs this problem ({key}): {times}")
    best = times[min(timed)[1]][0]
    tuning[key] = {"blocks": best, "times_ms": times}
    return best


def summary(tuning: dict) -> list[dict]:
    """Every tuned problem class of ``tuning``: JSON-ready pick and candidate times."""
    return [{"problem": repr(key), "pick": repr(entry["blocks"]),
             "candidates_ms": [[repr(b), ms, why] for b, ms, why in entry["times_ms"]]}
            for key, entry in tuning.items()]
