"""Test helper (not a test file): ahead-of-time compiles in a fresh process.

``compile_in_subprocess(jobs)`` runs ``python -m benchmarks.compile_report --jobs`` with
TRITON_INTERPRET=0 and returns {job id: {kernel name: report}} (registers, spills, shared
memory, wgmma in PTX, SASS instruction mix); ``sweep_jobs`` picks entries of the compile
report's spill audit (``--sweep``) as jobs. A fresh process because Triton 3.6's
interpreter and its real compiler corrupt each other's state inside one process: tests
that interpret kernels and tests that compile them must not share one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_SHARED = {80: 163 * 1024, 90: 227 * 1024}  # opt-in shared memory per block (bytes)


def compile_in_subprocess(jobs: dict, tmp_path) -> dict:
    nvidia = pytest.importorskip("triton.backends.nvidia.compiler")
    try:
        ptxas = nvidia.get_ptxas(90).path
    except RuntimeError as e:  # knobs raise when no ptxas is found anywhere
        pytest.skip(f"ptxas not available: {e}")
    if not ptxas or not os.path.exists(ptxas):
        pytest.skip(f"ptxas not available at {ptxas!r}")
    jobs_file, out_file = tmp_path / "jobs.json", tmp_path / "results.json"
    jobs_file.write_text(json.dumps(jobs))
    env = {**os.environ, "TRITON_INTERPRET": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-m", "benchmarks.compile_report", "--jobs", str(jobs_file),
                          "--json-out", str(out_file)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, f"AOT worker failed:\n{res.stderr[-6000:]}"
    return json.loads(out_file.read_text())


def sweep_jobs(picks) -> dict:
    """Compile jobs for entries of the spill audit (``benchmarks.compile_report.sweep_configs``,
    the default configuration of an op at one dtype and size): ``picks`` = [(label, cap,
    kernel names or None for all)] -> {"label|sm<cap>": job} for ``compile_in_subprocess``
    (a job without "kernels" compiles all of them)."""
    from benchmarks.compile_report import sweep_configs

    configs = sweep_configs()
    jobs = {}
    for label, cap, kernels in picks:
        module, args, kwargs = configs[label]
        job_id = f"{label}|sm{cap}"
        assert job_id not in jobs, f"{job_id} picked twice"
        jobs[job_id] = {"module": module, "args": args, "kwargs": kwargs, "cap": cap,
                        **({"kernels": list(kernels)} if kernels else {})}
    return jobs


def assert_compiled_clean(report: dict, what: str, *, cap: int = 90, wgmma: bool = False):
    """No error, no register spills, shared memory within the SM limit, and (``wgmma``)
    warpgroup MMA in the PTX and HGMMA in the SASS."""
    assert "error" not in report, f"{what}: {report['error']}"
    spills = (report["spill_store_bytes"], report["spill_load_bytes"])
    assert spills == (0, 0), f"{what}: spills {spills} B at {report['registers']} registers"
    assert report["shared_bytes"] <= MAX_SHARED[cap], f"{what}: needs {report['shared_bytes']} B shared"
    if wgmma:
        assert report["wgmma_in_ptx"], f"{what}: PTX has no wgmma"
        assert sass_mix(report, what)["HGMMA"] > 0, f"{what}: SASS has no HGMMA"


def sass_mix(report: dict, what: str) -> dict:
    """The report's SASS instruction counts; None (no nvdisasm beside ptxas) is a failure, not a
    skipped check: nvdisasm ships with the triton wheel (triton/backends/nvidia/bin)."""
    assert report["sass_mix"] is not None, (
        f"{what}: no SASS instruction mix: nvdisasm is missing (expected in the triton wheel's "
        "triton/backends/nvidia/bin), so the SASS checks cannot run")
    return report["sass_mix"]
