"""The compile report's default configurations: every Triton op compiles for sm_80 without
register spills (sm_90, with HGMMA checks, is covered op by op in the other AOT tests),
and the report renders."""
from __future__ import annotations

import pytest
from aot import assert_compiled_clean, compile_in_subprocess

from benchmarks.compile_report import DEFAULT_JOBS, to_markdown

JOBS = {f"{label}|80": {"module": m, "args": a, "kwargs": k, "cap": 80}
        for label, (m, a, k) in DEFAULT_JOBS.items()}


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return compile_in_subprocess(JOBS, tmp_path_factory.mktemp("aot80"))


@pytest.mark.parametrize("job", list(JOBS))
def test_default_configuration_compiles_for_sm80_without_spills(reports, job):
    kernels = reports[job]
    assert "error" not in kernels, kernels.get("error")
    for name, report in kernels.items():
        assert_compiled_clean(report, f"{job} {name}", cap=80)
        assert 0 < report["occupancy"] <= 1


def test_report_markdown_lists_every_kernel(reports):
    rows = [{"op": job.split("|")[0], "kernel": name, "target": "sm_80", **r}
            for job, kernels in reports.items() for name, r in kernels.items()]
    md = to_markdown({"commit": {"commit": "x"}, "versions": {"triton": "3.6.0"}, "rows": rows})
    assert md.count("\n| ") == len(rows) + 1  # header + one row per kernel
    assert "| attention causal hd128 bf16 | _attn_fwd_kernel | sm_80 |" in md
