"""Timers that hold up: median and spread of many runs, compilation kept out.

- CUDA (torch): CUDA events around each run, warm-up first, the L2 cache flushed before
  every timed run by reading a buffer larger than L2 (so a kernel is not timed on a warm
  cache it would not have in a model); optionally the call is captured once as a CUDA graph
  and replayed, which takes CPU launch overhead out of the measurement. The flush reads
  rather than writes (Triton's do_bench zeroes its buffer): zeroing leaves L2 full of dirty
  lines, and a kernel timed after it pays their write-back, up to the L2's size (50 MB on
  an H100) of extra DRAM traffic -- double the traffic of a kernel reading 10 MB. A read
  pass writes back the previous run's dirty lines before the timer starts and leaves clean
  lines, which cost nothing to evict.
  Each timed run first holds the stream with a spin kernel (``torch.cuda._sleep``) long enough
  for the host to enqueue the flush, the start event and the call behind it: the GPU then runs
  them back to back, and the time between the events is the GPU's, not the host's. Without
  the hold, a call whose Python launcher takes longer than the flush's ~0.1 ms leaves the GPU
  idle after the start event, and that idle time was timed (one run fast, the next slow,
  as the host's own jitter went). The host's enqueue time of each call is kept
  (``host_ms``: median and max), with the hold (``hold_ms``, a lower bound: its cycles are
  counted at 2 GHz, and the SM clock is at most that on the GPUs here).
- JAX: ``block_until_ready`` on the result, wall clock (L2 flushed too on a GPU). That
  includes one dispatch of the jitted program (tens of microseconds), as a JAX user's call
  pays it; ``steady_jax`` takes it out for kernels that run for less: the slope of the wall
  time between one jitted program of n back-to-back calls and one of n // 2.
- CPU: wall clock over repeated runs.
Runs stop at ``max_runs`` or once ``budget_s`` of timed work is spent, whichever first.
Every timing keeps its runs' times in the order taken (``samples_ms``), so a bimodal row (a
kernel that is fast in some runs and slow in others) shows as such and not only as a wide
p20-p80; CUDA timers given a ``probe`` (``benchmarks.telemetry.ClockProbe``) also read the SM
clock and NVML's clock-event reasons (power cap, thermal, ...) after each run, outside the
timed window, so a slow run can be told apart from a throttled one.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional


@dataclass
class Timing:
    median_s: float
    p20_s: float
    p80_s: float
    min_s: float
    runs: int
    method: str
    samples_ms: Optional[list] = None  # every run's time in the order taken (4 significant digits)
    sm_clock_mhz: Optional[list] = None  # with a probe: the SM clock read after each run
    clock_events: Optional[list] = None  # with a probe: NVML clock-event reasons seen after any run
    host_ms: Optional[dict] = None  # CUDA events: the host's time to enqueue a call, median and max
    hold_ms: Optional[float] = None  # CUDA events: the spin that held the stream while it did

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _summarize(samples: list[float], method: str, clocks: Optional[list] = None,
               events: Optional[list] = None, host: Optional[list] = None,
               hold_s: Optional[float] = None) -> Timing:
    s = sorted(samples)
    q = statistics.quantiles(s, n=5) if len(s) >= 2 else [s[0]] * 4
    host_ms = None if not host else {"median": float(f"{statistics.median(host) * 1e3:.4g}"),
                                     "max": float(f"{max(host) * 1e3:.4g}")}
    return Timing(median_s=statistics.median(s), p20_s=q[0], p80_s=q[3], min_s=s[0], runs=len(s),
                  method=method, samples_ms=[float(f"{x * 1e3:.4g}") for x in samples],
                  sm_clock_mhz=clocks, clock_events=events, host_ms=host_ms,
                  hold_ms=None if hold_s is None else float(f"{hold_s * 1e3:.4g}"))


HOLD_MIN_S, HOLD_MAX_S = 2e-4, 2e-2  # the stream hold: 3x the host's enqueue time, within these
HOLD_CLOCK_HZ = 2.0e9  # cycles per second the hold is counted at (the highest SM clock here: 1.98 GHz)


def hold_seconds(host_s: float) -> float:
    """How long to hold the stream before a run whose call took ``host_s`` to enqueue."""
    return min(max(3 * host_s, HOLD_MIN_S), HOLD_MAX_S)


def _block(x):
    """Wait for a result: JAX arrays (and pytrees of them) or torch tensors."""
    import jax

    leaves = jax.tree_util.tree_leaves(x)
    for leaf in leaves:
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
    return x


class Timer:
    """``Timer(kind)(fn)`` runs ``fn`` (no arguments) and returns a :class:`Timing`."""

    def __init__(self, kind: str, *, warmup: int = 3, min_runs: int = 5, max_runs: int = 100,
                 budget_s: float = 2.0, flush_l2_mb: int = 256, cuda_graphs: bool = False,
                 probe: Optional[Callable[[], tuple]] = None):
        self.kind, self.warmup, self.min_runs = kind, warmup, min_runs
        self.probe = probe if kind == "cuda" else None  # () -> (SM MHz, [clock-event reason names])
        self.cuda_graphs = cuda_graphs and kind == "cuda"
        self.max_runs, self.budget_s = max_runs, budget_s
        self._flush = None
        if kind in ("cuda", "jax-gpu") and flush_l2_mb:
            import torch

            self._flush = torch.empty(flush_l2_mb * 2**18, dtype=torch.int32, device="cuda")  # only read

    def _flush_l2(self) -> None:
        """Read the flush buffer (a sum: 8 bytes written), evicting L2 clean (module docstring)."""
        self._flush.sum()

    def __call__(self, fn) -> Timing:
        for _ in range(self.warmup):
            _block(fn())
        if self.kind == "cuda":
            return self._cuda(fn)
        samples: list[float] = []
        spent = 0.0
        while self._more(samples, spent):
            dt = self._wall(fn)
            samples.append(dt)
            spent += dt
        method = "wall-clock, block_until_ready" + (", L2 flushed by a read" if self._flush is not None else "")
        return _summarize(samples, method)

    def steady(self, fns) -> Timing | None:
        """Per-call time of ``fns`` (the same op over distinct inputs) run back to back in one
        CUDA graph, each replay after the L2 flush: the calls of a decode step in a serving
        engine's graph, with no launch floor between them and no input warm in L2
        (FlashInfer's cold-L2 graph timing). None off CUDA or when the capture fails."""
        if self.kind != "cuda":
            return None
        import torch

        for fn in fns:
            fn()
        torch.cuda.synchronize()
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for fn in fns:
                    fn()
        except Exception:  # noqa: BLE001 - the row keeps its single-call timing
            torch.cuda.synchronize()
            return None
        method = f"cuda-graph of {len(fns)} back-to-back calls over distinct inputs, per call, L2 flushed by a read"
        return self._event_samples(graph.replay, method, per=len(fns))

    def steady_jax(self, fn, arg_sets) -> Timing | None:
        """Per-call time of the JAX function ``fn`` over ``arg_sets`` (tuples of distinct input
        arrays), the calls back to back inside one jitted program: each call's inputs pass
        an ``optimization_barrier`` together with the previous call's output, so XLA runs the
        calls in order and neither fuses nor overlaps them. The programs of n and n // 2
        calls are timed in alternation (wall clock after the L2 flush); a sample is their
        difference over n - n // 2 calls, so the dispatch and the wait that each program
        pays once cancel out. None for a torch timer, fewer than 2 input sets, or a median
        difference <= 0 (calls too short for the wall clock's noise)."""
        if self.kind == "cuda" or len(arg_sets) < 2:
            return None
        import jax

        def chain(sets):
            outs, prev = [], None
            for args in sets:
                if prev is not None:
                    args, _ = jax.lax.optimization_barrier((args, prev))
                prev = fn(*args)
                outs.append(prev)
            return outs

        program = jax.jit(chain)
        n, half = len(arg_sets), len(arg_sets) // 2
        full, part = list(arg_sets), list(arg_sets[:half])
        for _ in range(max(1, self.warmup)):  # compiles both programs
            _block(program(full))
            _block(program(part))

        samples: list[float] = []
        spent = 0.0
        while self._more(samples, spent):
            t_full, t_part = self._wall(lambda: program(full)), self._wall(lambda: program(part))
            samples.append((t_full - t_part) / (n - half))
            spent += t_full + t_part
        if statistics.median(samples) <= 0:  # the calls' time is below the wall clock's noise
            return None
        method = (f"one jitted program of {n} back-to-back calls over distinct inputs against one of {half}, "
                  "wall-clock difference per call (the dispatch cancels)"
                  + (", L2 flushed by a read" if self._flush is not None else ""))
        return _summarize(samples, method)

    def _more(self, samples: list, spent: float) -> bool:
        """Another run? Until max_runs, and past min_runs only while under budget_s."""
        return len(samples) < self.max_runs and (len(samples) < self.min_runs or spent < self.budget_s)

    def _wall(self, fn) -> float:
        """Wall-clock seconds of ``fn()`` until its result is ready, after the L2 flush (JAX on
        a GPU: through torch, then a sync so the flush is not timed)."""
        if self._flush is not None:
            import torch

            self._flush_l2()
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        _block(fn())
        return time.perf_counter() - t0

    def _event_samples(self, fn, method: str, per: int = 1) -> Timing:
        """CUDA-event times of ``fn`` (each after the L2 flush), divided by ``per``, until
        max_runs or, past min_runs, budget_s of timed work."""
        import torch

        t0 = time.perf_counter()  # one more untimed call: how long the host takes to enqueue it
        fn()
        hold_s = hold_seconds(time.perf_counter() - t0)
        torch.cuda.synchronize()
        samples: list[float] = []
        host: list[float] = []
        clocks: Optional[list] = [] if self.probe is not None else None
        events: set = set()
        spent = 0.0
        while self._more(samples, spent):
            torch.cuda._sleep(int(hold_s * HOLD_CLOCK_HZ))  # the GPU spins while the host enqueues
            if self._flush is not None:
                self._flush_l2()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            t0 = time.perf_counter()
            _block(fn())
            host.append(time.perf_counter() - t0)
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1e3
            samples.append(dt / per)
            spent += dt
            if clocks is not None:  # after the run, outside the timed window
                mhz, reasons = self.probe()
                clocks.append(mhz)
                events.update(reasons)
        method += f", the stream held {hold_s * 1e3:.3g} ms while the host enqueued each run"
        return _summarize(samples, method, clocks, None if clocks is None else sorted(events), host, hold_s)

    def _cuda(self, fn) -> Timing:
        import torch

        method = "cuda-events, L2 flushed by a read"
        if self.cuda_graphs:  # launch overhead out of the measurement: replay one captured call
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    fn()
                fn, method = graph.replay, "cuda-graph replay, cuda-events, L2 flushed by a read"
            except Exception as e:  # noqa: BLE001 - said in the record: eager timing, and why
                torch.cuda.synchronize()
                method += f" (not a graph: capture failed: {type(e).__name__}: {str(e)[:200]})"
        return self._event_samples(fn, method)
