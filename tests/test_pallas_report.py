"""The compile report's Pallas section (benchmarks/pallas_report.py): kernels lowered with
jax.export for "cuda" / "tpu" on this machine report the grid and block shapes their
launchers pick, the IR they lower to, and (TPU) the VMEM their blocks need."""
from __future__ import annotations

import pytest

from benchmarks import pallas_report as pr


@pytest.fixture(scope="module")
def rows():
    jobs = {k: pr.PALLAS_JOBS[k] for k in ("attention fwd+bwd hd128 bf16 (Pallas Triton)",
                                             "decode hd128 bf16 (Mosaic TPU, v5p blocks)",
                                             "decode paged64 hd128 bf16 (Mosaic TPU)",
                                             "int4 matmul m512 bf16")}
    return {(r["family"].split()[0], r["kernel"]): r for r in pr.build_pallas_rows(jobs)}


def test_triton_attention_kernels_lower_with_the_launcher_blocks(rows):
    from kernels.attention.pallas_attention import default_blocks

    b = default_blocks(128, interpret=False)
    for name, dots in (("mqa_flash_fwd", 2), ("mqa_flash_bwd_dkdv", 4), ("mqa_flash_bwd_dq", 3)):
        r = rows[("attention", name)]
        assert r["lowered"], r.get("error")
        assert r["ir_kind"] == "Triton IR (tt bytecode)" and r["ir_bytes"] > 1000
        assert (r["num_warps"], r["num_stages"]) == (b.num_warps, b.num_stages)
        assert (r["lowered_num_warps"], r["lowered_num_stages"]) == (b.num_warps, b.num_stages)
        # per loop body fwd: QK^T, PV; dkdv: 4; dq: 3; three loops each (masked edges, unmasked middle)
        assert r["ir_matmul_ops"] == {"tt.dot": 3 * dots}
    fwd = rows[("attention", "mqa_flash_fwd")]
    # q [1, 512, 8, 128] folded to rows 512 * 4 per kv head: grid (rows / block_q, batch, kv heads)
    assert fwd["grid"] == [512 * 4 // b.block_q, 1, 2]
    assert fwd["blocks"][0]["block"] == [None, None, b.block_q, 128]
    assert [fwd["lowered_grid_x"], fwd["lowered_grid_y"], fwd["lowered_grid_z"]] == fwd["grid"]
    dkdv = rows[("attention", "mqa_flash_bwd_dkdv")]
    assert dkdv["blocks"][-1]["block"] == [None, b.block_k, None, 128]


def test_tpu_decode_lowers_to_mosaic_with_computed_vmem(rows):
    r = rows[("decode", "tpu_decode_attention")]
    assert r["lowered"], r.get("error")
    assert r["ir_kind"] == "Mosaic TPU module" and r["custom_call"] == "tpu_custom_call"
    assert r["grid"] == [2, 2, 4096 // 1024]  # (batch, kv heads / heads per block, cache blocks)
    assert [b["block"] for b in r["blocks"]] == [[None, 1, 8, 128], [None, 1024, 128],
                                                  [None, 1024, 128], [None, 1, 8, 128]]
    assert r["dimension_semantics"] == ["parallel", "parallel", "arbitrary"]
    # q and o blocks [1, 8, 128] bf16 (8 rows pad to 16 bf16 sublanes), K and V [1024, 128] bf16,
    # all double-buffered; scratch m, l [1, 8, 1] f32 (lanes pad to 128), acc [1, 8, 128] f32
    want = 2 * (2 * 16 * 128 * 2 + 2 * 1024 * 128 * 2) + 3 * 8 * 128 * 4
    assert (r["vmem_bytes"], r["vmem_source"]) == (want, "computed")


def test_tpu_paged_decode_lowers_one_operand_per_page_slot(rows):
    r = rows[("decode", "tpu_paged_decode_attention")]
    assert r["lowered"], r.get("error")
    assert r["custom_call"] == "tpu_custom_call" and r["scalar_prefetch"] == 2  # lengths, table
    assert r["grid"] == [2, 2, 64 // 4]  # (batch, kv heads, pages per row / pages per step)
    pages = [b["block"] for b in r["blocks"][1:-1]]
    assert pages == [[None, 64, 128]] * 8  # 4 K then 4 V page slots, one kv head each
    assert r["ir_matmul_ops"] == {"tpu.matmul": 8}  # QK^T and PV per slot


def test_int4_and_markdown(rows):
    r = rows[("int4", "int4_matmul")]
    assert r["lowered"] and r["ir_matmul_ops"] == {"tt.dot": 2}, r  # even / odd nibble dots
    md = pr.pallas_markdown(list(rows.values()))
    assert md.count("\n| ") == len(rows) + 1
    assert "| decode hd128 bf16 (Mosaic TPU, v5p blocks) | tpu_decode_attention | tpu | 2x2x4 |" in md


def test_vmem_padding_rule():
    assert pr._tpu_padded_bytes([512, 1], "float32") == 512 * 128 * 4
    assert pr._tpu_padded_bytes([8, 128], "bfloat16") == 16 * 128 * 2
    assert pr._tpu_padded_bytes([100], "int8") == 32 * 128
