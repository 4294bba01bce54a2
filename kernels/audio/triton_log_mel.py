"""Triton log-mel spectrogram for PyTorch: block sizes, launcher, custom op (forward only).

    log_mel_triton(waveform, problem, *, blocks=None)   # problem: spec.LogMelProblem

Device code in ``triton_kernels.py``; ``aot_kernels`` gives the default specialization
built with the real JIT for ahead-of-time compiles without a GPU.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Optional

from .._platform import configure_triton_interpret

configure_triton_interpret()  # before triton is imported: the interpreter when there is no GPU

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402

from .._platform import triton_interpreting  # noqa: E402
from .._aot import aot_kernel, check_triton_blocks, jit_module  # noqa: E402
from . import triton_kernels  # noqa: E402
from .spec import LogMelProblem, geometry, mel_filterbank, packed_dft_tables  # noqa: E402

LAUNCHES: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class LogMelBlocks:
    """Frames per program, window chunk, frequency tile, launch knobs."""

    block_t: int = 64
    block_k: int = 32
    block_f: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        check_triton_blocks(self, ("block_t", "block_k", "block_f"))


def default_blocks(dtype: torch.dtype, *, capability: Optional[tuple] = None) -> LogMelBlocks:
    """Interpreter (capability None): big steps. GPU picks checked by tests/test_patch_audio_aot.py."""
    if capability is None:
        return LogMelBlocks(32, 128, 128, 4, 1)
    if dtype == torch.float32:
        return LogMelBlocks(32, 32, 64, 4, 2)
    # 8 warps: 4 spilled on sm_80 at 255 registers (benchmarks.compile_report); 8 fit both.
    return LogMelBlocks(64, 64, 64, 8, 2)


def _capability(t: torch.Tensor) -> Optional[tuple]:
    if triton_interpreting() or t.device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(t.device)


@functools.lru_cache(maxsize=32)
def _tables(win: int, n_fft: int, n_mels: int, sample_rate: int, dtype, device):
    re, im = packed_dft_tables(win, n_fft)
    fb = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate)
    as_t = lambda a, dt: torch.tensor(np.ascontiguousarray(a), dtype=dt, device=device)  # noqa: E731
    return as_t(re, dtype), as_t(im, dtype), as_t(fb, torch.float32)


def _block_mel(n_mels: int) -> int:
    return max(16, triton.next_power_of_2(n_mels))


def _constexprs(p: LogMelProblem, dtype, blocks: LogMelBlocks) -> dict:
    return dict(WIN=p.win, HALF=p.n_fft // 2, N_MELS=p.n_mels, BLOCK_T=blocks.block_t,
                BLOCK_K=blocks.block_k, BLOCK_F=min(blocks.block_f, p.n_fft // 2),
                BLOCK_MEL=_block_mel(p.n_mels),
                DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",
                MEL_PRECISION="ieee" if dtype == torch.float32 else "tf32")


def _log_mel(waveform, p: LogMelProblem, blocks: LogMelBlocks):
    re, im, fb = _tables(p.win, p.n_fft, p.n_mels, p.sample_rate, waveform.dtype, waveform.device)
    rows = p.batch * p.frames
    out = torch.empty((p.batch, p.frames, p.n_mels), dtype=torch.float32, device=waveform.device)
    triton_kernels._log_mel_kernel[(triton.cdiv(rows, blocks.block_t),)](
        waveform, re, im, fb, out, *waveform.stride(), rows, p.frames, p.hop,
        **_constexprs(p, waveform.dtype, blocks), num_warps=blocks.num_warps, num_stages=blocks.num_stages,
    )
    LAUNCHES["_log_mel_kernel"] += 1
    return out


@torch.library.custom_op("gemini_kernels::log_mel", mutates_args=())
def log_mel_op(waveform: torch.Tensor, geometry: list[int], blocks: list[int]) -> torch.Tensor:
    """geometry = [sample_rate, n_mels, win, hop, n_fft]; blocks = LogMelBlocks fields."""
    sr, n_mels, win, hop, n_fft = geometry
    p = LogMelProblem(waveform.shape[0], waveform.shape[1], sr, n_mels, win, hop, n_fft)
    return _log_mel(waveform, p, LogMelBlocks(*blocks))


@log_mel_op.register_fake
def _(waveform, geometry, blocks):
    _, n_mels, win, hop, _ = geometry
    frames = 1 + (waveform.shape[1] - win) // hop
    return waveform.new_empty((waveform.shape[0], frames, n_mels), dtype=torch.float32)


def log_mel_triton(waveform, problem: LogMelProblem, *, blocks: LogMelBlocks | None = None):
    """Validated waveform [B, S] (``kernels.torch_ops.log_mel``) -> [B, frames, n_mels] float32."""
    if blocks is None:
        blocks = default_blocks(waveform.dtype, capability=_capability(waveform))
    p = problem
    return log_mel_op(waveform, [p.sample_rate, p.n_mels, p.win, p.hop, p.n_fft],
                      list(dataclasses.astuple(blocks)))


_TY = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}


def aot_kernels(dtype=torch.float16, *, n_mels=80, capability=(9, 0)) -> dict:
    """{"_log_mel_kernel": AotKernel} at the defaults (16 kHz, 25/10 ms, n_fft 512) on ``capability``."""
    p = geometry(16000, 1, n_mels=n_mels)
    blocks = default_blocks(dtype, capability=tuple(capability))
    fn = jit_module(triton_kernels)._log_mel_kernel
    ptrs = {"X": _TY[dtype], "RE": _TY[dtype], "IM": _TY[dtype], "FB": "*fp32", "OUT": "*fp32"}
    return {"_log_mel_kernel": aot_kernel(fn, pointers=ptrs, constexprs=_constexprs(p, dtype, blocks),
                                          num_warps=blocks.num_warps, num_stages=blocks.num_stages,
                                          unit_strides=("stride_xs",), divisible_strides=False)}

