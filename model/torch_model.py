"""The Gemini reference model in PyTorch: a Gemma-style decoder (Gemini 1.0 report, section 2).

    logits = softcap(norm(h_L) @ embed.T)          h_0 = embed[tokens] * sqrt(width)
    h_{i+1} = a + mlp(norm_2(a)),   a = h_i + attn(norm_1(h_i))

RMSNorm with the Gemma (1 + w) scale, multi-query attention (GQA configurable) with
rotate-half RoPE, GeGLU MLP (tanh GELU), optional attention / final-logit softcaps, optional
local (sliding-window) / global layer alternation (``cfg.is_local``), tied output head in the
weights' dtype with fp32 logits.
``state_dict()`` keys are ``model.config.param_specs(cfg)`` names (Hugging Face Gemma's).

Multimodal options (``ModelConfig``): ``image_vocab > 0`` adds the image-token table
``model.image_embed_tokens.weight`` [I, W]: ids in [vocab_size, vocab_size + I) are embedded
from it (x sqrt(W), as text) and the logits are concat(text head, image head) [.., V + I]
(``loss`` uses the concatenated [V + I, W] table). ``bidirectional_media``: ``forward(...,
media_ids=[B, S])`` passes ``bidirectional_ids=media_ids`` to the attention kernel, so each
media block attends bidirectionally within itself (text and decode steps stay causal).

Kernels: every op goes through ``kernels.torch_ops`` with the impl ``KernelConfig.impl(op)``
picks (attention, decode, norm, rope, mlp); projections through ``torch_layers.linear``.

KV cache (``KVCache``): per-layer k, v [batch, max_len, kv_heads, head_dim] and lengths [batch].
  * prefill: ``forward(tokens [B, S>1], cache=c)`` on an EMPTY cache (all lengths 0) writes
    positions [0, S), sets lengths to S and returns logits for all S positions. For rows of
    different prompt lengths (prompts left-aligned, right-padded to S), set ``c.lengths`` to
    each row's true length afterwards; the padding slots are overwritten by later decodes.
  * decode: ``forward(tokens [B, 1], cache=c)`` writes each row's token at its own position
    ``c.lengths[b]`` (RoPE position too, unless ``positions`` is given), attends with
    ``decode_attention`` and advances lengths by 1. The cache is updated in place.
The model writes through the cache's ``prefill`` / ``append`` (and ``batch``, ``max_len``,
``capacity``); ``model/paged_cache_torch.PagedKVCache`` is the paged one (page pools and a
block table, ``decode_attention(..., block_table=...)``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kernels import torch_ops
from model.config import KernelConfig, ModelConfig, check_media_ids, init_std, param_specs
from model.torch_layers import MLP, Embedding, Linear, RMSNorm, linear, softcap


@dataclass
class KVCache:
    """Per-layer K/V buffers [batch, max_len, kv_heads, head_dim] and valid lengths [batch] (int32)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    lengths: torch.Tensor

    @classmethod
    def create(cls, cfg: ModelConfig, batch: int, max_len: int, *, dtype=torch.float32,
               device=None) -> "KVCache":
        if max_len < 1 or max_len > cfg.max_seq_len:
            raise ValueError(f"max_len must be in [1, cfg.max_seq_len={cfg.max_seq_len}], got {max_len}")
        shape = (batch, max_len, cfg.kv_heads, cfg.head_dim)
        buf = lambda: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
        return cls([buf() for _ in range(cfg.layers)], [buf() for _ in range(cfg.layers)],
                   torch.zeros(batch, dtype=torch.int32, device=device))

    @property
    def max_len(self) -> int:
        return self.k[0].shape[1]

    batch = property(lambda self: self.k[0].shape[0])
    capacity = max_len  # positions each row can hold: all of max_len

    def prefill(self, layer: int, k, v) -> None:  # k, v (B, S, KVH, D) at positions [0, S)
        self.k[layer][:, :k.shape[1]] = k.to(self.k[layer].dtype)
        self.v[layer][:, :v.shape[1]] = v.to(self.v[layer].dtype)

    def append(self, layer: int, k, v):  # k, v (B, KVH, D) at each row's own length
        rows, pos = torch.arange(k.shape[0], device=k.device), self.lengths.long()
        self.k[layer][rows, pos] = k.to(self.k[layer].dtype)
        self.v[layer][rows, pos] = v.to(self.v[layer].dtype)
        return self.k[layer], self.v[layer], {}  # what decode_attention reads


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, kernels: KernelConfig):
        super().__init__()
        self.cfg, self.layer, self.kernels = cfg, layer, kernels
        q, kv = cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
        self.q_proj = Linear(cfg.width, q)
        self.k_proj = Linear(cfg.width, kv)
        self.v_proj = Linear(cfg.width, kv)
        self.o_proj = Linear(q, cfg.width)
        self.window = cfg.local_window if cfg.is_local(layer) else None
        self.scale = cfg.query_scale if cfg.query_scale is not None else cfg.head_dim ** -0.5

    def forward(self, x, positions, segment_ids, cache, media_ids=None):  # cache: (Paged)KVCache | None
        cfg, kern = self.cfg, self.kernels
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, -1, cfg.head_dim)  # (B, S, H, D); -1: local heads under TP
        k = self.k_proj(x).view(b, s, -1, cfg.head_dim)  # (B, S, KVH, D)
        v = self.v_proj(x).view(b, s, -1, cfg.head_dim)
        q = torch_ops.rope(q, positions, theta=cfg.rope_theta, impl=kern.impl("rope"))
        k = torch_ops.rope(k, positions, theta=cfg.rope_theta, impl=kern.impl("rope"))
        opts = dict(window=self.window, softcap=cfg.attn_softcap, scale=self.scale)
        if cache is not None and s == 1:  # decode: append at each row's own length
            kc, vc, paged = cache.append(self.layer, k[:, 0], v[:, 0])
            # the lengths (and block table) are read back and checked once per step, at layer 0
            o = torch_ops.decode_attention(q[:, 0], kc, vc, cache.lengths + 1, **paged, **opts,
                                           impl=kern.impl("decode"), check_lengths=self.layer == 0
                                           )[:, None]  # (B, 1, H, D)
        else:
            if cache is not None:  # prefill of an empty cache: positions [0, S)
                cache.prefill(self.layer, k, v)
            impl = kern.impl("attention")
            if impl == "triton" and kern.attention_blocks is not None:
                opts["blocks"] = kern.attention_blocks
            if media_ids is not None:  # bidirectional within each media block (cfg.bidirectional_media)
                opts["bidirectional_ids"] = media_ids
            o = torch_ops.attention(q, k, v, causal=True, segment_ids=segment_ids, **opts,
                                    impl=impl)  # (B, S, H, D)
        return self.o_proj(o.reshape(b, s, -1))  # (B, S, W)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, kernels: KernelConfig):
        super().__init__()
        norm = kernels.impl("norm")
        self.input_layernorm = RMSNorm(cfg.width, cfg.norm_eps, norm)
        self.self_attn = Attention(cfg, layer, kernels)
        self.post_attention_layernorm = RMSNorm(cfg.width, cfg.norm_eps, norm)
        self.mlp = MLP(cfg.width, cfg.mlp_dim, kernels.impl("mlp"))

    def forward(self, h, positions, segment_ids, cache, media_ids=None):  # h (B, S, W)
        a = self.self_attn(self.input_layernorm(h), positions, segment_ids, cache, media_ids)
        x, h = self.post_attention_layernorm(a, residual=h)  # fused: h += a; x = norm(h)
        return h + self.mlp(x)


class _Body(nn.Module):
    """Holds the parameters under Hugging Face's ``model.`` prefix."""

    def __init__(self, cfg: ModelConfig, kernels: KernelConfig):
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.width)
        if cfg.image_vocab:  # the image-token table / head, registered second as in param_specs
            self.image_embed_tokens = Embedding(cfg.image_vocab, cfg.width)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, kernels) for i in range(cfg.layers))
        self.norm = RMSNorm(cfg.width, cfg.norm_eps, kernels.impl("norm"))


class GeminiModel(nn.Module):
    def __init__(self, cfg: ModelConfig, kernels: KernelConfig | None = None, *, seed: int | None = 0):
        """seed=None leaves the parameters uninitialized (torch.empty), for callers that load a
        state right after: initializing nano1 on a CPU takes seconds."""
        super().__init__()
        self.cfg = cfg
        self.kernels = kernels if kernels is not None else KernelConfig()
        self.model = _Body(cfg, self.kernels)
        if seed is not None:
            self.init_weights(seed)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Deterministic init (same seed, same weights on any device): matrices
        N(0, init_std(shape)^2) (LeCun: 1 / fan_in), norm scales 0 (so the Gemma (1 + w) scale starts at 1)."""
        gen = torch.Generator().manual_seed(seed)
        params = dict(self.named_parameters())
        for name, (shape, _) in param_specs(self.cfg).items():
            p = params[name]
            if len(shape) == 1:
                p.zero_()
            else:
                p.copy_(torch.randn(shape, generator=gen) * init_std(shape))

    def forward(self, tokens, *, positions=None, segment_ids=None, embeds=None, embed_mask=None,
                media_ids=None, cache=None, hidden=False):
        """tokens [B, S] -> logits [B, S, cfg.total_vocab] fp32 (hidden=True: the final normed
        hidden state [B, S, W], no head, no cache). See the module docstring for the cache.
        ``media_ids`` [B, S] int (``model/multimodal.py``; only with cfg.bidirectional_media):
        attention is bidirectional within each run of equal ids >= 0; not on a decode step."""
        if hidden and cache is not None:
            raise ValueError("hidden=True is for training (loss); it takes no cache")
        cfg = self.cfg
        b, s = tokens.shape
        if cache is not None:
            _check_cache(cache, cfg, b, s, segment_ids)
        check_media_ids(media_ids, cfg, b, s, decode=cache is not None and s == 1,
                        is_int=lambda d: not d.is_floating_point and d != torch.bool)
        if cfg.image_vocab:  # ids >= vocab_size: rows of the image table (same sqrt(W) scale)
            image = tokens >= cfg.vocab_size
            xi = self.model.image_embed_tokens((tokens - cfg.vocab_size).clamp_min(0))  # (B, S, W)
            x = torch.where(image[..., None], xi, self.model.embed_tokens(torch.where(image, 0, tokens)))
        else:
            x = self.model.embed_tokens(tokens)  # (B, S, W)
        if embeds is not None or embed_mask is not None:
            if embeds is None or embed_mask is None or embeds.shape != x.shape or embed_mask.shape != (b, s):
                raise ValueError(f"embeds [B, S, width] and embed_mask [B, S] come together; expected "
                                 f"{tuple(x.shape)} and {(b, s)}")
            x = torch.where(embed_mask[..., None], embeds.to(x.dtype), x)
        if positions is None:
            start = cache.lengths[:, None].long() if cache is not None and s == 1 else 0
            positions = start + torch.arange(s, device=tokens.device)[None, :].expand(b, s)
        for layer in self.model.layers:
            x = layer(x, positions, segment_ids, cache, media_ids)
        x = self.model.norm(x)
        if hidden:
            return x
        w = self.model.embed_tokens.weight  # the tied head in the weights' dtype (bf16 tensor cores,
        logits = linear(x.to(w.dtype), w).float()  # as HF Gemma and torchtitan), fp32 logits (B, S, V)
        if cfg.image_vocab:  # the image-token head: logits (B, S, V + I)
            wi = self.model.image_embed_tokens.weight
            logits = torch.cat([logits, linear(x.to(wi.dtype), wi).float()], dim=-1)
        if cache is not None:
            cache.lengths = cache.lengths + 1 if s == 1 else torch.full_like(cache.lengths, s)
        return softcap(logits, cfg.final_softcap)

    def loss(self, tokens, targets, mask=None, *, normalizer=None, check_targets=True, **kw):
        """Masked cross-entropy of the next-token logits (``model.losses``' semantics) through
        the ``loss`` kernel: with "triton" the [B, S, vocab] logits never exist in full.
        ``check_targets=False``: no host read of the targets (a step captured as a CUDA graph)."""
        w = self.model.embed_tokens.weight
        if not isinstance(w, torch.Tensor):  # model.quantize's packed table: inference only
            raise TypeError(f"loss: the embedding is a {type(w).__name__} (a quantized checkpoint); "
                            f"quantized models run forward / generate only, train the float checkpoint")
        h = self(tokens, hidden=True, **kw)
        if self.cfg.image_vocab:  # the combined [V + I, W] head: targets may be image tokens
            w = torch.cat([w, self.model.image_embed_tokens.weight.to(w.dtype)])
        mask = None if mask is None else mask.bool()
        return torch_ops.linear_cross_entropy(h.to(w.dtype), w, targets, mask=mask, normalizer=normalizer,
                                              softcap=self.cfg.final_softcap, impl=self.kernels.impl("loss"),
                                              check_targets=check_targets)



def _check_cache(cache, cfg: ModelConfig, b: int, s: int, segment_ids) -> None:
    """Host-side checks of a cached call (one device->host read of the lengths)."""
    kv = (cfg.kv_heads, cfg.head_dim)
    if len(cache.k) != cfg.layers or cache.batch != b or cache.k[0].shape[2:] != kv:
        raise ValueError(f"cache must hold {cfg.layers} layers of batch {b} x [..., {kv[0]}, {kv[1]}], "
                         f"got {len(cache.k)} of {tuple(cache.k[0].shape)} (batch {cache.batch})")
    if segment_ids is not None:
        raise ValueError("segment_ids is not supported with a cache (packed rows are for training)")
    lengths = cache.lengths.cpu()
    if s > 1 and bool(lengths.any()):
        raise ValueError(f"prefill (tokens [B, S={s}]) needs an empty cache, got lengths {lengths.tolist()}")
    if s > cache.max_len or bool((lengths.numpy() + (s == 1) > cache.capacity).any()):
        raise ValueError(f"cache max_len {cache.max_len} (room per row {cache.capacity}) is too short "
                         f"for lengths {lengths.tolist()} plus {s} new token(s)")
