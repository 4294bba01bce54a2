"""How measurements become files and reports, on made-up inputs: results-file provenance and
atomic writes, the report's tables (which ceiling each percentage is of, skipped rows counted,
dirty trees labeled), ``--latest``'s choice of files, device detection and the telemetry
summary with fake NVML, and the timers' L2 flush kept out of the timed region. Each expected
value is computed here from the made-up inputs, not by the code under test.
"""
from __future__ import annotations

import datetime as real_dt
import json
import os
import sys
from types import SimpleNamespace

import pytest

from benchmarks import hardware, report, results, timing


# ---------------------------------------------------------------- results.py


def test_commit_provenance_is_unknown_not_clean_when_git_fails(monkeypatch):
    """No git (or not a repository): commit and dirty are None, never "clean". Catches: dirty
    reported False when git status could not run (R1)."""
    def no_git(*a, **k):
        raise OSError("git: not found")

    monkeypatch.setattr(results.subprocess, "run", no_git)
    assert results.git_commit() == {"commit": None, "dirty": None, "tree": None}


def test_a_write_failing_after_the_data_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    """write_json_atomic failing at the fsync (disk full, I/O error): the previous results file
    is intact and no temporary is left. Catches: the temporary not removed on failure (R2)."""
    path = tmp_path / "r.json"
    results.write_json_atomic(str(path), {"records": [1]})

    def bad_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(results.os, "fsync", bad_fsync)
    with pytest.raises(OSError, match="I/O error"):
        results.write_json_atomic(str(path), {"records": [1, 2]})
    assert json.loads(path.read_text()) == {"records": [1]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_results_path_is_the_device_slug_and_a_utc_second_stamp(tmp_path, monkeypatch):
    """Two runs on one day get two files: the name carries the UTC time to the second.
    Catches: a day-only stamp (a second run the same day overwrites the first) (R4)."""
    class FakeDatetime:
        @staticmethod
        def now(tz):
            return real_dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=tz)

    monkeypatch.setattr(results, "dt", SimpleNamespace(datetime=FakeDatetime, timezone=real_dt.timezone))
    got = results.results_path(str(tmp_path), "NVIDIA H100 80GB HBM3")
    assert got == os.path.join(str(tmp_path), "nvidia-h100-80gb-hbm3-20260102T030405Z.json")


def _row(**kw):
    base = {"suite": "decode", "case": "c", "framework": "torch", "impl": "triton", "mode": "compiled",
            "status": "ok", "median_ms": 0.5}
    return {**base, **kw}


def test_summary_table_columns_and_skipped_rows():
    """The printed summary: %meas is the measured fraction, %sheet the datasheet one; skipped
    rows are listed with their reason under the table. Catches: %sheet showing the measured
    fraction (R6), skipped rows silently left out of the list (R5)."""
    recs = [_row(case="ok", gbps=300.0, frac_measured_bw=0.25, frac_datasheet_bw=0.125),
            _row(case="skip", status="skipped", reason="needs a GPU")]
    text = results.summary_table(recs)
    head = text.splitlines()[0].split()
    ok_line = next(line for line in text.splitlines() if line.startswith("decode") and " ok " in line)
    cells = ok_line.split()
    assert cells[head.index("%meas")] == "25.0" and cells[head.index("%sheet")] == "12.5"
    assert "skipped: skip triton: needs a GPU" in text


# ---------------------------------------------------------------- report.py


def _file(name="NVIDIA H200", stamp="2026-01-01T00:00:00+00:00", records=(), dirty=False, **kw):
    return {"schema": "gemini-kernels-bench/1", "created_utc": stamp, "_path": f"/x/{name}.json",
            "device": {"name": name, "kind": "cuda", "driver": "550.1", "cuda": "12.4"},
            "commit": {"commit": "0123456789abcdef", "dirty": dirty}, "versions": {"torch": "2.x"},
            "config": {}, "ceilings": {"copy_gbps": 1234.5, "matmul_tflops": 678.25, "matmul_dtype": "bfloat16"},
            "records": list(records), **kw}


def _md_rows(md: str, header_start: str) -> list[dict]:
    """The rows of the markdown table whose header line starts with ``header_start``."""
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    head = [c.strip() for c in lines[i].strip("|").split("|")]
    out = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        out.append(dict(zip(head, [c.strip() for c in line.strip("|").split("|")])))
    return out


def test_measured_table_divides_by_each_ceiling_and_labels_the_provenance():
    """A measured table's columns: % meas. ceiling the measured fraction, % datasheet the
    datasheet one, % same-size copy a percentage; the ceilings line reads copy GB/s and
    matmul TFLOP/s from their own fields; a dirty tree says (dirty), a clean one does not.
    Catches: % datasheet showing the measured fraction (P5), the same-size-copy fraction not
    made a percentage (P20), the copy ceiling printed from the matmul field (P6), (dirty)
    shown on the wrong trees (P1)."""
    r = _row(gbps=900.0, frac_measured_bw=0.5, frac_datasheet_bw=0.2, frac_same_size_copy=0.75)
    md = report.measured_table(_file(records=[r], dirty=True))
    [row] = _md_rows(md, "| suite |")
    assert row["% meas. ceiling"] == "50.0" and row["% datasheet"] == "20.0"
    assert row["% same-size copy"] == "75.0"
    assert "copy 1234.5 GB/s, bfloat16 matmul 678.25 TFLOP/s" in md
    assert "`0123456789abcdef` (dirty)" in md
    assert "(dirty)" not in report.measured_table(_file(records=[r], dirty=False))


def test_skipped_rows_are_counted_per_suite_and_not_tabulated():
    """Skipped rows stay out of the table and are counted per suite below it. Catches: each
    suite counted once however many rows it skipped (P3), skipped rows put in the table (P4)."""
    recs = [_row(case="a"), _row(case="b", status="skipped", reason="r"),
            _row(case="c", status="skipped", reason="r"), _row(case="d", status="skipped", reason="r"),
            _row(suite="int4", case="e", status="skipped", reason="r")]
    md = report.measured_table(_file(records=recs))
    assert [row["case"] for row in _md_rows(md, "| suite |")] == ["a"]
    assert "Skipped rows (not shown; their reasons are in the file): decode 3, int4 1." in md


def test_cross_hardware_table_is_the_measured_fraction_of_ok_rows_oldest_device_first():
    """The cross-hardware table: each device's measured-ceiling fraction (not the datasheet's),
    ok rows only, columns in the files' given order. Catches: the datasheet fraction (P7),
    a failed row's fraction tabulated (P8)."""
    a = _file("gpu a", "2026-01-01", [_row(tflops=10.0, frac_measured_peak=0.6, frac_datasheet_peak=0.3),
                                      _row(impl="bad", status="failed", tflops=1.0, frac_measured_peak=0.9)])
    b = _file("gpu b", "2026-01-02", [_row(tflops=10.0, frac_measured_peak=0.4, frac_datasheet_peak=0.1)])
    table = report.cross_hardware_table([a, b])
    assert "| decode | c | triton | 60.0 | 40.0 |" in table
    assert "| bad |" not in table


def test_render_puts_the_files_oldest_first():
    """render sorts the files by creation time, oldest first, whatever order they were named
    in: the measured tables and the cross-hardware columns. Catches: newest first (P12)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, stamp in (("newer", "2026-02-01T00:00:00+00:00"), ("older", "2026-01-01T00:00:00+00:00")):
            d = _file(name, stamp, [_row(tflops=1.0, frac_measured_peak=0.5, flops=1e9, bytes=1e6)])
            d["device"]["kind"] = "cpu"  # no goals table
            del d["_path"]
            p = os.path.join(tmp, f"{name}.json")
            with open(p, "w") as f:
                json.dump(d, f)
            paths.append(p)
        with open(report.render(paths, os.path.join(tmp, "out"))) as f:
            md = f.read()
    assert md.index("### older (") < md.index("### newer (")
    assert "| suite | case | impl | older (2026-01-01T00:00:00+00:00) | newer (" in md


def test_modeled_time_is_the_larger_of_the_compute_and_memory_bounds():
    """A row with FLOPs that is memory-bound on a chip (few FLOPs, many bytes) is modeled at its
    bytes / HBM time. Catches: the compute term alone whenever FLOPs are counted (P9)."""
    chip = {"bf16_tflops": 100.0, "hbm_gb_per_s": 1000.0}
    assert report.modeled_time_s(1e9, 1e9, chip) == pytest.approx(1e9 / 1e12)  # 1 ms memory > 10 µs compute
    assert report.modeled_time_s(1e15, 1e6, chip) == pytest.approx(1e15 / 1e14)


def _bench_file(tmp_path, fname, device, stamp, records=(), kind="cuda"):
    payload = {"schema": "gemini-kernels-bench/1", "created_utc": stamp,
               "device": {"name": device, "kind": kind}, "commit": {"commit": "abc", "dirty": False},
               "versions": {}, "config": {}, "ceilings": {}, "records": list(records)}
    (tmp_path / fname).write_text(json.dumps(payload))
    return str(tmp_path / fname)


def test_latest_picks_by_creation_time_not_file_name(tmp_path):
    """--latest takes each device's newest file by its created_utc, whatever the file names
    sort as. Catches: runs ordered by path (P14)."""
    _bench_file(tmp_path, "z-run.json", "H200", "2026-01-01T00")
    newest = _bench_file(tmp_path, "a-run.json", "H200", "2026-01-05T00")
    assert report.latest_results(str(tmp_path)) == [newest]


def test_latest_keeps_the_newest_file_of_each_gpu_model(tmp_path):
    """Two GPU models (both kind cuda) are two devices: each keeps its newest file. Catches:
    files grouped by device kind, one GPU's run hiding another's (P15)."""
    h100 = _bench_file(tmp_path, "h100.json", "NVIDIA H100 80GB HBM3", "2026-01-01T00")
    h200 = _bench_file(tmp_path, "h200.json", "NVIDIA H200", "2026-01-02T00")
    assert report.latest_results(str(tmp_path)) == [h100, h200]


def test_sweep_and_profile_provenance_say_dirty(tmp_path):
    """The sweep table's provenance line marks a dirty tree. Catches: (dirty) dropped from
    _provenance (P17)."""
    d = {"complete": True, "timing": "t", "device": {"name": "NVIDIA H200", "driver": "5"},
         "versions": {}, "commit": {"commit": "0123456789abcdef", "dirty": True}, "created_utc": "2026",
         "records": []}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(d))
    assert "commit 0123456789 (dirty)" in report.sweep_table(str(path))


# ---------------------------------------------------------------- hardware.py


def test_copy_curve_takes_a_point_that_exactly_fits_the_source():
    """A source of exactly 1 MiB of fp32 (half read, half written: 2**17 elements) still gets
    the 1 MiB point. Catches: an off-by-one bound that drops it (H1)."""
    import torch

    src = torch.arange(2**17, dtype=torch.float32)
    dst = torch.zeros_like(src)

    def fake_timer(fn):
        fn()
        return SimpleNamespace(median_s=1e-6, to_dict=lambda: {})

    pts = hardware.measure_copy_curve(dst, src, fake_timer)
    assert [p["bytes"] for p in pts] == [8, 2**20]
    assert torch.equal(dst, src)


def test_cpu_ceiling_matmul_is_fp32():
    """On the CPU the matmul ceiling is fp32 (bf16 on GPU only). Catches: bf16 on every
    device (H6)."""
    def timer(fn):
        fn()
        return timing.Timing(median_s=1e-3, p20_s=1e-3, p80_s=1e-3, min_s=1e-3, runs=1, method="fake")

    c = hardware.measure_ceilings(hardware.Device(kind="cpu", name="cpu"), timer, copy_mb=1, matmul_n=8)
    assert c["matmul_dtype"] == "float32"


def _fake_pynvml(power_mw=300_000):
    calls = []

    class N:
        NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = "sm", "mem", "gpu"

        @staticmethod
        def nvmlInit():
            pass

        @staticmethod
        def nvmlDeviceGetHandleByIndex(i):
            calls.append(i)
            return f"h{i}"

        nvmlDeviceGetName = staticmethod(lambda h: b"NVIDIA H100 80GB HBM3")
        nvmlDeviceGetCount = staticmethod(lambda: 4)
        nvmlDeviceGetMemoryInfo = staticmethod(lambda h: SimpleNamespace(total=80 * 2**30))
        nvmlSystemGetDriverVersion = staticmethod(lambda: "550.54")
        nvmlDeviceGetPowerManagementLimit = staticmethod(lambda h: 700_000)
        nvmlDeviceGetMaxClockInfo = staticmethod(lambda h, c: {"sm": 1980, "mem": 2619}[c])
        nvmlDeviceGetPowerUsage = staticmethod(lambda h: power_mw)
        nvmlDeviceGetClockInfo = staticmethod(lambda h, c: {"sm": 1500, "mem": 2600}[c])
        nvmlDeviceGetTemperature = staticmethod(lambda h, c: 60)

    return N, calls


def test_nvidia_detection_with_fake_nvml(monkeypatch):
    """_detect_nvidia with a fake NVML on device 2: the current device's handle, the power limit
    in W (NVML gives mW), datasheet peaks of the matched entry in their own fields. Catches:
    the datasheet TFLOP/s and GB/s swapped (H2), mW reported as W (H3), device 0's handle on
    a process using another GPU (H4)."""
    nvml, calls = _fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    torch = SimpleNamespace(cuda=SimpleNamespace(current_device=lambda: 2, get_device_capability=lambda: (9, 0)),
                            version=SimpleNamespace(cuda="12.4"))
    dev = hardware._detect_nvidia(torch)
    entry = hardware.hardware_table()["h100_sxm"]
    assert calls == [2]
    assert dev.name == "NVIDIA H100 80GB HBM3" and dev.count == 4 and dev.memory_gb == 80.0
    assert dev.datasheet_tflops == entry["bf16_tflops"] and dev.datasheet_gbps == entry["hbm_gb_per_s"]
    assert dev.power_limit_w == 700.0 and dev.driver == "550.54" and dev.extra["capability"] == "9.0"


# ---------------------------------------------------------------- telemetry.py


def test_telemetry_samples_in_watts_and_summarizes_min_max_mean(monkeypatch):
    """NvmlSampler with a fake NVML: power in W (NVML's mW / 1000); the summary's mean is the
    mean of the samples. Catches: mW kept as W (L2), the median reported as the mean (L1)."""
    import threading

    from benchmarks import telemetry

    nvml, _ = _fake_pynvml(power_mw=250_000)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    s = telemetry.NvmlSampler(interval_s=0.001)
    got_one = threading.Event()

    class Samples(list):
        def append(self, x):
            super().append(x)
            got_one.set()

    s.samples = Samples()
    with s:
        assert got_one.wait(10)
    assert s.samples[0]["power_w"] == 250.0 and s.samples[0]["sm_clock_mhz"] == 1500
    s.samples = [{"power_w": p, "sm_clock_mhz": 1, "mem_clock_mhz": 2, "temp_c": 3} for p in (100.0, 110.0, 400.0)]
    summ = s.summary()
    assert summ["samples"] == 3
    assert summ["power_w"] == {"min": 100.0, "max": 400.0, "mean": pytest.approx(610.0 / 3)}


# ---------------------------------------------------------------- timing.py


from test_benchmark_harness_cases import _FakeEvent  # noqa: E402  (reads .clock.now)


class _Clock:
    def __init__(self):
        self.now = 0.0


def test_wall_timer_runs_past_min_runs_while_under_budget(monkeypatch):
    """Past min_runs the timer goes on while the timed work is under budget_s (and max_runs).
    2 ms runs, min 2, budget 7 ms: runs at 2, 4, 6 ms under budget, the 4th reaches 8 ms.
    Catches: stopping at min_runs whatever the budget left (T1)."""
    clock = _Clock()

    def fn():
        clock.now += 0.002

    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    t = timing.Timer("cpu", warmup=0, min_runs=2, max_runs=100, budget_s=0.007)(fn)
    assert t.runs == 4


class _SlowFlush:
    """A flush buffer whose read takes 0.1 s on the fake clock."""

    def __init__(self, clock):
        self.clock, self.reads = clock, 0

    def sum(self):
        self.clock.now += 0.1
        self.reads += 1


def test_cuda_event_timer_flushes_l2_before_each_run_outside_the_timed_region(monkeypatch):
    """Each timed CUDA-event run is preceded by an L2 flush whose own time is not in the
    sample. Catches: the flush recorded between the events (T2)."""
    import torch

    clock = _Clock()
    _FakeEvent.clock = clock
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: None)  # the stream hold before each run
    timer = timing.Timer("cuda", warmup=0, min_runs=3, max_runs=3, budget_s=1e9, flush_l2_mb=0)
    timer._flush = _SlowFlush(clock)

    def fn():
        clock.now += 0.003

    t = timer._event_samples(fn, "m")
    assert timer._flush.reads == 3 and t.median_s == pytest.approx(0.003)


def test_wall_timer_waits_for_the_flush_before_starting_the_clock(monkeypatch):
    """JAX on a GPU: the flush is launched, then a device sync, then the clock starts, so the
    flush's device time is not timed. The fake sync takes the flush's 0.1 s. Catches: the
    clock started before the sync (T3)."""
    import torch

    clock = _Clock()
    pending = []

    class AsyncFlush:
        def sum(self):
            pending.append(0.1)

    def sync():
        clock.now += sum(pending)
        pending.clear()

    monkeypatch.setattr(torch.cuda, "synchronize", sync)
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    monkeypatch.setattr(timing, "_block", lambda x: x)
    timer = timing.Timer("cpu", warmup=0, min_runs=1, max_runs=1, budget_s=0.0, flush_l2_mb=0)
    timer._flush = AsyncFlush()

    def fn():
        clock.now += 0.002

    assert timer._wall(fn) == pytest.approx(0.002)


def test_failed_graph_capture_is_said_in_the_timing_method(monkeypatch):
    """cuda_graphs=True and the capture fails: the call is timed eagerly and the method says so,
    with the error. Catches: the failure not recorded (a row claims graph timing it lacks) (T4)."""
    import torch

    clock = _Clock()
    _FakeEvent.clock = clock

    class BadGraph:
        def __enter__(self):
            raise RuntimeError("operation not permitted when stream is capturing")

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "graph", lambda g: BadGraph())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: None)
    timer = timing.Timer("cuda", warmup=0, min_runs=2, max_runs=2, budget_s=1e9, flush_l2_mb=0, cuda_graphs=True)

    def fn():
        clock.now += 0.001

    t = timer(fn)
    assert t.median_s == pytest.approx(0.001)
    assert "not a graph: capture failed: RuntimeError: operation not permitted" in t.method


# ---------------------------------------------------------------- run.py: the complete flag


def test_a_run_stopped_after_a_suite_leaves_a_file_marked_incomplete_with_its_rows(tmp_path, monkeypatch):
    """The runner rewrites its results file after each suite with complete: false; a run that
    dies later leaves that file, holding the rows done so far. Catches: partial files marked
    complete (U1), the partial file written without the rows (U2)."""
    from hydra import compose, initialize_config_dir

    from benchmarks import run

    row = _row(case="done")
    ceil = {"copy_gbps": 1.0, "matmul_tflops": 1.0, "matmul_dtype": "float32"}

    def dying_run_all(built, ceilings, device, deadline, first, on_progress=None, weights=None):
        on_progress([row])
        raise RuntimeError("killed by the device time limit")

    monkeypatch.setattr(run, "detect_device", lambda: hardware.Device(kind="cpu", name="test cpu"))
    monkeypatch.setattr(run, "build_suites", lambda *a, **k: ([], {}))
    monkeypatch.setattr(run, "measure_ceilings", lambda *a, **k: ceil)
    monkeypatch.setattr(run, "run_all", dying_run_all)
    monkeypatch.setattr(run, "git_commit", lambda: {"commit": "abc", "dirty": True})
    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
    with initialize_config_dir(config_dir=conf, version_base=None):
        cfg = compose(config_name="benchmark", overrides=[f"out_dir={tmp_path}"])
    with pytest.raises(RuntimeError, match="device time limit"):
        run.main(cfg)
    [f] = list(tmp_path.glob("*.json"))
    data = json.loads(f.read_text())
    assert data["complete"] is False and data["records"] == [row]
    assert data["commit"] == {"commit": "abc", "dirty": True} and data["ceilings"] == ceil
    assert "**incomplete run**" in report.measured_table(report.load(str(f)))


def test_a_dirty_runs_provenance_names_its_tree_where_recorded():
    """The report's commit note: nothing when clean, the tree hash beside "dirty" where the file
    has one (older files have none), so a stale-metadata run still names its code."""
    from benchmarks.report import _dirty_note

    assert _dirty_note({"commit": "a" * 40, "dirty": False, "tree": "t" * 40}) == ""
    assert _dirty_note({"commit": "a" * 40, "dirty": True, "tree": "t" * 40}) == f" (dirty; tree `{'t' * 40}`)"
    assert _dirty_note({"commit": "a" * 40, "dirty": True}) == " (dirty)"
