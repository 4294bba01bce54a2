"""What the benchmark runs on: device detection, datasheet peaks, measured ceilings.

NVIDIA GPUs through nvidia-ml-py (name, memory, driver, clocks, power limit), TPUs
through ``jax.devices()``, the CPU from the OS. The two ceilings are measured on the
present device before any kernel: a large device-to-device copy (GB/s counting bytes
read + written) and a large matmul (bf16 on GPU, fp32 on CPU), so every kernel can be
reported as a fraction of both the measured and the datasheet peak.
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
    """The table entry whose ``match`` substrings all occur in the device name, if any."""
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


def measure_ceilings(device: Device, timer, *, copy_mb: int, matmul_n: int) -> dict:
    """Measured copy bandwidth (GB/s, read + write) and matmul throughput (TFLOP/s)."""
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
    return {
        "copy_gbps": 2 * n * 4 / t_copy.median_s / 1e9,
        "copy_bytes": 2 * n * 4,
        "matmul_tflops": 2 * matmul_n**3 / t_mm.median_s / 1e12,
        "matmul_n": matmul_n,
        "matmul_dtype": str(dtype).replace("torch.", ""),
        "copy_timing": t_copy.to_dict(),
        "matmul_timing": t_mm.to_dict(),
    }
