"""The benchmark runner end to end at a tiny size, and its results file."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pathlib

import numpy as np
import pytest

from benchmarks.results import summary_table, write_json_atomic
from benchmarks.suites.attention import AttentionSuite
from benchmarks.suites.common import add_peer_ratios
from benchmarks.timing import Timer


OTHER_SUITES = ("elementwise", "encoder_kernels", "decode", "int4", "encoders", "model")  # each tested in its own files
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_runner_writes_results_with_provenance(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.run", f"out_dir={tmp_path}",
           "bench.attention.seq_lens=[33]", "bench.attention.kv_heads=[1]",
           "bench.attention.causal=[true]", "bench.attention.head_dim=64",
           "bench.ceilings.copy_mb=8", "bench.ceilings.matmul_n=256",
           "+bench.first.attention={impl:[sdpa],direction:[fwd+bwd]}",  # run first, reported in place
           *(f"bench.{suite}.enabled=false" for suite in OTHER_SUITES)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1, files
    data = json.loads(files[0].read_text())
    for key in ("device", "commit", "versions", "config", "ceilings", "records"):
        assert key in data, key
    assert data["versions"]["torch"] and data["versions"]["jax"]
    assert data["complete"] is True  # rewritten after each suite; True once the last one ended
    assert data["ceilings"]["copy_gbps"] > 0 and data["ceilings"]["matmul_tflops"] > 0
    recs = {(r["framework"], r["impl"], r["config"]["direction"]): r for r in data["records"]}
    assert len(recs) == 12  # 2 directions x (3 torch + 3 jax impls)
    assert [(r["framework"], r["config"]["direction"]) for r in data["records"]][:2] == [
        ("torch", "fwd"), ("torch", "fwd")]  # the suite's own order, whatever ran first
    assert all(r["wall_s"] > 0 for r in data["records"])
    for key, r in recs.items():
        assert r["status"] == "ok", (key, r.get("reason"), r.get("max_error"))
        assert r["max_error"] <= r["tolerance"]
        assert r["median_ms"] > 0
    assert recs[("torch", "triton", "fwd")]["mode"] == "interpret"
    assert recs[("jax", "pallas", "fwd")]["mode"] == "interpret"
    assert "Interpret mode" in proc.stdout
    assert recs[("torch", "sdpa", "fwd")]["speedup_vs_peer"] == pytest.approx(1.0)
    assert "speedup_vs_peer" not in recs[("torch", "triton", "fwd")]  # interpret: no speed claims

    from benchmarks.report import render

    md = render([str(files[0])], str(tmp_path / "report"))
    text = open(md).read()
    assert "| attention | mqa4/1 b1 s33 d64 causal fwd | triton | interpret | ok |" in text
    assert "(modeled)" in text and "H100 SXM" in text  # chips not measured get modeled bounds
    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == [
        "cross-hardware.png", "roofline-0.png", "throughput-0.png"]
    assert "incomplete run" not in text

    from benchmarks.report import load, measured_table

    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps({**data, "complete": False}))
    assert "**incomplete run**" in measured_table(load(str(cut)))


def test_report_refuses_results_without_provenance(tmp_path):
    from benchmarks.report import load

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "x", "records": []}))
    with pytest.raises(ValueError, match=r"missing provenance field\(s\) \['created_utc', 'device'"):
        load(str(bad))


def test_wrong_kernel_is_reported_failed_not_timed(monkeypatch):
    """A kernel whose output is off is marked failed with its error, and never timed."""
    from omegaconf import OmegaConf

    from benchmarks import config
    from benchmarks.hardware import Device
    from benchmarks.suites import attention as suite_mod

    cfg = OmegaConf.structured(config.AttentionBenchConfig(
        seq_lens=[16], kv_heads=[1], causal=[True], directions=["fwd"], head_dim=32,
        torch_impls=["sdpa"], jax_impls=[]))
    real = suite_mod.torch_impl

    def broken(name, kind):
        fn, mode = real(name, kind)
        return (lambda q, k, v, causal: fn(q, k, v, causal) * 1.01), mode

    monkeypatch.setattr(suite_mod, "torch_impl", broken)
    timed = []
    suite = AttentionSuite(cfg, Device(kind="cpu", name="cpu"),
                           lambda *a, **k: timed.append(1) or Timer("cpu"))
    (case, fw, impl), = suite.entries()
    rec = suite.run(case, fw, impl)
    assert rec["status"] == "failed" and rec["max_error"] > rec["tolerance"]
    assert not timed
    add_peer_ratios([{**rec, "case": case.id, "framework": fw, "impl": impl, "suite": "attention"}],
                    AttentionSuite.peers)
    assert "failed" in summary_table([{**rec, "case": case.id, "framework": fw, "impl": impl,
                                       "suite": "attention"}])


def test_first_entries_run_before_the_rest():
    import dataclasses

    from benchmarks import run
    from benchmarks.hardware import Device

    @dataclasses.dataclass(frozen=True)
    class Case:
        n: int
        id = property(lambda self: f"n{self.n}")

    class Fake:
        name, peers, calls = "fake", {"torch": ("peer",)}, []

        def entries(self):
            for n in range(3):
                for impl in ("mine", "peer"):
                    yield Case(n), "torch", impl

        def run(self, case, framework, impl):
            self.calls.append((case.n, impl))
            return {"status": "ok", "median_ms": 1.0 if impl == "peer" else 0.5, "mode": "eager"}

    suite, device = Fake(), Device(kind="cpu", name="cpu")
    recs = run.run_all([suite], {}, device, None, {"fake": {"n": [2], "impl": ["mine", "peer"]}})
    assert suite.calls == [(2, "mine"), (2, "peer"), (0, "mine"), (0, "peer"), (1, "mine"), (1, "peer")]
    assert [(r["case"], r["impl"]) for r in recs] == [(f"n{n}", i) for n in range(3) for i in ("mine", "peer")]
    assert all(r["speedup_vs_peer"] == 2.0 for r in recs if r["impl"] == "mine")
    suite.calls.clear()
    recs = run.run_all([suite], {}, device, 0.0, {"fake": {"n": [1]}})  # deadline passed: all skipped
    assert suite.calls == [] and {r["status"] for r in recs} == {"skipped"}
    with pytest.raises(ValueError, match=r"bench.first.fake: unknown key 'm'"):
        run.run_all([suite], {}, device, None, {"fake": {"m": [1]}})
    with pytest.raises(ValueError, match=r"bench.first.fake.impl: no entry has \['gone'\]"):
        run.run_all([suite], {}, device, None, {"fake": {"impl": ["mine", "gone"]}})
    with pytest.raises(ValueError, match="unknown suite 'fak'"):
        run.run_all([suite], {}, device, None, {"fak": {"n": [1]}})


def test_results_write_is_atomic(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(str(path), {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(str(path), {"a": object.__new__(type("X", (), {"__str__": None}))})
    assert json.loads(path.read_text()) == {"a": 1}  # the old file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


def test_model_suite_checks_then_times_and_counts_flops():
    from omegaconf import OmegaConf

    from benchmarks import config
    from benchmarks.hardware import Device
    from benchmarks.suites.model import ModelSuite, flops_per_token
    from model.config import PRESETS

    cfg = OmegaConf.structured(config.ModelBenchConfig(
        seq_len=16, decode_batches=[2], decode_cache_len=64, modes=["forward", "train_step", "decode"],
        torch_impls=["reference"], jax_impls=["xla"]))
    suite = ModelSuite(cfg, Device(kind="cpu", name="cpu"),
                       lambda *a, **k: Timer("cpu", warmup=0, min_runs=1, max_runs=1, budget_s=0))
    recs = [(c, fw, i, suite.run(c, fw, i)) for c, fw, i in suite.entries()]
    assert len(recs) == 6
    assert [fw for _, fw, _, _ in recs] == ["torch"] * 3 + ["jax"] * 3  # torch rows before any JAX row
    for case, fw, impl, r in recs:
        assert r["status"] == "ok", (case.id, fw, impl, r)
        assert r["tokens_per_s"] > 0 and r["max_error"] <= r["tolerance"]
        assert ("tflops" in r) == (case.mode != "decode")
    # bf16: the references run on weights rounded to bf16, so only activation rounding remains
    # (sdpa, not triton: the Triton interpreter's bf16 dots are wrong)
    cfg16 = OmegaConf.merge(cfg, {"dtype": "bfloat16", "torch_impls": ["sdpa"], "jax_impls": ["xla"]})
    suite16 = ModelSuite(cfg16, Device(kind="cpu", name="cpu"), suite.timer_factory)
    for c, fw, i in suite16.entries():
        r = suite16.check(c, fw, i)[0]
        assert 0 < r["max_error"] <= r["tolerance"] / 4, (c.id, fw, i, r)
    # torchtitan's convention, written out for nano1 at 8k: 6 N + 12 L H D S per token
    c = PRESETS["nano1"]
    n_matmul = c.layers * (2 * c.width * c.heads * c.head_dim + 2 * c.width * c.kv_heads * c.head_dim
                           + 3 * c.width * c.mlp_dim) + c.vocab_size * c.width
    assert flops_per_token(c, 8192, train=True) == 6 * n_matmul + 12 * c.layers * c.heads * c.head_dim * 8192


def test_model_suite_interpreted_decode_rows_use_the_short_cache(monkeypatch):
    """interpret_decode_cache_len: the decode rows of impls in an interpreter (Triton / Pallas
    on this CPU) read the short cache, every other row the full one; on a GPU (nothing
    interpreted) no short case exists. The CPU preset has the torch.compile row and a 32k cache."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from benchmarks import config
    from benchmarks.hardware import Device
    from benchmarks.suites import model as model_suite
    from kernels import _platform

    cfg = OmegaConf.structured(config.ModelBenchConfig(
        decode_batches=[1], decode_cache_len=64, interpret_decode_cache_len=32, modes=["forward", "decode"],
        torch_impls=["reference", "compiled", "triton"], jax_impls=["xla", "pallas"]))
    suite = model_suite.ModelSuite(cfg, Device(kind="cpu", name="cpu"), None)
    assert _platform.configure_triton_interpret() and _platform.pallas_interpret_default()  # CPU
    rows = {(c.mode, c.seq, fw, i) for c, fw, i in suite.entries()}
    assert {(s, i) for m, s, _, i in rows if m == "decode"} == {
        (64, "reference"), (64, "compiled"), (64, "xla"), (32, "triton"), (32, "pallas")}
    assert {i for m, s, _, i in rows if m == "forward"} == {"reference", "compiled", "triton", "xla", "pallas"}
    monkeypatch.setattr(_platform, "configure_triton_interpret", lambda: False)  # as on a GPU
    monkeypatch.setattr(_platform, "pallas_interpret_default", lambda: False)
    assert {c.seq for c in suite.cases() if c.mode == "decode"} == {64}
    assert len(list(suite.entries())) == 10
    config.register()
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
        cpu = compose(config_name="benchmark", overrides=["bench=cpu"]).bench.model
    assert "compiled" in cpu.torch_impls and cpu.decode_cache_len == 32768 and cpu.decode_batches == [1, 16]


def test_decode_suite_paged_rows_check_then_time():
    """triton_paged / pallas_paged rows read the same cache through a shuffled block table:
    checked against the contiguous reference, then timed, with the contiguous rows' bytes."""
    from omegaconf import OmegaConf

    from benchmarks import config
    from benchmarks.hardware import Device
    from benchmarks.suites.decode import DecodeSuite

    cfg = OmegaConf.structured(config.DecodeBenchConfig(
        batches=[2], cache_lens=[128], heads=4, kv_heads=[2], head_dim=32, page_size=32,
        torch_impls=["triton", "triton_paged"], jax_impls=["pallas_paged"]))
    suite = DecodeSuite(cfg, Device(kind="cpu", name="cpu"),
                        lambda *a, **k: Timer("cpu", warmup=0, min_runs=1, max_runs=1, budget_s=0))
    recs = {impl: suite.run(c, fw, impl) for c, fw, impl in suite.entries()}
    assert sorted(recs) == ["pallas_paged", "triton", "triton_paged"]
    for impl, r in recs.items():
        assert r["status"] == "ok" and r["max_error"] <= r["tolerance"], (impl, r)
        assert r["mode"] == "interpret" and r["bytes"] == recs["triton"]["bytes"]
    k, _, table = suite._paged(next(iter(suite.entries()))[0])
    assert k.shape == (8, 32, 2, 32) and sorted(table.flatten().tolist()) == list(range(8))
    assert table.flatten().tolist() != list(range(8))  # shuffled: pages out of order


def test_decode_suite_tpu_rows_interpret_on_cpu_skip_on_gpu():
    """pallas_tpu / pallas_tpu_paged rows: on the CPU they run in TPU interpret mode (checked,
    then timed, labeled interpret) for the first ``tpu_interpret_cases`` cases and are skipped,
    saying why, after; on a GPU host they are skipped (they would time the simulator)."""
    from omegaconf import OmegaConf

    from benchmarks import config
    from benchmarks.hardware import Device
    from benchmarks.suites.common import Skip
    from benchmarks.suites.decode import DecodeSuite

    cfg = OmegaConf.structured(config.DecodeBenchConfig(
        batches=[2], cache_lens=[128], heads=4, kv_heads=[1, 2], head_dim=32, page_size=32,
        torch_impls=[], jax_impls=["pallas_tpu", "pallas_tpu_paged"], tpu_interpret_cases=1))
    timer = lambda *a, **k: Timer("cpu", warmup=0, min_runs=1, max_runs=1, budget_s=0)  # noqa: E731
    suite = DecodeSuite(cfg, Device(kind="cpu", name="cpu"), timer)
    entries = list(suite.entries())
    assert len(entries) == 4
    first = [e for e in entries if e[0].kv_heads == 1]
    for case, fw, impl in first:
        r = suite.run(case, fw, impl)
        assert r["status"] == "ok" and r["max_error"] <= r["tolerance"], (impl, r)
        assert r["mode"] == "interpret" and r["bytes"] == case.kv_bytes()
    for case, fw, impl in (e for e in entries if e[0].kv_heads == 2):
        with pytest.raises(Skip, match="tpu_interpret_cases"):
            suite.run(case, fw, impl)
    gpu = DecodeSuite(cfg, Device(kind="cuda", name="NVIDIA H100"), timer)
    with pytest.raises(Skip, match="TPU kernel"):
        gpu._jax_fn("pallas_tpu")


def test_report_models_bytes_only_rows_as_memory_bound():
    """Decode records carry bytes only: the modeled table gives them bytes / each chip's HBM
    bandwidth (labeled memory), beside attention's max(compute, memory)."""
    from benchmarks.hardware import hardware_table
    from benchmarks.report import modeled_table

    recs = [{"suite": "decode", "case": "mqa8/1 b1 T2048 d128", "bytes": 3e9, "status": "ok"},
            {"suite": "attention", "case": "mqa s64", "flops": 1e15, "bytes": 1e6, "status": "ok"}]
    table = modeled_table([{"device": {"name": "test cpu"}, "records": recs}])
    rows = {line.split(" | ")[1]: line for line in table.splitlines()[2:]}
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    v5p = hardware_table()["tpu_v5p"]
    col = header.index(f"{v5p['name']} µs (modeled)")
    dec = [c.strip() for c in rows["mqa8/1 b1 T2048 d128"].strip("|").split("|")]
    att = [c.strip() for c in rows["mqa s64"].strip("|").split("|")]
    assert dec[2] == "memory (bytes / HBM)" and att[2] == "roofline (FLOPs, bytes)"
    assert float(dec[col]) == pytest.approx(3e9 / (v5p["hbm_gb_per_s"] * 1e9) * 1e6, rel=1e-3)
    assert float(att[col]) == pytest.approx(1e15 / (v5p["bf16_tflops"] * 1e12) * 1e6, rel=1e-3)
    # a file measured on v5p as jax names it ("TPU v5") leaves v5p out of the modeled chips
    measured = modeled_table([{"device": {"name": "TPU v5"}, "records": recs}])
    assert f"{v5p['name']} µs (modeled)" not in measured and "H100 SXM µs (modeled)" in measured


def test_report_renders_rows_of_every_suite(tmp_path):
    """The report's plots take each suite's rows as they come (only attention sweeps lengths)."""
    from benchmarks.report import render

    def row(suite, case, config, **kw):
        return {"suite": suite, "case": case, "framework": "torch", "impl": "reference", "status": "ok",
                "mode": "eager", "median_ms": 1.0, "config": config, **kw}

    payload = {
        "schema": "gemini-kernels-bench/1", "created_utc": "2026-01-01T00:00:00+00:00",
        "device": {"name": "test cpu", "kind": "cpu"}, "commit": {"commit": "abc", "dirty": False},
        "versions": {"torch": "x"}, "config": {}, "ceilings": {"copy_gbps": 10.0, "matmul_tflops": 1.0,
                                                             "matmul_dtype": "float32"},
        "records": [
            row("attention", "mqa s64", {"seq": 64, "kv_heads": 1, "causal": True, "direction": "fwd"},
                tflops=0.1, flops=1e9, bytes=1e6, frac_measured_peak=0.1),
            row("elementwise", "rms_norm 256x2048", {"op": "rms_norm"}, gbps=5.0, bytes=1e6,
                frac_measured_bw=0.5),
            row("model", "tiny forward", {"mode": "forward"}, tflops=0.01, flops=1e8, tokens_per_s=1e4),
        ]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(payload))
    text = open(render([str(path)], str(tmp_path / "out"))).read()
    assert "| elementwise | rms_norm 256x2048 | reference |" in text and "1e+04 tok/s" in text


@pytest.mark.parametrize("preset", sorted(p.stem for p in (pathlib.Path(ROOT) / "conf" / "bench").glob("*.yaml")
                                          if p.stem != "bench_schema"),
                         ids=lambda p: f"bench={p}")  # an id "gpu" would read as the gpu mark
def test_every_bench_preset_composes_and_its_first_rows_exist(preset):
    """A preset's fields match the suites' schemas and each bench.first value names a real
    entry (a GPU run's goal rows must not silently select nothing)."""
    from hydra import compose, initialize_config_dir

    from benchmarks import run
    from benchmarks.hardware import Device

    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
        cfg = compose(config_name="benchmark", overrides=[f"bench={preset}"])
    built, _ = run.build_suites(cfg.bench, Device(kind="cpu", name="cpu"), None, 0)
    assert built


def test_sweep_smoke_writes_a_results_file(tmp_path):
    """benchmarks.sweep's code path on the CPU (interpreter, tiny shapes): every int4 and
    decode candidate checked and recorded, the file carries the provenance of a results file."""
    from benchmarks import sweep

    path = sweep.main(["--smoke", "--ops", "int4,decode", "--out-dir", str(tmp_path)])
    data = json.load(open(path))
    assert data["complete"] and data["commit"] and data["device"]["kind"] == "cpu"
    rows = data["records"]
    assert rows and all(r["status"] == "ok" and r["err"] < 1e-2 for r in rows)
    # the default is among each shape's candidates: 4 int4 shapes, 2 decode batches
    assert sum(r["default"] for r in rows if r["op"] == "int4") == 4
    assert sum(r["default"] for r in rows if r["op"] == "decode") == 2
    from benchmarks.report import sweep_table

    table = sweep_table(path)
    assert table.count("| int4 |") + table.count("| decode |") == len(rows)
    assert "cut at its deadline" not in table and " splits` |" in table


def test_sweep_smoke_tpu_ops_enumerate_the_candidates(tmp_path):
    """benchmarks.sweep's TPU section on the CPU (TPU interpret mode, tiny shapes): the chip's
    candidate lists enumerated (the table entry first and marked default), attention's first
    two candidates forward and forward+backward and every decode candidate checked; without
    --smoke the tpu_* ops refuse a non-TPU backend."""
    import jax

    from benchmarks import sweep
    from kernels.attention.pallas_tpu import candidate_blocks
    from kernels.decode.pallas_tpu_decode import decode_candidate_blocks

    path = sweep.main(["--smoke", "--ops", "tpu_attention,tpu_decode", "--out-dir", str(tmp_path)])
    data = json.load(open(path))
    assert data["complete"] and data["commit"]
    rows = data["records"]
    att = [r for r in rows if r["op"] == "tpu_attention"]
    dec = [r for r in rows if r["op"] == "tpu_decode"]
    kind = jax.devices()[0].device_kind
    assert all(r["status"] == "ok" and r.get("err", r.get("err_vs_default")) < 1e-3 for r in rows), rows
    assert [r["pass_"] for r in att] == ["fwd", "fwd+bwd"] * 2
    assert {r["candidates"] for r in att} == {len(candidate_blocks(kind))}
    assert [r["blocks"] for r in att[::2]] == [repr(b) for b in candidate_blocks(kind)[:2]]
    assert [r["blocks"] for r in dec] == [repr(b) for b in decode_candidate_blocks(kind)]
    assert [r["default"] for r in dec] == [True] + [False] * (len(dec) - 1)
    assert [r["default"] for r in att] == [True, True, False, False]
    from benchmarks.report import sweep_table

    table = sweep_table(path)
    assert table.count("| tpu_attention |") + table.count("| tpu_decode |") == len(rows)
    with pytest.raises(SystemExit, match="TPU backend"):
        sweep.main(["--ops", "tpu_decode", "--out-dir", str(tmp_path)])


def test_profile_model_smoke_groups_the_step(tmp_path):
    """benchmarks.profile_model's code path on the CPU (tiny model, CPU op times)."""
    from benchmarks import profile_model

    path = profile_model.main(["--smoke", "--out-dir", str(tmp_path)])
    data = json.load(open(path))
    prof = data["profiles"]["reference"]
    assert data["commit"] and prof["total_kernel_ms"] > 0 and prof["kernels"]
    assert abs(sum(prof["families"].values()) - prof["total_kernel_ms"]) < 1e-6 * prof["total_kernel_ms"] + 1e-9
    assert profile_model.family("triton_per_fused_rms_norm_0") == "norms"
    assert profile_model.family("_attn_bwd_dkdv_kernel") == "attention bwd"
    from benchmarks.report import profile_table

    assert "**reference**" in profile_table(path)


def test_first_entries_a_share_ran_out_on_run_before_the_rest():
    """A slow suite's goal rows are deferred, not dropped: they run (with all the time left)
    before any suite's sweep rows."""
    import dataclasses
    import time

    from benchmarks import run
    from benchmarks.hardware import Device

    @dataclasses.dataclass(frozen=True)
    class Case:
        n: int
        id = property(lambda self: f"n{self.n}")

    class Fake:
        peers, calls = {}, []

        def __init__(self, name, first_n, rest_n, sleep):
            self.name, self.first_n, self.rest_n, self.sleep = name, first_n, rest_n, sleep

        def entries(self):
            for n in range(self.first_n + self.rest_n):
                yield Case(n), "torch", "mine"

        def run(self, case, framework, impl):
            Fake.calls.append((self.name, case.n))
            time.sleep(self.sleep)
            return {"status": "ok", "median_ms": 1.0, "mode": "eager"}

    slow, quick = Fake("slow", 2, 0, 0.4), Fake("quick", 1, 3, 0.0)  # slow's share: 2/3 of 0.5 s < 0.4 s
    first = {"slow": {"n": [0, 1]}, "quick": {"n": [0]}}
    recs = run.run_all([slow, quick], {}, Device(kind="cpu", name="cpu"), time.monotonic() + 0.5, first)
    assert Fake.calls[:3] == [("slow", 0), ("quick", 0), ("slow", 1)]  # slow's 2nd row deferred, then run
    assert [r["status"] for r in recs[:3]] == ["ok", "ok", "ok"]
    assert {r["status"] for r in recs[3:]} == {"skipped"}  # the sweep rows found the deadline passed


def test_elementwise_suite_checks_on_the_device_tensors(monkeypatch):
    """The elementwise suite's torch rows: inputs and fp32 reference made once per case, a
    correct impl passes and is timed, a 1 % off one is failed and never timed."""
    from benchmarks.hardware import Device
    from benchmarks.suites import elementwise as ew

    cfg = ew.ElementwiseBenchConfig(ops=["rms_norm"], shapes=[[33, 96]], directions=["fwd+bwd"],
                                    torch_impls=["reference"], jax_impls=["xla"])
    timed = []
    suite = ew.ElementwiseSuite(cfg, Device(kind="cpu", name="cpu"),
                                lambda *a, **k: timed.append(1) or Timer("cpu", warmup=0, min_runs=1,
                                                                        max_runs=1, budget_s=0.0))
    (case, fw, impl), (_, jfw, jimpl) = suite.entries()
    assert suite.run(case, fw, impl)["status"] == "ok" and suite.run(case, jfw, jimpl)["status"] == "ok"
    assert len(timed) == 2
    real = ew._call

    def off(ops, op, impl):
        fn = real(ops, op, impl)
        return lambda *a: fn(*a) * 1.01

    monkeypatch.setattr(ew, "_call", off)  # the case's reference stays the one made above
    rec = suite.run(case, fw, impl)
    assert rec["status"] == "failed" and rec["max_error"] > rec["tolerance"] and len(timed) == 2


def test_ncu_targets_smoke_launches_every_target():
    """benchmarks.ncu_targets' calls on the CPU (interpreter, tiny shapes)."""
    from benchmarks import ncu_targets

    assert ncu_targets.main(["--smoke"]) == list(ncu_targets.TARGETS)


def test_latest_results_takes_the_newest_file_of_each_device(tmp_path):
    from benchmarks.report import latest_results

    def put(name, schema, device, stamp):
        (tmp_path / name).write_text(json.dumps({"schema": schema, "device": {"name": device},
                                                 "created_utc": stamp}))
        return str(tmp_path / name)

    put("a.json", "gemini-kernels-bench/1", "cpu", "2026-01-01")
    b = put("b.json", "gemini-kernels-bench/1", "cpu", "2026-01-02")
    g = put("g.json", "gemini-kernels-bench/1", "H200", "2026-01-01T05")
    put("s.json", "gemini-kernels-sweep/1", "H200", "2026-01-03")  # not a benchmark results file
    assert latest_results(str(tmp_path)) == [g, b]
    assert latest_results(str(tmp_path), "gemini-kernels-sweep") == [str(tmp_path / "s.json")]


def test_same_size_copy_interpolates_the_copy_curve():
    """Log-log between measured points, the floor below the smallest, the large copy's
    bandwidth added past the largest; the CPU path writes no curve (the timer is a stand-in)."""
    import torch

    from benchmarks.hardware import measure_copy_curve, same_size_copy_s

    curve = [{"bytes": 8, "seconds": 4e-6}, {"bytes": 2**20, "seconds": 5e-6}, {"bytes": 2**22, "seconds": 8e-6}]
    assert same_size_copy_s(curve, 1, 1000.0) == 4e-6
    assert same_size_copy_s(curve, 2**20, 1000.0) == pytest.approx(5e-6)
    assert same_size_copy_s(curve, 2**21, 1000.0) == pytest.approx((5e-6 * 8e-6) ** 0.5)  # log-log midpoint
    assert same_size_copy_s(curve, 2**22 + 10**6, 1000.0) == pytest.approx(8e-6 + 1e-6)
    src = torch.arange(2**18, dtype=torch.float32)  # 1 MiB: the 1 MiB copy (half read) fits, 4 MiB does not
    dst = torch.zeros_like(src)
    timed = []

    def fake_timer(fn):
        fn()
        timed.append(1)
        return type("T", (), {"median_s": 1e-6 * len(timed), "to_dict": lambda self: {}})()

    pts = measure_copy_curve(dst, src, fake_timer)
    assert [p["bytes"] for p in pts] == [8, 2**20]
    assert torch.equal(dst[: 2**17], src[: 2**17]) and not dst[2**17:].any()


def test_graph_timed_rows_get_the_same_size_copy_fraction():
    """run_suite adds frac_same_size_copy to rows timed by graph replay when the ceilings carry
    a copy curve, and only to those."""
    from benchmarks.hardware import Device
    from benchmarks.run import run_suite

    class Case:
        id = "c"

    class FakeSuite:
        name = "fake"

        def __init__(self, method):
            self.method = method

        def entries(self):
            return [(Case(), "torch", "triton")]

        def run(self, case, framework, impl):
            return {"status": "ok", "mode": "compiled", "bytes": 2**21, "gbps": 2**21 / 4e-6 / 1e9,
                    "timing": {"median_s": 4e-6, "method": self.method}}

    ceilings = {"copy_gbps": 4000.0, "matmul_tflops": 800.0,
                "copy_curve": [{"bytes": 8, "seconds": 3e-6}, {"bytes": 2**20, "seconds": 4e-6},
                               {"bytes": 2**22, "seconds": 5e-6}]}
    dev = Device(kind="cuda", name="gpu")
    [graphed] = run_suite(FakeSuite("cuda-graph replay, cuda-events, L2 flushed by a read"), ceilings, dev)
    [eager] = run_suite(FakeSuite("cuda-events, L2 flushed by a read"), ceilings, dev)
    assert graphed["same_size_copy_s"] == pytest.approx((4e-6 * 5e-6) ** 0.5)  # 2 MiB: log-log midpoint
    assert graphed["frac_same_size_copy"] == pytest.approx(graphed["same_size_copy_s"] / 4e-6)
    assert "frac_same_size_copy" not in eager and "frac_measured_bw" in eager


def test_int4_suite_autotune_row_records_its_pick():
    """The triton-autotune row is checked, timed, and carries its problem class's pick and
    every candidate's time."""
    from omegaconf import OmegaConf

    from benchmarks import config
    from benchmarks.hardware import Device
    from benchmarks.suites.int4 import Int4Suite
    from kernels.int4 import triton_autotune

    triton_autotune.TUNING.clear()
    cfg = OmegaConf.structured(config.Int4BenchConfig(rows=[2], shapes=[[256, 64]], dtype="float16",
                                                      torch_impls=["triton-autotune"], jax_impls=[]))
    suite = Int4Suite(cfg, Device(kind="cpu", name="cpu"),
                      lambda *a, **k: Timer("cpu", warmup=0, min_runs=1, max_runs=1, budget_s=0))
    [(case, fw, impl)] = suite.entries()
    rec = suite.run(case, fw, impl)
    assert rec["status"] == "ok" and rec["max_error"] <= rec["tolerance"], rec
    [entry] = rec["autotune"]
    assert len(entry["candidates_ms"]) == 2 and "256, 64, 128" in entry["problem"]


class _SteadyTimer(Timer):
    """A CPU timer that runs ``steady`` as the CUDA one would (every call once, then times)."""

    def __init__(self):
        super().__init__("cpu", warmup=0, min_runs=1, max_runs=1, budget_s=0)
        self.seen = []

    def steady(self, fns):
        self.seen.append([fn() for fn in fns])
        return self(lambda: [fn() for fn in fns])


def test_steady_rows_run_their_op_over_distinct_inputs_with_peer_ratios():
    """steady_calls: the decode and int4 suites time each (non-interpreted) torch row's call
    over copies of its cache / weights (equal outputs), record per-call time and GB/s, get a
    steady peer ratio, and the report lists them."""
    import torch
    from omegaconf import OmegaConf

    from benchmarks import config
    from benchmarks.hardware import Device
    from benchmarks.report import measured_table
    from benchmarks.suites.common import add_peer_ratios
    from benchmarks.suites.decode import DecodeSuite
    from benchmarks.suites.int4 import Int4Suite

    timers = []

    def factory(*a, **k):
        timers.append(_SteadyTimer())
        return timers[-1]

    cpu = Device(kind="cpu", name="cpu")
    dec = DecodeSuite(OmegaConf.structured(config.DecodeBenchConfig(
        batches=[1], cache_lens=[64], heads=4, kv_heads=[1], head_dim=32, steady_calls=3,
        torch_impls=["sdpa", "reference"], jax_impls=[])), cpu, factory)
    i4 = Int4Suite(OmegaConf.structured(config.Int4BenchConfig(
        rows=[1], shapes=[[128, 32]], steady_calls=3, torch_impls=["matmul", "reference"], jax_impls=[])),
        cpu, factory)
    recs = []
    for suite in (dec, i4):
        mine = []
        for case, fw, impl in suite.entries():
            timers.clear()
            rec = {"suite": suite.name, "case": case.id, "framework": fw, "impl": impl, **suite.run(case, fw, impl)}
            [outs] = timers[0].seen
            assert len(outs) == 3 and all(torch.equal(o, outs[0]) for o in outs), impl
            assert rec["steady"]["calls"] == 3 and rec["steady"]["gbps"] > 0
            mine.append(rec)
        add_peer_ratios(mine, suite.peers)
        recs += mine
    assert all("speedup_vs_peer" in r["steady"] for r in recs)
    md = measured_table({"_path": "x.json", "created_utc": "t", "device": {"name": "cpu"}, "versions": {},
                         "commit": {}, "ceilings": {"copy_gbps": 1.0, "matmul_dtype": "f32", "matmul_tflops": 1.0},
                         "records": recs})
    assert "Steady state" in md and md.count("| int4 |") == 4  # each row in both tables


def test_steady_jax_cancels_the_dispatch_and_orders_the_calls():
    """Timer.steady_jax: per call = (T(n) - T(n // 2)) / (n - n // 2) of jitted programs that
    run the calls in order over distinct inputs. A call that takes 20 ms on the host (a
    callback) reads about 20 ms whatever the dispatch; a torch timer or one input set: None."""
    import time

    import jax
    import jax.numpy as jnp

    seen = []

    def slow(a):
        seen.append(float(a[0]))
        time.sleep(0.02)
        return a

    def fn(x):
        return jax.pure_callback(slow, jax.ShapeDtypeStruct(x.shape, x.dtype), x) + 1.0

    timer = Timer("cpu", warmup=1, min_runs=3, max_runs=3, budget_s=0)
    sets = [(jnp.full((4,), float(i)),) for i in range(4)]
    t = timer.steady_jax(fn, sets)
    assert 0.015 < t.median_s < 0.1 and t.runs == 3 and "4 back-to-back calls" in t.method
    assert seen[-6:] == [0.0, 1.0, 2.0, 3.0, 0.0, 1.0]  # the last run: 4 calls in order, then 2
    assert timer.steady_jax(fn, sets[:1]) is None
    assert Timer("cuda", flush_l2_mb=0).steady_jax(fn, sets) is None


class _SteadyJaxTimer(Timer):
    """A CPU timer whose ``steady_jax`` also records each input set's output."""

    def __init__(self):
        super().__init__("cpu", warmup=0, min_runs=1, max_runs=1, budget_s=0)
        self.seen = []

    def steady_jax(self, fn, arg_sets):
        self.seen.append([np.asarray(jax_tree_first(fn(*a))) for a in arg_sets])
        return super().steady_jax(fn, arg_sets)


def jax_tree_first(x):
    import jax

    return jax.tree_util.tree_leaves(x)[0]


def test_jax_rows_get_steady_records_over_distinct_inputs():
    """steady_calls: the decode, int4 and elementwise suites time each compiled JAX row's call
    over copies of its inputs in one jitted program (equal outputs), recording per-call time
    and GB/s, or a note when the difference is within the wall clock's noise."""
    from omegaconf import OmegaConf

    from benchmarks import config
    from benchmarks.hardware import Device
    from benchmarks.suites.decode import DecodeSuite
    from benchmarks.suites.elementwise import ElementwiseBenchConfig, ElementwiseSuite
    from benchmarks.suites.int4 import Int4Suite

    timers = []

    def factory(*a, **k):
        timers.append(_SteadyJaxTimer())
        return timers[-1]

    cpu = Device(kind="cpu", name="cpu")
    suites = [
        DecodeSuite(OmegaConf.structured(config.DecodeBenchConfig(
            batches=[1], cache_lens=[64], heads=4, kv_heads=[1], head_dim=32, steady_calls=3,
            torch_impls=[], jax_impls=["xla"])), cpu, factory),
        Int4Suite(OmegaConf.structured(config.Int4BenchConfig(
            rows=[1], shapes=[[128, 32]], steady_calls=3, torch_impls=[], jax_impls=["matmul"])), cpu, factory),
        ElementwiseSuite(OmegaConf.structured(ElementwiseBenchConfig(
            ops=["rms_norm"], shapes=[[64, 256]], directions=["fwd+bwd"], steady_calls=3,
            torch_impls=[], jax_impls=["xla"])), cpu, factory),
    ]
    for suite in suites:
        [(case, fw, impl)] = list(suite.entries())
        timers.clear()
        rec = suite.run(case, fw, impl)
        assert rec["status"] == "ok", rec
        [outs] = timers[0].seen
        assert len(outs) == 3 and all(np.array_equal(o, outs[0]) for o in outs), suite.name
        st = rec["steady"]
        assert st["calls"] == 3 and (st.get("gbps", 0) > 0 or "not resolved" in st.get("note", "")), st


def test_suite_weights_scale_the_deadline_shares():
    """bench.weights: a suite's entries count that many times in the shares, so a heavy suite
    run last keeps its time (schedule.share_end), and run_all passes the weights through."""
    import dataclasses
    import time

    from benchmarks import run, schedule
    from benchmarks.hardware import Device

    assert schedule.share_end(0.0, 100.0, [10, 2], 0) == pytest.approx(100 * 10 / 12)
    assert schedule.share_end(0.0, 100.0, [10, 2 * 15], 0) == pytest.approx(100 * 10 / 40)

    @dataclasses.dataclass(frozen=True)
    class Case:
        n: int
        id = property(lambda self: f"n{self.n}")

    calls = []

    class Fake:
        peers = {}

        def __init__(self, name, n, sleep):
            self.name, self.n, self.sleep = name, n, sleep

        def entries(self):
            return [(Case(i), "torch", "mine") for i in range(self.n)]

        def run(self, case, framework, impl):
            calls.append(self.name)
            time.sleep(self.sleep)
            return {"status": "ok", "median_ms": 1.0, "mode": "eager"}

    # light: 4 rows of 0.25 s, then heavy's 1 row. Unweighted, light's share is 4/5 of 1.25 s:
    # all 4 rows start in it. With heavy's entries counted 4 times, light's share is 1/2: its
    # 4th row is deferred behind heavy's (and still runs, with the time left)
    first = {"light": {"n": [0, 1, 2, 3]}, "heavy": {"n": [0]}}
    for weights, order in (({}, ["light"] * 4 + ["heavy"]), ({"heavy": 4}, ["light"] * 3 + ["heavy", "light"])):
        calls.clear()
        run.run_all([Fake("light", 4, 0.25), Fake("heavy", 1, 0.0)], {}, Device(kind="cpu", name="cpu"),
                    time.monotonic() + 1.25, first, weights=weights)
        assert calls == order, (weights, calls)


def test_model_suite_graph_row_plumbing(monkeypatch):
    """train_graph: the train-step row also carries the step's graph timing (here a CPU
    stand-in for the capture), its TFLOP/s and MFU; the eager timing stays; the report lists it;
    a failing capture path is recorded, not fatal."""
    import dataclasses

    import torch
    from omegaconf import OmegaConf

    from benchmarks import config
    from benchmarks.hardware import Device
    from benchmarks.report import measured_table
    from benchmarks.run import run_suite
    from benchmarks.suites import model as model_suite

    cfg = OmegaConf.structured(config.ModelBenchConfig(seq_len=16, modes=["train_step"], torch_impls=["reference"],
                                                       jax_impls=[], train_graph=True))
    timer = lambda *a, **k: Timer("cpu", warmup=0, min_runs=1, max_runs=1, budget_s=0)  # noqa: E731
    suite = model_suite.ModelSuite(cfg, Device(kind="cpu", name="cpu"), timer)
    real_adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, capturable=False, **k: real_adamw(*a, **k))
    monkeypatch.setattr(model_suite.ModelSuite, "_graphed", lambda self, *a: True)
    steps = []

    def fake_capture(self, framework, step):
        steps.append(step())  # the capturable step runs (targets unchecked)
        t = timer()(step)
        return dataclasses.replace(t, method="cuda-graph replay, cuda-events, L2 flushed by a read")

    monkeypatch.setattr(model_suite.ModelSuite, "_graph_timing", fake_capture)
    [rec] = run_suite(suite, {"matmul_tflops": 1.0, "copy_gbps": 1.0}, Device(kind="cpu", name="cpu"))
    assert rec["status"] == "ok" and steps and torch.isfinite(steps[0])
    g = rec["graph"]
    assert g["captured"] and g["tflops"] > 0 and g["frac_measured_peak"] == g["tflops"] and "median_ms" in rec
    md = measured_table({"_path": "x.json", "created_utc": "t", "device": {"name": "cpu"}, "versions": {},
                         "commit": {}, "ceilings": {"copy_gbps": 1.0, "matmul_dtype": "f32", "matmul_tflops": 1.0},
                         "records": [rec]})
    assert "Train step as one CUDA graph" in md

    def broken(self, framework, step):
        raise RuntimeError("capture went wrong")

    monkeypatch.setattr(model_suite.ModelSuite, "_graph_timing", broken)
    [rec] = run_suite(suite, {"matmul_tflops": 1.0, "copy_gbps": 1.0}, Device(kind="cpu", name="cpu"))
    assert rec["status"] == "ok" and rec["graph"] == {"error": "RuntimeError: capture went wrong"}


def test_goals_read_each_issue_goal_from_a_results_file():
    """benchmarks.goals: the committed H200 file's rows against the issues' goals (the numbers
    the README quotes), and goals met and unmet on made-up rows (steady and graph times
    count where better; a goal without rows reads not measured)."""
    from benchmarks import goals
    from kernels.attention.triton_attention import TritonAttentionBlocks

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "results", "nvidia-h200-20261126T213458Z.json")
    with open(path) as f:
        h200 = {g["goal"]: g for g in goals.goals(json.load(f))}
    row = h200["#2 attention fwd MQA causal hd128 bf16 s8192: ≥ 550 TFLOP/s and ≥ 1.1× best SDPA"]
    assert row["met"] is False and "triton 376 TFLOP/s" in row["measured"] and "sdpa-cudnn 566" in row["measured"]
    assert "35 % MFU" in h200["#5 nano1 8k bf16 train step: ≥ 50 % MFU (measured peak) and faster than SDPA"]["measured"]

    def rec(suite, impl, config, **kw):
        return {"suite": suite, "impl": impl, "framework": "torch", "status": "ok", "mode": "compiled",
                "config": config, "case": kw.pop("case", "c"), **kw}
    att = dict(seq=8192, kv_heads=1, head_dim=128, causal=True, direction="fwd", dtype="bfloat16")
    dec = dict(cache_len=32768, kv_heads=1, head_dim=128, batch=16, dtype="bfloat16")
    nano = dict(model="nano1", mode="train_step")
    records = [rec("attention", "triton-autotune", att, tflops=640.0), rec("attention", "sdpa-cudnn", att, tflops=560.0),
               rec("decode", "triton", dec, median_ms=1.0, frac_measured_bw=0.7,
                   steady={"median_ms": 0.8, "frac_measured_bw": 0.88}),
               rec("model", "triton", nano, median_ms=400.0, frac_measured_peak=0.4,
                   graph={"median_ms": 300.0, "frac_measured_peak": 0.52},
                   autotune=[{"problem": "(8, 1, 256, 'backward')", "pick": repr(TritonAttentionBlocks(
                       32, 128, 8, 2, dkdv_passes=2, gluon_dkdv=True, dq_atomic=True))},
                             {"problem": "(8, 1, 256)", "pick": repr(TritonAttentionBlocks(128, 64, 4, 2, gluon=3))}]),
               rec("model", "sdpa", nano, median_ms=330.0, frac_measured_peak=0.45)]
    got = {g["goal"].split(":")[0]: g for g in goals.goals({"records": records})}
    assert got["#2 attention fwd MQA causal hd128 bf16 s8192"]["met"] is True
    assert got["#2 attention fwd MQA causal hd128 bf16 s16384"]["measured"] == "not measured"
    assert got["#3 decode MQA hd128 bf16 32k cache, batch 16"]["met"] is True  # the steady time counts
    assert "88 % of copy (steady)" in got["#3 decode MQA hd128 bf16 32k cache, batch 16"]["measured"]
    five = got["#5 nano1 8k bf16 train step"]
    assert five["met"] is True and "52 % MFU, 300 ms (graph)" in five["measured"]
    # which attention tiles the tuner picked, forward and backward
    assert "picked bwd 32x128/8w/2st dq_atomic gluon_dkdv two-pass, fwd 128x64/4w/2st gluon=3" in five["measured"]
    records[-1]["median_ms"] = 250.0  # sdpa faster: not met, however high the MFU
    assert {g["goal"].split(":")[0]: g for g in goals.goals({"records": records})}["#5 nano1 8k bf16 train step"]["met"] is False
    md = goals.table({"records": records, "device": {"name": "X"}, "created_utc": "t"}, "f.json")
    assert md.count("| yes |") >= 2 and "| not measured | – |" in md
    # a graph whose capture failed was timed eagerly: neither its time nor its MFU is a graph's
    records[-1]["median_ms"] = 330.0
    records[-2]["graph"] |= {"captured": False}
    five = {g["goal"].split(":")[0]: g for g in goals.goals({"records": records})}["#5 nano1 8k bf16 train step"]
    assert five["met"] is False and "40 % MFU, 400 ms (per call)" in five["measured"]
    # a peer row that ran out of memory is named; the fastest sdpa row that ran is the peer
    records += [dict(rec("model", "sdpa-fused-loss", nano, median_ms=500.0), status="ok"),
                {"suite": "model", "impl": "sdpa", "status": "error", "config": nano, "framework": "torch",
                 "reason": "OutOfMemoryError: CUDA out of memory. Tried to allocate 7.81 GiB"}]
    records[-3]["status"] = "skipped"  # the ok sdpa row above: here it did not run
    five = {g["goal"].split(":")[0]: g for g in goals.goals({"records": records})}["#5 nano1 8k bf16 train step"]
    assert "sdpa-fused-loss 500 ms (per call)" in five["measured"] and "sdpa OutOfMemoryError" in five["measured"]


def test_gpu_test_stage_runs_breadth_first_and_counts_what_it_never_reached(tmp_path, monkeypatch):
    """make bench-gpu's test stage: every test function's first case before any second
    (tests/conftest.breadth_first), the collected ids recorded, and benchmarks.goals --tests
    --collected counting the cases and functions a stopped stage never ran (from the committed
    H200 log: 79 cases ran, as its log's summary says)."""
    from types import SimpleNamespace

    import conftest
    from benchmarks import goals

    items = [SimpleNamespace(nodeid=f"tests/{m}.py::{f}[{c}]", originalname=f, name=f"{f}[{c}]")
             for m, f, n in (("a", "t1", 3), ("a", "t2", 1), ("b", "t1", 2)) for c in range(n)]
    order = [i.nodeid for i in conftest.breadth_first(items)]
    assert order == ["tests/a.py::t1[0]", "tests/a.py::t2[0]", "tests/b.py::t1[0]",
                     "tests/a.py::t1[1]", "tests/b.py::t1[1]", "tests/a.py::t1[2]"]
    path = tmp_path / "collected.txt"
    monkeypatch.setenv("KERNELS_GPU_TESTS_COLLECTED", str(path))
    xml = "benchmarks/results/gpu-logs/gpu-tests-20261126T215208Z.xml"
    ran = ["tests/test_attention_gpu.py::test_triton_on_gpu[gqa-333x1025-d64-torch.float16]"]
    conftest._record_collected(ran + ["tests/test_x.py::test_never[1]", "tests/test_x.py::test_never[2]"])
    line = goals.gpu_tests(xml, str(path))
    assert line.startswith(f"GPU tests ({xml}): 79 ran: 75 passed, 4 failed, 0 errors, 0 skipped; ") and "3 collected, 2 not run" in line
    assert line.endswith("functions with no case run: test_never")
    out = goals.main(["benchmarks/results/nvidia-h200-20261126T215208Z.json", "--tests", xml,
                      "--collected", str(path)])
    assert out.splitlines()[-1] == line
    assert "GPU tests: no summary (FileNotFoundError" in goals.main(
        ["benchmarks/results/nvidia-h200-20261126T215208Z.json", "--tests", str(tmp_path / "none.xml")])
