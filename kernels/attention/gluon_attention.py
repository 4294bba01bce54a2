"""Launcher of the Gluon FlashAttention-3-style forward (``gluon_kernels.py``) for sm_90.

    gluon_problem(q, k, v, blocks, *, causal, window, softcap, segments) -> why not, or None
    gluon_fwd(q, k, v, *, causal, scale, blocks, window, softcap) -> (o, lse)   the Triton forward's
    aot_kernel(head_dim, dtype, group, causal, blocks) -> AotKernel (compiles without a GPU)

Also the backward's dK/dV pass (``gluon_bwd_kernels.py``, ``TritonAttentionBlocks(gluon_dkdv=True)``):
``gluon_bwd_problem``, ``gluon_dkdv``, ``aot_dkdv_kernel``, at the end of this file.

Reached through ``TritonAttentionBlocks(gluon=MODE)`` in the forward pass (``_flash_fwd``):
MODE 1 is one 8-warp consumer partition and a TMA producer warp; 2 adds FA3's
intra-warpgroup overlap (the next S = Q K^T issued before this tile's softmax); 3 is FA3's
ping-pong: two 4-warp consumer partitions of 64 rows each taking turns at the tensor cores,
so one's softmax runs during the other's GEMMs. block_m is 128 (two warpgroups), block_n 64
or 128, num_stages the depth of the K/V ring. The backward is the Triton one (same LSE).
What it takes: an sm_90 GPU (or CPU tensors: ``kernels._gluon_emu`` runs the kernels' bodies
there, as Triton's interpreter runs Triton's), fp16/bf16, head_dim 64, 128 or 256,
causal or not, a window, a softcap, segment ids (packed sequences), G = H / KVH a power of two dividing 128
(64 for ping-pong), and the descriptor alignment the Triton TMA forward needs; anything else
is refused by name before a launch. Checked against float64 in the CPU emulator
(``tests/test_gluon_emulator.py``), not yet run on a GPU: the candidates reach the autotuner,
which checks each one's output against the default forward's before timing it.
"""
from __future__ import annotations

from typing import Optional

from .._platform import configure_triton_interpret

configure_triton_interpret()  # before triton is imported: the interpreter when there is no GPU

import torch  # noqa: E402
import triton  # noqa: E402

from .._platform import triton_interpreting  # noqa: E402

MODES = {1: "warp-specialized", 2: "warp-specialized, intra-warpgroup overlap", 3: "ping-pong"}
HEAD_DIMS = (64, 128, 256)
# the kernel's register cap: 12 warps (two consumer warpgroups and the producer's, whose one
# warp takes a warpgroup's registers) x 32 threads x 168 <= 65536; setmaxnreg then moves them
# to 240 a consumer thread and 24 a producer thread
MAXNREG = 168
LOG2E = 1.4426950408889634


def _device_problem(q, capability: Optional[tuple]) -> Optional[str]:
    """What the device, dtype or head_dim rule out for either Gluon kernel, or None.
    ``capability`` stands in for q's device's (tests check the other rules on the CPU)."""
    if capability is None:
        if q.device.type == "cpu":  # kernels._gluon_emu runs the kernel's body on CPU tensors
            capability = (9, 0)
        elif triton_interpreting() or q.device.type != "cuda":
            return f"it runs on an sm_90 GPU, or emulated on CPU tensors; got a tensor on {q.device}"
        else:
            capability = torch.cuda.get_device_capability(q.device)
    cap = tuple(capability)
    if cap[0] != 9:
        return f"it needs sm_90 (wgmma, setmaxnreg), got sm_{cap[0]}{cap[1]}"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"it takes float16 or bfloat16, got {q.dtype}"
    if q.shape[-1] not in HEAD_DIMS:
        return f"it takes head_dim 64, 128 or 256, got {q.shape[-1]}"
    return None


def gluon_problem(q, k, v, blocks, *, causal: bool, window: Optional[int], softcap: Optional[float],
                  segments: bool, capability: Optional[tuple] = None) -> Optional[str]:
    """Why the Gluon forward cannot run this problem with ``blocks``, or None when it can.
    ``capability`` stands in for q's device's (tests check the other rules on the CPU)."""
    from .triton_attention import tma_problem

    why = _device_problem(q, capability)
    if why is not None:
        return why
    why = tma_problem(q, k, v, blocks)
    g = q.shape[2] // k.shape[2]
    if why is None and blocks.gluon == 3 and 64 % g:
        why = f"ping-pong stores 64 folded rows a warpgroup: the group size {g} must divide 64"
    return why


def _descriptor(t, box: list, strides: Optional[list] = None):
    """A Gluon tensor descriptor over ``t`` with ``box`` tiles in the NVMMA shared layout of
    t's dtype; strides default to t's (``_tma_strides``: any stride for a size-1 dim)."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    from .triton_attention import _tma_strides

    dt = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}[t.dtype]
    return TensorDescriptor(t, list(t.shape), strides or _tma_strides(t), box,
                            gl.NVMMASharedLayout.get_default_for(box, dt))


def _aot_descriptor_types(head_dim: int, dtype: torch.dtype, group: int, boxes: dict) -> dict:
    """name -> the signature type of a descriptor over a contiguous [B, S, heads, head_dim]
    tensor with that name's box (a stand-in tensor gives its dtype and layout)."""
    from triton.runtime.jit import mangle_type

    t = torch.empty((1, 1, group, head_dim), dtype=dtype)
    strides = [16 * head_dim, 16 * head_dim, head_dim, 1]
    return {n: mangle_type(_descriptor(t, box, strides)) for n, box in boxes.items()}


def _boxes(head_dim: int, group: int, blocks) -> tuple[list, list, list]:
    """Tiles of q [1, 128 / G, G, D], k and v [1, block_n, 1, D], and o: one consumer's rows,
    [1, 64 / G, G, D] for ping-pong's 4-warp consumers, else [1, 128 / G, G, D]."""
    o_rows = 64 if blocks.gluon == 3 else blocks.block_m
    return ([1, blocks.block_m // group, group, head_dim], [1, blocks.block_n, 1, head_dim],
            [1, o_rows // group, group, head_dim])


def _descriptors(q, k, v, o, blocks) -> tuple:
    """Gluon descriptors (the NVMMA shared layout of each tile) over q, k, v and o: the copy
    engine zero-fills rows past Sq and Skv, and drops o's rows past Sq."""
    q_box, kv_box, o_box = _boxes(q.shape[-1], q.shape[2] // k.shape[2], blocks)
    return tuple(_descriptor(t, box) for t, box in ((q, q_box), (k, kv_box), (v, kv_box), (o, o_box)))


def _constexprs(head_dim: int, group: int, causal: bool, blocks, window=None, softcap=None,
                segments: bool = False) -> dict:
    return dict(GROUP=group, HEAD_DIM=head_dim, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n,
                NUM_STAGES=blocks.num_stages, CAUSAL=bool(causal or window is not None),
                HAS_WINDOW=window is not None, HAS_SOFTCAP=softcap is not None, HAS_SEGMENTS=bool(segments),
                MODE=blocks.gluon)


def _segment_args(q_seg, kv_seg, dummy) -> tuple:
    """(QSEG, KVSEG, their batch and position strides) flat, as the Gluon kernels take them:
    the Triton launchers' ``_segment_args`` (``dummy`` and zero strides without segment ids)."""
    from .triton_attention import _segment_args as triton_segment_args

    pointers, strides = triton_segment_args(q_seg, kv_seg, dummy)
    return (*pointers, *strides)


def _scalars(sq: int, skv: int, scale: float, window, softcap) -> tuple:
    """(qk_scale, window, softcap_in, softcap_out) as the kernel takes them: with a softcap c
    the scores are c * tanh(s * scale / c) in log2 units and qk_scale is 1; a window wider
    than any query-key distance is clamped so it stays an int32 (the Triton forward's rule)."""
    w = 0 if window is None else min(int(window), sq + skv)
    if softcap is None:
        return float(scale) * LOG2E, w, 1.0, 1.0
    return 1.0, w, float(scale) / float(softcap), float(softcap) * LOG2E


def gluon_fwd(q, k, v, *, causal: bool, scale: float, blocks, window=None, softcap=None, q_seg=None, kv_seg=None):
    """-> (o [B, Sq, H, D] in q's dtype, lse [B * KVH, Sq * G] fp32, log2 domain); the problem
    must be one ``gluon_problem`` accepts (``_flash_fwd`` checks it before calling). q_seg /
    kv_seg: integer segment ids [B, Sq] / [B, Skv] (a pair sees each other only within one)."""
    from . import gluon_kernels

    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    o = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((b * kvh, sq * g), dtype=torch.float32, device=q.device)
    q_desc, k_desc, v_desc, o_desc = _descriptors(q, k, v, o, blocks)
    from .._gluon_emu import launcher

    launcher(gluon_kernels._gluon_attn_fwd_kernel, q.device)[(triton.cdiv(sq * g, blocks.block_m), b * kvh)](
        q_desc, k_desc, v_desc, o_desc, lse, sq, skv, kvh, *_scalars(sq, skv, scale, window, softcap),
        *_segment_args(q_seg, kv_seg, lse), **_constexprs(d, g, causal, blocks, window, softcap, q_seg is not None),
        num_warps=blocks.num_warps, maxnreg=MAXNREG,
    )
    return o, lse


def aot_kernel(head_dim: int, dtype: torch.dtype, group: int, causal: bool, blocks, window=None, softcap=None,
               segments: bool = False):
    """The launch specialization of ``gluon_fwd`` (contiguous tensors) for ahead-of-time
    compiles: ``benchmarks.compile_report`` builds it with GluonASTSource and ``maxnreg``."""
    from .. import _aot
    from . import gluon_kernels

    q_box, kv_box, o_box = _boxes(head_dim, group, blocks)
    desc = _aot_descriptor_types(head_dim, dtype, group, dict(q_desc=q_box, k_desc=kv_box, v_desc=kv_box,
                                                              o_desc=o_box))
    seg = "*i64" if segments else "*fp32"  # without segment ids the launcher passes lse
    kernel = _aot.aot_kernel(gluon_kernels._gluon_attn_fwd_kernel,
                             pointers={"LSE": "*fp32", "QSEG": seg, "KVSEG": seg, **desc},
                             constexprs={**_constexprs(head_dim, group, causal, blocks, window, softcap, segments),
                                         "num_warps": blocks.num_warps},
                             num_warps=blocks.num_warps, floats=("qk_scale", "softcap_in", "softcap_out"))
    return kernel._replace(source="gluon", maxnreg=MAXNREG)


# --- the backward's dK/dV pass (gluon_bwd_kernels.py; TritonAttentionBlocks(gluon_dkdv=True)) ---

def gluon_bwd_problem(q, k, v, blocks, *, window: Optional[int], softcap: Optional[float], segments: bool,
                      capability: Optional[tuple] = None) -> Optional[str]:
    """Why the Gluon dK/dV pass cannot run this problem with ``blocks``, or None when it can."""
    from .triton_attention import tma_problem

    why = _device_problem(q, capability)
    if why is not None:
        return why
    return tma_problem(q, k, v, blocks)


def _bwd_boxes(head_dim: int, group: int, blocks) -> tuple[list, list]:
    """q and dO tiles [1, block_m / G, G, D] (a row block's folded rows; per head: [1, block_m,
    1, D], block_m positions of one head), k and v [1, 128, 1, D]."""
    rows = [1, blocks.block_m, 1, head_dim] if blocks.dkdv_per_head else [1, blocks.block_m // group, group, head_dim]
    return rows, [1, blocks.block_n, 1, head_dim]


def _bwd_descriptors(q, k, v, do, blocks) -> tuple:
    rows, keys = _bwd_boxes(q.shape[-1], q.shape[2] // k.shape[2], blocks)
    return tuple(_descriptor(t, box) for t, box in ((q, rows), (do, rows), (k, keys), (v, keys)))


def _bwd_constexprs(head_dim: int, group: int, causal: bool, blocks, do_dk: bool, do_dv: bool, splits: bool,
                    do_dq: bool = False, window=None, softcap=None, segments: bool = False) -> dict:
    return dict(GROUP=group, HEAD_DIM=head_dim, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n,
                NUM_STAGES=blocks.num_stages, CAUSAL=bool(causal or window is not None),
                HAS_WINDOW=window is not None, HAS_SOFTCAP=softcap is not None, HAS_SEGMENTS=bool(segments),
                DO_DK=do_dk, DO_DV=do_dv,
                SPLITS=splits, DO_DQ=do_dq, HEAD_SPLIT=blocks.dkdv_per_head)


def gluon_dkdv(q, k, v, do, lse, delta, dk_out, dv_out, *, splits: int, causal: bool, scale: float, blocks,
               do_dk: bool, do_dv: bool, dq_acc=None, window=None, softcap=None, q_seg=None, kv_seg=None) -> None:
    """One launch of the Gluon dK/dV pass into ``dk_out`` / ``dv_out`` (k's shape and dtype, or
    fp32 partials [splits, B, Skv, KVH, D] when splits > 1), and with ``dq_acc`` (the dK launch
    of ``dq_atomic`` blocks: a zeroed fp32 [B, Sq, H, D]) dS K added into it, unscaled; the
    problem must be one ``gluon_bwd_problem`` accepts and dO must take descriptors
    (``_flash_bwd`` sees to both)."""
    from . import gluon_bwd_kernels

    b, sq, h, d = q.shape
    skv, kvh = k.shape[1], k.shape[2]
    descs = _bwd_descriptors(q, k, v, do, blocks)
    dk_st = dk_out.stride()[-4:-1] if splits == 1 else (0, 0, 0)
    dv_st = dv_out.stride()[-4:-1] if splits == 1 else (0, 0, 0)
    do_dq = dq_acc is not None
    if do_dq and (not do_dk or dq_acc.dtype != torch.float32 or dq_acc.stride(-1) != 1):
        raise ValueError(f"dq_acc: the dK launch adds into an fp32 dQ with a unit head_dim stride, got "
                         f"{dq_acc.dtype}, strides {tuple(dq_acc.stride())}, do_dk={do_dk}")
    dq_st = dq_acc.stride()[:3] if do_dq else (0, 0, 0)
    from .._gluon_emu import launcher

    launcher(gluon_bwd_kernels._gluon_attn_bwd_dkdv_kernel, q.device)[
        (triton.cdiv(skv, blocks.block_n), b * kvh, splits)](
        *descs, dk_out, dv_out, dq_acc if do_dq else lse, lse, delta, *dk_st, *dv_st, *dq_st, sq, skv, kvh,
        splits, float(scale), *_scalars(sq, skv, scale, window, softcap)[1:], *_segment_args(q_seg, kv_seg, lse),
        **_bwd_constexprs(d, h // kvh, causal, blocks, do_dk, do_dv, splits > 1, do_dq, window, softcap,
                          q_seg is not None),
        num_warps=blocks.num_warps, maxnreg=MAXNREG,
    )


def aot_dkdv_kernel(head_dim: int, dtype: torch.dtype, group: int, causal: bool, blocks, do_dk: bool,
                    do_dv: bool, splits: bool, do_dq: bool = False, window=None, softcap=None,
                    segments: bool = False):
    """The launch specialization of ``gluon_dkdv`` (contiguous tensors) for ahead-of-time compiles."""
    from .. import _aot
    from . import gluon_bwd_kernels

    rows, keys = _bwd_boxes(head_dim, group, blocks)
    desc = _aot_descriptor_types(head_dim, dtype, group, dict(q_desc=rows, do_desc=rows, k_desc=keys, v_desc=keys))
    out_ty = "*" + ("fp32" if splits else _aot.triton_dtype(dtype))
    kernel = _aot.aot_kernel(gluon_bwd_kernels._gluon_attn_bwd_dkdv_kernel,
                             pointers={"DK": out_ty, "DV": out_ty, "DQ": "*fp32", "LSE": "*fp32", "DELTA": "*fp32",
                                       "QSEG": "*i64" if segments else "*fp32",
                                       "KVSEG": "*i64" if segments else "*fp32", **desc},
                             constexprs={**_bwd_constexprs(head_dim, group, causal, blocks, do_dk, do_dv, splits,
                                                           do_dq, window, softcap, segments),
                                         "num_warps": blocks.num_warps},
                             num_warps=blocks.num_warps, floats=("sm_scale", "softcap_in", "softcap_out"))
    return kernel._replace(source="gluon", maxnreg=MAXNREG)
