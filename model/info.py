"""``python -m model.info model=nano1``: parameter counts per group, deviation from the Gemini
report's size (nano1 1.8B, nano2 3.25B), and weight memory.

Hydra reads ``conf/model/<name>.yaml`` into the ``ModelConfig`` schema (strict: an unknown or
mistyped key fails). Memory rows come from ``MEMORY_FORMATS`` (name -> bytes for a parameter
count); bf16 is the default row. Hook for quantization: ``register_memory_format("int4", fn)``
adds a row. The "int4-g128" row is ``model.quantize.quantized_size_bytes``: what ``python -m
model.quantize CKPT OUT`` writes (every matrix and the tied embedding int4, group 128,
symmetric, 2-byte scales, norms bf16) and what ``load_quantized_torch(..., dtype=bf16)`` /
``load_quantized_jax(..., dtype=bf16)`` hold (the embedding stays packed; tested equal).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Callable, get_type_hints

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from model.config import NANO_TARGETS, ModelConfig, param_specs

MAX_DEVIATION = 0.02  # the nano presets must be within 2% of the report's sizes

# name -> fn(cfg, groups: dict[group, count]) -> bytes
def _int4_bytes(cfg: ModelConfig, groups: dict[str, int]) -> float:
    from model.quantize import quantized_size_bytes  # int4 matrices and embedding, 2-byte scales, bf16 norms

    return float(quantized_size_bytes(cfg, group_size=128))


MEMORY_FORMATS: dict[str, Callable[[ModelConfig, dict[str, int]], float]] = {
    "bf16": lambda cfg, groups: 2.0 * sum(groups.values()),
    "int4-g128": _int4_bytes,
}


def register_memory_format(name: str, fn: Callable[[ModelConfig, dict[str, int]], float]) -> None:
    """Add a memory row (e.g. "int4") to ``python -m model.info``."""
    MEMORY_FORMATS[name] = fn


def group_of(name: str) -> str:
    """Parameter group of an HF-Gemma name: embedding, attention, mlp, norms."""
    if "embed_tokens" in name:
        return "embedding (tied head)"
    if "self_attn" in name:
        return "attention"
    if ".mlp." in name:
        return "mlp"
    return "norms"


def param_groups(cfg: ModelConfig) -> dict[str, int]:
    groups: dict[str, int] = {}
    for name, (shape, _) in param_specs(cfg).items():
        n = 1
        for s in shape:
            n *= s
        groups[group_of(name)] = groups.get(group_of(name), 0) + n
    return groups


def deviation(cfg: ModelConfig) -> float | None:
    """(count - report size) / report size for nano1 / nano2, None for other presets."""
    target = NANO_TARGETS.get(cfg.name)
    return None if target is None else sum(param_groups(cfg).values()) / target - 1.0


def report(cfg: ModelConfig) -> str:
    groups = param_groups(cfg)
    total = sum(groups.values())
    lines = [f"model {cfg.name}: width {cfg.width}, layers {cfg.layers}, heads {cfg.heads} "
             f"(kv {cfg.kv_heads}) x {cfg.head_dim}, mlp {cfg.mlp_dim}, vocab {cfg.vocab_size}"]
    for g, n in groups.items():
        lines.append(f"  {g:<24} {n:>15,d}  ({100 * n / total:5.1f}%)")
    lines.append(f"  {'total':<24} {total:>15,d}  ({total / 1e9:.3f}B)")
    dev = deviation(cfg)
    if dev is not None:
        verdict = "OK" if abs(dev) <= MAX_DEVIATION else f"OUTSIDE +-{MAX_DEVIATION:.0%}"
        lines.append(f"  Gemini report size       {NANO_TARGETS[cfg.name] / 1e9:.2f}B: deviation "
                     f"{100 * dev:+.2f}% ({verdict})")
    for fmt, fn in MEMORY_FORMATS.items():
        size = fn(cfg, groups)
        lines.append(f"  memory {fmt:<17} {size / 1e9:10.3f} GB ({size / 2**30:.3f} GiB)")
    return "\n".join(lines)


# ModelConfig is frozen (hydra cannot merge into it): a mutable twin with the same typed fields.
ModelSchema = make_dataclass("ModelSchema", [(f.name, get_type_hints(ModelConfig)[f.name], f.default)
                                             for f in fields(ModelConfig)])


@dataclass
class InfoConfig:
    defaults: list[Any] = field(default_factory=lambda: [
        "_self_", {"model": "nano1"}, {"override hydra/job_logging": "none"},
        {"override hydra/hydra_logging": "none"}])
    model: Any = field(default_factory=ModelSchema)
    hydra: Any = field(default_factory=lambda: {"run": {"dir": "."}, "output_subdir": None})


ConfigStore.instance().store(name="model_info", node=InfoConfig)


@hydra.main(config_path="../conf", config_name="model_info", version_base=None)
def main(conf) -> None:
    cfg = ModelConfig(**OmegaConf.to_container(conf.model))  # validates in __post_init__
    print(report(cfg))


if __name__ == "__main__":
    main()
