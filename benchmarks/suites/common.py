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
