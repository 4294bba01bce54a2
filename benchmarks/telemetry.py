"""GPU telemetry during a run: power, SM and memory clocks, temperature (nvidia-ml-py),
sampled on a background thread so a throttled run can be told from a slow kernel."""
from __future__ import annotations

import threading
import time


class NvmlSampler:
    def __init__(self, index: int = 0, interval_s: float = 0.5):
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._h = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.interval_s = interval_s
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        n, h = self._nvml, self._h
        t0 = time.perf_counter()
        while not self._stop.is_set():
            self.samples.append({
                "t_s": round(time.perf_counter() - t0, 3),
                "power_w": n.nvmlDeviceGetPowerUsage(h) / 1000.0,
                "sm_clock_mhz": n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
                "mem_clock_mhz": n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM),
                "temp_c": n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),
            })
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False

    def summary(self) -> dict:
        if not self.samples:
            return {}
        out = {"samples": len(self.samples)}
        for key in ("power_w", "sm_clock_mhz", "mem_clock_mhz", "temp_c"):
            vals = [s[key] for s in self.samples]
            out[key] = {"min": min(vals), "max": max(vals), "mean": sum(vals) / len(vals)}
        return out


# NVML's clock-event reason bits (nvmlClocksEventReason*; the same values under the older
# ClocksThrottleReason names), by the name a results file records
CLOCK_EVENTS = {0x1: "gpu_idle", 0x2: "applications_clocks", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
                0x10: "sync_boost", 0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake",
                0x100: "display_clocks"}


def clock_event_names(mask: int) -> list[str]:
    """The reason names of an NVML clock-event bitmask; unknown bits as hex."""
    names = [name for bit, name in CLOCK_EVENTS.items() if mask & bit]
    rest = mask & ~sum(CLOCK_EVENTS)
    return names + ([f"0x{rest:x}"] if rest else [])


class ClockProbe:
    """``probe()`` -> (SM clock in MHz, [clock-event reasons]) of one GPU, read now: the timers
    call it after each timed run (benchmarks/timing.py), so a run slowed by a power cap or
    heat is recorded as such (no reasons where this NVML or device cannot report them)."""

    def __init__(self, index: int = 0):
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._h = pynvml.nvmlDeviceGetHandleByIndex(index)
        self._reasons = (getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
                         or getattr(pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None))

    def __call__(self) -> tuple:
        n = self._nvml
        mhz = n.nvmlDeviceGetClockInfo(self._h, n.NVML_CLOCK_SM)
        try:  # read after a run, when the GPU is idle by construction: that bit says nothing
            reasons = clock_event_names(int(self._reasons(self._h)) & ~0x1) if self._reasons else []
        except n.NVMLError:  # not supported on this device or driver
            reasons = []
        return mhz, reasons
