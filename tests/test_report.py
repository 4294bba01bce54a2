"""benchmarks.report: which results files --latest picks, stale PNGs, atomic PNG writes, and the
profile table's kernel families (derived from the stored kernel names)."""
from __future__ import annotations

import json
import os

import pytest

from benchmarks import report

GOAL_CFG = dict(cache_len=32768, kv_heads=1, head_dim=128, dtype="bfloat16")


def _decode_row(batch: int) -> dict:
    """One measured decode goal row (benchmarks.goals.decode) at ``batch``."""
    return {"suite": "decode", "case": f"decode b{batch}", "framework": "torch", "impl": "triton",
            "status": "ok", "mode": "compiled", "median_ms": 0.1, "frac_measured_bw": 0.9,
            "config": {**GOAL_CFG, "batch": batch}}


def _results(tmp_path, name: str, device: str, stamp: str, records=(), kind="cuda") -> str:
    payload = {"schema": "gemini-kernels-bench/1", "created_utc": stamp,
               "device": {"name": device, "kind": kind}, "commit": {"commit": "abc", "dirty": False},
               "versions": {"torch": "x"}, "config": {},
               "ceilings": {"copy_gbps": 10.0, "matmul_tflops": 1.0, "matmul_dtype": "float32"},
               "records": list(records)}
    (tmp_path / name).write_text(json.dumps(payload))
    return str(tmp_path / name)


def test_latest_keeps_older_gpu_runs_with_goal_rows_the_newer_ones_lack(tmp_path):
    full = _results(tmp_path, "h-full.json", "H200", "2026-01-01T01", [_decode_row(1), _decode_row(16)])
    _results(tmp_path, "h-old.json", "H200", "2026-01-01T00", [_decode_row(1)])  # nothing the newer lack
    short = _results(tmp_path, "h-short.json", "H200", "2026-01-01T02", [_decode_row(1)])
    _results(tmp_path, "c-old.json", "cpu", "2026-01-01T03", kind="cpu")
    cpu = _results(tmp_path, "c-new.json", "cpu", "2026-01-01T04", kind="cpu")
    assert report.latest_results(str(tmp_path)) == [full, short, cpu]


def test_render_deletes_the_pngs_it_no_longer_links(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("# old\n\n![throughput-5.png](throughput-5.png)\n\n"
                                   "![old-profile.png](old-profile.png)\n")
    for name in ("throughput-5.png", "roofline-7.png", "old-profile.png", "mine.png"):
        (out / name).write_bytes(b"png")
    res = _results(tmp_path, "r.json", "test cpu", "2026-01-01", kind="cpu")
    report.render([res], str(out))
    # the earlier report's links and report-named plots not linked now go; other files stay
    assert sorted(p.name for p in out.glob("*.png")) == ["cross-hardware.png", "mine.png", "roofline-0.png"]


def test_save_leaves_no_partial_file_or_temporary(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()

    def bad_savefig(target, **kw):  # writes part of a PNG, then fails
        (target.write(b"partial") if hasattr(target, "write") else open(target, "wb").write(b"partial"))
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", bad_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        report._save(fig, str(tmp_path), "roofline-0.png")
    assert os.listdir(tmp_path) == []


REAL_KERNELS = {  # names from benchmarks/results/profile-nvidia-h200-20261126T215303Z.json and torch's SDPA backends
    "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x256_1x4x1_cga1x1x1_kernel0_0":
        "attention bwd",
    "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x256_4x1x1_cga1x1x1_kernel0_0":
        "attention fwd",
    "void cudnn::fusion::compute_dot_do_o_specialized<true, 256>(void const*, void const*)": "attention bwd",
    "void cudnn::fusion::convert_dq_to_16bits<true>(void const*, void*, unsigned int)": "attention bwd",
    "void cudnn::fusion::fmha_reduce_head<true>(void const*, void*, unsigned int)": "attention bwd",
    "fmha_cutlassF_bf16_aligned_64x64_rf_sm80": "attention fwd",
    "fmha_cutlassB_bf16_aligned_128x64_k128_sm80": "attention bwd",
    "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits>": "attention bwd",
    "_attn_bwd_dkdv_kernel": "attention bwd",
    "_attn_fwd_kernel": "attention fwd",
    "nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_TNN": "gemm",
    "_gelu_bwd_kernel": "gelu / mlp act",
    "_norm_bwd_kernel": "norms",
    "Memset (Device)": "other",
}


@pytest.mark.parametrize("name, fam", sorted(REAL_KERNELS.items()))
def test_kernel_families_of_real_kernel_names(name, fam):
    from benchmarks.profile_model import family

    assert family(name) == fam


def test_profile_table_derives_families_from_the_kernel_names(tmp_path):
    """A file written before the bprop pattern existed (its cuDNN backward stored as "other")
    reports that kernel as attention bwd."""
    bprop = next(k for k in REAL_KERNELS if "bprop" in k)
    kernels = [{"kernel": bprop, "family": "other", "calls": 16, "ms": 32.8},
               {"kernel": "nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_TNN", "family": "gemm", "calls": 9, "ms": 7.2}]
    data = {"schema": "gemini-kernels-profile/1", "created_utc": "2026-01-01", "case": "nano1 train_step",
            "device": {"name": "NVIDIA H200"}, "commit": {"commit": "abc"}, "versions": {},
            "method": "torch.profiler kernel durations",
            "profiles": {"sdpa": {"total_kernel_ms": 40.0, "families": {"other": 32.8, "gemm": 7.2},
                                  "kernels": kernels}}}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    table = report.profile_table(str(path))
    assert "| attention bwd | 32.80 | 82.0% |" in table and "| other |" not in table
