"""Structured hydra configs for the benchmark runner (registered in the ConfigStore so
a typo in an override fails instead of being ignored)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from benchmarks.suites.decode import DecodeBenchConfig
from benchmarks.suites.elementwise import ElementwiseBenchConfig
from benchmarks.suites.encoder_kernels import EncoderKernelsBenchConfig
from benchmarks.suites.encoders import EncodersBenchConfig
from benchmarks.suites.int4 import Int4BenchConfig
from benchmarks.suites.model import ModelBenchConfig


@dataclass
class TimerConfig:
    warmup: int = 2
    min_runs: int = 3
    max_runs: int = 50
    budget_s: float = 1.0
    interpret_runs: int = 1  # interpret-mode kernels: timed once, labeled "interpret"
    cuda_graphs: bool = False  # torch on CUDA: time replays of a captured CUDA graph


@dataclass
class CeilingConfig:
    copy_mb: int = 256
    matmul_n: int = 2048


@dataclass
class AttentionBenchConfig:
    enabled: bool = True
    batch: int = 1
    tokens: int = 0  # > 0: batch = tokens // seq (the FA papers' B*S = 16k convention)
    seq_lens: list[int] = field(default_factory=lambda: [128, 256])
    heads: int = 4
    kv_heads: list[int] = field(default_factory=lambda: [1, 2])
    head_dim: int = 128
    causal: list[bool] = field(default_factory=lambda: [True, False])
    dtype: str = "float32"
    directions: list[str] = field(default_factory=lambda: ["fwd", "fwd+bwd"])
    max_bwd_seq: int = 0  # > 0: longer sequences run forward only (e.g. 128k prefill)
    torch_impls: list[str] = field(default_factory=lambda: ["triton", "sdpa", "reference"])
    jax_impls: list[str] = field(default_factory=lambda: ["pallas", "xla", "reference"])
    check_rows: int = 64  # correctness: the last rows of q against the fp32 reference


@dataclass
class BenchConfig:
    name: str = "cpu"
    timer: TimerConfig = field(default_factory=TimerConfig)
    ceilings: CeilingConfig = field(default_factory=CeilingConfig)
    attention: AttentionBenchConfig = field(default_factory=AttentionBenchConfig)
    decode: DecodeBenchConfig = field(default_factory=DecodeBenchConfig)
    elementwise: ElementwiseBenchConfig = field(default_factory=ElementwiseBenchConfig)
    encoder_kernels: EncoderKernelsBenchConfig = field(default_factory=EncoderKernelsBenchConfig)
    int4: Int4BenchConfig = field(default_factory=Int4BenchConfig)
    encoders: EncodersBenchConfig = field(default_factory=EncodersBenchConfig)
    model: ModelBenchConfig = field(default_factory=ModelBenchConfig)
    telemetry_interval_s: float = 0.5
    deadline_s: float = 0.0  # > 0: shared across suites by entry count; entries not started in their share are reported skipped
    first: dict[str, Any] = field(default_factory=dict)  # {suite: {field: [values]}}: run first (schedule.py)
    # {suite: weight}: each of the suite's entries counts this many times in the deadline's
    # shares (schedule.share_end); a model row compiles and tunes for a minute, an attention
    # row for seconds
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class RunConfig:
    bench: BenchConfig = field(default_factory=BenchConfig)
    out_dir: str = "benchmarks/results"
    seed: int = 0


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="bench", name="bench_schema", node=BenchConfig)
