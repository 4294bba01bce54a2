"""The benchmark runner: ``python -m benchmarks.run [bench=cpu|gpu] [overrides]``.

Detects the hardware, measures its copy and matmul ceilings, runs each suite's
operator x impl grid (correctness first, then timing), prints a summary table and
writes one results file with its provenance (device, driver, versions, commit,
config) atomically under ``out_dir``. One failing impl is reported and the run goes on.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX shares the GPU with torch

import hydra  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks import config as bench_config  # noqa: E402
from benchmarks import schedule  # noqa: E402
from benchmarks.hardware import detect_device, measure_ceilings, same_size_copy_s  # noqa: E402
from benchmarks.results import (git_commit, library_versions, results_path,  # noqa: E402
                                summary_table, write_json_atomic)
from benchmarks.suites.attention import AttentionSuite  # noqa: E402
from benchmarks.suites.common import Skip, add_peer_ratios  # noqa: E402
from benchmarks.suites.decode import DecodeSuite  # noqa: E402
from benchmarks.suites.elementwise import ElementwiseSuite  # noqa: E402
from benchmarks.suites.encoder_kernels import EncoderKernelsSuite  # noqa: E402
from benchmarks.suites.encoders import EncodersSuite  # noqa: E402
from benchmarks.suites.int4 import Int4Suite  # noqa: E402
from benchmarks.suites.model import ModelSuite  # noqa: E402
from benchmarks.timing import Timer  # noqa: E402

bench_config.register()

INTERPRET_NOTE = ("Interpret mode: Triton and Pallas kernels ran in their CPU interpreters. "
                  "Their times are recorded as 'interpret' and say nothing about GPU speed.")


CPU_CACHE_NOTE = ("CPU: the copy ceiling is measured on a 256 MB buffer (DRAM); the small working "
                  "sets of the default cases are cache-resident, so their GB/s can exceed it.")


def make_timer_factory(device, tcfg):
    probe = None
    if device.kind == "cuda":  # each timed run's SM clock and clock-event reasons (benchmarks/timing.py)
        from benchmarks.telemetry import ClockProbe

        probe = ClockProbe()

    def factory(framework: str, interpret: bool = False, cuda_graphs: bool | None = None) -> Timer:
        """cuda_graphs: None takes the config's setting (torch only); a suite may ask per row."""
        kind = device.kind if framework == "torch" else ("jax-gpu" if device.kind == "cuda" else "cpu")
        if interpret:
            return Timer(kind, warmup=0, min_runs=tcfg.interpret_runs, max_runs=tcfg.interpret_runs,
                         budget_s=0.0, flush_l2_mb=0)
        graphs = tcfg.cuda_graphs if cuda_graphs is None else cuda_graphs
        return Timer(kind, warmup=tcfg.warmup, min_runs=tcfg.min_runs, max_runs=tcfg.max_runs,
                     budget_s=tcfg.budget_s, cuda_graphs=graphs and framework == "torch", probe=probe)

    return factory


DEADLINE_SKIP = "this suite's share of the run's deadline (bench.deadline_s) passed before this entry started"


def run_suite(suite, ceilings, device, deadline: float | None = None, entries=None,
              desc: str | None = None) -> list[dict]:
    """Check and time ``entries`` (default: all of the suite's), stopping to start new ones
    at ``deadline``. Peer ratios are added by the caller, over all of a suite's records."""
    records = []
    entries = list(suite.entries()) if entries is None else entries
    for case, framework, impl in tqdm(entries, desc=desc or suite.name, unit="case"):
        base = {"suite": suite.name, "case": case.id, "framework": framework,
                "impl": impl, "config": case.__dict__}
        started = time.monotonic()
        try:
            if deadline is not None and started > deadline:
                raise Skip(DEADLINE_SKIP)
            rec = suite.run(case, framework, impl)
        except Skip as e:
            rec = {"status": "skipped", "reason": str(e)}
        except Exception as e:  # one failing impl is reported, the run goes on
            rec = {"status": "error", "reason": f"{type(e).__name__}: {e}"[:2000]}
        rec = {**base, **rec, "wall_s": time.monotonic() - started}  # setup, compile, check, timing
        if rec.get("mode") != "interpret" and rec.get("status") == "ok":
            if rec.get("tflops") is not None:
                rec["frac_measured_peak"] = rec["tflops"] / ceilings["matmul_tflops"]
                if device.datasheet_tflops:
                    rec["frac_datasheet_peak"] = rec["tflops"] / device.datasheet_tflops
            if "tflops" in rec.get("graph", {}):  # the model's train step as one CUDA graph: its MFU too
                rec["graph"]["frac_measured_peak"] = rec["graph"]["tflops"] / ceilings["matmul_tflops"]
            if rec.get("gbps") is not None:
                rec["frac_measured_bw"] = rec["gbps"] / ceilings["copy_gbps"]
                if "steady" in rec:
                    rec["steady"]["frac_measured_bw"] = rec["steady"]["gbps"] / ceilings["copy_gbps"]
                if "copy_curve" in ceilings and "cuda-graph" in rec.get("timing", {}).get("method", ""):
                    copy_s = same_size_copy_s(ceilings["copy_curve"], rec["bytes"], ceilings["copy_gbps"])
                    rec["same_size_copy_s"] = copy_s
                    rec["frac_same_size_copy"] = copy_s / rec["timing"]["median_s"]
                if device.datasheet_gbps:
                    rec["frac_datasheet_bw"] = rec["gbps"] / device.datasheet_gbps
        records.append(rec)
    return records


def run_all(built: list, ceilings, device, deadline: float | None, first: dict, on_progress=None,
            weights: dict | None = None) -> list[dict]:
    """Every suite's ``bench.first`` entries, then the rest (see ``benchmarks.schedule``);
    records come back in each suite's own entry order, with peer ratios. ``weights``: per
    suite, what one entry counts in the deadline's shares (default 1)."""
    entries = [list(s.entries()) for s in built]
    schedule.check_filters(first, {s.name: e for s, e in zip(built, entries)})
    split = [schedule.phases(e, first.get(s.name)) for s, e in zip(built, entries)]
    done: list[dict] = [{} for _ in built]  # per suite: entry index -> record

    def merged() -> list[dict]:
        out = []
        for suite, recs in zip(built, done):
            ordered = [recs[i] for i in sorted(recs)]
            add_peer_ratios(ordered, suite.peers)
            out += ordered
        return out

    # first entries by shares; first entries a share ran out on, with all the time left; the rest
    deferred: list[list[int]] = [[] for _ in built]
    for phase in ("first", "first, deferred", "rest"):
        todo = {"first": [sp[0] for sp in split], "first, deferred": deferred,
                "rest": [sp[1] for sp in split]}[phase]
        sizes = [len(t) * (weights or {}).get(s.name, 1.0) for s, t in zip(built, todo)]
        for i, suite in enumerate(built):
            if not todo[i]:
                continue
            end = deadline if phase == "first, deferred" else schedule.share_end(
                time.monotonic(), deadline, sizes, i)
            desc = suite.name if phase == "rest" else f"{suite.name} ({phase})"
            recs = run_suite(suite, ceilings, device, end, [entries[i][j] for j in todo[i]], desc)
            done[i].update(zip(todo[i], recs))
            if phase == "first":
                deferred[i] = [j for j, r in zip(todo[i], recs) if r.get("reason") == DEADLINE_SKIP]
            if on_progress is not None:  # after each suite of each phase
                on_progress(merged())
    return merged()


def build_suites(bcfg, device, timers, seed: int) -> tuple[list, dict]:
    """The enabled suites of ``bcfg`` (bench config) and its checked ``first`` filters."""
    suites = [(cls, scfg) for cls, scfg in (
        (AttentionSuite, bcfg.attention), (DecodeSuite, bcfg.decode),
        (ElementwiseSuite, bcfg.elementwise), (EncoderKernelsSuite, bcfg.encoder_kernels),
        (Int4Suite, bcfg.int4), (EncodersSuite, bcfg.encoders), (ModelSuite, bcfg.model))
        if scfg.enabled]
    built = [suite_cls(scfg, device, timers, seed) for suite_cls, scfg in suites]
    first = OmegaConf.to_container(bcfg.first, resolve=True)
    schedule.check_filters(first, {s.name: list(s.entries()) for s in built})
    return built, first


@hydra.main(config_path="../conf", config_name="benchmark", version_base=None)
def main(cfg) -> None:
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    deadline = time.monotonic() + cfg.bench.deadline_s if cfg.bench.deadline_s > 0 else None
    device = detect_device()
    bcfg = cfg.bench
    timers = make_timer_factory(device, bcfg.timer)
    built, first = build_suites(bcfg, device, timers, cfg.seed)  # filters checked before anything runs
    print(f"device: {device.name} ({device.kind}); measuring ceilings...")
    ceilings = measure_ceilings(device, timers("torch"), copy_mb=bcfg.ceilings.copy_mb,
                                matmul_n=bcfg.ceilings.matmul_n,
                                graph_timer=timers("torch", cuda_graphs=True) if device.kind == "cuda" else None)
    print(f"measured: copy {ceilings['copy_gbps']:.1f} GB/s, {ceilings['matmul_dtype']} matmul "
          f"{ceilings['matmul_tflops']:.2f} TFLOP/s")
    sampler = contextlib.nullcontext()
    if device.kind == "cuda":
        from benchmarks.telemetry import NvmlSampler

        sampler = NvmlSampler(interval_s=bcfg.telemetry_interval_s)
    records = []
    path = results_path(cfg.out_dir, device.name)

    def payload(complete: bool) -> dict:
        interpreted = any(r.get("mode") == "interpret" for r in records)
        return {
            "schema": "gemini-kernels-bench/1",
            "created_utc": started,
            "complete": complete,  # False: the run stopped (or is still going) after the last suite here
            "device": device.to_dict(),
            "commit": git_commit(),
            "versions": library_versions(),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "ceilings": ceilings,
            "telemetry": sampler.summary() if hasattr(sampler, "summary") else None,
            "telemetry_samples": getattr(sampler, "samples", None),
            "notes": (([INTERPRET_NOTE] if interpreted else [])
                      + ([CPU_CACHE_NOTE] if device.kind == "cpu" else [])),
            "records": records,
        }

    with sampler:
        def partial(recs):  # a run killed later (a device call's time limit) keeps these
            records[:] = recs
            write_json_atomic(path, payload(complete=False))

        records[:] = run_all(built, ceilings, device, deadline, first, partial,
                             weights=OmegaConf.to_container(bcfg.weights, resolve=True))
    write_json_atomic(path, payload(complete=True))
    interpreted = any(r.get("mode") == "interpret" for r in records)
    print(summary_table(records))
    if interpreted:
        print("\n" + INTERPRET_NOTE)
    bad = [r for r in records if r["status"] in ("failed", "error")]
    print(f"\n{len(records)} entries: {sum(r['status'] == 'ok' for r in records)} ok, "
          f"{len(bad)} failed or errored, {sum(r['status'] == 'skipped' for r in records)} skipped")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
