"""End-to-end modality encoder suite: images/s through the ViT, audio-seconds/s through the
audio encoder, per framework and kernel preset (a ``KernelConfig`` preset: torch triton |
reference | sdpa; JAX pallas | xla | reference).

Each case is one encoder config (``model.vision.VISION_PRESETS`` / ``model.audio.AUDIO_PRESETS``)
at one batch (and clip length); parameters are the deterministic ``init_params`` (seed from
the case id) rounded to the case dtype. Correctness first: every impl's embeddings are compared
with the PyTorch reference preset run in float32 on the same (rounded) parameters and inputs;
an impl over ``BENCH_RTOL[dtype]`` (relative to max|reference|) is reported failed with its
error and not timed. Timing covers the whole public forward (input checks included).
Peers: the "sdpa" preset on torch (SDPA attention, plain-torch elsewhere) and "xla" on JAX.
The defaults are tiny so the suite runs on CPU (interpreters); GPU presets name the real
configs (``siglip_so400m`` at 896 px, ``conformer_large`` on 30 s clips).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from benchmarks.suites.common import Skip, rel_err
from kernels.tolerances import BENCH_RTOL

PEERS = {"torch": ("sdpa",), "jax": ("xla",)}


@dataclass
class EncodersBenchConfig:
    enabled: bool = True
    dtype: str = "float32"
    vision_configs: list[str] = field(default_factory=lambda: ["tiny"])  # VISION_PRESETS names
    image_batch: int = 2
    audio_configs: list[str] = field(default_factory=lambda: ["tiny"])  # AUDIO_PRESETS names
    audio_batch: int = 2
    audio_seconds: list[float] = field(default_factory=lambda: [0.5])
    torch_impls: list[str] = field(default_factory=lambda: ["triton", "sdpa", "reference"])
    jax_impls: list[str] = field(default_factory=lambda: ["pallas", "xla", "reference"])


@dataclass(frozen=True)
class EncoderCase:
    kind: str  # "vision" | "audio"
    config: str
    batch: int
    dtype: str
    seconds: float = 0.0  # audio clip length

    @property
    def id(self) -> str:
        clip = f" {self.seconds:g}s" if self.kind == "audio" else ""
        return f"{self.kind} {self.config} b{self.batch}{clip} {self.dtype}"

    def model_config(self):
        if self.kind == "vision":
            from model.vision import VISION_PRESETS

            return VISION_PRESETS[self.config]
        from model.audio import AUDIO_PRESETS

        return AUDIO_PRESETS[self.config]

    def specs(self):
        from model.audio import audio_param_specs
        from model.vision import vision_param_specs

        fn = vision_param_specs if self.kind == "vision" else audio_param_specs
        return fn(self.model_config())


def cases(cfg) -> list[EncoderCase]:
    out = [EncoderCase("vision", name, cfg.image_batch, cfg.dtype) for name in cfg.vision_configs]
    out += [EncoderCase("audio", name, cfg.audio_batch, cfg.dtype, sec)
            for name in cfg.audio_configs for sec in cfg.audio_seconds]
    return out


def _mode(framework: str, impl: str) -> str:
    from kernels import _platform

    if impl == "triton":
        return "interpret" if _platform.triton_interpreting() else "compiled"
    if impl == "pallas":
        return "interpret" if _platform.pallas_interpret_default() else "compiled"
    return "xla" if framework == "jax" else "eager"


class EncodersSuite:
    name = "encoders"
    peers = PEERS

    def __init__(self, cfg, device, timer_factory, seed: int = 0):
        self.cfg, self.device, self.timer_factory, self.seed = cfg, device, timer_factory, seed
        self._validate()

    def entries(self):
        for case in cases(self.cfg):
            for impl in self.cfg.torch_impls:
                yield case, "torch", impl
            for impl in self.cfg.jax_impls:
                yield case, "jax", impl

    def _validate(self) -> None:
        """The config's names, checked before anything runs."""
        from model.audio import AUDIO_PRESETS
        from model.vision import VISION_PRESETS

        for names, table, what in ((self.cfg.vision_configs, VISION_PRESETS, "vision"),
                                   (self.cfg.audio_configs, AUDIO_PRESETS, "audio")):
            for n in names:
                if n not in table:
                    raise ValueError(f"unknown {what} config {n!r}; presets: {sorted(table)}")
        if self.cfg.dtype not in BENCH_RTOL:
            raise ValueError(f"dtype must be one of {sorted(BENCH_RTOL)}, got {self.cfg.dtype!r}")

    def _inputs(self, case: EncoderCase):
        """(numpy params rounded to the dtype, numpy input, fp32 torch reference), cached per case."""
        if getattr(self, "_case", None) == case:
            return self._data
        import torch

        from model import encoders_torch as ET
        from model.config import KernelConfig
        from model.encoder_common import init_params

        seed = self.seed + zlib.crc32(case.id.encode())
        rng = np.random.default_rng(seed)
        dt = getattr(torch, case.dtype)
        params = {k: torch.as_tensor(v).to(dt).float().numpy() for k, v in init_params(case.specs(), seed).items()}
        mcfg = case.model_config()
        dev = "cuda" if self.device.kind == "cuda" else "cpu"
        tp = {k: torch.as_tensor(v, device=dev) for k, v in params.items()}
        ref_k = KernelConfig(preset="reference")
        with torch.no_grad():
            if case.kind == "vision":
                x = rng.standard_normal((case.batch, mcfg.image_size, mcfg.image_size, mcfg.channels))
                x = torch.as_tensor(x.astype(np.float32)).to(dt).float().numpy()
                ref = ET.vision_forward(tp, torch.as_tensor(x, device=dev), cfg=mcfg, kernels=ref_k)[0]
            else:
                x = (rng.standard_normal((case.batch, int(round(case.seconds * 16000)))) * 0.3).astype(np.float32)
                x = torch.as_tensor(x).to(dt).float().numpy()
                ref = ET.audio_forward(tp, torch.as_tensor(x, device=dev), cfg=mcfg, kernels=ref_k)[0]
        self._case, self._data = case, (params, x, ref.float().cpu().numpy())
        return self._data

    def run(self, case: EncoderCase, framework: str, impl: str) -> dict:
        rec, timed = self.check(case, framework, impl)
        if timed is None:
            return rec
        t = self.timer_factory(framework, interpret=(rec["mode"] == "interpret"))(timed)
        rec.update(status="ok", timing=t.to_dict(), median_ms=t.median_s * 1e3)
        if case.kind == "vision":
            rec["images_per_s"] = case.batch / t.median_s
        else:
            rec["audio_s_per_s"] = case.batch * case.seconds / t.median_s
        return rec

    def check(self, case: EncoderCase, framework: str, impl: str):
        """Correctness first: (record, timed callable), or (failed record, None) over tolerance."""
        from model.config import KernelConfig

        known = ("triton", "reference", "sdpa") if framework == "torch" else ("pallas", "reference", "xla")
        if impl not in known:
            raise Skip(f"unknown {framework} kernel preset {impl!r}; one of {known}")
        params, x, ref = self._inputs(case)
        kernels = KernelConfig(preset=impl)
        fn = self._torch_call(case, params, x, kernels) if framework == "torch" else \
            self._jax_call(case, params, x, kernels)
        got = np.asarray(fn(), np.float32) if framework == "jax" else fn().float().cpu().numpy()
        mode = _mode(framework, impl)
        err = rel_err(got, ref)
        tol = BENCH_RTOL[case.dtype]
        rec = {"max_error": err, "tolerance": tol, "mode": mode}
        if not np.isfinite(err) or err > tol:
            return {**rec, "status": "failed"}, None
        return rec, fn

    def _torch_call(self, case, params, x, kernels):
        import torch

        from model import encoders_torch as ET

        dev = "cuda" if self.device.kind == "cuda" else "cpu"
        dt = getattr(torch, case.dtype)
        tp = {k: torch.as_tensor(v, device=dev).to(dt) for k, v in params.items()}
        xt = torch.as_tensor(x, device=dev).to(dt)
        mcfg = case.model_config()
        forward = ET.vision_forward if case.kind == "vision" else ET.audio_forward

        def call():
            with torch.no_grad():
                return forward(tp, xt, cfg=mcfg, kernels=kernels)[0]

        return call

    @staticmethod
    def _jax_call(case, params, x, kernels):
        import jax.numpy as jnp

        from model import encoders_jax as EJ

        jp = {k: jnp.asarray(v).astype(case.dtype) for k, v in params.items()}
        xj = jnp.asarray(x).astype(case.dtype)
        mcfg = case.model_config()
        forward = EJ.vision_forward if case.kind == "vision" else EJ.audio_forward
        return lambda: forward(jp, xj, cfg=mcfg, kernels=kernels)[0]
