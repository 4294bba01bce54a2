"""Autoregressive generation for both model front-ends, and ``python -m model.generate``.

    out = generate(model_or_params, prompts, *, max_new_tokens, temperature=0.0, top_k=None,
                   top_p=None, seed=0, stop_tokens=None, framework="torch", kernels=None,
                   cfg=None, tokenizer=None, use_cache=True, cache=None, embeds=None, embed_mask=None)
    out.tokens[i]  new ids of row i (ending with the stop id that ended it, if one did)
    out.texts[i]   their text through the tokenizer;  out.finish_reasons[i]  "stop" | "length"

Prompts: a str, a list of str (encoded with a leading <bos>), or a list of id lists; rows
may differ in length. With the cache (default) it is one prefill of the right-padded batch
(the model's KV-cache forward; each row's cache length is then set to its own prompt
length) and one ``decode_attention`` step per new token, every row at its own position.
``use_cache=False`` recomputes the whole sequence each step (the check of the cached path).
``cache=CacheConfig(paged=True, page_size=P, num_pages=N)`` (CLI ``cache.paged=true
cache.page_size=P``; ``model/paged_cache.py``) makes it a paged cache: a page pool per layer
and a block table per row, pages handed out from a free list as rows grow (before prefill for
each prompt, then whenever a decode step crosses a page boundary); decode steps call
``decode_attention(..., block_table=...)``. The pool defaults to what the request needs; a
smaller ``num_pages``, or a page_size the decode kernel refuses, is a ValueError up front.
Multimodal prompts: ``embeds`` [B, S, width] and ``embed_mask`` [B, S] (S >= the longest
prompt, rows left-aligned as ``model/multimodal.py`` builds them) replace the token embedding
of prompt positions where the mask is True (placeholders); generated tokens are text.
Rows stop independently at a stop id (default: the tokenizer's eos); finished rows feed
padding until every row has stopped or ``max_new_tokens`` are out.

Sampling (``model/sampling.py``): temperature 0 is greedy; otherwise temperature, top_k,
top_p, drawn from ``seed`` (a torch.Generator on the model's device / jax.random.fold_in(key,
step)), so a seed reproduces a run on the same device. Only ids the tokenizer can decode are
drawn: logits of ids in [tokenizer.vocab_size, cfg.vocab_size) (padding rows of a larger
embedding table, e.g. ids 272..511 of the byte vocabulary in the tiny preset) are masked to
-inf. A model with an image-token head (``cfg.image_vocab``) also draws image tokens, ids
[cfg.vocab_size, cfg.total_vocab); prompts and stop ids may hold them; the default tokenizer
gets the block (``image_ids``), so ``texts`` writes them as ``<image_k>`` markers or drops them.
``media_ids`` [B, S] (``MultimodalInputs.lm_kwargs``; only with ``cfg.bidirectional_media``)
makes the prompt's media blocks bidirectional in the prefill, as the model was trained;
generated tokens are causal.

Bad input raises ValueError before anything runs: a prompt whose length plus max_new_tokens
exceeds the model's context (``cfg.max_seq_len``) names both lengths; unknown sampling
options name the known ones (the CLI; Python itself rejects unknown keywords).

CLI: ``python -m model.generate ckpt=PATH prompt="..." [key=value ...]``. ``ckpt`` is a
checkpoint file (float or int4) or a Hugging Face Gemma directory; a missing path, a corrupt
or truncated file or another kind of directory is an error naming the path (exit status 2).
``kernels=<preset>`` and per-op ``kernels.<op>=<impl>`` (``KernelConfig``);
``stop_tokens=ID`` or ``stop_tokens=[ID,ID]`` (default: the tokenizer's eos).
"""
from __future__ import annotations

import functools
import sys
from dataclasses import astuple, dataclass, field, fields
from typing import Any, List, Optional, Sequence

from model.config import KernelConfig, ModelConfig
from model.paged_cache import CacheConfig, PagePlan, check_page_size, plan_pages
from model.sampling import SamplingConfig
from model.tokenizer import ByteTokenizer, check_ids
from model.train_config import KernelsSchema, kernel_config

FRAMEWORKS = ("torch", "jax")


@dataclass
class Generation:
    """Per-row new ids (with the stop id that ended the row), "stop" | "length", and text."""

    tokens: list[list[int]]
    finish_reasons: list[str]
    tokenizer: Any = field(repr=False)

    @property
    def texts(self) -> list[str]:
        return [self.tokenizer.decode(t) for t in self.tokens]


@dataclass(frozen=True)
class _Plan:
    """The checked request: prompt id rows and everything static about the loop."""

    rows: tuple[tuple[int, ...], ...]
    sampling: SamplingConfig
    max_new_tokens: int
    stop_tokens: tuple[int, ...]
    blocked: tuple[int, int]  # ids in [lo, hi) are never drawn (padding rows of the text table)
    pad_id: int
    seed: int

    @property
    def lengths(self) -> list[int]:
        return [len(r) for r in self.rows]


def _kernel_config(kernels) -> KernelConfig | None:
    if kernels is None or isinstance(kernels, KernelConfig):
        return kernels
    if isinstance(kernels, str):
        return KernelConfig(preset=kernels)
    raise TypeError(f"kernels must be a KernelConfig, a preset name or None, got {type(kernels).__name__}")


def _plan(prompts, cfg: ModelConfig, tokenizer, *, max_new_tokens, temperature, top_k, top_p, seed,
          stop_tokens) -> _Plan:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"prompts must be a str or a non-empty list of str / id lists, got {prompts!r:.80}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ValueError(f"tokenizer vocab_size {tokenizer.vocab_size} exceeds the model's "
                         f"vocab_size {cfg.vocab_size}")
    sampling = SamplingConfig(temperature=float(temperature), top_k=top_k, top_p=top_p)
    sampling.check_vocab(tokenizer.vocab_size + cfg.image_vocab)  # the drawable ids
    rows = []
    for i, p in enumerate(prompts):
        ids = tokenizer.encode(p, bos=True) if isinstance(p, str) else p
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if not isinstance(ids, (list, tuple)):
            raise TypeError(f"prompt {i} must be a str or a list of ids, got {type(p).__name__}")
        if not ids:
            raise ValueError(f"prompt {i} is empty: generation needs at least one token")
        try:
            ids = check_ids(ids, cfg.total_vocab)
        except ValueError as e:
            raise ValueError(f"prompt {i}: {e}") from None
        if len(ids) + max_new_tokens > cfg.max_seq_len:
            raise ValueError(f"prompt {i} has {len(ids)} tokens; with max_new_tokens={max_new_tokens} "
                             f"that is {len(ids) + max_new_tokens} > the model's context "
                             f"max_seq_len={cfg.max_seq_len}")
        rows.append(tuple(ids))
    if stop_tokens is None:
        stop_tokens = (tokenizer.eos_id,)
    if isinstance(stop_tokens, int):
        stop_tokens = (stop_tokens,)
    try:
        stop_tokens = tuple(check_ids(stop_tokens, cfg.total_vocab))
    except ValueError as e:
        raise ValueError(f"stop_tokens: {e}") from None
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    return _Plan(tuple(rows), sampling, max_new_tokens, stop_tokens, (tokenizer.vocab_size, cfg.vocab_size),
                 pad, seed)


def generate(model_or_params, prompts, *, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             stop_tokens: Sequence[int] | None = None, framework: str = "torch", kernels=None,
             cfg: ModelConfig | None = None, tokenizer=None, use_cache: bool = True,
             cache: CacheConfig | None = None, embeds=None, embed_mask=None, media_ids=None) -> Generation:
    """Generate continuations of ``prompts`` (see the module docstring).

    torch: ``model_or_params`` is a ``GeminiModel`` (its cfg and kernels are used; ``kernels``,
    if given, must equal the model's, which are fixed at construction). jax: a params dict,
    with ``cfg`` required and ``kernels`` a KernelConfig or preset name (default KernelConfig()).
    """
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    kernels = _kernel_config(kernels)
    if framework == "torch":
        from model.torch_model import GeminiModel

        if not isinstance(model_or_params, GeminiModel):
            raise TypeError(f"framework='torch' needs a GeminiModel, got {type(model_or_params).__name__}")
        if cfg is not None and cfg != model_or_params.cfg:
            raise ValueError(f"cfg {cfg.name!r} differs from the model's config {model_or_params.cfg.name!r}")
        if kernels is not None and kernels != model_or_params.kernels:
            raise ValueError(f"kernels {kernels} differ from the model's {model_or_params.kernels}; "
                             "build the model with GeminiModel(cfg, kernels)")
        cfg = model_or_params.cfg
    else:
        if not isinstance(model_or_params, dict):
            raise TypeError(f"framework='jax' needs a params dict, got {type(model_or_params).__name__}")
        if not isinstance(cfg, ModelConfig):
            raise ValueError(f"framework='jax' needs cfg=ModelConfig, got {cfg!r}")
    if tokenizer is None:
        tokenizer = ByteTokenizer(image_ids=cfg.image_token_ids if cfg.image_vocab else None)
    plan = _plan(prompts, cfg, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature,
                 top_k=top_k, top_p=top_p, seed=seed, stop_tokens=stop_tokens)
    media = _check_embeds(embeds, embed_mask, plan, cfg)
    media_ids = _check_media_ids(media_ids, plan, cfg)
    if framework == "torch":
        kernels, dtype = model_or_params.kernels, model_or_params.model.embed_tokens.weight.dtype
    else:
        kernels, dtype = kernels or KernelConfig(), model_or_params["model.embed_tokens.weight"].dtype
    kernels.validate(framework)
    paging = _paging(cache, use_cache, plan, kernels.impl("decode"), dtype)
    if framework == "torch":
        steps = _generate_torch(model_or_params, plan, media, media_ids, use_cache=use_cache, paging=paging)
    else:
        steps = _generate_jax(model_or_params, cfg, kernels, plan, media, media_ids, use_cache=use_cache,
                              paging=paging)
    tokens = _trim(steps, plan)
    reasons = ["stop" if t and t[-1] in plan.stop_tokens else "length" for t in tokens]
    return Generation(tokens, reasons, tokenizer)


def _paging(cache, use_cache: bool, plan: _Plan, decode_impl: str, dtype) -> PagePlan | None:
    """None (contiguous cache) or the checked page plan of ``cache.paged=true``."""
    if cache is None or isinstance(cache, CacheConfig) and not cache.paged:
        return None
    if not isinstance(cache, CacheConfig):
        raise TypeError(f"cache must be a CacheConfig or None, got {type(cache).__name__}")
    if not use_cache:
        raise ValueError("cache.paged=true needs use_cache=True (use_cache=False keeps no cache)")
    check_page_size(cache.page_size, decode_impl, dtype)
    return plan_pages(cache, plan.lengths, plan.max_new_tokens)


def _check_embeds(embeds, embed_mask, plan: _Plan, cfg: ModelConfig):
    """None, or (embeds [B, width, W], mask [B, width]) as numpy, padded to the whole
    generation (``width`` = longest prompt + max_new_tokens; False beyond the prompts)."""
    if embeds is None and embed_mask is None:
        return None
    import numpy as np

    if embeds is None or embed_mask is None:
        raise ValueError("embeds and embed_mask come together (got only "
                         f"{'embeds' if embed_mask is None else 'embed_mask'})")
    def to_np(x):  # bf16 has no numpy twin in torch: float32 (exact), cast back to the model's later
        if hasattr(x, "detach"):
            x = x.detach().cpu()
            x = x.float() if x.is_floating_point() else x
        return np.asarray(x)

    e, m = to_np(embeds), to_np(embed_mask)
    if e.dtype.name == "bfloat16":  # a JAX bf16 array (ml_dtypes)
        e = e.astype(np.float32)
    b, s = len(plan.rows), max(plan.lengths)
    if e.ndim != 3 or e.shape[0] != b or e.shape[1] < s or e.shape[2] != cfg.width:
        raise ValueError(f"embeds must be [batch={b}, S >= {s} (longest prompt), width={cfg.width}], "
                         f"got shape {e.shape}")
    if m.shape != e.shape[:2] or m.dtype != np.bool_:
        raise ValueError(f"embed_mask must be bool {e.shape[:2]}, got {m.dtype} {m.shape}")
    for i, n in enumerate(plan.lengths):
        if m[i, n:].any():
            raise ValueError(f"embed_mask row {i} is True at position {n + int(np.argmax(m[i, n:]))}, "
                             f"past its prompt length {n}")
    width = s + plan.max_new_tokens
    full_e = np.zeros((b, width, cfg.width), e.dtype)
    full_m = np.zeros((b, width), bool)
    full_e[:, :s], full_m[:, :s] = e[:, :s], m[:, :s]
    return full_e, full_m


def _check_media_ids(media_ids, plan: _Plan, cfg: ModelConfig):
    """None, or media_ids as numpy int32 [B, width] (-1, text, past S; ``width`` as
    ``_check_embeds``). Needs cfg.bidirectional_media; ids only inside each row's prompt."""
    if media_ids is None:
        return None
    import numpy as np

    if not cfg.bidirectional_media:
        raise ValueError("media_ids is only used with ModelConfig.bidirectional_media=True (the flag is off)")
    m = media_ids.detach().cpu().numpy() if hasattr(media_ids, "detach") else np.asarray(media_ids)
    b, s = len(plan.rows), max(plan.lengths)
    if m.ndim != 2 or m.shape[0] != b or m.shape[1] < s or not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"media_ids must be an integer array [batch={b}, S >= {s} (longest prompt)], "
                         f"got {m.dtype} {m.shape}")
    for i, n in enumerate(plan.lengths):
        if (m[i, n:] >= 0).any():
            raise ValueError(f"media_ids row {i} holds a media id at position {n + int(np.argmax(m[i, n:] >= 0))}, "
                             f"past its prompt length {n}")
    full = np.full((b, s + plan.max_new_tokens), -1, np.int32)
    full[:, :s] = m[:, :s]
    return full


def _trim(steps: list[list[int]], plan: _Plan) -> list[list[int]]:
    """Per-row token lists from per-step ids [steps][batch], cut after each row's stop id."""
    out = []
    for b in range(len(plan.rows)):
        row = []
        for step in steps:
            row.append(step[b])
            if step[b] in plan.stop_tokens:
                break
        out.append(row)
    return out


def _padded(plan: _Plan, width: int):
    """Prompt rows right-padded with pad_id to ``width`` columns (numpy int32 [B, width])."""
    import numpy as np

    out = np.full((len(plan.rows), width), plan.pad_id, dtype=np.int32)
    for b, row in enumerate(plan.rows):
        out[b, :len(row)] = row
    return out


# --- PyTorch loop ---

def _generate_torch(model, plan: _Plan, media, media_ids, *, use_cache: bool,
                    paging: PagePlan | None) -> list[list[int]]:
    """Per-step ids [steps][batch] (rows keep drawing padding after their stop id)."""
    import torch

    from model.paged_cache_torch import PagedKVCache
    from model.sampling import sample_torch
    from model.torch_model import KVCache

    cfg, b = model.cfg, len(plan.rows)
    weight = model.model.embed_tokens.weight
    device = weight.device
    lengths = torch.tensor(plan.lengths, device=device)
    rows = torch.arange(b, device=device)
    stops = torch.tensor(plan.stop_tokens, device=device)
    gen = torch.Generator(device=device).manual_seed(plan.seed)
    width = max(plan.lengths) + plan.max_new_tokens
    seq = torch.from_numpy(_padded(plan, width)).to(device=device, dtype=torch.long)  # (B, width)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    mm = {}  # embeds (B, width, W), embed_mask (B, width)
    if media is not None:
        mm = dict(embeds=torch.from_numpy(media[0]).to(device=device, dtype=weight.dtype),
                  embed_mask=torch.from_numpy(media[1]).to(device))
    if media_ids is not None:  # (B, width): the prompts' media blocks, -1 elsewhere
        mm["media_ids"] = torch.from_numpy(media_ids).to(device)
    steps = []
    with torch.no_grad():
        if use_cache:
            s = max(plan.lengths)
            if paging is None:
                cache = KVCache.create(cfg, b, width - 1, dtype=weight.dtype, device=device)
            else:  # pages for each prompt before the prefill writes them
                cache = PagedKVCache.create(cfg, b, paging, dtype=weight.dtype, device=device)
                cache.reserve(plan.lengths)
            logits = model(seq[:, :s], cache=cache, **{k: v[:, :s] for k, v in mm.items()})  # (B, S, V)
            cache.lengths = lengths.to(torch.int32)  # each row's own prompt length
            last = logits[rows, lengths - 1]  # (B, V)
        for t in range(plan.max_new_tokens):
            if not use_cache:  # whole sequence each step; causal, so the padding after is ignored
                last = model(seq, **mm)[rows, lengths + t - 1]
            last[:, plan.blocked[0]:plan.blocked[1]] = float("-inf")
            tok = sample_torch(last, plan.sampling, gen)  # (B,)
            tok = torch.where(done, plan.pad_id, tok)
            steps.append(tok)
            done |= torch.isin(tok, stops)
            if t == plan.max_new_tokens - 1 or bool(done.all()):
                break
            if use_cache:
                if paging is not None:  # a page for position lengths + t where it starts one
                    cache.reserve([n + t + 1 for n in plan.lengths])
                last = model(tok[:, None], cache=cache)[:, 0]  # decode: (B, V)
            else:
                seq[rows, lengths + t] = tok
    return torch.stack(steps).tolist()


# --- JAX loop ---

@functools.lru_cache(maxsize=8)
def _jax_model_fns(cfg: ModelConfig, kernel_fields: tuple, batch: int, cache_len: int, dtype,
                   paging: PagePlan | None):
    """Jitted prefill / recompute / decode for one static setting, reused across calls."""
    import jax

    from model.jax_model import KVCache, forward
    from model.paged_cache_jax import PagedKVCache

    kernels = KernelConfig(*kernel_fields)
    def run(p, tokens, cache=None, **mm):
        return forward(p, tokens, cfg=cfg, kernels=kernels, cache=cache, **mm)

    def prefill(p, tokens, lengths, mm, table):  # (B, S) -> last logits (B, V), cache at each row's length
        rows = jax.numpy.arange(batch)
        cache = (KVCache.create(cfg, batch, cache_len, dtype=dtype) if paging is None else
                 PagedKVCache.create(cfg, table, paging, dtype=dtype))
        logits, cache = run(p, tokens, cache, **mm)
        return logits[rows, lengths - 1], cache._replace(lengths=lengths)

    def recompute(p, seq, positions, mm):  # whole sequence; causal, so the padding after is ignored
        return run(p, seq, **mm)[jax.numpy.arange(batch), positions]

    def decode(p, cache, tok):  # (B,) -> last logits (B, V), cache one longer per row
        logits, cache = run(p, tok[:, None], cache)
        return logits[:, 0], cache

    donate = () if jax.default_backend() == "cpu" else (1,)  # CPU cannot donate buffers
    return jax.jit(prefill), jax.jit(recompute), jax.jit(decode, donate_argnums=donate)


@functools.lru_cache(maxsize=8)
def _jax_choose(sampling: SamplingConfig, blocked: tuple, pad_id: int, stop_tokens: tuple):
    """Jitted draw: (last logits (B, V), done (B,), key) -> (token (B,), done)."""
    import jax
    import jax.numpy as jnp

    from model.sampling import sample_jax

    def choose(last, done, key):
        ids = jnp.arange(last.shape[-1])
        last = jnp.where((ids >= blocked[0]) & (ids < blocked[1]), -jnp.inf, last)
        tok = jnp.where(done, pad_id, sample_jax(last, sampling, key))
        return tok, done | jnp.isin(tok, jnp.asarray(stop_tokens, jnp.int32))

    return jax.jit(choose)


def _generate_jax(params, cfg: ModelConfig, kernels: KernelConfig, plan: _Plan, media, media_ids, *,
                  use_cache: bool, paging: PagePlan | None) -> list[list[int]]:
    """Per-step ids [steps][batch] (rows keep drawing padding after their stop id)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from model.paged_cache import PageTable

    b = len(plan.rows)
    width = max(plan.lengths) + plan.max_new_tokens
    prefill, recompute, decode = _jax_model_fns(
        cfg, astuple(kernels), b, width - 1, jnp.dtype(params["model.embed_tokens.weight"].dtype), paging)
    choose = _jax_choose(plan.sampling, plan.blocked, plan.pad_id, plan.stop_tokens)
    lengths = jnp.asarray(plan.lengths, jnp.int32)
    rows = jnp.arange(b)
    seq = jnp.asarray(_padded(plan, width))  # (B, width)
    base_key = jax.random.key(plan.seed)
    done = jnp.zeros((b,), bool)
    mm = {}  # embeds (B, width, W), embed_mask (B, width)
    if media is not None:
        mm = dict(embeds=jnp.asarray(media[0], params["model.embed_tokens.weight"].dtype),
                  embed_mask=jnp.asarray(media[1]))
    if media_ids is not None:  # (B, width): the prompts' media blocks, -1 elsewhere
        mm["media_ids"] = jnp.asarray(media_ids)
    pages = PageTable(b, paging) if paging is not None else None  # the host side of a paged cache
    if use_cache:
        s = max(plan.lengths)
        table = None
        if pages is not None:  # pages for each prompt before the prefill writes them
            pages.reserve(plan.lengths)
            table = jnp.asarray(pages.table)
        last, cache = prefill(params, seq[:, :s], lengths, {k: v[:, :s] for k, v in mm.items()}, table)
    steps = []
    for t in range(plan.max_new_tokens):
        if not use_cache:
            last = recompute(params, seq, lengths + t - 1, mm)
        tok, done = choose(last, done, jax.random.fold_in(base_key, t))
        steps.append(tok)
        if t == plan.max_new_tokens - 1 or bool(done.all()):
            break
        if use_cache:
            if pages is not None and pages.reserve([n + t + 1 for n in plan.lengths]):
                cache = cache._replace(block_table=jnp.asarray(pages.table))  # a row crossed a page
            last, cache = decode(params, cache, tok)
        else:
            seq = seq.at[rows, lengths + t].set(tok)
    return np.stack([np.asarray(s) for s in steps]).tolist()


# --- CLI ---

@dataclass
class GenerateArgs:
    """``python -m model.generate ckpt=PATH prompt="..." [prompt="..."] key=value ...``"""

    ckpt: str = ""
    prompt: list = field(default_factory=list)  # repeat prompt=... for a batch
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    framework: str = "torch"
    # KernelConfig: kernels=<preset> (torch triton|reference|sdpa, JAX pallas|reference|xla) is
    # kernels.preset=<preset>; per-op overrides kernels.attention=..., kernels.decode=... (null: preset)
    kernels: KernelsSchema = field(default_factory=KernelsSchema)
    stop_tokens: Optional[List[int]] = None  # ids that end a row (stop_tokens=1 or [1,10]); null: eos
    device: str = "auto"  # torch: cpu | cuda | auto (cuda when available)
    cache: CacheConfig = field(default_factory=CacheConfig)  # cache.paged=true cache.page_size=64
    # an int4 checkpoint (python -m model.quantize) runs its projections through int4_matmul:
    # the triton (torch) / pallas (JAX) kernel with kernels=triton / pallas, else the reference;
    # int4_blocks=autotune (torch triton) times the kernel's tile candidates on the first call
    int4_blocks: str | None = None


def parse_args(argv: Sequence[str]) -> GenerateArgs:
    known = [f.name for f in fields(GenerateArgs)]
    values: dict[str, Any] = {"prompt": []}
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+").strip()
        if not sep:
            raise ValueError(f"arguments are key=value, got {arg!r}; keys: {known}")
        if key.split(".")[0] not in known:
            raise ValueError(f"unknown option {key!r}; known options: {known}")
        if key == "prompt":
            values["prompt"].append(value)
        elif key == "kernels":  # the preset shorthand
            values["kernels.preset"] = value
        elif key == "stop_tokens" and not value.lstrip().startswith("[") and value.strip() != "null":  # one id
            values[key] = f"[{value}]"
        else:
            values[key] = value
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, ValidationError

    dotlist = [f"{k}={v}" for k, v in values.items() if k != "prompt"]
    try:  # typed parse of the scalars (e.g. top_k=abc fails here, naming the key)
        conf = OmegaConf.merge(OmegaConf.structured(GenerateArgs), OmegaConf.from_dotlist(dotlist))
    except ValidationError as e:
        message = str(e).splitlines()[0]
        raise ValueError(f"bad option value for {e.full_key!r}: {message}") from None
    except ConfigKeyError as e:  # cache.<unknown> / kernels.<unknown>
        group = str(e.full_key).split(".")[0]
        node = {"cache": CacheConfig, "kernels": KernelsSchema}.get(group)
        options = [f.name for f in fields(node)] if node is not None else known
        raise ValueError(f"unknown option {e.full_key!r}; {group} options: {options}") from None
    nested = ("prompt", "cache", "kernels", "stop_tokens")
    scalars = {k: conf[k] for k in known if k not in nested}
    stops = None if conf.stop_tokens is None else list(conf.stop_tokens)
    args = GenerateArgs(**scalars, cache=OmegaConf.to_object(conf.cache), prompt=values["prompt"],
                        kernels=OmegaConf.to_object(conf.kernels), stop_tokens=stops)
    if not args.ckpt:
        raise ValueError("ckpt=PATH (a safetensors checkpoint or a Hugging Face Gemma directory) is required")
    if not args.prompt:
        raise ValueError('at least one prompt="..." is required')
    if args.framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {args.framework!r}")
    kernel_config(args.kernels).validate(args.framework)  # e.g. a JAX-only impl with framework=torch
    if args.int4_blocks not in (None, "autotune"):
        raise ValueError(f"int4_blocks: expected autotune (or unset), got {args.int4_blocks!r}")
    if args.int4_blocks is not None and (args.framework, args.kernels.preset) != ("torch", "triton"):
        raise ValueError(f"int4_blocks={args.int4_blocks!r} tunes torch's Triton int4 kernel: it needs "
                         f"framework=torch kernels=triton, got framework={args.framework} "
                         f"kernels={args.kernels.preset}")
    return args


def _load(args, kernels):
    """(model or params, cfg) for the run: a float checkpoint file, an int4 one (its
    projections through int4_matmul: the preset's kernel, else the reference) or a Hugging Face
    Gemma directory (config.json + *.safetensors, ``model/hf.py``). A missing path, a corrupt or
    truncated file, or a directory of another kind is an error naming the path and the cause."""
    import os

    from model.checkpoint import check_file, load_checkpoint
    from model.quantize import is_quantized, load_quantized_jax, load_quantized_torch

    if os.path.isdir(args.ckpt):
        return _load_hf_directory(args, kernels)
    if not os.path.exists(args.ckpt):
        raise FileNotFoundError(f"ckpt={args.ckpt}: no such file or directory (expected a safetensors "
                                f"checkpoint or a Hugging Face Gemma directory)")
    check_file(args.ckpt)  # header and size, before safe_open sees the file
    quantized = is_quantized(args.ckpt)
    if args.int4_blocks is not None and not quantized:
        raise ValueError(f"int4_blocks={args.int4_blocks!r}: {args.ckpt} is not an int4 checkpoint")
    if args.framework == "torch":
        import torch

        from model.torch_model import GeminiModel

        device = _torch_device(args)
        if quantized:
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            impl = "triton" if args.kernels.preset == "triton" else "reference"
            model = load_quantized_torch(args.ckpt, kernels, impl=impl, dtype=dtype, blocks=args.int4_blocks)
            return model.to(device=device).eval(), model.cfg
        params, cfg = load_checkpoint(args.ckpt, framework="torch")
        model = GeminiModel(cfg, kernels)
        model.load_state_dict(params, strict=True)
        return model.to(device=device, dtype=params["model.embed_tokens.weight"].dtype).eval(), cfg
    if quantized:
        return load_quantized_jax(args.ckpt, impl="pallas" if args.kernels.preset == "pallas" else "reference")
    return load_checkpoint(args.ckpt, framework="jax")


def _torch_device(args) -> str:
    import torch

    return args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def _load_hf_directory(args, kernels):
    """(model or params, cfg) of a Hugging Face Gemma directory (``model.hf.load_hf``)."""
    import os

    from model.hf import load_hf

    if not os.path.isfile(os.path.join(args.ckpt, "config.json")):
        raise ValueError(f"ckpt={args.ckpt} is a directory without config.json: expected a safetensors "
                         f"checkpoint file or a Hugging Face Gemma directory (config.json + *.safetensors)")
    if args.int4_blocks is not None:
        raise ValueError(f"int4_blocks={args.int4_blocks!r}: {args.ckpt} is a Hugging Face directory, "
                         f"not an int4 checkpoint")
    ckpt = load_hf(args.ckpt, framework=args.framework)
    if args.framework != "torch":
        return ckpt.params, ckpt.cfg
    from model.torch_model import GeminiModel

    model = GeminiModel(ckpt.cfg, kernels)
    model.load_state_dict(ckpt.params, strict=True)
    dtype = ckpt.params["model.embed_tokens.weight"].dtype
    return model.to(device=_torch_device(args), dtype=dtype).eval(), ckpt.cfg


def main(argv: Sequence[str] | None = None) -> Generation:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from model.tokenizer import load_tokenizer

    kernels = kernel_config(args.kernels)
    model_or_params, cfg = _load(args, kernels)
    tokenizer = load_tokenizer(args.ckpt, image_ids=cfg.image_token_ids if cfg.image_vocab else None)
    out = generate(model_or_params, args.prompt, max_new_tokens=args.max_new_tokens,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                   stop_tokens=args.stop_tokens, framework=args.framework, kernels=kernels, cfg=cfg,
                   tokenizer=tokenizer, cache=args.cache)
    for i, (prompt, text) in enumerate(zip(args.prompt, out.texts)):
        print(f"=== [{i}] {prompt!r} ({len(out.tokens[i])} new tokens, {out.finish_reasons[i]})")
        print(prompt + text)
    return out


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, IsADirectoryError) as e:  # bad arguments / checkpoint
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
