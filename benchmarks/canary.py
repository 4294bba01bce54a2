"""Launch, once each, the Triton autotuning candidates the GPU benchmark's goal rows tune
among, before the benchmark: a candidate that kills its process (an illegal address or
instruction ends the CUDA context for everything after it) is found here, not in the middle
of the timed run, where it would take the remaining suites down with it.

    python -m benchmarks.canary --state DIR/canary.json [--smoke]

Candidates other than the defaults (those run in every test and benchmark call; a crashing
default cannot be skipped anyway), for the goal rows' problem classes, at lengths that take
the same compiled specializations, so the benchmark later finds them in Triton's cache:
- attention backward, MQA causal bf16: head_dim 128 with 16 heads (the attention goal rows)
  and head_dim 256 with 8 heads (nano1's train step), 1024 tokens (split dK/dV passes);
  the forward's at both (the Gluon kernel's modes, whose barriers could hang, go first);
- int4 decode, 1 and 16 rows, 2048 -> 9984, group 128;
- decode's split kernel, MQA batch 1 on a 4k cache, its programmatic dependent launch among
  them (the benchmark's ``triton-pdl`` rows skip it where the canary excluded it).
State (JSON, written atomically): each candidate is marked "running" before its launch and
"ok" (or "error" with the exception: a raised error leaves the process usable) after it. A
run that finds a candidate left "running" by an earlier try marks it "crashed" and goes on
with the rest, so ``make bench-gpu`` runs this until it completes (a few tries at most) and
hands the file to the benchmark as ``KERNELS_EXCLUDED_BLOCKS_FILE``: the autotuners and the
sweep skip crashed candidates, with the reason (``kernels._autotune.excluded_blocks``).
A launch that has not returned after ``--hang-s`` seconds (compile included; a barrier
that never completes spins forever and would eat the whole stage) is marked "hung" and the
process exits with HUNG_RC, so the next try settles the remaining candidates; hung ones are
excluded as crashed ones are, and so is one still "running" when the stage's time ran out.
Nothing is timed. ``--smoke`` runs the same code on the CPU at tiny sizes in the interpreter.
"""
from __future__ import annotations

import argparse
import json
import os
import threading

import torch

from benchmarks.results import write_json_atomic

BF16 = torch.bfloat16
HUNG_RC = 3  # the exit status of a try ended by a hung launch (the Makefile retries on it)
HANG_S = 30.0  # compile (seconds on the device's cores) plus one launch of a small problem


def _attention_jobs(dev, dt, cap, small):
    from kernels.attention import triton_attention as ta

    jobs, fwd_jobs = [], []
    for d, h in ((256, 8), (128, 16)):
        s, h = (48, 2) if small else (1024, h)
        g = torch.Generator(device=dev).manual_seed(d)
        q = torch.randn(1, s, h, d, device=dev, dtype=dt, generator=g)
        k, v = (torch.randn(1, s, 1, d, device=dev, dtype=dt, generator=g) for _ in range(2))
        fwd = ta.default_blocks(d, dt, capability=None if small else cap)
        for blk in ta.candidate_blocks(d, dt, backward=True, capability=cap)[1:]:  # [0]: the default
            def run(q=q, k=k, v=v, fwd=fwd, blk=blk):
                qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
                o = ta.attention_triton(qg, kg, vg, causal=True, blocks=(fwd, blk))
                return torch.autograd.grad(o, (qg, kg, vg), torch.ones_like(o))
            jobs.append((f"attention bwd mqa h{h}/1 d{d} causal", blk, run))
        bwd = ta.default_blocks(d, dt, backward=True, capability=None if small else cap)
        for blk in ta.candidate_blocks(d, dt, capability=cap)[1:]:  # the forward's (Gluon among them)
            def fwd_run(q=q, k=k, v=v, blk=blk, bwd=bwd):
                with torch.no_grad():
                    return ta.attention_triton(q, k, v, causal=True, blocks=(blk, bwd))
            fwd_jobs.append((f"attention fwd mqa h{h}/1 d{d} causal", blk, fwd_run))
    return fwd_jobs + jobs  # the Gluon forward first: the newest code, and barriers that could hang


def _int4_jobs(dev, dt, cap, small):
    from kernels.int4 import triton_int4 as ti
    from kernels.int4.reference import quantize_int4

    n, k = (256, 256) if small else (9984, 2048)
    packed, scales, _ = quantize_int4(torch.randn(n, k, device=dev), 128, scale_dtype=dt)
    jobs = []
    for m in (1, 16):
        x = torch.randn(m, k, device=dev, dtype=dt)
        for blk in ti.candidate_blocks(m, dt, capability=cap)[1:]:  # [0]: the default
            jobs.append((f"int4 m{m} {k}->{n} g128", blk,
                         lambda x=x, blk=blk: ti.int4_matmul_triton(x, packed, scales, None, 128, blocks=blk)))
    return jobs


def _decode_jobs(dev, dt, cap, small):
    """The decode split kernel's candidates (sm_90's programmatic dependent launch among them),
    MQA batch 1, 16 heads, head_dim 128, a 4k cache (interpreter: 2 heads, 64 positions)."""
    from kernels.decode import triton_decode as td

    h, t = (2, 64) if small else (16, 4096)
    g = torch.Generator(device=dev).manual_seed(1)
    q = torch.randn(1, h, 128, device=dev, dtype=dt, generator=g)
    k, v = (torch.randn(1, t, 1, 128, device=dev, dtype=dt, generator=g) for _ in range(2))
    lens = torch.full((1,), t, dtype=torch.int32, device=dev)
    return [(f"decode mqa h{h}/1 d128 cache {t}", blk,
             lambda blk=blk: td.decode_triton(q, k, v, lens, blocks=blk))
            for blk in td.candidate_blocks(128, dt, t, capability=cap)[1:]]  # [0]: the default


def _load(path: str) -> dict:
    if not os.path.exists(path):
        return {"tries": 0, "complete": False, "candidates": []}
    with open(path) as f:
        return json.load(f)


def _watchdog(state_path: str, state: dict, entry: dict, hang_s: float) -> threading.Timer:
    """Started before a launch: after ``hang_s`` it marks ``entry`` hung, writes the state
    and ends the process (the launching thread may be spinning in the GPU driver)."""
    def fire():
        entry.update(status="hung", why=f"the launch had not returned after {hang_s:g} s (try {state['tries']})")
        write_json_atomic(state_path, state)
        print(f"canary hung: {entry['label']} {entry['blocks']}", flush=True)
        os._exit(HUNG_RC)

    timer = threading.Timer(hang_s, fire)
    timer.daemon = True
    timer.start()
    return timer


def run(state_path: str, smoke: bool = False, hang_s: float = HANG_S) -> dict:
    """Launch every candidate not yet settled in the state file; return the final state."""
    state = _load(state_path)
    state["tries"] += 1
    for c in state["candidates"]:
        if c["status"] == "running":  # an earlier try died while launching it
            c.update(status="crashed", why=f"the canary process died while it ran (try {state['tries'] - 1})")
    write_json_atomic(state_path, state)
    dev, dt = ("cpu", torch.float16) if smoke else ("cuda", BF16)  # the interpreter: no bf16 dots
    cap = (9, 0) if smoke else torch.cuda.get_device_capability()
    settled = {(c["label"], c["blocks"]) for c in state["candidates"]}
    jobs = _attention_jobs(dev, dt, cap, smoke) + _int4_jobs(dev, dt, cap, smoke) + _decode_jobs(dev, dt, cap, smoke)
    for label, blk, fn in jobs:
        if (label, repr(blk)) in settled:
            continue
        entry = {"label": label, "blocks": repr(blk), "status": "running"}
        state["candidates"].append(entry)
        write_json_atomic(state_path, state)  # on disk before the launch that may end the process
        watchdog = _watchdog(state_path, state, entry, hang_s)
        try:
            fn()
            if dev == "cuda":
                torch.cuda.synchronize()
            entry["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - a raised error leaves the process usable
            entry.update(status="error", why=f"{type(e).__name__}: {str(e)[:300]}")
        finally:
            watchdog.cancel()
        print(f"canary {entry['status']}: {label} {entry['blocks']}", flush=True)
    state["complete"] = True
    write_json_atomic(state_path, state)
    return state


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--state", required=True, help="the JSON state file (kept across tries)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, interpreter")
    ap.add_argument("--hang-s", type=float, default=HANG_S,
                    help="seconds a launch (compile included) may take before it counts as hung")
    args = ap.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("benchmarks.canary needs a CUDA GPU; --smoke checks the script on the CPU")
    state = run(args.state, args.smoke, args.hang_s)
    crashed = [c for c in state["candidates"] if c["status"] in ("crashed", "hung")]
    print(f"canary: {len(state['candidates'])} candidates, {len(crashed)} crashed or hung -> {args.state}")
    return state


if __name__ == "__main__":
    main()
