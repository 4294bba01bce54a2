"""JAX front-end: validated, differentiable ops with an ``impl`` switch.

    attention(q, k, v, *, causal=False, window=None, softcap=None, scale=None,
              segment_ids=None, impl="pallas", bidirectional_ids=None)

impls: "pallas" (GPU-style Pallas flash attention; interpret mode when JAX has no GPU),
"reference" (jax.numpy, fp32 math), "xla" (jax.nn.dot_product_attention, the peer).
``bidirectional_ids`` (int [batch, q_len], causal only): runs of equal ids >= 0 attend
bidirectionally inside causal attention (prefix-LM image blocks; ``spec.py``); turned once
into q_end, each query's last visible key, for "pallas", "reference" and "xla"
("pallas_mgpu" and "pallas_tpu" refuse it).
Arguments are checked before anything launches; there is no fallback between impls.
"""
from __future__ import annotations

import jax.numpy as jnp

from .attention.spec import check_attention_args, check_bidirectional_ids, check_impl

ATTENTION_IMPLS = ("pallas", "reference", "xla", "pallas_mgpu", "pallas_tpu")
JAX_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32))


def _device(x):
    """The device (or frozenset of devices, when sharded) of a committed concrete jax.Array;
    None for tracers, uncommitted arrays (JAX moves those itself) and non-JAX inputs, which the
    spec's device check does not compare."""
    import jax

    if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer) or not x.committed:
        return None
    devices = x.devices()
    return next(iter(devices)) if len(devices) == 1 else frozenset(devices)


def attention(q, k, v, *, causal=False, window=None, softcap=None, scale=None,
              segment_ids=None, impl="pallas", bidirectional_ids=None):
    """Multi-query / grouped-query / multi-head attention. See ``kernels/attention/spec.py``."""
    check_impl(impl, ATTENTION_IMPLS, op="attention")
    problem, q_ids, kv_ids = check_attention_args(
        q, k, v, causal=causal, window=window, softcap=softcap, scale=scale,
        segment_ids=segment_ids, dtypes=JAX_DTYPES, device_of=_device,
    )
    kwargs = dict(causal=causal, window=problem.window, softcap=problem.softcap, scale=problem.scale,
                  q_segment_ids=q_ids, kv_segment_ids=kv_ids)
    if bidirectional_ids is not None:
        from .attention.reference_jax import bidirectional_q_end

        check_bidirectional_ids(bidirectional_ids, problem, _device, q)
        if impl in ("pallas_mgpu", "pallas_tpu"):
            raise ValueError(f"bidirectional_ids: impl={impl!r} cannot take it (its kernels have no "
                             "per-query key bound); use impl='pallas', 'xla' or 'reference'")
        kwargs["q_end"] = bidirectional_q_end(bidirectional_ids, problem.kv_len)
    if impl == "pallas":
        from .attention.pallas_attention import attention_pallas

        return attention_pallas(q, k, v, **kwargs)
    if impl == "pallas_mgpu":  # Hopper Mosaic GPU fwd+bwd; fp16/bf16, no segment_ids
        from .attention.pallas_mgpu import attention_pallas_mgpu

        return attention_pallas_mgpu(q, k, v, **kwargs)
    if impl == "pallas_tpu":  # TPU Mosaic kernels; TPU interpret mode off-TPU
        from .attention.pallas_tpu import attention_pallas_tpu

        return attention_pallas_tpu(q, k, v, **kwargs)
    if impl == "xla":
        from .attention.xla import attention_xla

        return attention_xla(q, k, v, **kwargs)
    from .attention.reference_jax import _attention

    return _attention(q, k, v, **kwargs)


DECODE_IMPLS = ("pallas", "reference", "xla", "pallas_tpu")


def decode_attention(q, k_cache, v_cache, cache_seqlens, *, block_table=None, window=None,
                     softcap=None, scale=None, impl="pallas"):
    """One-token decode attention against a KV cache. See ``kernels/decode/spec.py``.

    Reads cache_seqlens (and block_table) on the host to check them (a device->host copy);
    under jax.jit that value check is skipped and the kernels clamp L into [0, max_len] and
    page indices into the pool. block_table (int32/int64 [batch, pages_per_row]) makes
    k_cache/v_cache page pools [num_pages, page_size, kv_heads, head_dim]: "pallas" reads
    pages in the kernel (page_size a power of two >= 16); "pallas_tpu" DMAs them through the
    scalar-prefetched table (page_size a multiple of 8 for fp32, 16 for bf16/fp16); "xla" and
    "reference" gather them into a contiguous cache first.
    impl="xla" is jax.nn.dot_product_attention (key_value_seq_lengths; a mask with a window).
    """
    from .decode.spec import check_decode_args
    from .decode.xla import host_lengths

    check_impl(impl, DECODE_IMPLS, op="decode_attention")
    p = check_decode_args(q, k_cache, v_cache, cache_seqlens, window=window, softcap=softcap,
                          scale=scale, dtypes=JAX_DTYPES, host_lengths=host_lengths,
                          block_table=block_table, device_of=_device)
    kwargs = dict(window=p.window, softcap=p.softcap, scale=p.scale)
    if impl == "pallas":
        from .decode.pallas_decode import decode_pallas

        return decode_pallas(q, k_cache, v_cache, cache_seqlens, block_table=block_table, **kwargs)
    if impl == "pallas_tpu" and block_table is not None:  # pages DMA'd through the table
        from .decode.pallas_tpu_paged_decode import paged_decode_attention_pallas_tpu

        return paged_decode_attention_pallas_tpu(q, k_cache, v_cache, cache_seqlens, block_table,
                                                 **kwargs)
    if impl == "pallas_tpu":  # TPU Mosaic kernel; TPU interpret mode off-TPU
        from .decode.pallas_tpu_decode import decode_attention_pallas_tpu

        return decode_attention_pallas_tpu(q, k_cache, v_cache, cache_seqlens, **kwargs)
    if block_table is not None:  # the peer and the reference: gather the pages (not a kernel)
        from .decode.reference_jax import gather_pages

        k_cache, v_cache = gather_pages(k_cache, block_table), gather_pages(v_cache, block_table)
    if impl == "xla":
        from .decode.xla import decode_xla

        return decode_xla(q, k_cache, v_cache, cache_seqlens, **kwargs)
    from .decode.reference_jax import _decode

    return _decode(q, k_cache, v_cache, cache_seqlens, **kwargs)


# --- encoder kernels: norms, rope, activations (kernels/norms, kernels/rope, kernels/activations) ---

NORM_IMPLS = ("pallas", "reference", "xla")
ROPE_IMPLS = ("pallas", "reference", "xla")
ACTIVATION_IMPLS = ("pallas", "reference", "xla")


def rms_norm(x, weight, *, eps=1e-6, offset=0.0, gemma=False, residual=None, impl="pallas"):
    """RMSNorm over the last dim, y = x / rms(x) * (weight + offset); gemma=True: (1 + weight).

    With ``residual``: h = x + residual, returns (rms_norm(h), h). See ``kernels/norms/spec.py``.
    """
    from .norms.spec import check_norm_args, resolve_offset

    check_impl(impl, NORM_IMPLS, op="rms_norm")
    off = resolve_offset(offset, gemma)
    p = check_norm_args(x, weight, None, residual, rms=True, eps=eps, offset=off, dtypes=JAX_DTYPES,
                        device_of=_device)
    return _norm_dispatch(x, weight, None, residual, rms=True, eps=p.eps, offset=off, impl=impl)


def layer_norm(x, weight, bias, *, eps=1e-5, residual=None, impl="pallas"):
    """LayerNorm over the last dim; with ``residual`` returns (layer_norm(x + residual), x + residual)."""
    from .norms.spec import check_norm_args

    check_impl(impl, NORM_IMPLS, op="layer_norm")
    p = check_norm_args(x, weight, bias, residual, rms=False, eps=eps, offset=0.0, dtypes=JAX_DTYPES,
                        device_of=_device)
    return _norm_dispatch(x, weight, bias, residual, rms=False, eps=p.eps, offset=0.0, impl=impl)


def _norm_dispatch(x, weight, bias, residual, *, rms, eps, offset, impl):
    if impl == "pallas":
        from .norms.pallas_norms import norm_pallas

        return norm_pallas(x, weight, bias, residual, rms=rms, eps=eps, offset=offset)
    from .norms import reference_jax

    fn = reference_jax._norm_jit if impl == "xla" else reference_jax._norm
    return fn(x, weight, bias, residual, rms=rms, eps=eps, offset=offset)


def rope(x, positions, *, theta=10000.0, impl="pallas"):
    """Rotary embedding, rotate-half pairs (i, i + D/2) as HF Llama/Gemma. See ``kernels/rope/spec.py``."""
    from .rope.spec import check_rope_args

    check_impl(impl, ROPE_IMPLS, op="rope")
    p = check_rope_args(x, positions, theta=theta, sections=1, dtypes=JAX_DTYPES, device_of=_device)
    return _rope_dispatch(x, positions, theta=p.theta, sections=1, impl=impl)


def rope_2d(x, positions_hw, *, theta=10000.0, impl="pallas"):
    """2-D rotary embedding for patches: head_dim's first half rotated by row, second by column."""
    from .rope.spec import check_rope_args

    check_impl(impl, ROPE_IMPLS, op="rope_2d")
    p = check_rope_args(x, positions_hw, theta=theta, sections=2, dtypes=JAX_DTYPES, device_of=_device)
    return _rope_dispatch(x, positions_hw, theta=p.theta, sections=2, impl=impl)


def _rope_dispatch(x, positions, *, theta, sections, impl):
    if impl == "pallas":
        from .rope.pallas_rope import rope_pallas

        return rope_pallas(x, positions, theta=theta, sections=sections)
    from .rope import reference_jax

    fn = reference_jax._rope_jit if impl == "xla" else reference_jax._rope
    return fn(x, positions, theta=theta, sections=sections)


def gelu(x, *, approximate="tanh", impl="pallas"):
    """GELU; approximate="tanh" (Gemma's gelu_pytorch_tanh) or "none" (exact erf)."""
    from .activations.spec import check_gelu_args

    check_impl(impl, ACTIVATION_IMPLS, op="gelu")
    check_gelu_args(x, None, approximate=approximate, dtypes=JAX_DTYPES, device_of=_device)
    return _act_dispatch(x, None, approximate=approximate, impl=impl)


def gated_gelu(gate, up, *, approximate="tanh", impl="pallas"):
    """GeGLU: gelu(gate) * up, fused (Gemma's MLP). See ``kernels/activations/spec.py``."""
    from .activations.spec import check_gelu_args

    check_impl(impl, ACTIVATION_IMPLS, op="gated_gelu")
    check_gelu_args(gate, up, approximate=approximate, dtypes=JAX_DTYPES, device_of=_device)
    return _act_dispatch(gate, up, approximate=approximate, impl=impl)


def _act_dispatch(x, up, *, approximate, impl):
    if impl == "pallas":
        from .activations.pallas_activations import gelu_pallas

        return gelu_pallas(x, up, approximate=approximate)
    from .activations import reference_jax

    fn = reference_jax._gelu_jit if impl == "xla" else reference_jax._gelu
    return fn(x, up, approximate=approximate)


PATCH_EMBED_IMPLS = ("pallas", "reference", "xla")


def patch_embed(images, weight, bias, pos_embed, *, patch, impl="pallas"):
    """Patch tokens [B, N, D] = unfold(images [B, H, W, C]) @ weight [P*P*C, D] + bias + pos_embed.

    Flattening order (ph, pw, c); see ``kernels/patch_embed/spec.py``. impls: "pallas" (fused
    kernel), "reference" (reshape + matmul), "xla" (lax.conv_general_dilated peer).
    """
    from .patch_embed.spec import check_patch_embed_args

    check_impl(impl, PATCH_EMBED_IMPLS, op="patch_embed")
    check_patch_embed_args(images, weight, bias, pos_embed, patch=patch,
                           dtypes=JAX_DTYPES + (jnp.dtype(jnp.float64),) * (impl != "pallas"),
                           device_of=_device)
    if impl == "pallas":
        from .patch_embed.pallas_patch_embed import patch_embed_pallas

        return patch_embed_pallas(images, weight, bias, pos_embed, patch=patch)
    from .patch_embed import reference_jax

    fn = reference_jax.patch_embed_xla if impl == "xla" else reference_jax.patch_embed_reference
    return fn(images, weight, bias, pos_embed, patch=patch)


LOG_MEL_IMPLS = ("pallas", "reference", "xla")


def log_mel(waveform, *, sample_rate=16000, n_mels=80, win_ms=25.0, hop_ms=10.0, n_fft=None,
            impl="pallas"):
    """Log-mel spectrogram [B, frames, n_mels] float32 of waveform [B, samples]; contract in
    ``kernels/audio/spec.py``. impls: "pallas" (fused kernel), "reference" (jnp.fft.rfft),
    "xla" (frames @ DFT tables). Non-finite samples are refused when the values are concrete;
    under jax.jit they cannot be checked (see spec)."""
    import jax

    from .audio.spec import check_log_mel_args

    check_impl(impl, LOG_MEL_IMPLS, op="log_mel")
    problem = check_log_mel_args(waveform, sample_rate=sample_rate, n_mels=n_mels, win_ms=win_ms,
                                 hop_ms=hop_ms, n_fft=n_fft,
                                 dtypes=JAX_DTYPES + (jnp.dtype(jnp.float64),) * (impl != "pallas"))
    if not isinstance(waveform, jax.core.Tracer) and not bool(jnp.isfinite(waveform).all()):
        raise ValueError("waveform contains NaN or inf samples; log_mel refuses non-finite audio")
    if impl == "pallas":
        from .audio.pallas_log_mel import log_mel_pallas

        return log_mel_pallas(waveform, problem)
    from .audio import reference_jax

    fn = reference_jax.log_mel_xla if impl == "xla" else reference_jax.log_mel_reference
    return fn(waveform, sample_rate=sample_rate, n_mels=n_mels, win_ms=win_ms, hop_ms=hop_ms, n_fft=n_fft)


INT4_IMPLS = ("pallas", "reference")
INT4_SCALE_DTYPES = JAX_DTYPES


def int4_matmul(x, packed_w, scales, zeros, group_size, *, impl="pallas"):
    """x [..., in] @ dequant(W).T -> [..., out], W [out, in] group-wise int4 (Linear layout).

    packed_w uint8 [out, in // 2] (low nibble = even k), scales / zeros [in // group_size, out]
    (zeros=None: symmetric, zero point 8). Layout and limits: ``kernels/int4/spec.py``.
    impls: "pallas" (dequantizes in registers inside the matmul; split-K), "reference"
    (dequantize, then jnp.matmul; float64-capable). Forward only.
    """
    from .int4.spec import check_int4_args

    check_impl(impl, INT4_IMPLS, op="int4_matmul")
    check_int4_args(x, packed_w, scales, zeros, group_size,
                    dtypes=JAX_DTYPES + (jnp.dtype(jnp.float64),) * (impl != "pallas"),
                    scale_dtypes=INT4_SCALE_DTYPES, uint8=jnp.dtype(jnp.uint8), device_of=_device)
    if impl == "pallas":
        from .int4.pallas_int4 import int4_matmul_pallas

        return int4_matmul_pallas(x, packed_w, scales, zeros, group_size)
    from .int4.reference_jax import int4_matmul_reference

    return int4_matmul_reference(x, packed_w, scales, zeros, group_size)


LOSS_IMPLS = ("pallas", "xla", "reference")


def linear_cross_entropy(x, weight, targets, *, mask=None, softcap=None, normalizer=None, impl="pallas"):
    """Cross-entropy of softcap(x @ weight.T) against targets (``kernels/cross_entropy/spec.py``):
    "pallas" and "xla" chunk the rows (the [N, V] logits never exist; the softmax step in a
    Pallas kernel or in XLA-fused jnp), "reference" builds the full logits. x [..., W],
    weight [V, W] (the tied embedding), targets int [...], mask bool [...] (None: every row);
    normalizer: a positive number or 0-d array (None: the masked-in row count, >= 1); an
    array's value is checked > 0 and finite when concrete (not under ``jit``), as are the
    masked-in targets' range; masked-out rows may hold any target. Differentiable in x and weight."""
    from .cross_entropy.spec import check_linear_cross_entropy_args

    check_impl(impl, LOSS_IMPLS, op="linear_cross_entropy")
    _, width, vocab = check_linear_cross_entropy_args(
        x, weight, targets, mask, softcap=softcap, normalizer=normalizer,
        dtypes=JAX_DTYPES + (jnp.dtype(jnp.float64),) * (impl == "reference"), device_of=_device)
    t = targets.reshape(-1)
    m = jnp.ones(t.shape, bool) if mask is None else mask.reshape(-1)
    _check_concrete_targets(t, m, vocab)
    if impl == "reference":
        from .cross_entropy.reference_jax import linear_cross_entropy_reference

        return linear_cross_entropy_reference(x, weight, targets, mask, softcap=softcap, normalizer=normalizer)
    from .cross_entropy.jax_cross_entropy import linear_cross_entropy_jax

    denom = jnp.maximum(m.sum(), 1).astype(jnp.float32) if normalizer is None else normalizer
    return linear_cross_entropy_jax(x.reshape(-1, width), weight, jnp.where(m, t, 0),
                                    m.astype(jnp.float32) / denom, softcap=softcap, impl=impl)


def _check_concrete_targets(t, m, vocab: int) -> None:
    import jax
    import numpy as np

    if isinstance(t, jax.core.Tracer) or isinstance(m, jax.core.Tracer):
        return
    tn, mn = np.asarray(t), np.asarray(m)
    bad = ((tn < 0) | (tn >= vocab)) & mn
    if bad.any():
        raise ValueError(f"targets must lie in [0, vocab={vocab}) where mask is set, got {int(tn[bad][0])}")
