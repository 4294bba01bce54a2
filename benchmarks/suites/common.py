"""Pieces every benchmark suite shares: the skip signal, the error metric, peer ratios."""
from __future__ import annotations

import numpy as np


class Skip(Exception):
    """A peer that cannot run here; the reason is reported."""


def rel_err(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(x - ref)) / max(1.0, float(np.max(np.abs(ref)))))


def add_peer_ratios(records: list[dict], peers: dict) -> None:
    """speedup_vs_peer = best peer time / impl time, per case and framework. ``peers`` maps a
    framework to the impl-name prefixes that are its peers. Not for interpret-mode runs,
    whose times say nothing about the kernel."""
    best: dict = {}
    for r in records:
        if r["status"] == "ok" and r["impl"].startswith(tuple(peers.get(r["framework"], ()))):
            key = (r["case"], r["framework"])
            best[key] = min(best.get(key, float("inf")), r["median_ms"])
    for r in records:
        peer = best.get((r["case"], r["framework"]))
        if r["status"] == "ok" and peer is not None and r.get("mode") != "interpret":
            r["speedup_vs_peer"] = peer / r["median_ms"]
    # the same over the steady-state (back-to-back) times, where rows have them
    best_steady: dict = {}
    for r in records:
        if "steady" in r and r["impl"].startswith(tuple(peers.get(r["framework"], ()))):
            key = (r["case"], r["framework"])
            best_steady[key] = min(best_steady.get(key, float("inf")), r["steady"]["median_ms"])
    for r in records:
        peer = best_steady.get((r["case"], r["framework"]))
        if "steady" in r and peer is not None:
            r["steady"]["speedup_vs_peer"] = peer / r["steady"]["median_ms"]


STEADY_BYTES = 256 * 2**20  # the rotated copies of a steady-state row's inputs, at most about this


def steady_copies(nbytes: int, calls: int) -> int:
    """How many distinct input sets a steady-state row rotates through: ``calls``, fewer for
    inputs so large that the copies would pass STEADY_BYTES (at least 2)."""
    return max(2, min(calls, STEADY_BYTES // max(1, nbytes)))


def steady_record(timer, fns, nbytes: int, jax_fn=None) -> dict:
    """{"steady": per-call time, GB/s and calls} of ``timer.steady(fns)`` (torch: callables),
    or with ``jax_fn`` of ``timer.steady_jax(jax_fn, fns)`` (JAX: ``fns`` are argument
    tuples); {} when it could not time them (torch off CUDA, capture failed)."""
    t = timer.steady(fns) if jax_fn is None else timer.steady_jax(jax_fn, fns)
    if t is None and jax_fn is not None and len(fns) >= 2:
        return {"steady": {"calls": len(fns), "note": "not resolved: the per-call difference was within "
                           "the wall clock's noise"}}
    if t is None:
        return {}
    return {"steady": {"calls": len(fns), "median_ms": t.median_s * 1e3, "gbps": nbytes / t.median_s / 1e9,
                       "timing": t.to_dict()}}


class GridSuite:
    """Base of the operator x impl suites: every case of ``case_list()`` with each of
    ``cfg.torch_impls`` and ``cfg.jax_impls``. Subclasses set ``name`` and ``peers`` and
    implement ``case_list``, ``check`` and ``run``."""

    name = ""
    peers: dict = {}

    def __init__(self, cfg, device, timer_factory, seed: int = 0):
        self.cfg, self.device, self.timer_factory, self.seed = cfg, device, timer_factory, seed

    def case_list(self) -> list:
        raise NotImplementedError

    def entries(self):
        for case in self.case_list():
            for impl in self.cfg.torch_impls:
                yield case, "torch", impl
            for impl in self.cfg.jax_impls:
                yield case, "jax", impl
