"""PyTorch building blocks of the Gemini reference model; every op goes through ``kernels.torch_ops``.

``linear`` is THE projection entry point (x @ w.T for a torch.nn.Linear-layout weight
[out, in]): a quantized weight type is dispatched here, nowhere else. The modules hold one
parameter named ``weight`` each, so ``state_dict()`` keys are Hugging Face Gemma's names.
Kernel choice comes from a ``KernelConfig`` (``kernels.impl(op)``), never from model code.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kernels import torch_ops


def linear(x: torch.Tensor, weight) -> torch.Tensor:
    """x [..., in] @ weight.T -> [..., out]; weight [out, in] (torch.nn.Linear layout).

    The one dispatch point for projections: a weight that is not a plain tensor (e.g. a packed
    int4 type) is handled here by whoever adds it."""
    if isinstance(weight, torch.Tensor):
        return F.linear(x, weight)
    if hasattr(weight, "linear"):  # int4: model.quantize.QuantizedWeight
        return weight.linear(x)
    raise TypeError(f"linear: weight must be a torch.Tensor, got {type(weight).__name__}")


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(x / cap) (Gemma 2's logit soft-capping); identity for cap=None."""
    return x if cap is None else cap * torch.tanh(x / cap)


class Linear(nn.Module):
    """A bias-free projection with its weight [out, in]; forward is ``linear``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def forward(self, x):
        return linear(x, self.weight)


class RMSNorm(nn.Module):
    """Gemma RMSNorm: x / rms(x) * (1 + weight), fp32 math; weight starts at 0.

    ``forward(x, residual=r)`` fuses the residual add: returns (norm(x + r), x + r)."""

    def __init__(self, width: int, eps: float, impl: str):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width))
        self.eps, self.impl = eps, impl

    def forward(self, x, residual=None):
        if residual is not None and x.dtype != residual.dtype:  # autocast: a bf16 branch output
            x = x.to(residual.dtype)  # joins the residual stream in the stream's precision
        return torch_ops.rms_norm(x, self.weight, eps=self.eps, gemma=True, residual=residual,
                                  impl=self.impl)


class Embedding(nn.Module):
    """Token embedding [vocab, width], also the tied output head. ``weight`` is a parameter, or
    a packed table (``model.quantize.QuantizedEmbedding``, int4/int8) whose ``embed(tokens)``
    dequantizes only the tokens' rows (the head then calls its ``linear``)."""

    def __init__(self, vocab: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab, width))

    def forward(self, tokens):  # (B, S) -> (B, S, W), scaled by sqrt(W) in the model's dtype
        w = self.weight
        x = F.embedding(tokens, w) if isinstance(w, torch.Tensor) else w.embed(tokens)
        return x * torch.tensor(math.sqrt(w.shape[1]), dtype=x.dtype)


class MLP(nn.Module):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, width: int, mlp_dim: int, impl: str):
        super().__init__()
        self.gate_proj = Linear(width, mlp_dim)
        self.up_proj = Linear(width, mlp_dim)
        self.down_proj = Linear(mlp_dim, width)
        self.impl = impl

    def forward(self, x):  # (B, S, W)
        h = torch_ops.gated_gelu(self.gate_proj(x), self.up_proj(x), approximate="tanh",
                                 impl=self.impl)  # (B, S, M)
        return self.down_proj(h)  # (B, S, W)
