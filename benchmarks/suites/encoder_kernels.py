"""Encoder kernels suite (part B): patch_embed and log_mel, operator x impl grid.

patch_embed: TFLOP/s (2*B*N*K*D forward; x3 for fwd+bwd) of the Triton / Pallas kernels
against the torch F.conv2d peer ("conv") and XLA's convolution ("xla"), plus the plain
references. log_mel: audio-seconds per second and GB/s (waveform read + float32 output
written once) against the torch.stft path ("stft") and XLA ("xla").
Correctness first: every impl's outputs (and, for fwd+bwd, all four gradients) are
compared with the fp32 torch reference; a case over ``BENCH_RTOL`` is reported failed with
its error and not timed. The defaults are tiny so the suite runs on CPU (interpreters);
presets for GPUs set real sizes (224 px / 16 px patches, dim 768; 30 s of audio).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from benchmarks.suites.common import Skip, add_peer_ratios, rel_err  # noqa: F401  (re-exported)
from kernels.tolerances import BENCH_RTOL

PEERS = {"torch": ("cublas", "conv", "stft"), "jax": ("xla",)}  # cublas, conv: patch_embed; stft: log_mel


@dataclass
class EncoderKernelsBenchConfig:
    enabled: bool = True
    dtype: str = "float32"
    # patch_embed: square images of each size, each patch size, each dim
    patch_batch: int = 1
    image_sizes: list[int] = field(default_factory=lambda: [32])
    patch_sizes: list[int] = field(default_factory=lambda: [16])
    channels: int = 3
    dims: list[int] = field(default_factory=lambda: [64])
    patch_directions: list[str] = field(default_factory=lambda: ["fwd", "fwd+bwd"])
    torch_patch_impls: list[str] = field(default_factory=lambda: ["triton", "conv", "reference"])
    jax_patch_impls: list[str] = field(default_factory=lambda: ["pallas", "xla", "reference"])
    # log_mel: audio clips of each length at 16 kHz, 25 ms / 10 ms, n_fft 512
    audio_batch: int = 1
    audio_seconds: list[float] = field(default_factory=lambda: [0.25])
    n_mels: list[int] = field(default_factory=lambda: [80])
    torch_mel_impls: list[str] = field(default_factory=lambda: ["triton", "stft", "reference"])
    jax_mel_impls: list[str] = field(default_factory=lambda: ["pallas", "xla", "reference"])
    # torch rows as CUDA-graph replays (GPU preset): launch overhead out of kernels that run
    # for tens of microseconds
    cuda_graphs: bool = False


@dataclass(frozen=True)
class PatchCase:
    batch: int
    size: int
    channels: int
    patch: int
    dim: int
    dtype: str
    direction: str
    op: str = "patch_embed"

    @property
    def id(self) -> str:
        return f"patch_embed b{self.batch} {self.size}px p{self.patch} d{self.dim} {self.dtype} {self.direction}"

    @property
    def patches(self) -> int:
        return (self.size // self.patch) ** 2

    def flops(self) -> float:
        f = 2.0 * self.batch * self.patches * self.patch * self.patch * self.channels * self.dim
        return 3 * f if self.direction == "fwd+bwd" else f


@dataclass(frozen=True)
class MelCase:
    batch: int
    samples: int
    n_mels: int
    dtype: str
    op: str = "log_mel"

    @property
    def id(self) -> str:
        return f"log_mel b{self.batch} {self.samples / 16000:g}s mels{self.n_mels} {self.dtype}"

    @property
    def frames(self) -> int:
        return 1 + (self.samples - 400) // 160

    def bytes(self, itemsize: int) -> int:
        return self.batch * self.samples * itemsize + self.batch * self.frames * self.n_mels * 4


def cases(cfg) -> list:
    out = [PatchCase(cfg.patch_batch, s, cfg.channels, p, d, cfg.dtype, direction)
           for s in cfg.image_sizes for p in cfg.patch_sizes if s % p == 0
           for d in cfg.dims for direction in cfg.patch_directions]
    out += [MelCase(cfg.audio_batch, int(round(sec * 16000)), m, cfg.dtype)
            for sec in cfg.audio_seconds for m in cfg.n_mels]
    return out


def _mode(framework: str, impl: str) -> str:
    from kernels import _platform

    if impl == "triton":
        return "interpret" if _platform.triton_interpreting() else "compiled"
    if impl == "pallas":
        return "interpret" if _platform.pallas_interpret_default() else "compiled"
    return "xla" if framework == "jax" else "eager"  # JAX impls run under jax.jit


class EncoderKernelsSuite:
    name = "encoder_kernels"
    peers = PEERS

    def __init__(self, cfg, device, timer_factory, seed: int = 0):
        self.cfg, self.device, self.timer_factory, self.seed = cfg, device, timer_factory, seed

    def entries(self):
        for case in cases(self.cfg):
            patch = case.op == "patch_embed"
            for impl in (self.cfg.torch_patch_impls if patch else self.cfg.torch_mel_impls):
                yield case, "torch", impl
            for impl in (self.cfg.jax_patch_impls if patch else self.cfg.jax_mel_impls):
                yield case, "jax", impl

    def _inputs(self, case):
        """Inputs (torch, on the device, case dtype) and fp32 reference outputs, cached per case."""
        import torch

        if getattr(self, "_case", None) == case:
            return self._data
        dev = "cuda" if self.device.kind == "cuda" else "cpu"
        g = torch.Generator(device="cpu").manual_seed(self.seed + zlib.crc32(case.id.encode()))
        dt = getattr(torch, case.dtype)
        if case.op == "patch_embed":
            k = case.patch * case.patch * case.channels
            shapes = [(case.batch, case.size, case.size, case.channels), (k, case.dim), (case.dim,),
                      (case.patches, case.dim), (case.batch, case.patches, case.dim)]
            data = [torch.randn(s, generator=g) * (k ** -0.5 if i == 1 else 1.0) for i, s in enumerate(shapes)]
            data = [t.to(dev, dt) for t in data]
            ref = self._patch_reference(case, data)
        else:
            data = [torch.randn(case.batch, case.samples, generator=g).to(dev, dt)]
            from kernels.audio.reference import log_mel_reference

            ref = (log_mel_reference(data[0].float(), n_mels=case.n_mels).cpu(),)
        self._case, self._data = case, (data, ref)
        return self._data

    @staticmethod
    def _patch_reference(case, data):
        import torch

        from kernels.patch_embed.reference import patch_embed_reference

        *inputs, dy = [t.detach().float() for t in data]
        if case.direction == "fwd":
            return (patch_embed_reference(*inputs, patch=case.patch).cpu(),)
        leaves = [t.requires_grad_() for t in inputs]
        y = patch_embed_reference(*leaves, patch=case.patch)
        grads = torch.autograd.grad(y, leaves, dy)
        return tuple(t.detach().cpu() for t in (y, *grads))

    def run(self, case, framework: str, impl: str) -> dict:
        data, ref = self._inputs(case)
        if framework == "torch":
            got, timed = self._torch_calls(case, impl, data)
        else:
            got, timed = self._jax_calls(case, impl, data)
        mode = _mode(framework, impl)
        err = max(rel_err(a, r) for a, r in zip(got, ref))
        tol = BENCH_RTOL[case.dtype]
        rec = {"max_error": err, "tolerance": tol, "mode": mode}
        if case.op == "patch_embed":
            rec["flops"] = case.flops()
        if not np.isfinite(err) or err > tol:
            return {**rec, "status": "failed"}
        graphs = True if self.cfg.cuda_graphs else None  # None: the run's timer setting
        t = self.timer_factory(framework, interpret=(mode == "interpret"), cuda_graphs=graphs)(timed)
        rec.update(status="ok", timing=t.to_dict(), median_ms=t.median_s * 1e3)
        if case.op == "patch_embed":
            rec["tflops"] = case.flops() / t.median_s / 1e12
        else:
            itemsize = np.dtype(case.dtype if case.dtype != "bfloat16" else "float16").itemsize
            rec["audio_s_per_s"] = case.batch * case.samples / 16000 / t.median_s
            rec["gbps"] = case.bytes(itemsize) / t.median_s / 1e9
        return rec

    @staticmethod
    def _torch_calls(case, impl, data):
        import torch

        from kernels import torch_ops

        if case.op == "log_mel":
            if impl not in torch_ops.LOG_MEL_IMPLS:
                raise Skip(f"unknown torch log_mel impl {impl!r}")
            fn = lambda: torch_ops.log_mel(data[0], n_mels=case.n_mels, impl=impl)  # noqa: E731
            return (fn().float().cpu(),), fn
        *inputs, dy = data
        if impl == "cublas":  # the yardstick: the same matmul shape, patches pre-unfolded
            if case.direction != "fwd":
                raise Skip("cublas times the forward GEMM shape only")
            from kernels.patch_embed.reference import unfold_patches_aligned

            images, weight, bias, pos = inputs
            a = unfold_patches_aligned(images, case.patch)  # outside the timed call; 16-byte rows
            fn = lambda: torch.matmul(a, weight)  # noqa: E731
            with torch.no_grad():  # checked with bias and position added outside the timing
                return ((fn().reshape(images.shape[0], -1, weight.shape[1]) + bias + pos).float().cpu(),), fn
        if impl not in torch_ops.PATCH_EMBED_IMPLS:
            raise Skip(f"unknown torch patch_embed impl {impl!r}")
        if case.direction == "fwd":
            fn = lambda: torch_ops.patch_embed(*inputs, patch=case.patch, impl=impl)  # noqa: E731
            with torch.no_grad():
                return (fn().float().cpu(),), fn
        leaves = [t.detach().requires_grad_() for t in inputs]

        def step():
            y = torch_ops.patch_embed(*leaves, patch=case.patch, impl=impl)
            return (y, *torch.autograd.grad(y, leaves, dy))

        return tuple(t.detach().float().cpu() for t in step()), step

    @staticmethod
    def _jax_calls(case, impl, data):
        import jax
        import jax.numpy as jnp

        from kernels import jax_ops

        to_jax = lambda t: jnp.asarray(t.detach().float().cpu().numpy()).astype(case.dtype)  # noqa: E731
        arrays = [to_jax(t) for t in data]
        if case.op == "log_mel":
            if impl not in jax_ops.LOG_MEL_IMPLS:
                raise Skip(f"unknown jax log_mel impl {impl!r}")
            jax_ops.log_mel(arrays[0], n_mels=case.n_mels, impl=impl)  # checks values once, eagerly
            f = jax.jit(lambda x: jax_ops.log_mel(x, n_mels=case.n_mels, impl=impl))
            return (np.asarray(f(arrays[0]), np.float32),), lambda: f(arrays[0])
        if impl not in jax_ops.PATCH_EMBED_IMPLS:
            raise Skip(f"unknown jax patch_embed impl {impl!r}")
        *inputs, dy = arrays
        fn = lambda *a: jax_ops.patch_embed(*a, patch=case.patch, impl=impl)  # noqa: E731
        if case.direction == "fwd":
            f = jax.jit(fn)
            return (np.asarray(f(*inputs).astype(jnp.float32)),), lambda: f(*inputs)

        @jax.jit
        def step(*a):
            y, vjp = jax.vjp(fn, *a[:-1])
            return (y, *vjp(a[-1]))

        got = step(*inputs, dy)
        return tuple(np.asarray(t.astype(jnp.float32)) for t in got), lambda: step(*inputs, dy)
