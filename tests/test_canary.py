"""benchmarks/canary.py: the pre-benchmark launch of every non-default autotuning candidate,
and the exclusion of one that killed its process from the autotuners and the sweep."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import canary
from kernels._autotune import EXCLUDED_ENV, excluded_blocks, fastest

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


def test_smoke_launches_every_non_default_candidate(tmp_path):
    from kernels.attention import triton_attention as ta
    from kernels.decode import triton_decode as td
    from kernels.int4 import triton_int4 as ti

    state = canary.run(str(tmp_path / "canary.json"), smoke=True)
    want = sum(len(ta.candidate_blocks(d, torch.float16, backward=True, capability=(9, 0))) - 1 for d in (256, 128))
    want += sum(len(ti.candidate_blocks(m, torch.float16, capability=(9, 0))) - 1 for m in (1, 16))
    decode = td.candidate_blocks(128, torch.float16, 64, capability=(9, 0))[1:]
    assert any(b.pdl for b in decode)  # sm_90's programmatic dependent launch is among them
    want += len(decode)
    fwd = [b for d in (256, 128) for b in ta.candidate_blocks(d, torch.float16, capability=(9, 0))[1:]]
    bwd = [b for d in (256, 128) for b in ta.candidate_blocks(d, torch.float16, backward=True, capability=(9, 0))]
    want += len(fwd)
    assert state["complete"] and state["tries"] == 1 and len(state["candidates"]) == want
    # the Gluon forward and dK/dV candidates run too, in kernels._gluon_emu on the CPU
    gluon = {repr(b) for b in fwd + bwd if b.gluon or b.gluon_dkdv}
    assert len(gluon) == 13
    assert {c["blocks"] for c in state["candidates"]} >= gluon
    for c in state["candidates"]:
        assert c["status"] == "ok", c
    assert json.loads((tmp_path / "canary.json").read_text()) == state


def test_a_candidate_left_running_is_marked_crashed_and_skipped_everywhere(tmp_path, monkeypatch):
    """A try that died mid-launch left "running": the next try marks it crashed and settles
    the rest (a raised error is recorded, the process goes on); the autotuner then never
    launches it, with the reason, once the benchmark gets the state file."""
    launched = []

    def job(name, fail=False):
        def fn():
            launched.append(name)
            if fail:
                raise RuntimeError("cannot launch: out of shared memory")
        return "bench", name, fn

    monkeypatch.setattr(canary, "_attention_jobs", lambda *a: [job("killer"), job("ok1")])
    monkeypatch.setattr(canary, "_int4_jobs", lambda *a: [job("raises", fail=True), job("ok2")])
    monkeypatch.setattr(canary, "_decode_jobs", lambda *a: [])
    path = tmp_path / "canary.json"
    path.write_text(json.dumps({"tries": 1, "complete": False, "candidates": [
        {"label": "bench", "blocks": repr("killer"), "status": "running"}]}))
    state = canary.run(str(path), smoke=True)
    status = {c["blocks"]: c["status"] for c in state["candidates"]}
    assert status == {repr("killer"): "crashed", repr("ok1"): "ok", repr("raises"): "error", repr("ok2"): "ok"}
    assert launched == ["ok1", "raises", "ok2"] and state["tries"] == 2 and state["complete"]

    assert excluded_blocks() == {}  # without the variable
    monkeypatch.setenv(EXCLUDED_ENV, str(path))
    assert list(excluded_blocks()) == [repr("killer")]
    tuning = {}
    pick = fastest("k", ["killer", "ok1"], lambda b: launched.append(b), tuning,
                   timer=lambda fn: 1.0)
    assert pick == "ok1" and launched[-1] == "ok1" and "killer" not in launched[3:]
    assert tuning["k"]["times_ms"][0][2].startswith("excluded: the canary process died while it ran (try 1)")

    from benchmarks.sweep import _try
    row = _try({"blocks": repr("killer")}, lambda: pytest.fail("an excluded candidate was launched"))
    assert row["status"] == "excluded"


def test_a_hung_launch_is_marked_and_ends_the_try(tmp_path):
    """A launch still running after hang_s (a barrier that never completes) is marked hung,
    the process exits with HUNG_RC so the Makefile retries the rest, and the autotuners then
    exclude it; a candidate left "running" when the stage's time ran out is excluded too."""
    import subprocess
    import sys

    path = tmp_path / "canary.json"
    script = (
        "import time\n"
        "from benchmarks import canary\n"
        "canary._attention_jobs = lambda *a: [('bench', 'ok0', lambda: None), ('bench', 'sleeper', lambda: time.sleep(60))]\n"
        "canary._int4_jobs = lambda *a: []\n"
        "canary._decode_jobs = lambda *a: []\n"
        f"canary.run({str(path)!r}, smoke=True, hang_s=0.5)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50)
    assert proc.returncode == canary.HUNG_RC, proc.stderr[-2000:]
    state = json.loads(path.read_text())
    assert [(c["blocks"], c["status"]) for c in state["candidates"]] == [(repr("ok0"), "ok"), (repr("sleeper"), "hung")]
    assert "had not returned after 0.5 s" in state["candidates"][1]["why"]

    state["candidates"].append({"label": "bench", "blocks": repr("cut"), "status": "running"})
    path.write_text(json.dumps(state))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(EXCLUDED_ENV, str(path))
        got = excluded_blocks()
    assert sorted(got) == [repr("cut"), repr("sleeper")] and "time ran out" in got[repr("cut")]
