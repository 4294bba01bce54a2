"""Compile report: every Triton kernel compiled ahead of time for sm_80 and sm_90 on this
machine (no GPU needed), with what the compiler tells about it, plus what the Pallas
kernels lower to.

    python -m benchmarks.compile_report [--out benchmarks/report] [--caps 80 90]
                                        [--candidate-caps 90] [--no-pallas]
    python -m benchmarks.compile_report --sweep [--caps 80 90] [--json-out FILE]

Per kernel and target: registers per thread, spills, shared memory, the occupancy those
allow (resident warps per SM), and the instruction mix of the SASS (HGMMA / HMMA / FFMA /
MUFU counts, through the ``nvdisasm`` the Triton wheel carries). Kernels come from each
op's ``aot_kernels`` helper (the exact specializations its launcher uses); ``DEFAULT_JOBS``
lists the default configuration of every Triton op. ``CANDIDATE_JOBS`` compiles each
autotuning candidate (the op's ``candidate_blocks``, default first) of the ops where tiles
matter most, for ``--candidate-caps``; a spilling candidate is reported, not an error.
The Pallas section (``benchmarks.pallas_report``) lowers every Pallas kernel family with
``jax.export`` for "cuda" / "tpu": grid, block shapes, launch knobs, IR kind and size, TPU
VMEM. ``--jobs`` compiles a given job list (the AOT tests use it, in a subprocess).
``--sweep`` is the spill audit: ``sweep_configs`` (every op's default over fp32/fp16/bf16
and the head dims / widths the models run: 756 kernels, about 90 s on 2 cores
with a warm Triton cache, scaled from 588 in ~70 s) on ``--caps``, printed, exit
status 1 on a spill not in ``SWEEP_KNOWN_SPILLS``; ``--json-out`` records its rows with the
commit and library versions (``benchmarks/report/spill_audit.json``). ``VARIANT_JOBS`` (sm_90)
are the tiles and features the defaults avoid, with their spills, as the README cites them. Runs in its own process with
TRITON_INTERPRET=0: Triton's interpreter patches ``triton.language`` in a way that breaks
real compiles in the same process. Exit status 1 when a default configuration fails to
compile or spills.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

# SM limits per compute capability: registers, max resident warps and threads, shared memory.
SM_LIMITS = {80: dict(regs=65536, warps=64, smem=164 * 1024, block_smem=163 * 1024),
             90: dict(regs=65536, warps=64, smem=228 * 1024, block_smem=227 * 1024)}
SASS_OPS = ("HGMMA", "HMMA", "FFMA", "FMUL", "MUFU", "LDGSTS", "UTMALDG", "LDG", "STG")


# The default configuration of every Triton op, as jobs: label -> (launcher module, args,
# kwargs) of its ``aot_kernels``; "torch.<dtype>" strings name torch dtypes. Launchers that
# take ``capability`` get the target's (major, minor).
DEFAULT_JOBS = {
    "attention causal hd128 fp16": ("kernels.attention.triton_attention", [128, "torch.float16"],
                                    {"causal": True}),
    "attention causal hd128 bf16": ("kernels.attention.triton_attention", [128, "torch.bfloat16"],
                                    {"causal": True}),
    "decode hd128 bf16": ("kernels.decode.triton_decode", [128, "torch.bfloat16"], {}),
    "decode hd128 fp32": ("kernels.decode.triton_decode", [128, "torch.float32"], {}),
    "decode paged64 hd128 bf16": ("kernels.decode.triton_decode", [128, "torch.bfloat16"],
                                  {"page_size": 64}),
    "rms_norm+residual 2048 bf16": ("kernels.norms.triton_norms", [2048, "torch.bfloat16"],
                                    {"rms": True, "residual": True}),
    "layer_norm 1152 bf16": ("kernels.norms.triton_norms", [1152, "torch.bfloat16"],
                             {"rms": False, "residual": False}),
    "rope hd128 bf16": ("kernels.rope.triton_rope", [128, "torch.bfloat16"], {"sections": 1}),
    "gated_gelu bf16": ("kernels.activations.triton_activations", ["torch.bfloat16"],
                        {"approximate": "tanh", "gated": True}),
    "patch_embed p14 bf16": ("kernels.patch_embed.triton_patch_embed", ["torch.bfloat16"], {"patch": 14}),
    "log_mel 80 fp16": ("kernels.audio.triton_log_mel", ["torch.float16"], {"n_mels": 80}),
    "int4 matmul m16 bf16": ("kernels.int4.triton_int4", ["torch.bfloat16"], {"rows": 16}),
    "int4 matmul m4096 bf16": ("kernels.int4.triton_int4", ["torch.bfloat16"], {"rows": 4096}),
    "linear_cross_entropy bf16": ("kernels.cross_entropy.triton_cross_entropy", ["torch.bfloat16"], {}),
}

# The spill audit (``--sweep``): every op's default configuration over the dtypes and sizes
# the models run. Head dims of the presets and encoders (80 and 96 masked), norm widths of
# the conformer, SigLIP, nano1/2 and pro decoders (norms tile next_pow2(width)), int4 row
# buckets of ``default_blocks`` (decode, small batch, prefill) at group 128 symmetric and
# group 32 asymmetric. Same form as DEFAULT_JOBS; the AOT tests assert their op's entries.
SWEEP_DTYPES = {"fp32": "torch.float32", "fp16": "torch.float16", "bf16": "torch.bfloat16"}
SWEEP_HEAD_DIMS = (64, 80, 96, 128, 256)
SWEEP_NORM_WIDTHS = (1024, 1152, 2048, 2560, 6144, 10240)


# Spills no launch knob removes (a kernel change would): (label prefix, kernel) -> why. The
# sweep lists them apart and does not fail on them. Empty: the norm backward past 8192
# columns, once listed here, is column-blocked now.
SWEEP_KNOWN_SPILLS: dict = {}


def known_spill(label: str, kernel: str):
    """SWEEP_KNOWN_SPILLS' reason for a sweep row, or None."""
    return next((why for (prefix, k), why in SWEEP_KNOWN_SPILLS.items()
                 if k == kernel and label.startswith(prefix + " ")), None)


def sweep_configs() -> dict:
    """label -> (launcher module, aot_kernels args, kwargs) of the spill audit."""
    attn, dec = "kernels.attention.triton_attention", "kernels.decode.triton_decode"
    out = {}
    for dt, t in SWEEP_DTYPES.items():
        for d in SWEEP_HEAD_DIMS:
            out[f"attention causal hd{d} {dt}"] = (attn, [d, t], {"causal": True})
            out[f"decode hd{d} {dt}"] = (dec, [d, t], {})
            out[f"decode paged64 hd{d} {dt}"] = (dec, [d, t], {"page_size": 64})
            out[f"rope hd{d} {dt}"] = ("kernels.rope.triton_rope", [d, t], {"sections": 1})
        out[f"rope_2d hd72 {dt}"] = ("kernels.rope.triton_rope", [72, t], {"sections": 2})
        for w in SWEEP_NORM_WIDTHS:
            out[f"rms_norm+residual {w} {dt}"] = ("kernels.norms.triton_norms", [w, t],
                                                  {"rms": True, "residual": True})
            out[f"layer_norm {w} {dt}"] = ("kernels.norms.triton_norms", [w, t],
                                           {"rms": False, "residual": False})
            # the ViT / conformer's fused ln2 and the encoders' projector norm (no residual)
            out[f"layer_norm+residual {w} {dt}"] = ("kernels.norms.triton_norms", [w, t],
                                                    {"rms": False, "residual": True})
            out[f"rms_norm {w} {dt}"] = ("kernels.norms.triton_norms", [w, t],
                                         {"rms": True, "residual": False})
        for approx, gated in (("tanh", True), ("none", False)):
            out[f"{'gated_' if gated else ''}gelu {approx} {dt}"] = (
                "kernels.activations.triton_activations", [t], {"approximate": approx, "gated": gated})
        for p in (14, 16):
            out[f"patch_embed p{p} {dt}"] = ("kernels.patch_embed.triton_patch_embed", [t], {"patch": p})
        for mels in (80, 128):
            out[f"log_mel {mels} {dt}"] = ("kernels.audio.triton_log_mel", [t], {"n_mels": mels})
        for rows in (16, 64, 4096):
            out[f"int4 matmul m{rows} g128 {dt}"] = ("kernels.int4.triton_int4", [t], {"rows": rows})
            out[f"int4 matmul m{rows} g32 asym {dt}"] = ("kernels.int4.triton_int4", [t],
                                                         {"rows": rows, "group_size": 32, "asymmetric": True})
        for cap in (False, True):
            out[f"linear_cross_entropy{' softcap' if cap else ''} {dt}"] = (
                "kernels.cross_entropy.triton_cross_entropy", [t], {"softcap": cap})
    return out


def sweep_jobs(caps=(80, 90), module: str | None = None) -> dict:
    """Compile jobs "label|cap" of ``sweep_configs`` (only ``module``'s when given)."""
    return {f"{label}|{cap}": {"module": m, "args": a, "kwargs": k, "cap": cap}
            for cap in caps for label, (m, a, k) in sweep_configs().items() if module in (None, m)}


# Autotuning candidates of the ops where tiles matter most: label -> (launcher module,
# candidate_blocks args, its kwargs, aot_kernels args, its kwargs, kernels compiled). Each
# candidate compiles through ``aot_kernels(..., blocks=candidate)``; the first is the default.
CANDIDATE_JOBS = {
    "attention fwd causal hd128 bf16": ("kernels.attention.triton_attention", [128, "torch.bfloat16"],
                                        {}, [128, "torch.bfloat16"], {"causal": True}, ["_attn_fwd_kernel"]),
    "attention bwd causal hd128 bf16": ("kernels.attention.triton_attention", [128, "torch.bfloat16"],
                                        {"backward": True}, [128, "torch.bfloat16"], {"causal": True},
                                        ["_attn_bwd_dkdv_kernel", "_attn_bwd_dv_kernel", "_attn_bwd_dq_kernel"]),
    "attention fwd causal hd256 bf16": ("kernels.attention.triton_attention", [256, "torch.bfloat16"],
                                        {}, [256, "torch.bfloat16"], {"causal": True}, ["_attn_fwd_kernel"]),
    "attention bwd causal hd256 bf16": ("kernels.attention.triton_attention", [256, "torch.bfloat16"],
                                        {"backward": True}, [256, "torch.bfloat16"], {"causal": True},
                                        ["_attn_bwd_dkdv_kernel", "_attn_bwd_dv_kernel", "_attn_bwd_dq_kernel"]),
    "decode split hd128 bf16": ("kernels.decode.triton_decode", [128, "torch.bfloat16", 32768], {},
                                [128, "torch.bfloat16"], {}, ["_decode_split_kernel"]),
    "int4 matmul m16 bf16": ("kernels.int4.triton_int4", [16, "torch.bfloat16"], {}, ["torch.bfloat16"],
                             {"rows": 16}, ["_int4_matmul_kernel"]),
    "int4 matmul m4096 bf16": ("kernels.int4.triton_int4", [4096, "torch.bfloat16"], {}, ["torch.bfloat16"],
                               {"rows": 4096}, ["_int4_matmul_kernel"]),
    "patch_embed fwd p14 bf16": ("kernels.patch_embed.triton_patch_embed", ["torch.bfloat16", "fwd"], {},
                                 ["torch.bfloat16"], {"patch": 14}, ["_patch_embed_fwd_kernel"]),
}


def _blocks_spec(cls: str, **fields) -> dict:
    """A block dataclass ("module:Class") as job JSON (``_resolve`` builds it in the compiling
    process, so this module imports no kernels)."""
    return {"__dataclass__": cls, **fields}


def _attn_blocks(**fields) -> dict:
    return _blocks_spec("kernels.attention.triton_attention:TritonAttentionBlocks", **fields)


_ATTN = "kernels.attention.triton_attention"
_FWD, _DKDV = ["_attn_fwd_kernel"], ["_attn_bwd_dkdv_kernel", "_attn_bwd_dv_kernel"]
# Feature variants whose compile costs the README cites (sm_90; spills are reported, not
# errors): tiles and features the defaults avoid because they spill. label -> (launcher
# module, aot_kernels args, kwargs, kernels compiled).
VARIANT_JOBS = {
    "attention fwd causal hd128 bf16 pointer 128x128": (
        _ATTN, [128, "torch.bfloat16"], {"causal": True, "blocks": _attn_blocks(
            block_m=128, block_n=128, num_warps=8, num_stages=2)}, _FWD),
    "attention fwd causal hd128 bf16 TMA 128x128": (
        _ATTN, [128, "torch.bfloat16"], {"causal": True, "blocks": _attn_blocks(
            block_m=128, block_n=128, num_warps=8, num_stages=2, tma=True)}, _FWD),
    "attention bwd causal hd128 bf16 TMA 64x64 softcap": (
        _ATTN, [128, "torch.bfloat16"], {"causal": True, "softcap": 30.0, "blocks": _attn_blocks(
            block_m=64, block_n=64, num_warps=8, num_stages=3, tma=True)}, _DKDV),
    "attention bwd causal hd80 fp16 TMA 64x64 window+softcap+segments": (
        _ATTN, [80, "torch.float16"], {"causal": True, "window": 128, "softcap": 30.0, "segments": True,
                                       "blocks": _attn_blocks(block_m=64, block_n=64, num_warps=8,
                                                              num_stages=3, tma=True)}, _DKDV),
    **{f"gluon fwd causal hd128 bf16 mode {m} 128x128 window+softcap": (
        _ATTN, [128, "torch.bfloat16"], {"causal": True, "window": 4096, "softcap": 50.0,
                                         "blocks": _attn_blocks(block_m=128, block_n=128, num_warps=w,
                                                                num_stages=2, gluon=m)}, _FWD)
       for m, w in ((1, 8), (2, 8), (3, 4))},
    **{f"gluon fwd causal hd128 bf16 mode {m} 128x128 segments": (
        _ATTN, [128, "torch.bfloat16"], {"causal": True, "segments": True,
                                         "blocks": _attn_blocks(block_m=128, block_n=128, num_warps=w,
                                                                num_stages=2, gluon=m)}, _FWD)
       for m, w in ((1, 8), (2, 8), (3, 4))},
    "gluon fwd causal hd256 bf16 mode 3 128x64 segments": (
        _ATTN, [256, "torch.bfloat16"], {"causal": True, "segments": True, "blocks": _attn_blocks(
            block_m=128, block_n=64, num_warps=4, num_stages=2, gluon=3)}, _FWD),
    **{f"gluon dkdv causal hd128 bf16 {m}-row window+softcap": (
        _ATTN, [128, "torch.bfloat16"], {"causal": True, "window": 4096, "softcap": 50.0,
                                         "blocks": _attn_blocks(block_m=m, block_n=128, num_warps=8,
                                                                num_stages=2, gluon_dkdv=True, **dq)}, _DKDV)
       for m, dq in ((64, dict(dq_block_m=64, dq_block_n=64)), (32, dict(dq_atomic=True)))},
    # the H200 sweep's 1.09 ms one-pass tile (the default took 1.39), not a candidate since 2c7c9ca
    "patch_embed fwd p14 bf16 128x128x32 8 warps 3 stages": (
        "kernels.patch_embed.triton_patch_embed", ["torch.bfloat16"], {"patch": 14, "blocks": _blocks_spec(
            "kernels.patch_embed.triton_patch_embed:PatchEmbedBlocks", block_m=128, block_n=128, block_k=32,
            num_warps=8, num_stages=3)}, ["_patch_embed_fwd_kernel"]),
}


def variant_jobs(caps=(90,)) -> dict:
    """Compile jobs "label|cap" of VARIANT_JOBS."""
    return {f"{label}|{cap}": {"module": m, "args": a, "kwargs": k, "cap": cap, "kernels": kernels}
            for cap in caps for label, (m, a, k, kernels) in VARIANT_JOBS.items()}


def _resolve(value):
    """"torch.<dtype>" -> the dtype; {"__dataclass__": "module:Class", **fields} -> an instance
    (block dataclasses in JSON job files); anything else as is."""
    import importlib

    import torch

    if isinstance(value, str) and value.startswith("torch."):
        return getattr(torch, value[len("torch."):])
    if isinstance(value, dict) and "__dataclass__" in value:
        module, name = value["__dataclass__"].split(":")
        fields = {k: v for k, v in value.items() if k != "__dataclass__"}
        return getattr(importlib.import_module(module), name)(**fields)
    return value


def blocks_json(blocks) -> dict:
    """A block dataclass as the JSON ``_resolve`` turns back into it."""
    import dataclasses

    cls = type(blocks)
    return {"__dataclass__": f"{cls.__module__}:{cls.__name__}", **dataclasses.asdict(blocks)}


def _is_sm90_default(label: str, cap: int, blocks) -> bool:
    """Whether ``blocks`` is sm_90's attention default for problems without a window, softcap
    or segment ids (``triton_attention.SM90_DEFAULTS``; the CANDIDATE_JOBS problems have none)."""
    from kernels.attention.triton_attention import SM90_DEFAULTS

    return cap == 90 and label.startswith("attention") and any(blocks in pair for pair in SM90_DEFAULTS.values())


def _candidate_note(row: dict) -> str:
    """The candidate's default marks: ``default_blocks`` (candidate 0), and sm_90's attention
    default where no window / softcap / segment ids rule the Gluon kernels out."""
    notes = (["default_blocks"] if row["default"] else []) + (
        ["sm_90 default without window/softcap/segments"] if row.get("problem_default") else [])
    return f" ({'; '.join(notes)})" if notes else ""


def candidate_jobs(caps=(90,)) -> dict:
    """Compile jobs for every candidate of CANDIDATE_JOBS on each capability:
    "label|cap|i" -> job with kwargs blocks = candidate i (0 = the default)."""
    jobs = {}
    for cap in caps:
        for label, (module, c_args, c_kwargs, a_args, a_kwargs, kernels) in CANDIDATE_JOBS.items():
            cands = job_kernels(module, c_args, c_kwargs, cap, func="candidate_blocks")
            for i, blocks in enumerate(cands):
                jobs[f"{label}|{cap}|{i}"] = {"module": module, "args": a_args, "cap": cap,
                                              "kwargs": {**a_kwargs, "blocks": blocks_json(blocks)},
                                              "kernels": kernels}
    return jobs


def job_kernels(module: str, args, kwargs, cap: int, func: str = "aot_kernels") -> dict:
    """{kernel name: AotKernel} from ``module.func(*args, **kwargs)`` with values resolved."""
    import importlib

    import inspect

    fn = getattr(importlib.import_module(module), func)
    kwargs = {k: _resolve(v) for k, v in kwargs.items()}
    if "capability" in inspect.signature(fn).parameters:  # tune for the target being compiled
        kwargs.setdefault("capability", (cap // 10, cap % 10))
    return fn(*(_resolve(a) for a in args), **kwargs)


def compile_jobs(jobs: dict, work: str) -> dict:
    """jobs: id -> {"module", "args", "kwargs", "cap", optional "func", "kernels"} ->
    id -> {kernel name: compile_one(...) | {"error": ...}}.

    Triton compiles in this thread, one kernel after another; each kernel's ptxas and
    nvdisasm runs (external processes, most of the time once Triton's cache is warm) go to
    a pool of ``os.cpu_count()`` threads as soon as it is compiled."""
    out, pending = {}, []
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for job_id, job in jobs.items():
            try:
                kernels = job_kernels(job["module"], job.get("args", []), job.get("kwargs", {}),
                                      job["cap"], job.get("func", "aot_kernels"))
            except Exception as e:  # reported per job
                out[job_id] = {"error": f"{type(e).__name__}: {e}"}
                continue
            out[job_id] = {}
            # the listed kernels this job's blocks launch (the dV-only pass exists only with
            # dkdv_passes=2); none of them is an error
            names = [n for n in job.get("kernels") or list(kernels) if n in kernels]
            if not names:
                out[job_id] = {"error": f"none of {job.get('kernels')} in {sorted(kernels)}"}
                continue
            for name in names:
                try:
                    compiled = _compile(kernels[name], job["cap"], os.path.join(work, job_id_dir(job_id)))
                except Exception as e:  # reported per kernel
                    out[job_id][name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
                    continue
                pending.append((job_id, name, pool.submit(_inspect, *compiled)))
    for job_id, name, future in pending:
        try:
            out[job_id][name] = future.result()
        except Exception as e:  # reported per kernel
            out[job_id][name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    return out


def job_id_dir(job_id: str) -> str:
    """A directory name for one job's files (kernels of different jobs share names)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", job_id)


def occupancy(regs: int, shared: int, num_warps: int, cap: int) -> dict:
    lim = SM_LIMITS[cap]
    regs_per_warp = ((max(regs, 1) * 32 + 255) // 256) * 256  # allocation granularity 256
    by_regs = lim["regs"] // (regs_per_warp * num_warps)
    by_smem = lim["smem"] // shared if shared else 32
    by_warps = lim["warps"] // num_warps
    blocks = max(0, min(by_regs, by_smem, by_warps, 32))
    limiter = min((by_regs, "registers"), (by_smem, "shared memory"), (by_warps, "warps"))[1]
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * num_warps,
            "occupancy": blocks * num_warps / lim["warps"], "limited_by": limiter}


def compile_one(kernel, cap: int, workdir: str) -> dict:
    """Compile ``kernel`` for sm_<cap>; registers, spills, shared memory, occupancy, SASS mix."""
    return _inspect(*_compile(kernel, cap, workdir))


def _compile(kernel, cap: int, workdir: str):
    """Triton's compile (PTX and cubin written under ``workdir``) -> the arguments of ``_inspect``."""
    from triton.backends.compiler import GPUTarget

    from kernels._aot import compile_aot

    compiled = compile_aot(kernel, GPUTarget("cuda", cap, 32))
    os.makedirs(workdir, exist_ok=True)
    base = os.path.join(workdir, f"{kernel.name}-sm{cap}")
    with open(base + ".ptx", "w") as f:
        f.write(compiled.asm["ptx"])
    with open(base + ".cubin", "wb") as f:
        f.write(compiled.asm["cubin"])
    # warps as launched: a warp-specialized kernel adds its worker partitions' warpgroups
    return (base, cap, int(compiled.metadata.shared), int(compiled.metadata.num_warps), kernel.num_stages,
            "wgmma" in compiled.asm["ptx"], mma_dots(compiled.asm["ttgir"]),
            "griddepcontrol.wait" in compiled.asm["ptx"])


_MMA_LAYOUT = re.compile(r"^(#mma\d*) = #ttg\.nvidia_mma<\{versionMajor = \d+, versionMinor = \d+, "
                         r"warpsPerCTA = \[(\d+), (\d+)\], instrShape = \[(\d+), (\d+)", re.M)
_MMA_DOT = re.compile(r"(?:tt\.dot|ttng\.warp_group_dot) .*?-> tensor<(\d+)x(\d+)x\w+, (#mma\d*)>")


def mma_dots(ttgir: str) -> dict:
    """Tensor-core dots in the TTGIR (each copy of an unrolled or split loop counts) and how
    many are replicated: a [M, N] result whose layout spans more rows (16 per warp along M)
    or columns (the instruction's N per warp along N) than the tile has, so several warps
    (warpgroups) compute the same elements. Triton gives a dot whose result feeds another
    dot all warps along M, so with 8 warps a 64-row score tile is computed twice."""
    layouts = {name: tuple(int(v) for v in rest) for name, *rest in _MMA_LAYOUT.findall(ttgir)}
    total = replicated = 0
    for m, n, enc in _MMA_DOT.findall(ttgir):
        warps_m, warps_n, inst_m, inst_n = layouts[enc]
        total += 1
        replicated += int(m) < inst_m * warps_m or int(n) < inst_n * warps_n
    return {"total": total, "replicated": replicated}


_SASS_OP = re.compile(r"\b(" + "|".join(SASS_OPS) + r")\b")  # whole-word opcodes, one pass
_SASS_LINE = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", re.M)
_SASS_LABEL = re.compile(r"^(\.L_x_\d+):", re.M)


def loop_instructions(sass: str) -> int:
    """SASS instructions in the largest loop body (a label to a predicated branch back to it);
    0 without loops. Unconditional backward branches are not loops: they return from the
    out-of-line retry stubs of mbarrier waits (TMA kernels) to the main code. Per-iteration
    cost of a kernel's hot loop -- a compiler fact, not a timing: e.g. the int4 decode step's
    dequantization shows as instructions per code."""
    marks = sorted([(m.start(), "ins", m[1]) for m in _SASS_LINE.finditer(sass)]
                   + [(m.start(), "label", m[1]) for m in _SASS_LABEL.finditer(sass)])
    at, count, best = {}, 0, 0
    for _, kind, text in marks:
        if kind == "label":
            at[text] = count
            continue
        count += 1
        target = re.search(r"^@!?P\w*\s+BRA `\((\.L_x_\d+)\)", text)
        if target and target[1] in at:  # a conditional backward branch: the body is all since the label
            best = max(best, count - at[target[1]])
    return best


def _inspect(base: str, cap: int, shared: int, num_warps: int, num_stages: int, wgmma: bool,
             dots: dict | None = None, pdl_wait: bool = False) -> dict:
    """ptxas -v on ``base``.ptx (registers, spills) and nvdisasm on ``base``.cubin (SASS mix);
    subprocesses only, so threads can run several kernels' at once."""
    from triton.backends.nvidia import compiler as nvidia

    ptxas = subprocess.run([nvidia.get_ptxas(cap).path, "-v",
                            f"--gpu-name={nvidia.sm_arch_from_capability(cap)}", base + ".ptx",
                            "-o", base + ".o"], capture_output=True, text=True, check=True).stderr
    regs = int(re.search(r"Used (\d+) registers", ptxas)[1])
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptxas)
    nvdisasm = os.path.join(os.path.dirname(nvidia.__file__), "bin", "nvdisasm")
    mix = None
    if os.path.exists(nvdisasm):
        # -c: code sections only; -ndf: no branch-target annotation (labels, not opcodes)
        sass = subprocess.run([nvdisasm, "-c", "-ndf", base + ".cubin"], capture_output=True,
                              text=True, check=True).stdout
        counts = Counter(_SASS_OP.findall(sass))
        mix = {op: counts[op] for op in SASS_OPS}
        mix["loop"] = loop_instructions(sass)
    return {"registers": regs, "spill_store_bytes": int(spills[1]), "spill_load_bytes": int(spills[2]),
            "shared_bytes": shared, "num_warps": num_warps, "num_stages": num_stages,
            "wgmma_in_ptx": wgmma, "sass_mix": mix, "mma_dots": dots,
            # a programmatic dependent launch's wait (griddepcontrol.wait) in the PTX
            "pdl_wait_in_ptx": pdl_wait, **occupancy(regs, shared, num_warps, cap)}


def _rows(results: dict, key) -> list[dict]:
    """Report rows from compile_jobs results; ``key(job_id)`` -> the row's identifying fields."""
    rows = []
    for job_id, kernels in results.items():
        if "error" in kernels:
            rows.append({**key(job_id), "kernel": "-", "error": kernels["error"]})
            continue
        rows += [{**key(job_id), "kernel": name, **res} for name, res in kernels.items()]
    return rows


def _label_cap_key(job_id: str) -> dict:
    """A "label|cap" job's row fields (default configurations, variants, the sweep)."""
    label, cap = job_id.rsplit("|", 1)
    return {"op": label, "target": f"sm_{cap}"}


def build_report(caps=(80, 90), candidate_caps=(90,), pallas: bool = True) -> dict:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("run the compile report with TRITON_INTERPRET=0 (python -m "
                           "benchmarks.compile_report sets it when started as a program)")
    from benchmarks.results import git_commit, library_versions

    jobs = {f"{label}|{cap}": {"module": m, "args": a, "kwargs": k, "cap": cap}
            for cap in caps for label, (m, a, k) in DEFAULT_JOBS.items()}
    cand = candidate_jobs(candidate_caps)
    variants = variant_jobs(candidate_caps)
    with tempfile.TemporaryDirectory() as work:
        results = compile_jobs(jobs, work)
        cand_results = compile_jobs(cand, work)
        variant_results = compile_jobs(variants, work)

    def candidate_key(job_id):
        label, cap, i = job_id.split("|")
        blocks = _resolve(cand[job_id]["kwargs"]["blocks"])
        return {"op": label, "target": f"sm_{cap}", "candidate": int(i), "default": i == "0",
                "problem_default": _is_sm90_default(label, int(cap), blocks), "blocks": repr(blocks)}

    report = {"commit": git_commit(), "versions": library_versions(), "rows": _rows(results, _label_cap_key),
              "candidates": _rows(cand_results, candidate_key),
              "variants": _rows(variant_results, _label_cap_key)}
    if pallas:
        from benchmarks.pallas_report import build_pallas_rows

        report["pallas"] = build_pallas_rows()
    return report


def _spills(r: dict) -> int:
    return r["spill_store_bytes"] + r["spill_load_bytes"]


def _compile_cells(r: dict, mark_spills: bool = False) -> str:
    """regs | spills | shared | warps | occupancy | limiter | SASS mix | replicated dots cells."""
    mix = r["sass_mix"] or {}
    spills = f"{_spills(r)}{' **spills**' if mark_spills and _spills(r) else ''}"
    dots = r.get("mma_dots")
    rep = "–" if not dots or not dots["total"] else f"{dots['replicated']}/{dots['total']}"
    return (f"{r['registers']} | {spills} | {r['shared_bytes'] / 1024:.1f} | {r['num_warps']} | "
            f"{100 * r['occupancy']:.0f}% | {r['limited_by']} | "
            + " | ".join(str(mix.get(op, "–")) for op in ("HGMMA", "HMMA", "FFMA", "MUFU", "loop")) + f" | {rep}")


# the header of the per-kernel tables (default configurations, feature variants)
_KERNEL_TABLE_HEAD = ["| op | kernel | target | regs | spills (B) | shared (KiB) | warps | occupancy | limited by "
                      "| HGMMA | HMMA | FFMA | MUFU | largest loop | replicated dots |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]


def to_markdown(report: dict) -> str:
    lines = ["# Compile report (ahead of time, no GPU; compiler facts, not measurements)", "",
             f"commit `{report['commit'].get('commit')}`, triton {report['versions'].get('triton')}", "",
             "Replicated dots: tensor-core dots whose result layout spans more rows or columns than the",
             "tile, so several warpgroups compute the same elements (`mma_dots`), of all the TTGIR's dots.",
             "Largest loop: SASS instructions in the kernel's largest loop body, one thread's work per",
             "iteration (`loop_instructions`).", "",
             *_KERNEL_TABLE_HEAD]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['op']} | {r['kernel']} | {r['target']} | error: {r['error'][:80]} |")
            continue
        lines.append(f"| {r['op']} | {r['kernel']} | {r['target']} | {_compile_cells(r)} |")
    if report.get("candidates"):
        lines += ["", "## Autotuning candidates (each op's `candidate_blocks`, default first; "
                  "spilling candidates are reported, not errors)", "",
                  "| op | # | blocks | kernel | target | regs | spills (B) | shared (KiB) | warps | occupancy "
                  "| limited by | HGMMA | HMMA | FFMA | MUFU | largest loop | replicated dots |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["candidates"]:
            head = (f"| {r['op']} | {r['candidate']}{_candidate_note(r)} | "
                    f"`{r['blocks']}` | {r['kernel']} | {r['target']} |")
            cells = f"error: {r['error'][:80]}" if "error" in r else _compile_cells(r, mark_spills=True)
            lines.append(f"{head} {cells} |")
    if report.get("variants"):
        lines += ["", "## Feature variants (tiles and features the defaults avoid; spills are reported, "
                  "not errors)", "", *_KERNEL_TABLE_HEAD]
        for r in report["variants"]:
            cells = f"error: {r['error'][:80]}" if "error" in r else _compile_cells(r, mark_spills=True)
            lines.append(f"| {r['op']} | {r['kernel']} | {r['target']} | {cells} |")
    text = "\n".join(lines) + "\n"
    if report.get("pallas") is not None:
        from benchmarks.pallas_report import pallas_markdown

        text += "\n" + pallas_markdown(report["pallas"])
    return text


def _sweep_rows(results: dict) -> list[dict]:
    return _rows(results, _label_cap_key)


def _print_sweep(results: dict) -> int:
    """Print the sweep's rows (spills marked) and a summary; 1 when a config fails or spills
    (other than SWEEP_KNOWN_SPILLS)."""
    rows = _sweep_rows(results)
    print("| op | kernel | target | regs | spills (B) | shared (KiB) | warps | occupancy | limited by "
          "| HGMMA | HMMA | FFMA | MUFU | replicated dots |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = f"error: {r['error'][:80]}" if "error" in r else _compile_cells(r, mark_spills=True)
        print(f"| {r['op']} | {r['kernel']} | {r['target']} | {cells} |")
    known = [r for r in rows if "error" not in r and _spills(r) and known_spill(r["op"], r["kernel"])]
    bad = [r for r in rows if r not in known and ("error" in r or _spills(r))]
    print(f"{len(rows)} kernels compiled, {len(bad)} failed or spilled, {len(known)} known spills",
          file=sys.stderr)
    for r in known:
        print(f"  known: {r['op']} {r['kernel']} {r['target']}: {_spills(r)} B "
              f"({known_spill(r['op'], r['kernel'])})", file=sys.stderr)
    for r in bad:
        print(f"  {r['op']} {r['kernel']} {r['target']}: "
              + (r["error"][:200] if "error" in r else
                 f"{_spills(r)} B spilled at {r['registers']} registers, {r['num_warps']} warps"),
              file=sys.stderr)
    return 1 if bad else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="benchmarks/report")
    ap.add_argument("--caps", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--candidate-caps", type=int, nargs="*", default=[90],
                    help="targets for the autotuning candidates (none: skip them)")
    ap.add_argument("--no-pallas", action="store_true", help="skip the Pallas lowering section")
    ap.add_argument("--jobs", help="JSON file of compile jobs (tests use this); writes --json-out")
    ap.add_argument("--sweep", action="store_true",
                    help="the spill audit: sweep_configs on --caps, printed; exit 1 on an unknown spill")
    ap.add_argument("--json-out", help="with --jobs or --sweep: where the per-job results go")
    args = ap.parse_args(argv)
    from benchmarks.results import write_json_atomic, write_text_atomic

    if args.jobs or args.sweep:
        if args.jobs:
            with open(args.jobs) as f:
                jobs = json.load(f)
        else:
            jobs = sweep_jobs(tuple(args.caps))
        with tempfile.TemporaryDirectory() as work:
            results = compile_jobs(jobs, work)
        if args.json_out and args.sweep:  # a record: the rows with their commit and versions
            from benchmarks.results import git_commit, library_versions

            write_json_atomic(args.json_out, {"commit": git_commit(), "versions": library_versions(),
                                              "caps": list(args.caps), "rows": _sweep_rows(results)})
        elif args.json_out:
            write_json_atomic(args.json_out, results)
        if args.sweep:
            sys.exit(_print_sweep(results))
        return

    report = build_report(tuple(args.caps), tuple(args.candidate_caps), pallas=not args.no_pallas)
    write_json_atomic(os.path.join(args.out, "compile_report.json"), report)
    md = to_markdown(report)
    write_text_atomic(os.path.join(args.out, "compile_report.md"), md)
    print(md)
    unlowered = [r for r in report.get("pallas") or [] if not r.get("lowered")]
    if unlowered:  # a finding for the kernel's owner, reported in the table
        print(f"{len(unlowered)} Pallas kernels did not lower: "
              + ", ".join(f"{r['family']} {r['kernel']}" for r in unlowered), file=sys.stderr)
    bad = [r for r in report["rows"] if "error" in r or r.get("spill_store_bytes") or r.get("spill_load_bytes")]
    if bad:
        print(f"{len(bad)} default kernels failed to compile or spill", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    os.environ["TRITON_INTERPRET"] = "0"
    main()
