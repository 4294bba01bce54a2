"""The compile report's default configurations: every Triton op compiles for sm_80 without
register spills (sm_90, with HGMMA checks, is covered op by op in the other AOT tests),
autotuning candidates compile through ``aot_kernels(blocks=...)``, and the report renders.
(The Pallas section is tested in tests/test_pallas_report.py.)"""
from __future__ import annotations

import pytest
from aot import assert_compiled_clean, compile_in_subprocess

from benchmarks.compile_report import (CANDIDATE_JOBS, DEFAULT_JOBS, SWEEP_DTYPES, SWEEP_KNOWN_SPILLS, _resolve,
                                       VARIANT_JOBS, blocks_json, candidate_jobs, known_spill, sweep_configs,
                                       sweep_jobs, to_markdown, variant_jobs)

JOBS = {f"{label}|80": {"module": m, "args": a, "kwargs": k, "cap": 80}
        for label, (m, a, k) in DEFAULT_JOBS.items()}
CANDIDATE = "decode split hd128 bf16|90|1"  # one cheap non-default candidate, compiled for sm_90
JOBS[CANDIDATE] = candidate_jobs((90,))[CANDIDATE]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return compile_in_subprocess(JOBS, tmp_path_factory.mktemp("aot80"))


@pytest.mark.parametrize("job", [j for j in JOBS if j != CANDIDATE])
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


def test_candidates_start_with_the_default_and_round_trip_through_json():
    import importlib

    jobs = candidate_jobs((90,))
    for label, (module, c_args, c_kwargs, _, _, kernels) in CANDIDATE_JOBS.items():
        mod = importlib.import_module(module)
        args = [_resolve(a) for a in c_args]
        cands = mod.candidate_blocks(*args, **c_kwargs, capability=(9, 0))
        # at most 8 (int4's 16-bit decode rows): each one is compiled, canaried and swept
        assert 2 <= len(cands) <= 8 and len(set(cands)) == len(cands), (label, cands)
        assert cands[0] == mod.default_blocks(*args, **c_kwargs, capability=(9, 0)), label
        for i, b in enumerate(cands):
            job = jobs[f"{label}|90|{i}"]
            assert _resolve(job["kwargs"]["blocks"]) == b == _resolve(blocks_json(b))
            assert job["kernels"] == kernels


def test_candidate_compiles_with_its_blocks(reports):
    [(name, r)] = reports[CANDIDATE].items()
    assert name == "_decode_split_kernel" and "error" not in r, r
    blocks = _resolve(JOBS[CANDIDATE]["kwargs"]["blocks"])
    assert (r["num_warps"], r["num_stages"]) == (blocks.num_warps, blocks.num_stages)
    row = {"op": "decode split hd128 bf16", "target": "sm_90", "candidate": 1, "default": False,
           "blocks": repr(blocks), "kernel": name, **r}
    md = to_markdown({"commit": {"commit": "x"}, "versions": {"triton": "3.6.0"}, "rows": [],
                      "candidates": [row]})
    assert f"| decode split hd128 bf16 | 1 | `{blocks!r}` | _decode_split_kernel | sm_90 |" in md


def test_variants_resolve_and_render_with_their_spills():
    """The feature variants' blocks build (a field the dataclass lacks would raise here), each
    names the kernels its blocks launch, and the markdown lists each variant row with its
    spills marked."""
    from kernels.attention.triton_attention import TritonAttentionBlocks
    from kernels.patch_embed.triton_patch_embed import PatchEmbedBlocks

    jobs = variant_jobs((90,))
    assert len(jobs) == len(VARIANT_JOBS)
    for job_id, job in jobs.items():
        blocks = _resolve(job["kwargs"]["blocks"])
        assert job["cap"] == 90 and job["kernels"], job_id
        if job_id.startswith("patch_embed"):
            assert isinstance(blocks, PatchEmbedBlocks) and job["kernels"] == ["_patch_embed_fwd_kernel"]
            continue
        assert isinstance(blocks, TritonAttentionBlocks), job_id
        assert ("fwd" in job_id) == (job["kernels"] == ["_attn_fwd_kernel"]), job_id
    r = {"registers": 255, "spill_store_bytes": 52, "spill_load_bytes": 52, "shared_bytes": 1024,
         "num_warps": 8, "occupancy": 0.125, "limited_by": "registers", "sass_mix": {}, "mma_dots": None}
    row = {"op": "attention fwd causal hd128 bf16 pointer 128x128", "kernel": "_attn_fwd_kernel",
           "target": "sm_90", **r}
    md = to_markdown({"commit": {"commit": "x"}, "versions": {"triton": "3.6.0"}, "rows": [],
                      "variants": [row]})
    assert "## Feature variants" in md
    assert "| attention fwd causal hd128 bf16 pointer 128x128 | _attn_fwd_kernel | sm_90 | 255 | 104 **spills** |" in md


def test_sweep_covers_every_op_at_every_dtype(monkeypatch):
    """The spill audit (--sweep; its entries are compiled by each op's AOT test) has every op of
    DEFAULT_JOBS at fp32, fp16 and bf16, and only the documented known spills are exempt."""
    configs = sweep_configs()
    ops = {m for m, _, _ in DEFAULT_JOBS.values()}
    for dt in SWEEP_DTYPES.values():
        assert {m for m, a, _ in configs.values() if dt in a} == ops, dt
    assert len(sweep_jobs((80, 90))) == 2 * len(configs)
    assert not known_spill("layer_norm 10240 fp32", "_norm_bwd_col_block_kernel")
    monkeypatch.setitem(SWEEP_KNOWN_SPILLS, ("layer_norm 10240", "_norm_bwd_kernel"), "why")
    assert known_spill("layer_norm 10240 fp32", "_norm_bwd_kernel") == "why"
    assert not known_spill("layer_norm 10240 fp32", "_norm_fwd_kernel")
    assert not known_spill("layer_norm 1024 fp32", "_norm_bwd_kernel")


def test_sweep_json_out_records_rows_with_commit_and_versions(monkeypatch, tmp_path):
    """--sweep --json-out writes a record (rows, commit, versions), not the bare per-job dict;
    the exit status still follows the spills."""
    import json

    from benchmarks import compile_report

    clean = {"registers": 64, "spill_store_bytes": 0, "spill_load_bytes": 0, "shared_bytes": 0,
             "num_warps": 4, "occupancy": 1.0, "limited_by": "warps", "sass_mix": {}, "mma_dots": None}
    monkeypatch.setattr(compile_report, "sweep_jobs", lambda caps: {"rope hd64 fp32|80": {}})
    monkeypatch.setattr(compile_report, "compile_jobs",
                        lambda jobs, work: {"rope hd64 fp32|80": {"_rope_kernel": clean}})
    out = tmp_path / "audit.json"
    with pytest.raises(SystemExit) as e:
        compile_report.main(["--sweep", "--caps", "80", "--json-out", str(out)])
    assert e.value.code == 0
    record = json.loads(out.read_text())
    assert record["caps"] == [80] and "commit" in record["commit"] and record["versions"]["triton"]
    assert record["rows"] == [{"op": "rope hd64 fp32", "target": "sm_80", "kernel": "_rope_kernel", **clean}]


def test_mma_dots_counts_replicated_result_layouts():
    """A 64-row result over 8 warps along M (16 rows each) is replicated; 128 rows is not; N
    replicates when the warps along N times the instruction's N exceed the tile."""
    from benchmarks.compile_report import mma_dots

    ttgir = "\n".join([
        "#mma = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [8, 1], instrShape = [16, 32, 16]}>",
        "#mma1 = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [4, 2], instrShape = [16, 128, 16]}>",
        "  %a = ttng.warp_group_dot %x, %y, %z : !m * !m -> tensor<64x32xf32, #mma> loc(#l)",
        "  %b = ttng.warp_group_dot %x, %y, %z : !m * !m -> tensor<128x32xf32, #mma> loc(#l)",
        "  %c = ttng.warp_group_dot %x, %y, %z : !m * !m -> tensor<64x256xf32, #mma1> loc(#l)",
        "  %d = ttng.warp_group_dot %x, %y, %z : !m * !m -> tensor<64x128xf32, #mma1> loc(#l)",
        "  %e = tt.dot %x, %y, %z : tensor<a> * tensor<b> -> tensor<128x64xf32, #mma> loc(#l)",
    ])
    assert mma_dots(ttgir) == {"total": 5, "replicated": 2}


def test_loop_instructions_counts_predicated_back_edges_only():
    """A loop's back edge is a predicated branch to an earlier label; the unconditional
    branch back from an mbarrier retry stub at the end of the code is not a loop."""
    from benchmarks.compile_report import loop_instructions

    sass = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_1:
        /*0010*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0020*/                   FMUL R2, R2, R3 ;
        /*0030*/              @!P0 BRA `(.L_x_1) ;
.L_x_2:
        /*0040*/                   EXIT ;
.L_x_3:
        /*0050*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [R4+URZ], R5 ;
        /*0060*/              @!P0 BRA `(.L_x_3) ;
        /*0070*/                   BRA `(.L_x_1) ;
"""
    assert loop_instructions(sass) == 3
    assert loop_instructions("        /*0000*/                   EXIT ;\n") == 0


def test_candidates_mark_sm90s_gluon_attention_defaults():
    """sm_90's attention defaults without features (SM90_DEFAULTS) are candidates of the
    report's attention jobs, and the markdown marks them beside candidate 0 (default_blocks)."""
    from benchmarks.compile_report import _candidate_note, _is_sm90_default
    from kernels.attention.triton_attention import SM90_DEFAULTS

    jobs = candidate_jobs((90,))
    for d in (128, 256):
        for backward, blocks in zip((False, True), SM90_DEFAULTS[d]):
            label = f"attention {'bwd' if backward else 'fwd'} causal hd{d} bf16"
            found = [j for j in jobs if j.startswith(f"{label}|90|") and _resolve(jobs[j]["kwargs"]["blocks"]) == blocks]
            assert len(found) == 1, (label, blocks)
            assert _is_sm90_default(label, 90, blocks) and not _is_sm90_default(label, 80, blocks)
    assert not _is_sm90_default("int4 matmul m16 bf16", 90, SM90_DEFAULTS[128][0])
    assert _candidate_note({"default": True}) == " (default_blocks)"
    assert _candidate_note({"default": False, "problem_default": True}) == " (sm_90 default without window/softcap/segments)"
    assert _candidate_note({"default": False, "problem_default": False}) == ""
