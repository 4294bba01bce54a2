"""The Gemini reference model in JAX: pure functions over a flat dict of arrays.

Same architecture, parameter names (``model.config.param_specs``: Hugging Face Gemma's),
shapes and layouts ([out, in] matrices) as ``model/torch_model.py``:

    logits = softcap(norm(h_L) @ embed.T)          h_0 = embed[tokens] * sqrt(width)
    h_{i+1} = a + mlp(norm_2(a)),   a = h_i + attn(norm_1(h_i))

Multimodal options (``ModelConfig``; same as the torch model): ``image_vocab > 0`` adds the
image-token table ``model.image_embed_tokens.weight`` [I, W] (ids [vocab_size, vocab_size + I)
embed from it; logits are concat(text head, image head) [.., V + I]; ``head_table`` gives the
[V + I, W] table ``head_loss`` needs); ``bidirectional_media``: ``forward(..., media_ids=[B, S])``
passes ``bidirectional_ids=media_ids`` to attention (bidirectional within each media block).

Kernels through ``kernels.jax_ops`` with the impl ``KernelConfig.impl(op)`` picks; projections
through ``jax_layers.linear``; activations annotated with logical axis names only.
Under ``jax.jit`` pass ``cfg`` and ``kernels`` by closure (``functools.partial``).

KV cache (``KVCache``, a NamedTuple pytree): per-layer k, v [batch, max_len, kv_heads,
head_dim] and lengths [batch] int32. ``forward(..., cache=c)`` returns ``(logits, new_cache)``:
  * prefill (tokens [B, S>1]) on an EMPTY cache writes positions [0, S) and sets lengths to S
    (rows of different prompt lengths: ``new_cache._replace(lengths=true_lengths)``);
  * decode (tokens [B, 1]) writes each row at its own ``lengths[b]`` (also its RoPE position
    unless ``positions`` is given), attends with ``decode_attention``, advances lengths by 1.
The model writes through the cache's ``prefill`` / ``append`` (and ``batch``, ``max_len``,
``capacity``); ``model/paged_cache_jax.PagedKVCache`` is the paged one (page pools and a block
table, ``decode_attention(..., block_table=...)``).
Length checks need concrete values: under jit they are skipped, and a decode past max_len
drops the write (JAX scatter semantics) — size the cache for the whole generation.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kernels import jax_ops
from model.config import KernelConfig, ModelConfig, check_media_ids, init_std, param_specs
from model.jax_layers import attention, embed, linear, mlp, rms_norm, softcap, with_logical_constraint


class KVCache(NamedTuple):
    k: tuple  # per layer (B, max_len, KVH, D)
    v: tuple
    lengths: jax.Array  # (B,) int32

    @classmethod
    def create(cls, cfg: ModelConfig, batch: int, max_len: int, *, dtype=jnp.float32) -> "KVCache":
        if max_len < 1 or max_len > cfg.max_seq_len:
            raise ValueError(f"max_len must be in [1, cfg.max_seq_len={cfg.max_seq_len}], got {max_len}")
        shape = (batch, max_len, cfg.kv_heads, cfg.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.layers))
        return cls(zeros, zeros, jnp.zeros((batch,), jnp.int32))

    batch = property(lambda self: self.k[0].shape[0])
    max_len = property(lambda self: self.k[0].shape[1])
    capacity = max_len  # positions each row can hold: all of max_len

    def prefill(self, layer: int, k, v):  # k, v (B, S, KVH, D) at positions [0, S) -> new buffers
        s = k.shape[1]
        return (self.k[layer].at[:, :s].set(k.astype(self.k[layer].dtype)),
                self.v[layer].at[:, :s].set(v.astype(self.v[layer].dtype)))

    def append(self, layer: int, k, v):  # k, v (B, KVH, D) at each row's own length
        rows = jnp.arange(k.shape[0])
        return (self.k[layer].at[rows, self.lengths].set(k.astype(self.k[layer].dtype)),
                self.v[layer].at[rows, self.lengths].set(v.astype(self.v[layer].dtype)), {})


def init_params(cfg: ModelConfig, key: jax.Array, *, dtype=jnp.float32) -> dict[str, jax.Array]:
    """Matrices N(0, init_std(shape)^2) (LeCun: 1 / fan_in), norm scales 0 (the Gemma (1 + w) scale starts at 1)."""
    specs = param_specs(cfg)
    keys = jax.random.split(key, len(specs))
    return {name: (jnp.zeros(shape, dtype) if len(shape) == 1
                   else init_std(shape) * jax.random.normal(k, shape, dtype))
            for k, (name, (shape, _)) in zip(keys, specs.items())}


def _attention(p, pre, x, positions, segment_ids, layer, cache, *, cfg, kernels, media_ids=None):
    """One attention block on normed x (B, S, W); returns (out (B, S, W), (k_buf, v_buf) | None)."""
    b, s, _ = x.shape
    q = linear(x, p[pre + "q_proj.weight"]).reshape(b, s, cfg.heads, cfg.head_dim)  # (B, S, H, D)
    k = linear(x, p[pre + "k_proj.weight"]).reshape(b, s, cfg.kv_heads, cfg.head_dim)  # (B, S, KVH, D)
    v = linear(x, p[pre + "v_proj.weight"]).reshape(b, s, cfg.kv_heads, cfg.head_dim)
    q = with_logical_constraint(q, ("batch", "seq", "heads", None))
    k = with_logical_constraint(k, ("batch", "seq", "kv_heads", None))
    q = jax_ops.rope(q, positions, theta=cfg.rope_theta, impl=kernels.impl("rope"))
    k = jax_ops.rope(k, positions, theta=cfg.rope_theta, impl=kernels.impl("rope"))
    opts = dict(window=cfg.local_window if cfg.is_local(layer) else None, softcap=cfg.attn_softcap,
                scale=cfg.query_scale if cfg.query_scale is not None else cfg.head_dim ** -0.5)
    new_kv = None
    if cache is not None and s == 1:  # decode: append at each row's own length
        kc, vc, paged = cache.append(layer, k[:, 0], v[:, 0])
        o = jax_ops.decode_attention(q[:, 0], kc, vc, cache.lengths + 1, **paged, **opts,
                                     impl=kernels.impl("decode"))[:, None]  # (B, 1, H, D)
        new_kv = (kc, vc)
    else:
        if cache is not None:  # prefill of an empty cache: positions [0, S)
            new_kv = cache.prefill(layer, k, v)
        if media_ids is not None:  # bidirectional within each media block (cfg.bidirectional_media)
            opts["bidirectional_ids"] = media_ids
        o = attention(q, k, v, causal=True, segment_ids=segment_ids, **opts,
                      impl=kernels.impl("attention"))  # (B, S, H, D); "ring": context parallel
    o = linear(o.reshape(b, s, cfg.heads * cfg.head_dim), p[pre + "o_proj.weight"])
    return o, new_kv


def forward(params, tokens, *, cfg: ModelConfig, kernels: KernelConfig | None = None, positions=None,
            segment_ids=None, embeds=None, embed_mask=None, media_ids=None, cache=None, hidden=False):
    """tokens [B, S] -> logits [B, S, cfg.total_vocab] fp32; with a cache, (logits, new_cache);
    ``hidden=True`` (training, no cache): the final norm's output [B, S, W], before the head.
    ``media_ids`` [B, S] int (``model/multimodal.py``; only with cfg.bidirectional_media):
    attention is bidirectional within each run of equal ids >= 0; not on a decode step."""
    kernels = kernels if kernels is not None else KernelConfig()
    if hidden and cache is not None:
        raise ValueError("hidden=True is for training (loss); it takes no cache")
    norm_impl = kernels.impl("norm")
    b, s = tokens.shape
    if cache is not None:
        _check_cache(cache, cfg, b, s, segment_ids)
    check_media_ids(media_ids, cfg, b, s, decode=cache is not None and s == 1,
                    is_int=lambda d: jnp.issubdtype(d, jnp.integer))
    if cfg.image_vocab:  # ids >= vocab_size: rows of the image table (same sqrt(W) scale)
        image = tokens >= cfg.vocab_size
        xi = embed(params["model.image_embed_tokens.weight"], jnp.maximum(tokens - cfg.vocab_size, 0))
        x = jnp.where(image[..., None], xi,
                      embed(params["model.embed_tokens.weight"], jnp.where(image, 0, tokens)))  # (B, S, W)
    else:
        x = embed(params["model.embed_tokens.weight"], tokens)  # (B, S, W)
    if embeds is not None or embed_mask is not None:
        if embeds is None or embed_mask is None or embeds.shape != x.shape or embed_mask.shape != (b, s):
            raise ValueError(f"embeds [B, S, width] and embed_mask [B, S] come together; expected "
                             f"{x.shape} and {(b, s)}")
        x = jnp.where(embed_mask[..., None], embeds.astype(x.dtype), x)
    x = with_logical_constraint(x, ("batch", "seq", "embed"))
    if positions is None:
        start = cache.lengths[:, None] if cache is not None and s == 1 else 0
        positions = start + jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32)[None, :], (b, s))
    new_k, new_v = [], []
    for i in range(cfg.layers):
        pre = f"model.layers.{i}."
        h = rms_norm(x, params[pre + "input_layernorm.weight"], eps=cfg.norm_eps, impl=norm_impl)
        a, kv = _attention(params, pre + "self_attn.", h, positions, segment_ids, i, cache,
                           cfg=cfg, kernels=kernels, media_ids=media_ids)
        h, x = rms_norm(a, params[pre + "post_attention_layernorm.weight"], eps=cfg.norm_eps,
                        impl=norm_impl, residual=x)  # fused: x += a; h = norm(x)
        x = x + mlp(h, params[pre + "mlp.gate_proj.weight"], params[pre + "mlp.up_proj.weight"],
                    params[pre + "mlp.down_proj.weight"], impl=kernels.impl("mlp"))
        x = with_logical_constraint(x, ("batch", "seq", "embed"))
        if kv is not None:
            new_k.append(kv[0])
            new_v.append(kv[1])
    x = rms_norm(x, params["model.norm.weight"], eps=cfg.norm_eps, impl=norm_impl)
    if hidden:
        return x
    table = params["model.embed_tokens.weight"]  # the tied head in the weights' dtype, fp32 logits
    logits = (linear(x.astype(table.dtype), table).astype(jnp.float32) if hasattr(table, "linear")  # packed
              else jnp.einsum("bsw,vw->bsv", x.astype(table.dtype), table, preferred_element_type=jnp.float32))
    logits = with_logical_constraint(logits, ("batch", "seq", "vocab"))
    if cfg.image_vocab:  # the image-token head (replicated, as its table): logits (B, S, V + I)
        itable = params["model.image_embed_tokens.weight"]
        logits = jnp.concatenate([logits, jnp.einsum("bsw,vw->bsv", x.astype(itable.dtype), itable,
                                                     preferred_element_type=jnp.float32)], axis=-1)
    logits = softcap(logits, cfg.final_softcap)
    if cache is None:
        return logits
    lengths = cache.lengths + 1 if s == 1 else jnp.full_like(cache.lengths, s)
    return logits, cache._replace(k=tuple(new_k), v=tuple(new_v), lengths=lengths)


def loss(params, tokens, targets, mask=None, *, cfg: ModelConfig, kernels: KernelConfig | None = None,
         normalizer=None, **kw):
    """Masked cross-entropy of the next-token logits (``model.losses``' semantics) through the
    ``loss`` kernel: with "pallas" or "xla" the [B, S, vocab] logits never exist in full (the
    rows go in chunks, ``kernels/cross_entropy/jax_cross_entropy.py``). ``kw``: ``forward``'s."""
    kernels = kernels if kernels is not None else KernelConfig()
    h = forward(params, tokens, cfg=cfg, kernels=kernels, hidden=True, **kw)
    return head_loss(h, head_table(params, cfg), targets, mask, cfg=cfg, kernels=kernels,
                     normalizer=normalizer)


def head_table(params, cfg: ModelConfig):
    """The tied output head's table [cfg.total_vocab, W]: the text table, then (image_vocab > 0)
    the image-token table in the text table's dtype (a concatenated copy)."""
    table = params["model.embed_tokens.weight"]
    if not isinstance(table, (jax.Array, jax.core.Tracer)):  # model.quantize's packed table
        raise TypeError(f"the embedding is a {type(table).__name__} (a quantized checkpoint); quantized "
                        f"models run forward / generate only, train the float checkpoint")
    if not cfg.image_vocab:
        return table
    return jnp.concatenate([table, params["model.image_embed_tokens.weight"].astype(table.dtype)])


def head_loss(h, table, targets, mask=None, *, cfg: ModelConfig, kernels: KernelConfig, normalizer=None):
    """The tied head and the cross-entropy of ``loss`` from the final hidden states h [B, S, W];
    ``table`` [cfg.total_vocab, W] is ``head_table(params, cfg)``."""
    if table.shape[0] != cfg.total_vocab:
        raise ValueError(f"head_loss: table must have cfg.total_vocab = vocab_size {cfg.vocab_size} + "
                         f"image_vocab {cfg.image_vocab} = {cfg.total_vocab} rows (head_table(params, cfg)), "
                         f"got {table.shape[0]}")
    return jax_ops.linear_cross_entropy(h.astype(table.dtype), table, targets, mask=mask, normalizer=normalizer,
                                        softcap=cfg.final_softcap, impl=kernels.impl("loss"))



def _check_cache(cache, cfg: ModelConfig, b: int, s: int, segment_ids) -> None:
    """Shape checks always; length checks only when the lengths are concrete (not under jit)."""
    kv = (cfg.kv_heads, cfg.head_dim)
    if len(cache.k) != cfg.layers or cache.batch != b or tuple(cache.k[0].shape[2:]) != kv:
        raise ValueError(f"cache must hold {cfg.layers} layers of batch {b} x [..., {kv[0]}, {kv[1]}], "
                         f"got {len(cache.k)} of {tuple(cache.k[0].shape)} (batch {cache.batch})")
    if segment_ids is not None:
        raise ValueError("segment_ids is not supported with a cache (packed rows are for training)")
    max_len = cache.max_len
    if s > max_len:
        raise ValueError(f"cache max_len {max_len} is too short for {s} new tokens")
    if isinstance(cache.lengths, jax.core.Tracer):
        return
    lengths = np.asarray(cache.lengths)
    if s > 1 and lengths.any():
        raise ValueError(f"prefill (tokens [B, S={s}]) needs an empty cache, got lengths {lengths.tolist()}")
    if s == 1 and (lengths + 1 > cache.capacity).any():
        raise ValueError(f"cache max_len {max_len} (room per row {cache.capacity}) is too short for "
                         f"lengths {lengths.tolist()} plus 1 token")
