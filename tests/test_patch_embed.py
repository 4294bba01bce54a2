"""patch_embed (kernels/patch_embed/) against the float64 reference, forward and backward.

Triton runs in the interpreter on CPU (fp32 and fp16: the interpreter's bf16 tl.dot is
wrong), Pallas in interpret mode (fp32 and bf16). Accuracy rule (conftest.assert_close):
error vs the float64 reference on the same rounded inputs <= 2x the error of the plain
reference run in the same dtype, plus the dtype's floor.
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kernels import jax_ops, torch_ops
from kernels.patch_embed import reference_jax, triton_patch_embed
from kernels.patch_embed.reference import patch_embed_reference

from conftest import assert_close

NAMES = ("tokens", "dimages", "dweight", "dbias", "dpos")


@dataclass(frozen=True)
class Case:
    batch: int
    height: int
    width: int
    channels: int
    patch: int
    dim: int

    @property
    def id(self) -> str:
        return f"b{self.batch}-{self.height}x{self.width}x{self.channels}-p{self.patch}-d{self.dim}"

    def arrays(self, rng):
        """float64 numpy images, weight, bias, pos_embed and a cotangent dY."""
        n = (self.height // self.patch) * (self.width // self.patch)
        k = self.patch * self.patch * self.channels
        shapes = [(self.batch, self.height, self.width, self.channels), (k, self.dim), (self.dim,),
                  (n, self.dim), (self.batch, n, self.dim)]
        return [rng.standard_normal(s) * (k ** -0.5 if i == 1 else 1.0) for i, s in enumerate(shapes)]


P14 = Case(2, 28, 42, 3, 14, 64)
P16 = Case(1, 32, 48, 3, 16, 96)


def _torch_vjp(fn, arrays, dtype, *, channels_first_storage=False, device="cpu"):
    """(tokens, dimages, dweight, dbias, dpos) of fn on the arrays cast to dtype on ``device``."""
    *inputs, dy = [torch.tensor(a).to(device, dtype) for a in arrays]
    if channels_first_storage:  # a [B, H, W, C] view of NCHW storage: non-unit channel stride
        inputs[0] = inputs[0].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    leaves = [t.detach().requires_grad_() for t in inputs]
    y = fn(*leaves)
    y.backward(dy)
    return [y.detach(), *(t.grad for t in leaves)]


def _rounded(arrays, dtype):
    return [torch.tensor(a).to(dtype).double().numpy() for a in arrays]


@pytest.mark.parametrize("case,dtype,strided", [
    (P14, torch.float32, True), (P16, torch.float32, False), (Case(1, 32, 48, 3, 16, 80), torch.float16, False),
], ids=["p14-fp32-strided", "p16-fp32", "p16-d80-fp16"])
def test_triton_forward_backward(rng, case, dtype, strided):
    arrays = case.arrays(rng)
    ref = _torch_vjp(lambda *t: patch_embed_reference(*t, patch=case.patch), _rounded(arrays, dtype),
                     torch.float64)
    base = _torch_vjp(lambda *t: patch_embed_reference(*t, patch=case.patch), arrays, dtype)
    before = triton_patch_embed.LAUNCHES.copy()
    got = _torch_vjp(lambda *t: torch_ops.patch_embed(*t, patch=case.patch, impl="triton"), arrays, dtype,
                     channels_first_storage=strided)
    launched = triton_patch_embed.LAUNCHES - before
    assert set(launched) == {"_patch_embed_fwd_kernel", "_patch_embed_dweight_kernel",
                             "_patch_embed_dimages_kernel", "_patch_embed_dpos_kernel"}
    assert got[0].dtype == dtype
    for name, g, r, b in zip(NAMES, got, ref, base):
        assert_close(g, r, b, dtype, name)


@pytest.mark.parametrize("case", [P14, P16], ids=["p14", "p16"])
def test_triton_row_step_forward(rng, case):
    """The forward stepping one patch row at a time (PatchEmbedBlocks(rows=True)) against
    float64; images whose (width, channels) are not contiguous are refused."""
    from kernels.patch_embed.triton_patch_embed import PatchEmbedBlocks, patch_embed_triton

    arrays = case.arrays(rng)
    blocks = PatchEmbedBlocks(16, 32, 16, 4, 1, rows=True)  # block_k: the launcher's row width
    fn = lambda *t: patch_embed_triton(*t, patch=case.patch, blocks=blocks)  # noqa: E731
    got = _torch_vjp(fn, arrays, torch.float32)
    ref = _torch_vjp(lambda *t: patch_embed_reference(*t, patch=case.patch), arrays, torch.float64)
    base = _torch_vjp(lambda *t: patch_embed_reference(*t, patch=case.patch), arrays, torch.float32)
    for name, g, r, b in zip(NAMES, got, ref, base):
        assert_close(g, r, b, torch.float32, name)
    with pytest.raises(ValueError, match="rows=True needs images whose width and channels are contiguous"):
        _torch_vjp(fn, arrays, torch.float32, channels_first_storage=True)


@pytest.mark.parametrize("case,dtype,strided", [(P14, torch.float32, True), (P16, torch.float16, False)],
                         ids=["p14-fp32-strided", "p16-fp16"])
def test_triton_two_pass_forward(rng, case, dtype, strided):
    """The forward that patchifies into a dense matrix, then runs a plain GEMM over it
    (PatchEmbedBlocks(two_pass=True)), against float64: K = 588 / 768 is not a multiple of
    block_k (the GEMM's masked tail), strided (NCHW-stored) images patchify too."""
    from kernels.patch_embed.triton_patch_embed import PatchEmbedBlocks, patch_embed_triton

    arrays = case.arrays(rng)
    blocks = PatchEmbedBlocks(16, 32, 64, 4, 1, two_pass=True)
    before = triton_patch_embed.LAUNCHES.copy()
    got = _torch_vjp(lambda *t: patch_embed_triton(*t, patch=case.patch, blocks=blocks), arrays, dtype,
                     channels_first_storage=strided)
    assert (triton_patch_embed.LAUNCHES - before)["_patchify_kernel"] == 1
    ref = _torch_vjp(lambda *t: patch_embed_reference(*t, patch=case.patch), _rounded(arrays, dtype),
                     torch.float64)
    base = _torch_vjp(lambda *t: patch_embed_reference(*t, patch=case.patch), arrays, dtype)
    for name, g, r, b in zip(NAMES, got, ref, base):
        assert_close(g, r, b, dtype, name)
    with pytest.raises(ValueError, match="rows=True and two_pass=True"):
        PatchEmbedBlocks(rows=True, two_pass=True)


def test_triton_skips_dimages_when_images_need_no_grad(rng):
    images, weight, bias, pos, dy = [torch.tensor(a, dtype=torch.float32) for a in P14.arrays(rng)]
    weight.requires_grad_()
    before = triton_patch_embed.LAUNCHES.copy()
    torch_ops.patch_embed(images, weight, bias, pos, patch=14).backward(dy)
    launched = triton_patch_embed.LAUNCHES - before
    assert "_patch_embed_dimages_kernel" not in launched and launched["_patch_embed_dweight_kernel"] == 1
    assert weight.grad is not None


def _jax_vjp(fn, arrays, dtype):
    *inputs, dy = [jnp.asarray(a).astype(dtype) for a in arrays]
    y, vjp = jax.vjp(fn, *inputs)
    return [y, *vjp(dy)]


@pytest.mark.parametrize("case,dtype", [(P14, jnp.float32), (P16, jnp.bfloat16)], ids=["p14-fp32", "p16-bf16"])
def test_pallas_forward_backward(rng, case, dtype):
    arrays = case.arrays(rng)
    ref = _torch_vjp(lambda *t: patch_embed_reference(*t, patch=case.patch),
                     [np.asarray(jnp.asarray(a).astype(dtype).astype(jnp.float32), np.float64) for a in arrays],
                     torch.float64)
    base = _jax_vjp(lambda *a: reference_jax.patch_embed_reference(*a, patch=case.patch), arrays, dtype)
    got = _jax_vjp(lambda *a: jax_ops.patch_embed(*a, patch=case.patch, impl="pallas"), arrays, dtype)
    for name, g, r, b in zip(NAMES, got, ref, base):
        assert g.dtype == dtype, name
        assert_close(np.asarray(g.astype(jnp.float32)), r, np.asarray(b.astype(jnp.float32)),
                     jnp.dtype(dtype), name)


def test_nan_inf_confined_to_their_tokens(rng):
    """spec.py: a NaN / inf pixel makes its patch's token non-finite (every dim) and leaves
    every other token exactly as in the all-finite run, in both kernels; dimages, dbias and
    dpos do not read the images (unchanged), dweight sums over tokens (non-finite)."""
    from kernels.patch_embed.pallas_patch_embed import patch_embed_pallas

    case = Case(1, 32, 48, 3, 16, 16)  # a 2 x 3 grid of tokens
    images, weight, bias, pos, dy = [a.astype(np.float32) for a in case.arrays(rng)]
    bad = images.copy()
    bad[0, 17, 3, 1], bad[0, 2, 40, 0] = np.nan, -np.inf  # tokens 3 (row 1, col 0) and 2
    hit = np.zeros(6, bool)
    hit[[2, 3]] = True

    def triton(img):
        got = _torch_vjp(lambda *t: triton_patch_embed.patch_embed_triton(*t, patch=16),
                         [img, weight, bias, pos, dy], torch.float32)
        return [g.numpy() for g in got]

    def pallas(img):
        ts = [jnp.asarray(a) for a in (img, weight, bias, pos)]
        y, vjp = jax.vjp(lambda *a: patch_embed_pallas(*a, patch=16), *ts)
        return [np.asarray(y)] + [np.asarray(g) for g in vjp(jnp.asarray(dy))]

    for name, run in (("triton", triton), ("pallas", pallas)):
        ok, got = run(images), run(bad)
        assert not np.isfinite(got[0][0, hit]).any(), f"{name}: a poisoned token has finite dims"
        np.testing.assert_array_equal(got[0][0, ~hit], ok[0][0, ~hit], err_msg=f"{name} other tokens")
        for what, g, want in zip(NAMES[1:], got[1:], ok[1:]):
            if what == "dweight":
                assert not np.isfinite(g).all(), f"{name} dweight"
            else:
                np.testing.assert_array_equal(g, want, err_msg=f"{name} {what}")


def test_peers_match_float64(rng):
    """The conv (torch) and XLA conv (JAX) peers and the JAX reference, fp32, forward."""
    case = P16
    arrays = case.arrays(rng)[:4]
    ref = patch_embed_reference(*[torch.tensor(a) for a in arrays], patch=case.patch)
    t32 = [torch.tensor(a, dtype=torch.float32) for a in arrays]
    j32 = [jnp.asarray(a, jnp.float32) for a in arrays]
    base = patch_embed_reference(*t32, patch=case.patch)
    assert_close(torch_ops.patch_embed(*t32, patch=case.patch, impl="conv"), ref, base, torch.float32, "conv")
    for impl in ("xla", "reference"):
        out = np.asarray(jax_ops.patch_embed(*j32, patch=case.patch, impl=impl))
        assert_close(out, ref, base, torch.float32, impl)


def test_weight_layout_matches_conv2d(rng):
    """The documented (ph, pw, c) order: a conv2d weight [D, C, P, P] permuted to (ph, pw, c, D)."""
    conv_w = torch.tensor(rng.standard_normal((8, 3, 14, 14)))
    images = torch.tensor(rng.standard_normal((1, 28, 14, 3)))
    weight = conv_w.permute(2, 3, 1, 0).reshape(-1, 8)
    want = torch.nn.functional.conv2d(images.permute(0, 3, 1, 2), conv_w, stride=14).flatten(2).transpose(1, 2)
    got = patch_embed_reference(images, weight, torch.zeros(8, dtype=torch.float64),
                                torch.zeros(2, 8, dtype=torch.float64), patch=14)
    torch.testing.assert_close(got, want)


# ---- bad input: refused before anything launches, naming the argument --------------------------

def _args(framework, *, shape=(1, 28, 28, 3), patch=14, dim=16, k=None, bias=None, pos=None,
          dtype="float32", weight_dtype=None):
    n = (shape[1] // patch) * (shape[2] // patch)
    k = patch * patch * shape[3] if k is None else k
    lib = torch if framework == "torch" else jnp

    def mk(s, dt):
        return lib.zeros(s, dtype=getattr(lib, dt))

    return (mk(shape, dtype), mk((k, dim), weight_dtype or dtype), mk(bias or (dim,), weight_dtype or dtype),
            mk(pos or (n, dim), weight_dtype or dtype))


BAD = [
    ("height", dict(shape=(1, 30, 28, 3)), ValueError, r"height=30 and width=28 must be multiples of patch=14"),
    ("width", dict(shape=(1, 32, 40, 3), patch=16), ValueError, r"width=40 .*patch=16"),
    ("channels", dict(k=14 * 14 * 4), ValueError,
     r"weight must be \[patch \* patch \* channels, dim\] = \[588, dim\].*channels=3.*\(784, 16\).*4 channels"),
    ("int-images", dict(dtype="int32", weight_dtype="float32"), TypeError,
     r"images dtype must be one of .*got .*int32"),
    ("patch", dict(patch=15, shape=(1, 30, 30, 3)), ValueError, r"patch must be one of \(14, 16\), got 15"),
    ("bias", dict(bias=(15,)), ValueError, r"bias must have shape \(16,\), got \(15,\)"),
    ("pos", dict(pos=(3, 16)), ValueError, r"pos_embed must have shape \[patches, dim\] = \(4, 16\)"),
    ("dtype-mix", dict(weight_dtype="float16"), TypeError, r"weight dtype must equal images dtype"),
]


@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("what,kwargs,exc,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused(framework, what, kwargs, exc, match):
    patch = kwargs.get("patch", 14)
    args = _args(framework, **kwargs)
    before = triton_patch_embed.LAUNCHES.copy()
    ops = torch_ops if framework == "torch" else jax_ops
    with pytest.raises(exc, match=match):
        ops.patch_embed(*args, patch=patch)
    assert triton_patch_embed.LAUNCHES == before


def test_bad_impl_and_block_sizes():
    with pytest.raises(ValueError, match="impl must be one of"):
        torch_ops.patch_embed(*_args("torch"), patch=14, impl="pallas")
    with pytest.raises(ValueError, match="block_k=24 must be a power of two"):
        triton_patch_embed.PatchEmbedBlocks(block_k=24)


def test_pallas_lowers_to_triton_for_cuda():
    """The compiled (non-interpret) path lowers forward, dimages and dweight to Triton for CUDA
    (power-of-two tiles and all), checked without a GPU by exporting for the "cuda" platform."""
    import re

    from jax import export

    from kernels.patch_embed.pallas_patch_embed import default_blocks, patch_embed_pallas

    c = P14
    images, weight, bias, pos = [jnp.zeros(a.shape, jnp.bfloat16) for a in c.arrays(np.random.default_rng(0))[:4]]

    def loss(*a):
        y = patch_embed_pallas(*a, patch=c.patch, interpret=False, blocks=default_blocks(interpret=False))
        return y.astype(jnp.float32).sum()

    call = "__gpu$xla.gpu.triton"
    exported = export.export(jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3))), platforms=("cuda",),
                             disabled_checks=[export.DisabledSafetyCheck.custom_call(call)],
                             )(images, weight, bias, pos)
    targets = re.findall(r"custom_call @(\S+)\(", exported.mlir_module())
    assert sorted(t for t in targets if "triton" in t) == [call] * 3, targets


def test_sm90_forward_default_is_the_two_pass_gemm():
    """sm_90, 16-bit: the two-pass forward (timed 0.215 ms against the fused gather's 1.40 ms on
    an H200); fp32, sm_80, the interpreter and the backward passes keep their tiles."""
    from kernels.patch_embed.triton_patch_embed import PatchEmbedBlocks, default_blocks

    for dt in (torch.bfloat16, torch.float16):
        assert default_blocks(dt, "fwd", capability=(9, 0)) == PatchEmbedBlocks(128, 128, 64, 8, 3, two_pass=True)
    assert not default_blocks(torch.float32, "fwd", capability=(9, 0)).two_pass
    assert not default_blocks(torch.bfloat16, "fwd", capability=(8, 0)).two_pass
    assert not default_blocks(torch.bfloat16, "fwd", capability=None).two_pass
    assert not any(default_blocks(torch.bfloat16, p, capability=(9, 0)).two_pass for p in ("dweight", "dimages", "dpos"))
