"""Pallas lowering facts: what each Pallas kernel family lowers to, found on this machine
without a device (part of ``python -m benchmarks.compile_report``).

Every job traces one public Pallas entry point in its compiled mode (``interpret=False``) on
abstract arguments, finds the ``pallas_call``s in the jaxpr and, for each, reports what the
grid mapping states (grid, block shapes and dtypes, scratch buffers, num_warps / num_stages
or TPU dimension semantics) and what lowering that one call gives: ``jax.export`` for the
"cuda" platform (Pallas Triton: a ``__gpu$xla.gpu.triton`` custom call carrying Triton IR
bytecode; Mosaic GPU: ``mosaic_gpu_v2``) or "tpu" (``tpu_custom_call`` carrying a Mosaic
module). TPU rows add the VMEM the blocks need: every in/out block double-buffered plus the
scratch buffers, *computed* from the block shapes and dtypes (the Mosaic compiler's own
figure is only known on a TPU). Nothing here measures time.
"""
from __future__ import annotations

import base64
import json
import math

CUDA_TRITON = "__gpu$xla.gpu.triton"
IR_KIND = {CUDA_TRITON: "Triton IR (tt bytecode)", "triton_kernel_call_ffi": "Triton (compiled by jaxlib)",
           "mosaic_gpu_v2": "Mosaic GPU module", "mosaic_gpu": "Mosaic GPU module",
           "tpu_custom_call": "Mosaic TPU module"}
MXU_OPS = ("tt.dot", "tpu.matmul", "wgmma.mma_async (inline asm)")  # matmul ops counted in the IR


def _sds(shape, dtype):
    import jax

    return jax.ShapeDtypeStruct(shape, dtype)


def _loss(fn):
    """A scalar loss of ``fn``'s output, for jobs that lower the backward kernels too."""
    import jax.numpy as jnp

    return lambda *a: fn(*a).astype(jnp.float32).sum()


# --- jobs: label -> () -> (function, abstract args, platform, launcher blocks) ---------------
# Shapes are small but model-like (head_dim 128, GQA group 4, bf16): the lowering depends on
# them only through the padded block shapes and the grid.

def _attention_triton():
    import jax
    import jax.numpy as jnp

    from kernels.attention.pallas_attention import attention_pallas, default_blocks

    blocks = default_blocks(128, interpret=False)
    fn = _loss(lambda q, k, v: attention_pallas(q, k, v, causal=True, window=None, softcap=None,
                                                scale=0.088, q_segment_ids=None, kv_segment_ids=None,
                                                blocks=blocks, interpret=False))
    q, kv = _sds((1, 512, 8, 128), jnp.bfloat16), _sds((1, 512, 2, 128), jnp.bfloat16)
    return jax.grad(fn, argnums=(0, 1, 2)), (q, kv, kv), "cuda", blocks


def _attention_mgpu():
    import jax
    import jax.numpy as jnp

    from kernels.attention.pallas_mgpu import attention_pallas_mgpu, default_blocks

    blocks = default_blocks(128)
    fn = _loss(lambda q, k, v: attention_pallas_mgpu(q, k, v, causal=True, window=None, softcap=None,
                                                     scale=0.088, q_segment_ids=None, kv_segment_ids=None,
                                                     blocks=blocks, interpret=False))
    q, kv = _sds((1, 512, 8, 128), jnp.bfloat16), _sds((1, 512, 2, 128), jnp.bfloat16)
    return jax.grad(fn, argnums=(0, 1, 2)), (q, kv, kv), "cuda", blocks


def _attention_tpu():
    import jax
    import jax.numpy as jnp

    from kernels.attention.pallas_tpu import attention_pallas_tpu, chip_blocks

    blocks = chip_blocks("TPU v5p")
    fn = _loss(lambda q, k, v: attention_pallas_tpu(q, k, v, causal=True, window=None, softcap=None,
                                                    scale=0.088, q_segment_ids=None, kv_segment_ids=None,
                                                    blocks=blocks, interpret=False))
    q, kv = _sds((1, 2048, 8, 128), jnp.bfloat16), _sds((1, 2048, 2, 128), jnp.bfloat16)
    return jax.grad(fn, argnums=(0, 1, 2)), (q, kv, kv), "tpu", blocks


def _decode_triton():
    import jax.numpy as jnp

    from kernels.decode.pallas_decode import decode_pallas, default_blocks

    blocks = default_blocks(128, 4096, interpret=False)
    fn = lambda q, k, v, n: decode_pallas(q, k, v, n, window=None, softcap=None, scale=0.088,
                                          blocks=blocks, num_splits=8, interpret=False)
    cache = _sds((2, 4096, 2, 128), jnp.bfloat16)
    return fn, (_sds((2, 8, 128), jnp.bfloat16), cache, cache, _sds((2,), jnp.int32)), "cuda", blocks


def _decode_tpu():
    import jax.numpy as jnp

    from kernels.decode.pallas_tpu_decode import decode_attention_pallas_tpu, decode_chip_blocks

    blocks = decode_chip_blocks("TPU v5p")
    fn = lambda q, k, v, n: decode_attention_pallas_tpu(q, k, v, n, window=None, softcap=None,
                                                        scale=0.088, blocks=blocks, interpret=False)
    cache = _sds((2, 4096, 2, 128), jnp.bfloat16)
    return fn, (_sds((2, 8, 128), jnp.bfloat16), cache, cache, _sds((2,), jnp.int32)), "tpu", blocks


def _decode_tpu_paged():
    import jax.numpy as jnp

    from kernels.decode.pallas_tpu_paged_decode import (default_paged_blocks,
                                                        paged_decode_attention_pallas_tpu)

    blocks = default_paged_blocks(64, 64)  # rows of 4096 positions in pages of 64
    fn = lambda q, k, v, n, bt: paged_decode_attention_pallas_tpu(
        q, k, v, n, bt, window=None, softcap=None, scale=0.088, blocks=blocks, interpret=False)
    pool = _sds((2 * 64 + 8, 64, 2, 128), jnp.bfloat16)
    args = (_sds((2, 8, 128), jnp.bfloat16), pool, pool, _sds((2,), jnp.int32), _sds((2, 64), jnp.int32))
    return fn, args, "tpu", blocks


def _rms_norm():
    import jax
    import jax.numpy as jnp

    from kernels.norms.pallas_norms import default_blocks, norm_pallas

    blocks = default_blocks(2048, interpret=False)

    def fn(x, w, r):
        y, h = norm_pallas(x, w, None, r, rms=True, eps=1e-6, offset=1.0, blocks=blocks, interpret=False)
        return y.astype(jnp.float32).sum() + h.astype(jnp.float32).sum()

    x = _sds((256, 2048), jnp.bfloat16)
    return jax.grad(fn, argnums=(0, 1, 2)), (x, _sds((2048,), jnp.bfloat16), x), "cuda", blocks


def _rope():
    import jax
    import jax.numpy as jnp

    from kernels.rope.pallas_rope import default_blocks, rope_pallas

    blocks = default_blocks(128, interpret=False)
    fn = _loss(lambda x, pos: rope_pallas(x, pos, theta=1e4, sections=1, blocks=blocks, interpret=False))
    return (jax.grad(fn), (_sds((2, 256, 8, 128), jnp.bfloat16), _sds((2, 256), jnp.int32)), "cuda",
            blocks)


def _gated_gelu():
    import jax
    import jax.numpy as jnp

    from kernels.activations.pallas_activations import default_blocks, gelu_pallas

    blocks = default_blocks(interpret=False)
    fn = _loss(lambda x, up: gelu_pallas(x, up, approximate="tanh", blocks=blocks, interpret=False))
    x = _sds((256, 4096), jnp.bfloat16)
    return jax.grad(fn, argnums=(0, 1)), (x, x), "cuda", blocks


def _patch_embed():
    import jax
    import jax.numpy as jnp

    from kernels.patch_embed.pallas_patch_embed import default_blocks, patch_embed_pallas

    blocks = default_blocks(interpret=False)
    fn = _loss(lambda *a: patch_embed_pallas(*a, patch=14, blocks=blocks, interpret=False))
    d, n, k = 1152, (224 // 14) ** 2, 14 * 14 * 3
    args = (_sds((2, 224, 224, 3), jnp.bfloat16), _sds((k, d), jnp.bfloat16), _sds((d,), jnp.bfloat16),
            _sds((n, d), jnp.bfloat16))
    return jax.grad(fn, argnums=(0, 1, 2, 3)), args, "cuda", blocks


def _log_mel():
    import jax.numpy as jnp

    from kernels.audio.pallas_log_mel import default_blocks, log_mel_pallas
    from kernels.audio.spec import geometry

    blocks, problem = default_blocks(interpret=False), geometry(16000, 2, n_mels=80)
    fn = lambda w: log_mel_pallas(w, problem, blocks=blocks, interpret=False)
    return fn, (_sds((2, 16000), jnp.float16),), "cuda", blocks


def _int4(rows):
    def job():
        import jax.numpy as jnp

        from kernels.int4.pallas_int4 import default_blocks, int4_matmul_pallas

        blocks = default_blocks(rows, interpret=False)
        fn = lambda x, p, s: int4_matmul_pallas(x, p, s, None, 128, blocks=blocks, interpret=False)
        k, n = 2048, 2048
        args = (_sds((rows, k), jnp.bfloat16), _sds((n, k // 2), jnp.uint8),
                _sds((k // 128, n), jnp.bfloat16))
        return fn, args, "cuda", blocks
    return job


def _linear_cross_entropy():
    import jax
    import jax.numpy as jnp

    from kernels.cross_entropy.jax_cross_entropy import default_blocks, linear_cross_entropy_jax

    blocks = default_blocks(256000, interpret=False)
    fn = jax.grad(lambda x, w, t, r: linear_cross_entropy_jax(x, w, t, r, impl="pallas", blocks=blocks,
                                                              interpret=False), argnums=(0, 1))
    args = (_sds((512, 2048), jnp.bfloat16), _sds((256000, 2048), jnp.bfloat16), _sds((512,), jnp.int32),
            _sds((512,), jnp.float32))
    return fn, args, "cuda", blocks


PALLAS_JOBS = {
    "attention fwd+bwd hd128 bf16 (Pallas Triton)": _attention_triton,
    "attention fwd+bwd hd128 bf16 (Mosaic GPU)": _attention_mgpu,
    "attention fwd+bwd hd128 bf16 (Mosaic TPU, v5p blocks)": _attention_tpu,
    "decode hd128 bf16 (Pallas Triton)": _decode_triton,
    "decode hd128 bf16 (Mosaic TPU, v5p blocks)": _decode_tpu,
    "decode paged64 hd128 bf16 (Mosaic TPU)": _decode_tpu_paged,
    "rms_norm+residual fwd+bwd 2048 bf16": _rms_norm,
    "rope fwd+bwd hd128 bf16": _rope,
    "gated_gelu fwd+bwd bf16": _gated_gelu,
    "patch_embed p14 fwd+bwd bf16": _patch_embed,
    "log_mel 80 fp16": _log_mel,
    "int4 matmul m1 bf16": _int4(1),
    "int4 matmul m512 bf16": _int4(512),
    "linear_cross_entropy fwd+bwd v256000 bf16 (Pallas Triton)": _linear_cross_entropy,
}


# --- facts -----------------------------------------------------------------------------------

KERNEL_PRIMITIVES = ("pallas_call", "mpmd_map")  # mpmd_map: plgpu.kernel (Mosaic GPU)


def pallas_calls(jaxpr):
    """The kernel equations of a jaxpr (``pallas_call``; ``mpmd_map`` for Mosaic GPU kernels),
    sub-jaxprs (jit, custom_vjp, custom_vmap, ...) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in KERNEL_PRIMITIVES:
            yield eqn
            continue
        for p in eqn.params.values():
            for sub in p if isinstance(p, (list, tuple)) else [p]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from pallas_calls(sub)


def _block_dims(bm) -> list:
    """Block shape as ints, None for squeezed dimensions."""
    out = []
    for d in bm.block_shape:
        size = getattr(d, "block_size", d)
        out.append(size if isinstance(size, int) else None)
    return out


def _nbytes(aval) -> int:
    aval = getattr(aval, "inner_aval", aval)
    return math.prod(aval.shape) * aval.dtype.itemsize


def _is_array_ref(aval) -> bool:
    import numpy as np

    inner = getattr(aval, "inner_aval", None)
    try:
        return inner is not None and bool(inner.shape) and np.dtype(inner.dtype).itemsize > 0
    except TypeError:
        return False


def _tpu_padded_bytes(shape, dtype) -> int:
    """Bytes of a VMEM buffer in TPU (sublane, 128-lane) tiles: the last dim rounds up to 128,
    the second-last to 8 32-bit sublanes (16 for 2-byte, 32 for 1-byte dtypes)."""
    import numpy as np

    item = np.dtype(dtype).itemsize
    shape = [1, *shape] if len(shape) == 1 else list(shape)
    sub = 8 * max(1, 4 // item)
    shape[-1] = -(-shape[-1] // 128) * 128
    shape[-2] = -(-shape[-2] // sub) * sub
    return math.prod(shape) * item


def _buffer(aval) -> dict:
    inner = getattr(aval, "inner_aval", aval)
    space = getattr(aval, "memory_space", None)
    return {"shape": list(inner.shape), "dtype": str(inner.dtype), "bytes": _nbytes(inner),
            "space": None if space is None else str(space)}


def _params(facts: dict, params) -> None:
    facts["params"] = None if params is None else type(params).__module__.split(".")[-2]
    for key in ("num_warps", "num_stages", "dimension_semantics", "vmem_limit_bytes", "approx_math"):
        value = getattr(params, key, None)
        if value is not None:
            facts[key] = list(value) if isinstance(value, tuple) else value


def _mgpu_facts(eqn) -> dict:
    """plgpu.kernel: a grid mesh over whole GMEM operands; SMEM scratch in a run_scoped."""
    mesh = eqn.params["meshes"][0]
    body = eqn.params["jaxprs"][0]
    body = getattr(body, "jaxpr", body)
    scratch = []
    for inner in body.eqns:
        if inner.primitive.name == "run_scoped":
            scratch = [_buffer(v.aval) for v in inner.params["jaxpr"].invars
                       if _is_array_ref(v.aval)]  # barriers are refs of a non-numeric dtype
            break
    name = eqn.params.get("name")
    facts = {"name": "mosaic_gpu_kernel" if name in (None, "anonymous") else str(name),
             "grid": [int(g) for g in mesh.grid],
             "blocks": [{"kind": "gmem", "block": list(v.aval.inner_aval.shape), "array": None,
                         "dtype": str(v.aval.inner_aval.dtype), "block_bytes": 0} for v in body.invars],
             "scratch": scratch, "scalar_prefetch": 0,
             "smem_bytes": sum(s["bytes"] for s in scratch), "smem_source": "computed"}
    _params(facts, eqn.params["compiler_params"])
    return facts


def grid_facts(eqn) -> dict:
    """What the grid mapping and compiler params of one kernel equation state."""
    if eqn.primitive.name == "mpmd_map":
        return _mgpu_facts(eqn)
    gm = eqn.params["grid_mapping"]
    blocks = []
    for i, bm in enumerate(gm.block_mappings):
        inner = bm.transformed_block_aval.inner_aval
        blocks.append({"kind": "in" if i < gm.num_inputs else "out", "block": _block_dims(bm),
                       "ref": list(inner.shape), "array": list(bm.array_aval.shape),
                       "dtype": str(inner.dtype), "block_bytes": _nbytes(inner)})
    facts = {"name": str(eqn.params.get("name") or "?"),
             "grid": [int(g) if isinstance(g, int) else str(g) for g in gm.grid],
             "blocks": blocks, "scratch": [_buffer(a) for a in gm.scratch_avals],
             "scalar_prefetch": int(gm.num_index_operands)}
    _params(facts, eqn.params["compiler_params"])
    return facts


def vmem_bytes(facts: dict) -> int:
    """VMEM a TPU pallas_call's pipeline needs, computed: every in/out block double-buffered,
    plus the scratch buffers, each padded to (sublane, 128-lane) tiles."""
    blocks = sum(_tpu_padded_bytes(b["ref"], b["dtype"]) for b in facts["blocks"])
    return 2 * blocks + sum(_tpu_padded_bytes(s["shape"], s["dtype"]) for s in facts["scratch"])


def _custom_calls(module_text: str) -> list[tuple[str, bytes, dict]]:
    """(target, IR blob, attributes) per custom call of an exported module with a kernel body."""
    from jax._src.interpreters import mlir as jmlir
    from jax._src.lib.mlir import ir

    out = []
    with jmlir.make_ir_context() as ctx:
        ctx.allow_unregistered_dialects = True
        calls = []

        def find(op):
            if op.name == "stablehlo.custom_call":
                calls.append(op)
            return ir.WalkResult.ADVANCE

        module = ir.Module.parse(module_text)  # kept alive: the op handles point into it
        module.operation.walk(find)
        for call in calls:
            target = ir.StringAttr(call.attributes["call_target_name"]).value
            if target not in IR_KIND:
                continue
            config = call.attributes["backend_config" if "backend_config" in call.attributes
                                     else "mhlo.backend_config"]
            try:
                config = ir.DictAttr(config)
            except ValueError:  # tpu_custom_call: a JSON string with the base64 Mosaic bytecode
                config = json.loads(ir.StringAttr(config).value)["custom_call_config"]["body"]
                out.append((target, base64.b64decode(config), {}))
                continue
            attrs, blob = {}, b""
            for key in ("ir", "module", "opaque"):
                if key in config:
                    blob = ir.StringAttr(config[key]).value_bytes
                    break
            for key in ("num_warps", "num_stages", "grid_x", "grid_y", "grid_z"):
                if key in config:
                    attrs[key] = ir.IntegerAttr(config[key]).value
            out.append((target, blob, attrs))
    return out


def _op_counts(blob: bytes, target: str) -> dict | None:
    """Matmul op counts inside a kernel's IR blob (Mosaic GPU: wgmma in inline asm); None when
    this jaxlib cannot read the blob back."""
    from jax._src.interpreters import mlir as jmlir
    from jax._src.lib.mlir import ir

    counts = dict.fromkeys(MXU_OPS, 0)
    with jmlir.make_ir_context() as ctx, ir.Location.unknown():
        ctx.allow_unregistered_dialects = True
        try:
            if target == "tpu_custom_call":  # versioned Mosaic bytecode: deserialize first
                from jax._src.lib import tpu
                from jaxlib.mlir.passmanager import PassManager

                tpu.register_dialect(ctx)
                module = ir.Module.parse(blob)
                PassManager.parse("builtin.module(mosaic-serde{serialize=false})").run(module.operation)
            else:
                module = ir.Module.parse(blob)
        except Exception:  # a dialect or version this jaxlib cannot read back: reported as unknown
            return None

        def visit(op):
            name = op.name.removeprefix("stable_mosaic_gpu.")
            if name in counts:
                counts[name] += 1
            elif name == "llvm.inline_asm" and "wgmma.mma_async" in str(op.attributes["asm_string"]):
                counts["wgmma.mma_async (inline asm)"] += 1
            return ir.WalkResult.ADVANCE

        module.operation.walk(visit)
    return {k: v for k, v in counts.items() if v}


def lower_one(eqn, platform: str) -> dict:
    """Export one pallas_call alone for ``platform``: IR kind, IR size, the launch it carries."""
    import jax
    from jax import export

    args = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars]
    fn = jax.jit(lambda *a: eqn.primitive.bind(*a, **eqn.params))
    exported = export.export(fn, platforms=(platform,),
                             disabled_checks=[export.DisabledSafetyCheck.custom_call(CUDA_TRITON)])(*args)
    calls = _custom_calls(exported.mlir_module())
    if len(calls) != 1:
        raise RuntimeError(f"expected one kernel custom call, found {[c[0] for c in calls]}")
    target, blob, attrs = calls[0]
    return {"lowered": True, "custom_call": target, "ir_kind": IR_KIND[target], "ir_bytes": len(blob),
            "ir_matmul_ops": _op_counts(blob, target) if target != "triton_kernel_call_ffi" else None,
            **{f"lowered_{k}": v for k, v in attrs.items()}}


def job_rows(label: str, job) -> list[dict]:
    """One row per pallas_call of a job (or one error row)."""
    import jax

    try:
        fn, args, platform, blocks = job()
        eqns = list(pallas_calls(jax.make_jaxpr(fn)(*args).jaxpr))
    except Exception as e:  # reported per job
        return [{"family": label, "kernel": "-", "lowered": False, "error": f"{type(e).__name__}: {e}"[:2000]}]
    rows = []
    for eqn in eqns:
        row = {"family": label, "kernel": eqn.params.get("name") or "?", "platform": platform,
               "launcher_blocks": repr(blocks)}
        try:
            facts = grid_facts(eqn)
            row.update(kernel=facts.pop("name"), **facts)
            if platform == "tpu":
                row["vmem_bytes"], row["vmem_source"] = vmem_bytes(facts), "computed"
            row.update(lower_one(eqn, platform))
        except Exception as e:  # reported per kernel: a failed lowering is a finding
            row.update(lowered=False, error=f"{type(e).__name__}: {e}"[:2000])
        rows.append(row)
    return rows


def build_pallas_rows(jobs=None) -> list[dict]:
    jobs = PALLAS_JOBS if jobs is None else jobs
    return [row for label, job in jobs.items() for row in job_rows(label, job)]


def _fmt_block(b: dict) -> str:
    dims = "x".join("·" if d is None else str(d) for d in b["block"])
    return f"{b['kind']} {dims} {b['dtype'].replace('bfloat16', 'bf16').replace('float', 'f')}"


def _row_cells(r: dict) -> list[str]:
    if "grid" not in r:  # tracing failed before any grid was known
        return [r["family"], r["kernel"], r.get("platform", "-"), "-", "-", "-", "no",
                f"error: {r['error'][:100]}", "–", "–", "–"]
    launch = (f"{r.get('num_warps', '–')} / {r.get('num_stages', '–')}" if "num_warps" in r
              else ", ".join(r.get("dimension_semantics") or []) or "–")
    ops = r.get("ir_matmul_ops")
    if "vmem_bytes" in r:
        on_chip = f"VMEM {r['vmem_bytes'] / 1024:.0f} (computed)"
    elif "smem_bytes" in r:
        on_chip = f"SMEM {r['smem_bytes'] / 1024:.0f} (computed)"
    else:
        on_chip = "–"
    lowered = r.get("lowered")
    return [r["family"], r["kernel"], r["platform"], "x".join(map(str, r["grid"])),
            "<br>".join(_fmt_block(b) for b in r["blocks"]), launch, "yes" if lowered else "no",
            r["ir_kind"] if lowered else f"error: {r.get('error', '')[:100]}",
            f"{r['ir_bytes'] / 1024:.1f}" if lowered else "–",
            "–" if ops is None else ", ".join(f"{k} {v}" for k, v in ops.items()) or "0", on_chip]


def pallas_markdown(rows: list[dict]) -> str:
    """The Pallas section of the compile report: one row per kernel."""
    lines = ["## Pallas lowering (jax.export on this machine; no device)", "",
             "Blocks: one per operand (· = squeezed dim; gmem = whole operand, Mosaic GPU copies "
             "tiles itself). On-chip (KiB): TPU VMEM = in/out blocks double-buffered + scratch, "
             "padded to (sublane, 128) tiles; Mosaic GPU SMEM = scratch; both computed from shapes "
             "and dtypes, not reported by a compiler.", "",
             "| family | kernel | platform | grid | blocks | warps / stages or dims | lowered | IR "
             "| IR (KiB) | matmul ops in IR | on-chip (KiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(_row_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"
