"""PyTorch front-end: validated, differentiable ops with an ``impl`` switch.

    attention(q, k, v, *, causal=False, window=None, softcap=None, scale=None,
              segment_ids=None, impl="triton")

impls: "triton" (hand-written flash attention; interpret mode on CPU), "reference"
(plain torch, fp32 math), "sdpa" (torch's scaled_dot_product_attention, the peer).
Arguments are checked before anything launches; there is no fallback between impls.
"""
from __future__ import annotations

import torch

from ._platform import configure_triton_interpret

configure_triton_interpret()  # must run before any @triton.jit kernel is imported

from .attention.spec import check_attention_args, check_impl  # noqa: E402

ATTENTION_IMPLS = ("triton", "reference", "sdpa")
TORCH_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _device(t: torch.Tensor):
    return t.device


def attention(q, k, v, *, causal=False, window=None, softcap=None, scale=None,
              segment_ids=None, impl="triton"):
    """Multi-query / grouped-query / multi-head attention. See ``kernels/attention/spec.py``."""
    check_impl(impl, ATTENTION_IMPLS)
    problem, q_ids, kv_ids = check_attention_args(
        q, k, v, causal=causal, window=window, softcap=softcap, scale=scale,
        segment_ids=segment_ids, dtypes=TORCH_DTYPES, device_of=_device,
    )
    kwargs = dict(causal=causal, window=window, softcap=problem.softcap, scale=problem.scale,
                  q_segment_ids=q_ids, kv_segment_ids=kv_ids)
    if impl == "triton":
        from .attention.triton_attention import attention_triton

        return attention_triton(q, k, v, **kwargs)
    if impl == "sdpa":
        from .attention.sdpa import attention_sdpa

        return attention_sdpa(q, k, v, **kwargs)
    from .attention.reference import _attention

    return _attention(q, k, v, **kwargs)
