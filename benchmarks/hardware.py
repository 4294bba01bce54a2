"""What the benchmark runs on: device detection, datasheet peaks, measured ceilings.

NVIDIA GPUs through nvidia-ml-py (name, memory, driver, clocks, power limit), TPUs
through ``jax.devices()``, the CPU from the OS. The two ceilings are measured on the
present device before any kernel: a large device-to-device copy (GB/s counting bytes
read + written) and a large matmul (bf16 on GPU, fp32 on CPU), so every kernel can be
reported as a fraction of both the measured and the datasheet peak.

On a GPU a third ceiling is small copies: the same device-to-device copy at 4 B (the timer's
floor: one graph launch and two events around it) and 1-64 MiB, timed as the memory-bound
suites time their kernels (CUDA-graph replay, L2 flushed by a read). A decode or int4 call moving a
few MiB cannot reach the large copy's bandwidth with any kernel -- the floor alone is
several microseconds -- so those records also get ``frac_same_size_copy``: the time a copy
of the same bytes takes with the same timer over the kernel's time (``same_size_copy_s``).
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass, field

HARDWARE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "hardware")


@functools.lru_cache(maxsize=None)
def hardware_table() -> dict[str, dict]:
    """The datasheet table, one entry per ``conf/hardware/*.yaml`` (name -> fields + source)."""
    from omegaconf import OmegaConf

    table = {}
    for fname in sorted(os.listdir(HARDWARE_DIR)):
        if fname.endswith(".yaml"):
            entry = OmegaConf.to_container(OmegaConf.load(os.path.join(HARDWARE_DIR, fname)))
            table[fname[:-5]] = entry
    return table


def match_hardware(device_name: str) -> dict | None:
    """The table entry whose ``match`` substrings all occur in the device name, if any. A
    TPU device kind goes through ``kernels._tpu_chips`` first, so every name JAX gives one
    chip ("TPU v5" and "TPU v5p" are both v5p) finds that chip's entry (``tpu_<generation>``)."""
    from kernels._tpu_chips import chip_generation

    gen = chip_generation(device_name)
    if gen is not None and f"tpu_{gen}" in hardware_table():
        return hardware_table()[f"tpu_{gen}"]
    low = device_name.lower()
    for entry in hardware_table().values():
        if any(all(part in low for part in parts) for parts in entry.get("match") or []):
            return entry
    return None


@dataclass
class Device:
    kind: str  # "cuda", "tpu" or "cpu"
    name: str
    count: int = 1
    memory_gb: float | None = None
    driver: str | None = None
    cuda: str | None = None
    power_limit_w: float | None = None
    max_sm_clock_mhz: int | None = None
    max_mem_clock_mhz: int | None = None
    cpu_cores: int | None = None
    datasheet_tflops: float | None = None
    datasheet_gbps: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _datasheet(name: str):
    entry = match_hardware(name)
    if entry is None:
        return (None, None)
    return entry.get("bf16_tflops"), entry.get("hbm_gb_per_s")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def detect_device() -> Device:
    import torch

    if torch.cuda.is_available():
        return _detect_nvidia(torch)
    tpu = _detect_tpu()
    if tpu is not None:
        return tpu
    return Device(kind="cpu", name=_cpu_name(), cpu_cores=os.cpu_count())


def _detect_nvidia(torch) -> Device:
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    name = pynvml.nvmlDeviceGetName(h)
    name = name.decode() if isinstance(name, bytes) else name
    tflops, gbps = _datasheet(name)
    return Device(
        kind="cuda", name=name, count=pynvml.nvmlDeviceGetCount(),
        memory_gb=round(pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**30, 1),
        driver=str(pynvml.nvmlSystemGetDriverVersion()), cuda=torch.version.cuda,
        power_limit_w=pynvml.nvmlDeviceGetPowerManagementLimit(h) / 1000.0,
        max_sm_clock_mhz=pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
        max_mem_clock_mhz=pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM),
        cpu_cores=os.cpu_count(), datasheet_tflops=tflops, datasheet_gbps=gbps,
        extra={"capability": ".".join(map(str, torch.cuda.get_device_capability()))},
    )


def _detect_tpu() -> Device | None:
    import jax

    devs = [d for d in jax.devices() if d.platform == "tpu"]
    if not devs:
        return None
    tflops, gbps = _datasheet(devs[0].device_kind)
    return Device(kind="tpu", name=devs[0].device_kind, count=len(devs), cpu_cores=os.cpu_count(),
                  datasheet_tflops=tflops, datasheet_gbps=gbps)


COPY_CURVE_MB = (1, 4, 16, 64)  # the small copies, MiB read + written (plus a 4-byte one)


def measure_copy_curve(dst, src, graph_timer) -> list[dict]:
    """Copies of the first n bytes of ``src`` (fp32) into ``dst``: 4 B and COPY_CURVE_MB,
    each timed by ``graph_timer``; -> [{bytes (read + written), seconds, timing}]."""
    curve = []
    for total in (8, *(mb * 2**20 for mb in COPY_CURVE_MB)):
        n = total // 8  # fp32 elements copied: n * 4 read + n * 4 written
        if n > src.numel():
            break
        a, b = src[:n], dst[:n]
        t = graph_timer(lambda: b.copy_(a))
        curve.append({"bytes": 8 * n, "seconds": t.median_s, "timing": t.to_dict()})
    return curve


def same_size_copy_s(curve: list[dict], nbytes: float, large_gbps: float) -> float:
    """The copy curve's time at ``nbytes``: log-log interpolation between its points; below the
    smallest its time (the floor); above the largest, that time plus the rest at the large
    copy's bandwidth."""
    import math

    pts = sorted((c["bytes"], c["seconds"]) for c in curve)
    if nbytes <= pts[0][0]:
        return pts[0][1]
    for (b0, t0), (b1, t1) in zip(pts, pts[1:]):
        if nbytes <= b1:
            f = math.log(nbytes / b0) / math.log(b1 / b0)
            return math.exp(math.log(t0) + f * (math.log(t1) - math.log(t0)))
    b_last, t_last = pts[-1]
    return t_last + (nbytes - b_last) / (large_gbps * 1e9)


def measure_ceilings(device: Device, timer, *, copy_mb: int, matmul_n: int, graph_timer=None) -> dict:
    """Measured copy bandwidth (GB/s, read + write) and matmul throughput (TFLOP/s); with
    ``graph_timer`` (a GPU) also the small-copy curve (``measure_copy_curve``)."""
    import torch

    dev = "cuda" if device.kind == "cuda" else "cpu"
    n = copy_mb * 2**20 // 4
    src = torch.empty(n, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    t_copy = timer(lambda: dst.copy_(src))
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    a = torch.randn(matmul_n, matmul_n, device=dev, dtype=dtype)
    b = torch.randn(matmul_n, matmul_n, device=dev, dtype=dtype)
    t_mm = timer(lambda: a @ b)
    curve = {} if graph_timer is None else {"copy_curve": measure_copy_curve(dst, src, graph_timer)}
    return {
        **curve,
        "copy_gbps": 2 * n * 4 / t_copy.median_s / 1e9,
        "copy_bytes": 2 * n * 4,
        "matmul_tflops": 2 * matmul_n**3 / t_mm.median_s / 1e12,
        "matmul_n": matmul_n,
        "matmul_dtype": str(dtype).replace("torch.", ""),
        "copy_timing": t_copy.to_dict(),
        "matmul_timing": t_mm.to_dict(),
    }
