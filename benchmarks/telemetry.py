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
