"""Scaling profiles (sharding/profile.py, sharding/comm_model.py): table, PNG, results file.

The compiler check of the modeled collectives lives in tests/test_sharding_jax.py (it needs
the 8-device JAX helper process); here: the modeled numbers' internal consistency, the CLI
outputs and the refusal of bad input.
"""
from __future__ import annotations

import json
import os

import pytest

from model.config import PRESETS, param_count
from sharding import comm_model as cm
from sharding.profile import main
from sharding.rules import make_plan


def test_cli_writes_table_png_and_results(tmp_path, capsys):
    payload = main(["model=nano2", "strategy=[fsdp,dp,tp]", "hardware=h100_sxm", "devices=[8,64,1024]",
                    f"out_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert "MODELED" in out
    assert os.path.getsize(payload["png"]) > 10_000
    files = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    saved = json.load(open(tmp_path / files[0]))
    assert saved["modeled"] is True and saved["provenance"]["versions"]["jax"]
    rows = {(r["strategy"], r["devices"]): r for r in saved["rows"]}
    # nano2's width 2560 does not split 1024 ways: refused with the axis and the dimension
    assert rows[("fsdp", 1024)]["status"] == "invalid"
    assert "mesh.fsdp=1024" in rows[("fsdp", 1024)]["reason"] and "width=2560" in rows[("fsdp", 1024)]["reason"]
    ok = rows[("fsdp", 64)]
    assert 0 < ok["mfu"] < 1 and ok["step_s"] >= ok["compute_s"]
    # output names join the strategies with '+', which no strategy name holds
    assert sorted(os.listdir(tmp_path)) == ["profile-nano2-fsdp+dp+tp-h100_sxm.json",
                                            "profile-nano2-fsdp+dp+tp-h100_sxm.png"]


def test_output_names_of_a_list_and_a_combined_strategy_differ(tmp_path):
    main(["model=nano2", "strategy=[fsdp,tp]", "devices=[8]", f"out_dir={tmp_path}"])
    main(["model=nano2", "strategy=fsdp_tp", "devices=[8]", f"out_dir={tmp_path}"])
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".json")) == [
        "profile-nano2-fsdp+tp-h100_sxm.json", "profile-nano2-fsdp_tp-h100_sxm.json"]
    with pytest.raises(ValueError, match=r"may not contain '\+'.*strategy=\[fsdp,tp\]"):
        main(["strategy=fsdp+tp", f"out_dir={tmp_path}"])


def _results_file(folder, device: str, tflops: float, dtype="bfloat16"):
    folder.mkdir(exist_ok=True)
    (folder / f"{device.replace(' ', '-')}-{tflops}.json").write_text(json.dumps({
        "schema": "gemini-kernels-bench/1", "device": {"name": device},
        "ceilings": {"matmul_tflops": tflops, "matmul_dtype": dtype, "copy_gbps": 1.0}}))


def _work_ratio(row) -> float:
    """Model FLOPs (attention in full) over the work a causal flash kernel does (half of
    attention's 12 L H D S skipped): what MFU exceeds the matmul efficiency by when compute-bound."""
    from model.config import PRESETS, flops_per_token

    c, s = PRESETS["nano2"], row["seq_len"]
    model = flops_per_token(c, s)
    return model / (model - 6 * c.layers * c.heads * c.head_dim * s)


def test_compute_runs_at_a_measured_matmul_efficiency_not_the_datasheet_peak(tmp_path, capsys):
    """The modeled compute runs at the best bf16 matmul ceiling measured on the chip over its
    datasheet peak (a results file in results_dir), else the default (the H200's 803/989), or
    the option; the table and the file say which. MFU (of the peak) never reaches 100 %."""
    from sharding.profile import DEFAULT_MATMUL_EFFICIENCY

    res = tmp_path / "results"
    _results_file(res, "NVIDIA H100 80GB HBM3", 700.0)
    _results_file(res, "NVIDIA H100 80GB HBM3", 600.0)
    _results_file(res, "NVIDIA H100 80GB HBM3", 900.0, dtype="float32")  # not a bf16 ceiling
    _results_file(res, "NVIDIA H200", 800.0)  # another chip
    argv = ["model=nano2", "strategy=fsdp", "devices=[8]", f"out_dir={tmp_path}"]
    measured = main([*argv, f"results_dir={res}"])
    assert measured["matmul_efficiency"]["fraction"] == pytest.approx(700 / 989)
    assert "700 of 989" in measured["matmul_efficiency"]["source"]
    assert "compute at 70.8% of the datasheet bf16 peak (measured" in capsys.readouterr().out
    default = main([*argv, f"results_dir={tmp_path / 'none'}"])
    assert default["matmul_efficiency"]["fraction"] == pytest.approx(DEFAULT_MATMUL_EFFICIENCY)
    assert "no H100 SXM results file" in default["matmul_efficiency"]["source"]
    # fsdp on 8 devices: gradient and gather traffic overlaps compute, so MFU is the efficiency
    # times model FLOPs (causal attention counted in full) over the work done (its half skipped)
    full = default["rows"][0]
    work = _work_ratio(full)
    assert full["mfu"] == pytest.approx(DEFAULT_MATMUL_EFFICIENCY * work, rel=1e-6)
    given = main([*argv, "matmul_efficiency=0.5"])
    assert given["rows"][0]["compute_s"] == pytest.approx(default["rows"][0]["compute_s"]
                                                          * DEFAULT_MATMUL_EFFICIENCY / 0.5)
    assert given["rows"][0]["mfu"] == pytest.approx(0.5 * work, rel=1e-6)
    for bad in ("1.5", "0", "fast"):
        with pytest.raises(ValueError, match="matmul_efficiency: expected a fraction"):
            main([*argv, f"matmul_efficiency={bad}"])


def test_plot_writes_atomically(tmp_path, monkeypatch):
    """A failing savefig leaves neither a partial PNG nor a temporary behind."""
    import matplotlib.figure

    from sharding.profile import plot

    def bad_savefig(self, target, **kw):
        (target.write(b"partial") if hasattr(target, "write") else open(target, "wb").write(b"partial"))
        raise RuntimeError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", bad_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        plot([], str(tmp_path / "p.png"), "t")
    assert os.listdir(tmp_path) == []


def test_memory_model_shards_what_the_strategy_promises():
    cfg = PRESETS["nano2"]
    wl = cm.Workload(global_batch=64, seq_len=2048)
    n = param_count(cfg)
    dp = cm.memory(cfg, make_plan("dp", {"data": -1}, 64), wl)
    fsdp = cm.memory(cfg, make_plan("fsdp", {"fsdp": -1}, 64), wl)
    assert dp["local_params"] == n and fsdp["local_params"] == n // 64
    assert fsdp["optimizer"] == 2 * fsdp["params"] and dp["activations_remat"] < dp["activations"]
    tp = cm.memory(cfg, make_plan("dp+tp", {"data": -1, "tensor": 2}, 64), wl)
    # MQA: the one kv head stays whole under tensor parallelism
    kv = 2 * cfg.layers * cfg.kv_heads * cfg.head_dim * cfg.width
    assert tp["local_params"] == (n - kv - cfg.width * (2 * cfg.layers + 1)) // 2 + kv + cfg.width * (2 * cfg.layers + 1)


def test_remat_adds_gathers_and_compute():
    cfg = PRESETS["nano1"]
    plan = make_plan("fsdp", {"fsdp": -1}, 16)
    a = cm.by_kind(cm.collectives(cfg, plan, cm.Workload(16, 1024)))
    b = cm.by_kind(cm.collectives(cfg, plan, cm.Workload(16, 1024, remat=True)))
    assert b["all-gather"] > 1.9 * a["all-gather"] * 0.99 and b["reduce-scatter"] == a["reduce-scatter"]


@pytest.mark.parametrize("argv, fragment", [
    (["strategy=zero9"], "unknown strategy 'zero9'"),
    (["hardware=cpu"], "no datasheet peak"),
    (["model=huge"], "unknown model 'huge'"),
    (["devices=[8]", "mesh.tensor=3"], "not divisible by the product 3"),
    (["bogus=1"], "unknown options"),
])
def test_bad_input(tmp_path, argv, fragment):
    try:
        payload = main([*argv, f"out_dir={tmp_path}"])
    except ValueError as e:
        assert fragment in str(e)
        return
    reasons = " ".join(r.get("reason", "") for r in payload["rows"])
    assert fragment in reasons, reasons


HLO_LOOP = """HloModule m

%body (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %x = f32[4,8]{1,0} get-tuple-element(%p), index=1
  %cp = f32[4,8]{1,0} collective-permute(%x), channel_id=1, source_target_pairs={{0,1},{1,0}}
  %one = f32[2]{0} all-reduce(%y), channel_id=2, replica_groups={{0},{1}}, to_apply=%add
}

%cond (p: (s32[], f32[4,8])) -> pred[] {
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (a: f32[4,8]) -> f32[4,8] {
  %w = (s32[], f32[4,8]) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"7"}}
  %ag = f32[8,8]{1,0} all-gather(%a), channel_id=3, replica_groups={{0,1}}, dimensions={0}
}
"""


def test_hlo_counter_counts_loop_trips_and_skips_singleton_groups():
    from sharding.hlo import collectives

    got = collectives(HLO_LOOP)
    assert got["collective-permute"] == {"count": 7, "bytes": 7 * 4 * 8 * 4}  # body x trips
    assert got["all-gather"] == {"count": 1, "bytes": 8 * 8 * 4}
    assert "all-reduce" not in got  # groups of one device move nothing


def test_ring_context_parallel_model_uses_permutes_not_gathers():
    cfg = PRESETS["nano1"]
    plan = make_plan("dp+sp", {"data": -1, "seq": 4}, 16)
    ring = cm.by_kind(cm.collectives(cfg, plan, cm.Workload(16, 8192)))
    gather = cm.by_kind(cm.collectives(cfg, plan, cm.Workload(16, 8192, context_parallel="all-gather")))
    assert ring["collective-permute"] > 0 and "all-gather" not in ring
    assert gather["all-gather"] > 0 and "collective-permute" not in gather
    with pytest.raises(ValueError, match="context_parallel"):
        cm.Workload(16, 8192, context_parallel="ulysses")


def test_hlo_counter_async_start_forms():
    from sharding.hlo import collectives

    text = """  %s = (f32[4,8]{1,0}, f32[4,8]{1,0}, u32[], u32[]) collective-permute-start(%x), source_target_pairs={{0,1},{1,0}}
  %d = f32[4,8]{1,0} collective-permute-done(%s)
  %g = (f32[2,8]{1,0}, f32[4,8]{1,0}) all-gather-start(%y), replica_groups={{0,1}}, dimensions={0}
"""
    got = collectives(text)
    assert got["collective-permute"] == {"count": 1, "bytes": 4 * 8 * 4}
    assert got["all-gather"] == {"count": 1, "bytes": 4 * 8 * 4}
