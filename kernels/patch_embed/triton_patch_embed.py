"""Triton patch_embed for PyTorch: block sizes, launchers and the differentiable custom op.

    patch_embed_triton(images, weight, bias, pos_embed, *, patch, blocks=None)

Layers (device code in ``triton_kernels.py``):
  ``PatchEmbedBlocks`` / ``default_blocks``  tunables and per-device defaults;
  ``_forward`` / ``_backward_params`` / ``_backward_images``  allocate, pick the grid, launch;
  ``gemini_kernels::patch_embed_fwd`` (+ ``_bwd_params``, ``_bwd_images``)  torch.library
  custom ops with fake kernels and autograd; dimages is only computed when images need grad.
Arguments arrive validated from ``kernels.torch_ops.patch_embed``. ``LAUNCHES`` counts
launches by kernel name; ``aot_kernels`` gives the default specializations built with the
real JIT (even while this process interprets) for ahead-of-time compiles without a GPU.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Optional

from .._platform import configure_triton_interpret

configure_triton_interpret()  # before triton is imported: the interpreter when there is no GPU

import torch  # noqa: E402
import triton  # noqa: E402

from .._platform import triton_interpreting  # noqa: E402
from .._aot import aot_kernel, check_triton_blocks, jit_module  # noqa: E402
from . import triton_kernels  # noqa: E402
from .spec import padded_row_length  # noqa: E402

LAUNCHES: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class PatchEmbedBlocks:
    """Tiles over rows m (patches), n (dim) and k (pixels per patch) for one pass, plus launch knobs.

    forward: out [block_m, block_n], reduce block_k; dweight: out [block_k, block_n], reduce
    block_m; dimages: out [block_m, block_k], reduce block_n; dpos: [block_m, block_n] tiles.
    """

    block_m: int = 64
    block_n: int = 64
    block_k: int = 32
    num_warps: int = 4
    num_stages: int = 2
    # forward: step K one patch row at a time ([block_m, next_pow2(P * C)] tiles of contiguous
    # (pw, c) pixels, one add per address instead of the (ph, pw, c) split of each k; block_k
    # is then that width). Needs images whose (width, channels) are contiguous.
    rows: bool = False
    # forward: patchify into a dense [B * N, K] matrix first (one memory-bound pass), then a
    # plain GEMM over it, whose contiguous rows stream to shared memory without a gather
    two_pass: bool = False

    def __post_init__(self):
        check_triton_blocks(self, ("block_m", "block_n", "block_k"))
        for name in ("rows", "two_pass"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a bool")
        if self.rows and self.two_pass:
            raise ValueError("rows=True and two_pass=True are two different forwards: pick one")

    def as_list(self) -> list:
        return [self.block_m, self.block_n, self.block_k, self.num_warps, self.num_stages, int(self.rows),
                int(self.two_pass)]


PASSES = ("fwd", "dweight", "dimages", "dpos")


def default_blocks(dtype: torch.dtype, pass_: str = "fwd", *,
                   capability: Optional[tuple] = None) -> PatchEmbedBlocks:
    """Default tiles of one pass; ``capability`` None is the CPU interpreter (few, large steps).

    GPU picks are checked by ``tests/test_patch_audio_aot.py`` (no spills; wgmma on sm_90).
    """
    if pass_ not in PASSES:
        raise ValueError(f"pass_ must be one of {PASSES}, got {pass_!r}")
    if capability is None:
        return PatchEmbedBlocks(32, 64, 64, 4, 1)
    if dtype == torch.float32:  # ieee fp32 dots run on FMA units: modest tiles
        return PatchEmbedBlocks(32, 64, 32, 4, 2)
    if pass_ == "dpos":
        return PatchEmbedBlocks(32, 128, 16, 4, 1)
    if capability[0] == 9 and pass_ == "fwd":  # the two-pass forward (patchify, then a plain
        # GEMM over the dense [B * N, K] matrix): 0.215 ms on an H200 (8 x 896 px, p14, d1152, bf16:
        # benchmarks/results/sweep-nvidia-h200-20261127T184547Z.json) against the fused gather's
        # 1.40 ms (64x64, 4 warps) and cuBLAS's 0.24 ms on the pre-unfolded GEMM alone; the
        # gathered A tile's 64-bit addresses were the cost. Other GPUs: not timed, the fused tiles
        return PatchEmbedBlocks(128, 128, 64, 8, 3, two_pass=True)
    if capability[0] >= 9:  # the gathered tile's 64-bit addresses cost registers, so the largest
        # spill-free fused tiles are narrower than a plain GEMM's. fwd: 64x64, 4 warps measured
        # 1.39 ms against 1.89 ms for 128x64, 8 warps on an H200
        # (benchmarks/results/sweep-nvidia-h200-20261126T215348Z.json)
        return {"fwd": PatchEmbedBlocks(64, 64, 32, 4, 3),
                "dweight": PatchEmbedBlocks(64, 64, 128, 8, 2),
                "dimages": PatchEmbedBlocks(128, 32, 64, 8, 3)}[pass_]
    # mma.sync (sm_80): 128-row tiles with 4 warps spilled (benchmarks.compile_report)
    return PatchEmbedBlocks(64, 64, 32, 4, 3)


def candidate_blocks(dtype: torch.dtype, pass_: str = "fwd", *,
                     capability: tuple = (9, 0)) -> list[PatchEmbedBlocks]:
    """Autotuning candidates of one pass on a GPU: ``default_blocks`` first, then a few tile /
    warps / stages neighbours (spills, if any, show in benchmarks.compile_report)."""
    base = default_blocks(dtype, pass_, capability=tuple(capability))
    more = [PatchEmbedBlocks(64, 64, 32, 4, 3), PatchEmbedBlocks(128, 64, 32, 8, 3),
            PatchEmbedBlocks(64, 128, 64, 4, 2)]
    if pass_ == "fwd":  # patch-row steps: contiguous (pw, c) runs instead of per-k (ph, pw, c)
        # math; and the two-pass forward, a plain GEMM's tiles over the patchified matrix
        # (sm_90: 163 registers, no spills, cp.async for both operands). 128x64 / 8 warps
        # (1.89 ms on the H200 sweep) makes room; more[0] is the fused default sm_90 had before
        more = [more[0], more[2], PatchEmbedBlocks(64, 64, 64, 4, 3, rows=True),
                PatchEmbedBlocks(128, 128, 64, 8, 3, two_pass=True),
                PatchEmbedBlocks(128, 128, 32, 8, 4, two_pass=True)]
    return [base] + [b for b in more if b != base]


def _capability(t: torch.Tensor) -> Optional[tuple]:
    if triton_interpreting() or t.device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(t.device)


def _dot_precision(dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # tf32 is ignored for 16-bit inputs


def _geometry(images: torch.Tensor, patch: int):
    b, h, w, c = images.shape
    n = (h // patch) * (w // patch)
    return b * n, n, w // patch, c


def _row_width(patch: int, channels: int) -> int:
    """The K tile of a row-step forward: one patch row's P * C pixels, a power of two >= 16."""
    return max(16, triton.next_power_of_2(patch * channels))


PATCHIFY_BLOCK_M = 64  # patches per program of the two-pass forward's patchify kernel


def _patchify(images, patch: int) -> torch.Tensor:
    """The unfolded patch matrix A [B * N, KP] (columns >= K left unwritten, never read)."""
    m, n, grid_w, c = _geometry(images, patch)
    kp = padded_row_length(patch * patch * c, images.element_size())
    a = torch.empty((m, kp), dtype=images.dtype, device=images.device)
    triton_kernels._patchify_kernel[(triton.cdiv(m, PATCHIFY_BLOCK_M), patch)](
        images, a, *images.stride(), a.stride(0), m, n, grid_w,
        PATCH=patch, CHANNELS=c, BLOCK_M=PATCHIFY_BLOCK_M, BLOCK_J=_row_width(patch, c), num_warps=4,
    )
    LAUNCHES["_patchify_kernel"] += 1
    return a


def _forward(images, weight, bias, pos, patch, blocks: PatchEmbedBlocks):
    m, n, grid_w, c = _geometry(images, patch)
    dim = weight.shape[1]
    block_k = blocks.block_k
    x, x_strides = images, images.stride()
    if blocks.two_pass:
        x = _patchify(images, patch)
        x_strides = (x.stride(0), 0, 0, 1)  # stride_xb = the row stride; the kernel reads DENSE
    if blocks.rows:
        if images.stride(3) != 1 or images.stride(2) != c:
            raise ValueError(f"blocks: rows=True needs images whose width and channels are contiguous "
                             f"(strides [..., {c}, 1]), got strides {tuple(images.stride())}")
        block_k = _row_width(patch, c)
    y = torch.empty((images.shape[0], n, dim), dtype=images.dtype, device=images.device)
    grid = (triton.cdiv(m, blocks.block_m), triton.cdiv(dim, blocks.block_n))
    triton_kernels._patch_embed_fwd_kernel[grid](
        x, weight, bias, pos, y,
        *x_strides, *weight.stride(), bias.stride(0), *pos.stride(),
        m, n, grid_w, dim,
        PATCH=patch, CHANNELS=c, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n,
        BLOCK_K=block_k, DOT_PRECISION=_dot_precision(images.dtype), ROW_STEPS=blocks.rows,
        DENSE=blocks.two_pass, num_warps=blocks.num_warps, num_stages=blocks.num_stages,
    )
    LAUNCHES["_patch_embed_fwd_kernel"] += 1
    return y


def _backward_params(dy, images, patch, blk_w: PatchEmbedBlocks, blk_p: PatchEmbedBlocks):
    """(dweight [K, D], dbias [D], dpos [N, D]) from dy [B, N, D]."""
    dy = dy.contiguous()
    m, n, grid_w, c = _geometry(images, patch)
    dim, k = dy.shape[2], patch * patch * c
    dw = torch.empty((k, dim), dtype=images.dtype, device=dy.device)
    triton_kernels._patch_embed_dweight_kernel[(triton.cdiv(k, blk_w.block_k), triton.cdiv(dim, blk_w.block_n))](
        images, dy, dw, *images.stride(), m, n, grid_w, dim,
        PATCH=patch, CHANNELS=c, BLOCK_M=blk_w.block_m, BLOCK_N=blk_w.block_n,
        BLOCK_K=blk_w.block_k, DOT_PRECISION=_dot_precision(images.dtype),
        num_warps=blk_w.num_warps, num_stages=blk_w.num_stages,
    )
    dpos = torch.empty((n, dim), dtype=images.dtype, device=dy.device)
    tiles = triton.cdiv(n, blk_p.block_m)
    part = torch.empty((tiles, dim), dtype=torch.float32, device=dy.device)
    triton_kernels._patch_embed_dpos_kernel[(tiles, triton.cdiv(dim, blk_p.block_n))](
        dy, dpos, part, images.shape[0], n, dim, BLOCK_M=blk_p.block_m, BLOCK_N=blk_p.block_n,
        num_warps=blk_p.num_warps, num_stages=blk_p.num_stages,
    )
    LAUNCHES.update(("_patch_embed_dweight_kernel", "_patch_embed_dpos_kernel"))
    return dw, part.sum(0).to(images.dtype), dpos  # dbias: the few per-tile partial rows summed


def _backward_images(dy, images, weight, patch, blocks: PatchEmbedBlocks):
    dy = dy.contiguous()
    m, n, grid_w, c = _geometry(images, patch)
    dim, k = dy.shape[2], patch * patch * c
    dx = torch.empty(images.shape, dtype=images.dtype, device=dy.device)
    triton_kernels._patch_embed_dimages_kernel[(triton.cdiv(m, blocks.block_m), triton.cdiv(k, blocks.block_k))](
        dy, weight, dx, *weight.stride(), *dx.stride(), m, n, grid_w, dim,
        PATCH=patch, CHANNELS=c, BLOCK_M=blocks.block_m, BLOCK_N=blocks.block_n,
        BLOCK_K=blocks.block_k, DOT_PRECISION=_dot_precision(images.dtype),
        num_warps=blocks.num_warps, num_stages=blocks.num_stages,
    )
    LAUNCHES["_patch_embed_dimages_kernel"] += 1
    return dx


# --- differentiation shell: custom ops (traceable by torch.compile) -------------------------

_PER_PASS = len(PatchEmbedBlocks().as_list())


def _blocks(flat: list, i: int) -> PatchEmbedBlocks:
    """Pass i's blocks from the flat list the custom ops carry (``_PER_PASS`` ints per pass,
    PASSES order)."""
    *knobs, rows, two_pass = flat[_PER_PASS * i: _PER_PASS * (i + 1)]
    return PatchEmbedBlocks(*knobs, rows=bool(rows), two_pass=bool(two_pass))


@torch.library.custom_op("gemini_kernels::patch_embed_fwd", mutates_args=())
def patch_embed_fwd(images: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    pos_embed: torch.Tensor, patch: int, blocks: list[int]) -> torch.Tensor:
    """tokens [B, N, D]; ``blocks`` = the concatenated PatchEmbedBlocks.as_list() of PASSES."""
    return _forward(images, weight, bias, pos_embed, patch, _blocks(blocks, 0))


@patch_embed_fwd.register_fake
def _(images, weight, bias, pos_embed, patch, blocks):
    return images.new_empty((images.shape[0], pos_embed.shape[0], weight.shape[1]))


@torch.library.custom_op("gemini_kernels::patch_embed_bwd_params", mutates_args=())
def patch_embed_bwd_params(dy: torch.Tensor, images: torch.Tensor, patch: int,
                           blocks: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dweight, dbias, dpos)."""
    return _backward_params(dy, images, patch, _blocks(blocks, 1), _blocks(blocks, 3))


@patch_embed_bwd_params.register_fake
def _(dy, images, patch, blocks):
    b, n, d = dy.shape
    return dy.new_empty((patch * patch * images.shape[3], d)), dy.new_empty((d,)), dy.new_empty((n, d))


@torch.library.custom_op("gemini_kernels::patch_embed_bwd_images", mutates_args=())
def patch_embed_bwd_images(dy: torch.Tensor, images: torch.Tensor, weight: torch.Tensor, patch: int,
                           blocks: list[int]) -> torch.Tensor:
    """dimages [B, H, W, C] (images is read for its shape only)."""
    return _backward_images(dy, images, weight, patch, _blocks(blocks, 2))


@patch_embed_bwd_images.register_fake
def _(dy, images, weight, patch, blocks):
    return images.new_empty(images.shape)


def _setup_context(ctx, inputs, output):
    images, weight, _, _, patch, blocks = inputs
    ctx.save_for_backward(images, weight)
    ctx.patch, ctx.blocks = patch, blocks


def _backward(ctx, dy):
    images, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    dx = dw = db = dp = None
    if need[1] or need[2] or need[3]:
        dw, db, dp = patch_embed_bwd_params(dy.to(images.dtype), images, ctx.patch, ctx.blocks)
    if need[0]:
        dx = patch_embed_bwd_images(dy.to(images.dtype), images, weight, ctx.patch, ctx.blocks)
    return dx, dw, db, dp, None, None


patch_embed_fwd.register_autograd(_backward, setup_context=_setup_context)


def patch_embed_triton(images, weight, bias, pos_embed, *, patch, blocks=None):
    """Fused patchify + matmul + bias + position embedding (see ``spec.py``).

    Expects validated arguments (``kernels.torch_ops.patch_embed``). ``blocks``: None for
    ``default_blocks`` per pass, or one PatchEmbedBlocks used by every pass.
    """
    if blocks is None:
        cap = _capability(images)
        flat = [v for p in PASSES for v in default_blocks(images.dtype, p, capability=cap).as_list()]
    else:
        flat = blocks.as_list() * len(PASSES)
    return patch_embed_fwd(images, weight, bias, pos_embed, int(patch), flat)


# --- ahead-of-time compile support ---------------------------------------------------------

_TY = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}


def aot_kernels(dtype=torch.float16, *, patch=16, channels=3, capability=(9, 0),
                blocks: Optional[PatchEmbedBlocks] = None) -> dict:
    """name -> AotKernel for the four kernels in their default configuration on ``capability``
    (or ``blocks`` for every pass, as ``patch_embed_triton(blocks=...)`` uses it), specialized
    as the launchers launch them on contiguous inputs."""
    mod = jit_module(triton_kernels)
    ty = _TY[dtype]
    prec = _dot_precision(dtype)
    out = {}
    for name, pass_ in (("_patch_embed_fwd_kernel", "fwd"), ("_patch_embed_dweight_kernel", "dweight"),
                        ("_patch_embed_dimages_kernel", "dimages"), ("_patch_embed_dpos_kernel", "dpos")):
        pb = blocks or default_blocks(dtype, pass_, capability=tuple(capability))
        fn = getattr(mod, name)
        row_steps = pb.rows and pass_ == "fwd"
        meta = dict(PATCH=patch, CHANNELS=channels, BLOCK_M=pb.block_m, BLOCK_N=pb.block_n,
                    BLOCK_K=_row_width(patch, channels) if row_steps else pb.block_k,
                    DOT_PRECISION=prec, ROW_STEPS=row_steps, DENSE=pb.two_pass and pass_ == "fwd")
        meta = {k: v for k, v in meta.items() if k in fn.arg_names}
        ptrs = {p: ty for p in ("X", "Wt", "BIAS", "POS", "Y", "DY", "DW", "DX", "DPOS")}
        ptrs["PART"] = "*fp32"
        out[name] = aot_kernel(fn, pointers=ptrs, constexprs=meta, num_warps=pb.num_warps,
                               num_stages=pb.num_stages, divisible_strides=False,
                               unit_strides=("stride_xc", "stride_wd", "stride_bias", "stride_pd"))
        if meta.get("DENSE"):  # the two-pass forward: its patchify launch; A's row stride is a
            # multiple of 16 bytes, and so are the dim and weight and pos_embed rows at the models' sizes
            fwd = out[name]
            rows = {(fn.arg_names.index(a),): [["tt.divisibility", 16]]
                    for a in ("stride_xb", "stride_wk", "stride_pn", "DIM")}
            out[name] = fwd._replace(attrs={**fwd.attrs, **rows})
            out["_patchify_kernel"] = aot_kernel(
                mod._patchify_kernel, pointers={"X": ty, "A": ty},
                constexprs=dict(PATCH=patch, CHANNELS=channels, BLOCK_M=PATCHIFY_BLOCK_M,
                                BLOCK_J=_row_width(patch, channels)),
                num_warps=4, divisible_strides=False, unit_strides=("stride_xc",))
    return out
