"""PyTorch front-end: validated, differentiable ops with an ``impl`` switch.

    attention(q, k, v, *, causal=False, window=None, softcap=None, scale=None,
              segment_ids=None, impl="triton", blocks=None, bidirectional_ids=None)

impls: "triton" (hand-written flash attention; interpret mode on CPU), "reference"
(plain torch, fp32 math), "sdpa" (torch's scaled_dot_product_attention, the peer).
``blocks`` (triton only): a TritonAttentionBlocks, a (forward, backward) pair, "autotune",
or None for the per-device defaults.
``bidirectional_ids`` (int [batch, q_len], causal only): runs of equal ids >= 0 attend
bidirectionally inside causal attention (prefix-LM image blocks; ``spec.py``); turned once
into q_end, each query's last visible key, which every impl takes (Triton: pointer tiles).
Arguments are checked before anything launches; there is no fallback between impls.
"""
from __future__ import annotations

import torch

from ._platform import configure_triton_interpret

configure_triton_interpret()  # must run before any @triton.jit kernel is imported

from .attention.spec import check_attention_args, check_bidirectional_ids, check_impl  # noqa: E402

ATTENTION_IMPLS = ("triton", "reference", "sdpa")
TORCH_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _device(t: torch.Tensor):
    return t.device


def attention(q, k, v, *, causal=False, window=None, softcap=None, scale=None,
              segment_ids=None, impl="triton", blocks=None, bidirectional_ids=None):
    """Multi-query / grouped-query / multi-head attention. See ``kernels/attention/spec.py``."""
    check_impl(impl, ATTENTION_IMPLS, op="attention")
    if blocks is not None and impl != "triton":
        raise ValueError(f"blocks: only impl='triton' takes tile sizes, got blocks={blocks!r} with impl={impl!r}")
    problem, q_ids, kv_ids = check_attention_args(
        q, k, v, causal=causal, window=window, softcap=softcap, scale=scale,
        segment_ids=segment_ids, dtypes=TORCH_DTYPES, device_of=_device,
    )
    kwargs = dict(causal=causal, window=problem.window, softcap=problem.softcap, scale=problem.scale,
                  q_segment_ids=q_ids, kv_segment_ids=kv_ids)
    if bidirectional_ids is not None:
        from .attention.reference import bidirectional_q_end

        check_bidirectional_ids(bidirectional_ids, problem, _device, q)
        if impl == "triton":  # Gluon / TMA tiles refused before anything runs
            from .attention.triton_attention import check_bidirectional_blocks

            check_bidirectional_blocks(blocks)
        kwargs["q_end"] = bidirectional_q_end(bidirectional_ids, problem.kv_len)
    if impl == "triton":
        from .attention.triton_attention import attention_triton

        return attention_triton(q, k, v, blocks=blocks, **kwargs)
    if impl == "sdpa":
        from .attention.sdpa import attention_sdpa

        return attention_sdpa(q, k, v, **kwargs)
    from .attention.reference import _attention

    return _attention(q, k, v, **kwargs)


DECODE_IMPLS = ("triton", "reference", "sdpa")


def decode_attention(q, k_cache, v_cache, cache_seqlens, *, block_table=None, window=None,
                     softcap=None, scale=None, impl="triton", check_lengths=True, blocks=None):
    """One-token decode attention against a KV cache. See ``kernels/decode/spec.py``.

    block_table (int32/int64 [batch, pages_per_row]) makes k_cache/v_cache page pools
    [num_pages, page_size, kv_heads, head_dim]: "triton" reads pages in the kernel (page_size
    a power of two >= 16); "sdpa" and "reference" gather them into a contiguous cache first.
    Reads cache_seqlens (and block_table) on the host to check them (one device->host sync);
    ``check_lengths=False`` skips that read (shapes, dtypes and devices are still checked) for
    callers that already checked the values, e.g. a model's later layers in one decode step.
    ``blocks`` (triton only): a ``TritonDecodeBlocks`` (tiles, launch options such as sm_90's
    programmatic dependent launch) in place of the device's defaults.
    """
    from .decode.spec import check_decode_args

    check_impl(impl, DECODE_IMPLS, op="decode_attention")
    if blocks is not None and impl != "triton":
        raise ValueError(f"blocks: only impl='triton' takes tile sizes, got blocks={blocks!r} with impl={impl!r}")
    p = check_decode_args(q, k_cache, v_cache, cache_seqlens, window=window, softcap=softcap,
                          scale=scale, dtypes=TORCH_DTYPES, device_of=_device,
                          host_lengths=(lambda t: t.cpu().numpy()) if check_lengths else None,
                          block_table=block_table)
    kwargs = dict(window=p.window, softcap=p.softcap, scale=p.scale)
    if impl == "triton":
        from .decode.triton_decode import decode_triton

        return decode_triton(q, k_cache, v_cache, cache_seqlens, block_table=block_table, blocks=blocks, **kwargs)
    if block_table is not None:  # peers and the reference: gather the pages (not a kernel)
        from .decode.reference import gather_pages

        k_cache, v_cache = gather_pages(k_cache, block_table), gather_pages(v_cache, block_table)
    if impl == "sdpa":
        from .decode.sdpa import decode_sdpa

        return decode_sdpa(q, k_cache, v_cache, cache_seqlens, **kwargs)
    from .decode.reference import _decode

    return _decode(q, k_cache, v_cache, cache_seqlens, **kwargs)


# --- encoder kernels: norms, rope, activations (kernels/norms, kernels/rope, kernels/activations) ---

NORM_IMPLS = ("triton", "reference", "compiled")
ROPE_IMPLS = ("triton", "reference", "compiled")
ACTIVATION_IMPLS = ("triton", "reference", "compiled")


def _compiled(fn):
    """torch.compile of a reference function (the "compiled" peer), cached per function."""
    cache = _compiled.__dict__.setdefault("cache", {})
    if fn not in cache:
        cache[fn] = torch.compile(fn, dynamic=False)
    return cache[fn]


def rms_norm(x, weight, *, eps=1e-6, offset=0.0, gemma=False, residual=None, impl="triton"):
    """RMSNorm over the last dim, y = x / rms(x) * (weight + offset); gemma=True: (1 + weight).

    With ``residual``: h = x + residual, returns (rms_norm(h), h). See ``kernels/norms/spec.py``.
    """
    from .norms.spec import check_norm_args, resolve_offset

    check_impl(impl, NORM_IMPLS, op="rms_norm")
    off = resolve_offset(offset, gemma)
    p = check_norm_args(x, weight, None, residual, rms=True, eps=eps, offset=off,
                        dtypes=TORCH_DTYPES, device_of=_device)
    return _norm_dispatch(x, weight, None, residual, rms=True, eps=p.eps, offset=off, impl=impl)


def layer_norm(x, weight, bias, *, eps=1e-5, residual=None, impl="triton"):
    """LayerNorm over the last dim; with ``residual`` returns (layer_norm(x + residual), x + residual)."""
    from .norms.spec import check_norm_args

    check_impl(impl, NORM_IMPLS, op="layer_norm")
    p = check_norm_args(x, weight, bias, residual, rms=False, eps=eps, offset=0.0,
                        dtypes=TORCH_DTYPES, device_of=_device)
    return _norm_dispatch(x, weight, bias, residual, rms=False, eps=p.eps, offset=0.0, impl=impl)


def _norm_dispatch(x, weight, bias, residual, *, rms, eps, offset, impl):
    if impl == "triton":
        from .norms.triton_norms import norm_triton

        return norm_triton(x, weight, bias, residual, rms=rms, eps=eps, offset=offset)
    from .norms.reference import _norm

    fn = _compiled(_norm) if impl == "compiled" else _norm
    return fn(x, weight, bias, residual, rms=rms, eps=eps, offset=offset)


def rope(x, positions, *, theta=10000.0, impl="triton"):
    """Rotary embedding, rotate-half pairs (i, i + D/2) as HF Llama/Gemma. See ``kernels/rope/spec.py``."""
    from .rope.spec import check_rope_args

    check_impl(impl, ROPE_IMPLS, op="rope")
    p = check_rope_args(x, positions, theta=theta, sections=1, dtypes=TORCH_DTYPES, device_of=_device)
    return _rope_dispatch(x, positions, theta=p.theta, sections=1, impl=impl)


def rope_2d(x, positions_hw, *, theta=10000.0, impl="triton"):
    """2-D rotary embedding for patches: head_dim's first half rotated by row, second by column."""
    from .rope.spec import check_rope_args

    check_impl(impl, ROPE_IMPLS, op="rope_2d")
    p = check_rope_args(x, positions_hw, theta=theta, sections=2, dtypes=TORCH_DTYPES,
                        device_of=_device)
    return _rope_dispatch(x, positions_hw, theta=p.theta, sections=2, impl=impl)


def _rope_dispatch(x, positions, *, theta, sections, impl):
    if impl == "triton":
        from .rope.triton_rope import rope_triton

        return rope_triton(x, positions, theta=theta, sections=sections)
    from .rope.reference import _rope

    fn = _compiled(_rope) if impl == "compiled" else _rope
    return fn(x, positions, theta=theta, sections=sections)


def gelu(x, *, approximate="tanh", impl="triton"):
    """GELU; approximate="tanh" (Gemma's gelu_pytorch_tanh) or "none" (exact erf)."""
    from .activations.spec import check_gelu_args

    check_impl(impl, ACTIVATION_IMPLS, op="gelu")
    check_gelu_args(x, None, approximate=approximate, dtypes=TORCH_DTYPES, device_of=_device)
    return _act_dispatch(x, None, approximate=approximate, impl=impl)


def gated_gelu(gate, up, *, approximate="tanh", impl="triton"):
    """GeGLU: gelu(gate) * up, fused (Gemma's MLP). See ``kernels/activations/spec.py``."""
    from .activations.spec import check_gelu_args

    check_impl(impl, ACTIVATION_IMPLS, op="gated_gelu")
    check_gelu_args(gate, up, approximate=approximate, dtypes=TORCH_DTYPES, device_of=_device)
    return _act_dispatch(gate, up, approximate=approximate, impl=impl)


def _act_dispatch(x, up, *, approximate, impl):
    if impl == "triton":
        from .activations.triton_activations import gelu_triton

        return gelu_triton(x, up, approximate=approximate)
    from .activations.reference import _gelu

    fn = _compiled(_gelu) if impl == "compiled" else _gelu
    return fn(x, up, approximate=approximate)


PATCH_EMBED_IMPLS = ("triton", "reference", "conv")


def patch_embed(images, weight, bias, pos_embed, *, patch, impl="triton"):
    """Patch tokens [B, N, D] = unfold(images [B, H, W, C]) @ weight [P*P*C, D] + bias + pos_embed.

    Flattening order (ph, pw, c); see ``kernels/patch_embed/spec.py``. impls: "triton" (fused
    gather-matmul kernel), "reference" (unfold + matmul, float64-capable), "conv" (F.conv2d peer).
    """
    from .patch_embed.spec import check_patch_embed_args

    check_impl(impl, PATCH_EMBED_IMPLS, op="patch_embed")
    check_patch_embed_args(images, weight, bias, pos_embed, patch=patch,
                           dtypes=TORCH_DTYPES + (torch.float64,) * (impl != "triton"),
                           device_of=_device)
    if impl == "triton":
        from .patch_embed.triton_patch_embed import patch_embed_triton

        return patch_embed_triton(images, weight, bias, pos_embed, patch=patch)
    from .patch_embed import reference

    fn = reference.patch_embed_conv if impl == "conv" else reference.patch_embed_reference
    return fn(images, weight, bias, pos_embed, patch=patch)


LOG_MEL_IMPLS = ("triton", "reference", "stft")


def log_mel(waveform, *, sample_rate=16000, n_mels=80, win_ms=25.0, hop_ms=10.0, n_fft=None,
            impl="triton"):
    """Log-mel spectrogram [B, frames, n_mels] (float32; float64 for float64 references) of
    waveform [B, samples]. Framing, window, HTK mel scale and log floor: ``kernels/audio/spec.py``.
    impls: "triton" (fused kernel), "reference" (unfold + rfft), "stft" (torch.stft peer).
    Non-finite samples are refused here (one host sync)."""
    from .audio.spec import check_log_mel_args

    check_impl(impl, LOG_MEL_IMPLS, op="log_mel")
    problem = check_log_mel_args(waveform, sample_rate=sample_rate, n_mels=n_mels, win_ms=win_ms,
                                 hop_ms=hop_ms, n_fft=n_fft,
                                 dtypes=TORCH_DTYPES + (torch.float64,) * (impl != "triton"))
    if not bool(torch.isfinite(waveform).all()):
        raise ValueError("waveform contains NaN or inf samples; log_mel refuses non-finite audio")
    if impl == "triton":
        from .audio.triton_log_mel import log_mel_triton

        return log_mel_triton(waveform, problem)
    from .audio import reference

    fn = reference.log_mel_stft if impl == "stft" else reference.log_mel_reference
    return fn(waveform, sample_rate=sample_rate, n_mels=n_mels, win_ms=win_ms, hop_ms=hop_ms, n_fft=n_fft)


INT4_IMPLS = ("triton", "reference")
INT4_SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def int4_matmul(x, packed_w, scales, zeros, group_size, *, impl="triton", blocks=None):
    """x [..., in] @ dequant(W).T -> [..., out], W [out, in] group-wise int4 (Linear layout).

    packed_w uint8 [out, in // 2] (low nibble = even k), scales / zeros [in // group_size, out]
    (zeros=None: symmetric, zero point 8). Layout and limits: ``kernels/int4/spec.py``.
    impls: "triton" (dequantizes in registers inside the matmul; split-K for decode rows),
    "reference" (dequantize, then torch.matmul; float64-capable). Forward only.
    ``blocks`` (triton only): an ``Int4Blocks`` or "autotune" (the fastest of the device's
    ``candidate_blocks``, timed on the first call of each problem class).
    """
    from .int4.spec import check_int4_args

    check_impl(impl, INT4_IMPLS, op="int4_matmul")
    if blocks is not None and impl != "triton":
        raise ValueError(f"blocks: only impl='triton' takes tile sizes, got blocks={blocks!r} with impl={impl!r}")
    check_int4_args(x, packed_w, scales, zeros, group_size,
                    dtypes=TORCH_DTYPES + (torch.float64,) * (impl != "triton"),
                    scale_dtypes=INT4_SCALE_DTYPES, uint8=torch.uint8, device_of=_device)
    if impl == "triton":
        from .int4.triton_int4 import int4_matmul_triton

        return int4_matmul_triton(x, packed_w, scales, zeros, group_size, blocks=blocks)
    from .int4.reference import int4_matmul_reference

    return int4_matmul_reference(x, packed_w, scales, zeros, group_size)


LOSS_IMPLS = ("triton", "reference")


def linear_cross_entropy(x, weight, targets, *, mask=None, softcap=None, normalizer=None, impl="triton",
                         check_targets=True):
    """Cross-entropy of softcap(x @ weight.T) against targets, without full logits ("triton":
    chunked, Liger-Kernel's fused linear cross-entropy); "reference" builds the [N, V] logits
    (the matmul in x's dtype, as the model's head; softmax in fp32). See
    ``kernels/cross_entropy/spec.py``. The masked-in targets are range-checked on the host
    (a device-to-host read); ``check_targets=False`` skips that one check, for a step captured
    as a CUDA graph, whose caller guarantees the targets."""
    from .cross_entropy.spec import check_linear_cross_entropy_args

    check_impl(impl, LOSS_IMPLS, op="linear_cross_entropy")
    _, width, vocab = check_linear_cross_entropy_args(
        x, weight, targets, mask, softcap=softcap, normalizer=normalizer, dtypes=TORCH_DTYPES,
        device_of=_device)
    t = targets.reshape(-1)
    m = torch.ones_like(t, dtype=torch.bool) if mask is None else mask.reshape(-1)
    if check_targets:
        bad = ((t < 0) | (t >= vocab)) & m
        if bool(bad.any()):
            raise ValueError(f"targets must lie in [0, vocab={vocab}) where mask is set, got {int(t[bad][0])}")
    if impl == "reference":
        from .cross_entropy.reference import _linear_cross_entropy

        return _linear_cross_entropy(x, weight, targets, mask, softcap=softcap, normalizer=normalizer,
                                     upcast=False)
    from .cross_entropy.triton_cross_entropy import linear_cross_entropy_triton

    denom = m.sum().clamp_min(1) if normalizer is None else normalizer
    return linear_cross_entropy_triton(x.reshape(-1, width), weight, t, m.float() / denom, softcap=softcap)
