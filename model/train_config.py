"""Structured hydra config of ``python -m model.train`` (registered in the ConfigStore, so an
unknown key or a wrong type fails at composition instead of being ignored).

``conf/train/*.yaml`` are the runs (``--config-name train/<name>``; default
``train/tiny_retrieval``); ``conf/model/*.yaml`` are the model presets (``model=tiny``),
checked against ``ModelSchema``, a mutable mirror of ``model.config.ModelConfig``.

``kernels`` is a node mirroring ``model.config.KernelConfig`` (``KernelsSchema``: ``preset``
and one optional field per op, null = the preset's). ``conf/kernels/<preset>.yaml`` make it a
config group, so ``kernels=triton`` (the preset shorthand) selects one and per-op overrides
go on top: ``kernels=triton kernels.attention=reference`` or ``kernels.loss=xla``.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from model.config import KernelConfig, ModelConfig


def _model_schema():
    """``ModelConfig``'s fields as a non-frozen dataclass (hydra overrides must be writable)."""
    hints = typing.get_type_hints(ModelConfig)
    fields = []
    for f in dataclasses.fields(ModelConfig):
        tp = hints[f.name]
        args = typing.get_args(tp)
        if type(None) in args:  # "float | None" -> Optional[float] (OmegaConf's spelling)
            tp = Optional[[a for a in args if a is not type(None)][0]]
        fields.append((f.name, tp, field(default=f.default)))
    return dataclasses.make_dataclass("ModelSchema", fields)


ModelSchema = _model_schema()


def _kernels_schema():
    """``KernelConfig``'s preset and per-op fields as a non-frozen dataclass (attention_blocks
    stays the top-level ``attention_blocks`` option)."""
    fields = [(f.name, str if f.name == "preset" else Optional[str], field(default=f.default))
              for f in dataclasses.fields(KernelConfig) if f.name != "attention_blocks"]
    return dataclasses.make_dataclass("KernelsSchema", fields)


KernelsSchema = _kernels_schema()


def kernel_config(kernels, attention_blocks: str | None = None) -> KernelConfig:
    """The ``KernelConfig`` of a ``kernels`` node (OmegaConf node, KernelsSchema, mapping) or a
    bare preset name."""
    if isinstance(kernels, str):
        return KernelConfig(preset=kernels, attention_blocks=attention_blocks)
    from omegaconf import OmegaConf

    if OmegaConf.is_config(kernels):
        kernels = OmegaConf.to_container(kernels, resolve=True)
    elif dataclasses.is_dataclass(kernels):
        kernels = dataclasses.asdict(kernels)
    if not isinstance(kernels, dict):
        raise TypeError(f"kernels must be a preset name or a mapping of KernelConfig fields, got "
                        f"{type(kernels).__name__}")
    return KernelConfig(**kernels, attention_blocks=attention_blocks)


@dataclass
class OptimConfig:
    lr: float = 3e-3              # peak learning rate
    min_lr_ratio: float = 0.1     # cosine decays to lr * min_lr_ratio at the last step
    warmup_steps: int = 20        # linear warmup from lr / warmup_steps
    weight_decay: float = 0.1     # decoupled (AdamW), matrices only (ndim >= 2)
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0        # global gradient-norm clip; <= 0 disables


@dataclass
class RetrievalDataConfig:
    pairs: int = 8
    key_len: int = 2
    value_len: int = 2
    seq_len: int = 64
    queries: int = 1   # keys asked per example (each one's value is a target)
    order: str = "key_first"  # key_first | value_first: how a context pair is written
    min_pairs: Optional[int] = None  # training rows draw [min_pairs, pairs] pairs; held-out rows use pairs


@dataclass
class TextDataConfig:
    path: Optional[str] = None
    seq_len: int = 256
    stride: int = 128
    eval_fraction: float = 0.1


@dataclass
class DataConfig:
    kind: str = "retrieval"  # retrieval | text
    retrieval: RetrievalDataConfig = field(default_factory=RetrievalDataConfig)
    text: TextDataConfig = field(default_factory=TextDataConfig)


@dataclass
class DistillConfig:
    teacher: Optional[str] = None  # a model checkpoint (model/checkpoint.py); None: no distillation
    temperature: float = 2.0
    weight: float = 0.5            # loss = (1 - weight) * CE + weight * T^2 KL


@dataclass
class CheckpointConfig:
    dir: Optional[str] = None  # None: no checkpoints
    every: int = 0             # save every N steps (and at the end); 0: only at the end
    resume: bool = True        # start from the latest complete checkpoint in dir, if any
    keep: int = 2              # newest checkpoints kept


@dataclass
class EvalConfig:
    every: int = 0        # held-out evaluation every N steps; 0: only at the end
    batches: int = 8      # held-out batches of batch_size examples


@dataclass
class TrainConfig:
    model: ModelSchema = field(default_factory=ModelSchema)
    framework: str = "torch"        # torch | jax
    # KernelConfig: preset (torch triton|reference|sdpa, jax pallas|reference|xla; kernels=<preset>
    # picks conf/kernels/<preset>.yaml) and per-op overrides (kernels.attention=..., null: preset)
    kernels: KernelsSchema = field(default_factory=KernelsSchema)
    attention_blocks: str | None = None  # torch with triton attention: null (defaults) | autotune
    device: str = "auto"            # torch: auto|cpu|cuda (jax uses its default backend)
    cpu_threads: int = 1            # torch intra-op threads on CPU during the run (0: torch's default);
    #                                 tiny shapes gain nothing from more, and oversubscribed cores lose 10-100x
    seed: int = 0
    steps: int = 300
    max_seconds: float = 0.0        # > 0: stop early after this much training time
    batch_size: int = 32            # examples per optimizer step (all micro-batches together)
    grad_accum: int = 1             # micro-batches per step
    precision: str = "fp32"         # fp32 | bf16 (torch autocast / JAX bf16 compute, fp32 master weights)
    remat: bool = False             # activation checkpointing
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log_every: int = 10
    hardware_peak_tflops: Optional[float] = None  # None: the detected chip's conf/hardware bf16 peak
    results_dir: Optional[str] = "benchmarks/results"  # None: no results file
    run_name: str = "train"


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="model", name="model_schema", node=ModelSchema)
