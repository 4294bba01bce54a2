"""Every Pallas GPU-style (Triton-lowered) kernel, in the kernel / pass / option / dtype
combinations the per-kernel tests do not export, lowers to Triton for CUDA -- checked without a
GPU by ``jax.export`` for the "cuda" platform with ``interpret=False`` and the GPU default
blocks. A primitive the Pallas Triton lowering lacks (``lax.erf`` once: "Unimplemented
primitive in Pallas Triton lowering: erf", H200, jax 0.11.2) otherwise fails only on a GPU.

Differentiable kernels are exported as ``jax.value_and_grad`` of a scalar loss, so the forward
and the backward ``pallas_call``s are all in the graph; the assert counts the Triton custom
calls (which also rules out a silent Mosaic GPU lowering). Already covered elsewhere, not
repeated here: attention bf16 MQA hd80 window+softcap+segments (test_attention_pallas.py) and
bf16 GQA hd128 causal (test_pallas_report.py); decode bf16 contiguous and paged with
window+softcap (test_decode.py, test_paged_decode.py); rms_norm+residual, rope hd72 bf16
(test_encoder_kernels_aot.py); gelu / geglu bf16 (test_activations.py); patch_embed p14 bf16
(test_patch_embed.py); log_mel fp32 / bf16 (test_log_mel.py); int4 bf16 m1 / m512
(test_int4.py). Shapes are abstract (``ShapeDtypeStruct``): nothing is allocated or run.
A combination that does not lower belongs here as a ``pytest.mark.xfail(strict=True)`` param
with the lowering error as its reason (none fails with jax 0.10.2).
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest
from jax import export

CALL = "__gpu$xla.gpu.triton"
S = jax.ShapeDtypeStruct
DTYPES = {"bf16": jnp.bfloat16, "fp16": jnp.float16, "fp32": jnp.float32}
I32 = jnp.int32


def _triton_calls(fn, args) -> int:
    exported = export.export(jax.jit(fn), platforms=("cuda",),
                             disabled_checks=[export.DisabledSafetyCheck.custom_call(CALL)])(*args)
    return re.findall(r"custom_call @(\S+)\(", exported.mlir_module()).count(CALL)


def _loss(fn):
    return lambda *a: fn(*a).astype(jnp.float32).sum()


# --- builders: (dtype name, **options) -> (function, abstract args, Triton calls expected) ----

def _attention(dt, *, hd, heads, kvh, sq=100, skv=257, causal=False, window=None, softcap=None,
               segments=False, q_end=False, grad=True):
    from kernels.attention.pallas_attention import attention_pallas, default_blocks

    d = DTYPES[dt]
    extra = [S((1, sq), I32), S((1, skv), I32)] if segments else []
    extra += [S((1, sq), I32)] if q_end else []

    def f(q, k, v, *rest):
        rest = list(rest)
        q_ids, kv_ids = (rest.pop(0), rest.pop(0)) if segments else (None, None)
        return attention_pallas(q, k, v, causal=causal, window=window, softcap=softcap, scale=0.1,
                                q_segment_ids=q_ids, kv_segment_ids=kv_ids,
                                q_end=rest.pop(0) if q_end else None, interpret=False,
                                blocks=default_blocks(hd, interpret=False))

    kv = S((1, skv, kvh, hd), d)
    args = (S((1, sq, heads, hd), d), kv, kv, *extra)
    if not grad:
        return f, args, 1  # forward
    return jax.value_and_grad(_loss(f), argnums=(0, 1, 2)), args, 3  # forward, dK/dV, dQ


def _decode(dt, *, hd, heads, kvh, max_len=256, window=None, softcap=None, splits=4, page=None):
    from kernels.decode.pallas_decode import decode_pallas

    d = DTYPES[dt]
    if page is None:
        cache = S((2, max_len, kvh, hd), d)
        args = (S((2, heads, hd), d), cache, cache, S((2,), I32))
    else:  # a pool of 37 pages, max_len // page pages per row
        pool = S((37, page, kvh, hd), d)
        args = (S((2, heads, hd), d), pool, pool, S((2,), I32), S((2, max_len // page), I32))

    def f(q, k, v, lens, *table):
        return decode_pallas(q, k, v, lens, window=window, softcap=softcap, scale=0.1,
                             block_table=table[0] if table else None, num_splits=splits,
                             interpret=False)

    return f, args, 2  # split pass, combine pass


def _norm(dt, *, rms, hidden, bias=False, residual=False, rows=37):
    from kernels.norms.pallas_norms import default_blocks, norm_pallas

    d = DTYPES[dt]
    x, w = S((rows, hidden), d), S((hidden,), d)
    args = (x, w, *([w] if bias else []), *([x] if residual else []))

    def loss(x, w, *rest):
        rest = list(rest)
        b = rest.pop(0) if bias else None
        out = norm_pallas(x, w, b, rest.pop(0) if residual else None, rms=rms, eps=1e-6,
                          offset=1.0 if rms else 0.0, interpret=False,
                          blocks=default_blocks(hidden, interpret=False))
        return sum(o.astype(jnp.float32).sum() for o in (out if residual else (out,)))

    return jax.value_and_grad(loss, argnums=tuple(range(len(args)))), args, 2


def _rope(dt, *, hd, sections):
    from kernels.rope.pallas_rope import default_blocks, rope_pallas

    f = lambda x, p: rope_pallas(x, p, theta=1e4, sections=sections, interpret=False,  # noqa: E731
                                 blocks=default_blocks(hd, interpret=False))
    pos = S((2, 5) if sections == 1 else (2, 5, 2), I32)
    return jax.value_and_grad(_loss(f)), (S((2, 5, 3, hd), DTYPES[dt]), pos), 2


def _gelu(dt, *, approximate, gated):
    from kernels.activations.pallas_activations import default_blocks, gelu_pallas

    f = lambda x, up: gelu_pallas(x, up if gated else None, approximate=approximate,  # noqa: E731
                                  interpret=False, blocks=default_blocks(interpret=False))
    x = S((7, 301), DTYPES[dt])
    return jax.value_and_grad(_loss(f), argnums=(0, 1) if gated else 0), (x, x), 2


def _patch_embed(dt, *, patch, dim=72, channels=3):
    from kernels.patch_embed.pallas_patch_embed import default_blocks, patch_embed_pallas

    d = DTYPES[dt]
    img = 2 * patch  # a 2 x 2 grid of patches
    args = (S((2, img, img, channels), d), S((patch * patch * channels, dim), d), S((dim,), d),
            S((4, dim), d))
    f = lambda *a: patch_embed_pallas(*a, patch=patch, interpret=False,  # noqa: E731
                                      blocks=default_blocks(interpret=False))
    return jax.value_and_grad(_loss(f), argnums=(0, 1, 2, 3)), args, 3  # forward, dimages, dweight


def _log_mel(dt, *, samples, n_mels):
    from kernels.audio.pallas_log_mel import default_blocks, log_mel_pallas
    from kernels.audio.spec import geometry

    p = geometry(samples, 2, n_mels=n_mels)
    f = lambda x: log_mel_pallas(x, p, interpret=False, blocks=default_blocks(interpret=False))  # noqa: E731
    return f, (S((2, samples), DTYPES[dt]),), 1


def _int4(dt, *, rows, zeros=False, scales=None, k=2048, n=1024, group=128):
    from kernels.int4.pallas_int4 import default_blocks, int4_matmul_pallas

    s = S((k // group, n), DTYPES[scales or dt])
    args = (S((rows, k), DTYPES[dt]), S((n, k // 2), jnp.uint8), *[s] * (2 if zeros else 1))

    def f(x, packed, sc, *z):
        return int4_matmul_pallas(x, packed, sc, z[0] if z else None, group, interpret=False,
                                  blocks=default_blocks(rows, interpret=False))

    return f, args, 1  # forward only


def _cross_entropy(dt, *, softcap=None, grad=True, vocab=1000, width=64, rows=37):
    from kernels.cross_entropy.jax_cross_entropy import default_blocks, linear_cross_entropy_jax

    d = DTYPES[dt]
    args = (S((rows, width), d), S((vocab, width), d), S((rows,), I32), S((rows,), jnp.float32))

    def f(x, w, t, row_w):
        return linear_cross_entropy_jax(x, w, t, row_w, softcap=softcap, impl="pallas", interpret=False,
                                        blocks=default_blocks(vocab, interpret=False))

    # one kernel (in the row-chunk scan): the loss alone, or the loss and the gradient the
    # custom_vjp's forward computes (the backward only scales it, no kernel)
    return (jax.value_and_grad(f, argnums=(0, 1)) if grad else f), args, 1


# --- the combinations: (id, builder, options, dtypes) ---------------------------------------

ALL, NEW_DTYPES = ("bf16", "fp16", "fp32"), ("fp16", "fp32")  # NEW_DTYPES: bf16 is tested elsewhere

COMBOS = [
    # attention: forward alone; forward + dK/dV + dQ with each feature, GQA grouping and head dim
    ("attention-fwd-gqa4-hd128", _attention, dict(hd=128, heads=8, kvh=2, grad=False), ALL),
    ("attention-gqa4-hd128-causal", _attention, dict(hd=128, heads=8, kvh=2, causal=True), NEW_DTYPES),
    ("attention-mqa4-hd80-win33-cap5-seg", _attention,
     dict(hd=80, heads=4, kvh=1, window=33, softcap=5.0, segments=True), NEW_DTYPES),
    ("attention-mha-hd64-causal-win40-cap5-seg", _attention,
     dict(hd=64, heads=4, kvh=4, causal=True, window=40, softcap=5.0, segments=True), ALL),
    ("attention-mqa4-hd256-win33", _attention, dict(hd=256, heads=4, kvh=1, window=33), ALL),
    ("attention-gqa2-hd96-q300kv200-causal-cap3-seg", _attention,
     dict(hd=96, heads=6, kvh=3, sq=300, skv=200, causal=True, softcap=3.0, segments=True), ALL),
    ("attention-gqa8-hd16-q300kv100-win20", _attention,
     dict(hd=16, heads=16, kvh=2, sq=300, skv=100, window=20), ALL),
    ("attention-gqa4-hd128-causal-bidirectional", _attention,
     dict(hd=128, heads=8, kvh=2, causal=True, q_end=True), ALL),
    ("attention-gqa4-hd64-causal-bidirectional-win40-cap5-seg", _attention,
     dict(hd=64, heads=8, kvh=2, causal=True, q_end=True, window=40, softcap=5.0, segments=True), ALL),
    # decode: split + combine passes, contiguous and paged caches
    ("decode-gqa4-hd80-win100-cap5-s4", _decode,
     dict(hd=80, heads=8, kvh=2, window=100, softcap=5.0), NEW_DTYPES),
    ("decode-gqa4-hd128-s1", _decode, dict(hd=128, heads=8, kvh=2, splits=1), ALL),
    ("decode-mha-hd256-s8", _decode, dict(hd=256, heads=4, kvh=4, splits=8), ALL),
    ("decode-mqa8-hd80-len250-s2", _decode, dict(hd=80, heads=8, kvh=1, max_len=250, splits=2), ALL),
    ("decode-mqa32-hd16-s1", _decode, dict(hd=16, heads=32, kvh=1, max_len=64, splits=1), ALL),
    ("decode-gqa4-hd128-win1000-cap5-auto-splits", _decode,
     dict(hd=128, heads=8, kvh=2, max_len=4096, window=1000, softcap=5.0, splits=None), ALL),
    ("decode-paged64-gqa4-hd128-win100-cap5-s4", _decode,
     dict(hd=128, heads=8, kvh=2, page=64, window=100, softcap=5.0), NEW_DTYPES),
    ("decode-paged64-gqa4-hd128-s1", _decode, dict(hd=128, heads=8, kvh=2, page=64, splits=1), ALL),
    ("decode-paged16-gqa4-hd64-win100-cap5-s4", _decode,
     dict(hd=64, heads=8, kvh=2, page=16, window=100, softcap=5.0), ALL),
    ("decode-paged128-gqa8-hd256-s2", _decode,
     dict(hd=256, heads=8, kvh=1, page=128, max_len=512, splits=2), ALL),
    # norms: forward + backward, rms / layer, bias, residual, widths across the warp tiers
    ("rms_norm-1152", _norm, dict(rms=True, hidden=1152), ALL),
    ("rms_norm-residual-1152", _norm, dict(rms=True, hidden=1152, residual=True), NEW_DTYPES),
    ("rms_norm-residual-10240", _norm, dict(rms=True, hidden=10240, residual=True, rows=5), ALL),
    ("layer_norm-bias-1152", _norm, dict(rms=False, hidden=1152, bias=True), ALL),
    ("layer_norm-bias-residual-1152", _norm, dict(rms=False, hidden=1152, bias=True, residual=True), ALL),
    ("layer_norm-100", _norm, dict(rms=False, hidden=100), ALL),
    ("layer_norm-bias-16384", _norm, dict(rms=False, hidden=16384, bias=True, rows=5), ALL),
    # rope / rope_2d: forward + inverse rotation
    ("rope-hd72", _rope, dict(hd=72, sections=1), NEW_DTYPES),
    ("rope-hd128", _rope, dict(hd=128, sections=1), ALL),
    ("rope-hd256", _rope, dict(hd=256, sections=1), ALL),
    ("rope_2d-hd72", _rope, dict(hd=72, sections=2), ALL),
    ("rope_2d-hd16", _rope, dict(hd=16, sections=2), ALL),
    # gelu / geglu: forward + backward
    ("gelu-tanh", _gelu, dict(approximate="tanh", gated=False), NEW_DTYPES),
    ("gelu-none", _gelu, dict(approximate="none", gated=False), NEW_DTYPES),
    ("geglu-tanh", _gelu, dict(approximate="tanh", gated=True), NEW_DTYPES),
    ("geglu-none", _gelu, dict(approximate="none", gated=True), NEW_DTYPES),
    # patch_embed: forward + dimages + dweight
    ("patch_embed-p14", _patch_embed, dict(patch=14), NEW_DTYPES),
    ("patch_embed-p16", _patch_embed, dict(patch=16), ALL),
    ("patch_embed-p8", _patch_embed, dict(patch=8), ALL),
    # log_mel: forward only
    ("log_mel-128-s3217", _log_mel, dict(samples=3217, n_mels=128), ("fp16",)),
    ("log_mel-80-s16000", _log_mel, dict(samples=16000, n_mels=80), ALL),
    ("log_mel-80-s400", _log_mel, dict(samples=400, n_mels=80), ALL),
    # int4 matmul: the three default-block tiers (<= 16, <= 64, more rows), scales in other dtypes
    ("int4-m1-zeros", _int4, dict(rows=1, zeros=True), NEW_DTYPES),
    ("int4-m512", _int4, dict(rows=512), NEW_DTYPES),
    ("int4-m64", _int4, dict(rows=64), ALL),
    ("int4-m16-zeros-scales_fp32", _int4, dict(rows=16, zeros=True, scales="fp32"), ALL),
    ("int4-m40-scales_fp16", _int4, dict(rows=40, scales="fp16"), ALL),
    ("int4-m300-g32-zeros-scales_bf16", _int4, dict(rows=300, group=32, zeros=True, scales="bf16"), ALL),
    ("int4-m1-g16-n96", _int4, dict(rows=1, group=16, k=256, n=96), ALL),
    # linear cross-entropy: the loss alone, and with the gradients (no export test elsewhere)
    ("cross_entropy-loss", _cross_entropy, dict(grad=False), ALL),
    ("cross_entropy-loss-cap30", _cross_entropy, dict(grad=False, softcap=30.0), ALL),
    ("cross_entropy-grad", _cross_entropy, dict(), ALL),
    ("cross_entropy-grad-cap30-v10000", _cross_entropy, dict(softcap=30.0, vocab=10000), ALL),
    ("cross_entropy-loss-v262144", _cross_entropy, dict(grad=False, vocab=262144, width=16, rows=8), ALL),
]

# Combinations that do not lower today: (id, dtype) -> the lowering error. None with jax 0.10.2.
FAILS: dict[tuple[str, str], str] = {}

CASES = [pytest.param(build, opts, dt, id=f"{name}-{dt}",
                      marks=[pytest.mark.xfail(strict=True, reason=FAILS[name, dt])] if (name, dt) in FAILS else [])
         for name, build, opts, dtypes in COMBOS for dt in dtypes]


@pytest.mark.parametrize("build,opts,dt", CASES)
def test_lowers_to_triton_for_cuda(build, opts, dt):
    fn, args, want = build(dt, **opts)
    assert _triton_calls(fn, args) == want


def test_export_reports_a_primitive_the_triton_lowering_lacks():
    """The check above is not vacuous: a Triton-lowered kernel using lax.erf (the primitive
    the exact gelu once used) fails at export on this machine, as it did on the GPU."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    def kernel(x_ref, o_ref):
        o_ref[...] = jax.lax.erf(x_ref[...])

    f = lambda x: pl.pallas_call(kernel, out_shape=S(x.shape, x.dtype), interpret=False,  # noqa: E731
                                 compiler_params=plgpu.CompilerParams(num_warps=4))(x)
    with pytest.raises(NotImplementedError, match="Unimplemented primitive in Pallas Triton lowering: erf"):
        _triton_calls(f, (S((128,), jnp.float32),))
