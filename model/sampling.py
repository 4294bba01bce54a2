"""Next-token selection from logits [batch, vocab]: greedy, temperature, top-k, top-p.

``SamplingConfig`` is the one validated description (both frameworks). Order, as Hugging
Face applies it: logits / temperature, then keep the top_k largest, then keep the smallest
prefix of the sorted distribution whose mass reaches top_p (the most likely token always
stays; top_p = 1 keeps every token, as in HF, though fp32 mass can round to 1 early), then
draw. temperature == 0 is greedy (argmax; top_k / top_p then change nothing).

The draw is the exponential race: argmax(softmax(l) / E) with E ~ Exp(1) i.i.d., which
samples softmax(l) exactly (Gumbel-max), needs no normalisation, and gives a token whose
probability is 0 (masked to -inf) no chance. Randomness comes from the caller's
``torch.Generator`` / ``jax.random`` key, so a seed reproduces a run. Ties: greedy takes
the lowest id; top_k keeps every token tied with the k-th.
"""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0.0 or t == float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"top_k must be None or an int >= 1, got {k!r}")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0):
            raise ValueError(f"top_p must be None or a number in (0, 1], got {p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def check_vocab(self, vocab_size: int) -> None:
        if self.top_k is not None and self.top_k > vocab_size:
            raise ValueError(f"top_k {self.top_k} exceeds the vocabulary size {vocab_size}")

    @classmethod
    def from_options(cls, **options) -> "SamplingConfig":
        """Build from keyword options, naming any unknown one and the known ones."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown sampling option(s) {unknown}; known options: {known}")
        return cls(**options)


# --- PyTorch ---

def filter_logits_torch(logits, cfg: SamplingConfig):
    """Tempered, top-k / top-p masked logits (fp32, -inf where removed)."""
    import torch

    logits = logits.float() / cfg.temperature
    if cfg.top_k is not None:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:  # 1 keeps all (fp32 mass may round to 1)
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(-1) - probs
        remove = mass_before >= cfg.top_p
        remove[..., 0] = False
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return logits


def sample_torch(logits, cfg: SamplingConfig, generator=None):
    """Token ids [batch] (int64) from logits [batch, vocab]; ``generator`` seeds the draw."""
    import torch

    if cfg.greedy:
        return torch.argmax(logits, dim=-1)
    logits = filter_logits_torch(logits, cfg)
    exp = torch.empty_like(logits).exponential_(1.0, generator=generator)
    # argmax(p / E) == argmax(logits - log E); E > 0 keeps -inf (removed) logits from winning
    exp = exp.clamp_min(torch.finfo(torch.float32).tiny)
    return torch.argmax(logits - exp.log(), dim=-1)


# --- JAX ---

def filter_logits_jax(logits, cfg: SamplingConfig):
    """Tempered, top-k / top-p masked logits (fp32, -inf where removed)."""
    import jax
    import jax.numpy as jnp

    logits = logits.astype(jnp.float32) / cfg.temperature
    if cfg.top_k is not None:
        kth = jax.lax.top_k(logits, cfg.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if cfg.top_p is not None and cfg.top_p < 1.0:  # 1 keeps all (fp32 mass may round to 1)
        order = jnp.argsort(-logits, axis=-1, stable=True)  # descending, ties by id
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        remove = (mass_before >= cfg.top_p).at[..., 0].set(False)
        sorted_logits = jnp.where(remove, -jnp.inf, sorted_logits)
        inverse = jnp.argsort(order, axis=-1)
        logits = jnp.take_along_axis(sorted_logits, inverse, axis=-1)
    return logits


def sample_jax(logits, cfg: SamplingConfig, key=None):
    """Token ids [batch] (int32) from logits [batch, vocab]; ``key`` (jax.random) seeds the draw."""
    import jax
    import jax.numpy as jnp

    if cfg.greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits_jax(logits, cfg)
    exp = jax.random.exponential(key, logits.shape, dtype=jnp.float32)
    exp = jnp.maximum(exp, jnp.finfo(jnp.float32).tiny)  # E > 0: -inf logits never win
    return jnp.argmax(logits - jnp.log(exp), axis=-1).astype(jnp.int32)
