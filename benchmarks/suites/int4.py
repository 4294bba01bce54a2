"""int4 weight-only matmul suite: int4_matmul vs the dense matmul of the same shape, and vs
the reference (dequantize, then matmul), at decode and prefill row counts.

Cases: rows M (decode 1/4/16 and prefill) x layer shapes (in, out) from the config (GPU
default: nano1's 2048 -> 2048 (q_proj, 8 heads x 256), 2048 -> 9984 (gate/up), 9984 -> 2048
(down)). PyTorch impls: "triton", "reference", "matmul" (torch.matmul against the dense
dequantized weight in the case dtype: the peer), "triton-autotune" (``blocks="autotune"``:
the fastest ``candidate_blocks`` on this device, each row recording the pick and every
candidate's time); JAX: "pallas", "reference", "matmul"
(jnp.matmul). Each case is checked against the fp32 reference first; a case over tolerance
is reported failed and not timed. Throughput: ``gbps`` = bytes the impl must read / median
time (int4 impls: packed weights + scales (+ zeros) + x; "matmul": dense weights + x);
``tflops`` = 2 * M * in * out / median time. With ``steady_calls`` (GPU preset) each torch
row is also timed as that many calls back to back in one CUDA graph over distinct weights,
per call ("steady"), and each JAX row as the same calls in one jitted program, per call from
the difference with half as many (``Timer.steady_jax``: JAX's dispatch cancels).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from benchmarks.suites.common import GridSuite, Skip, rel_err, steady_copies, steady_record
from kernels.int4.spec import int4_bytes
from kernels.tolerances import BENCH_RTOL


@dataclass
class Int4BenchConfig:
    enabled: bool = True
    rows: list[int] = field(default_factory=lambda: [1, 16, 64])  # GPU: [1, 4, 16, 4096]
    shapes: list[list[int]] = field(default_factory=lambda: [[256, 128]])  # [in, out]; GPU: nano1's
    group_size: int = 128
    asymmetric: bool = False
    dtype: str = "float32"  # GPU: bfloat16 / float16
    torch_impls: list[str] = field(default_factory=lambda: ["triton", "matmul", "reference"])
    jax_impls: list[str] = field(default_factory=lambda: ["pallas", "matmul", "reference"])
    # torch rows as CUDA-graph replays (GPU preset): a decode-shape matmul runs for a few us,
    # less than launching the split-K kernel and its partial-sum reduction from Python
    cuda_graphs: bool = False
    # > 0 (GPU preset): each row also timed as that many calls back to back over distinct
    # weights (torch: one CUDA graph; JAX: one jitted program), per call ("steady": a decode
    # step's projections)
    steady_calls: int = 0


NANO1_SHAPES = [[2048, 2048], [2048, 9984], [9984, 2048]]  # for GPU presets (conf/bench)


@dataclass(frozen=True)
class Case:
    rows: int
    in_features: int
    out_features: int
    group_size: int
    asymmetric: bool
    dtype: str

    @property
    def id(self) -> str:
        kind = "decode" if self.rows <= 16 else "prefill"
        return (f"{kind} m{self.rows} {self.in_features}->{self.out_features} g{self.group_size}"
                f"{' asym' if self.asymmetric else ''}")

    def flops(self) -> float:
        return 2.0 * self.rows * self.in_features * self.out_features

    def bytes(self, impl: str) -> int:
        el = 4 if self.dtype == "float32" else 2
        if impl == "matmul":
            return el * (self.in_features * self.out_features + self.rows * self.in_features)
        return int4_bytes(self.rows, self.in_features, self.out_features, self.group_size,
                          asymmetric=self.asymmetric, x_bytes=el)


def cases(cfg) -> list[Case]:
    return [Case(m, int(k), int(n), cfg.group_size, cfg.asymmetric, cfg.dtype)
            for k, n in cfg.shapes for m in cfg.rows]


class Int4Suite(GridSuite):
    name = "int4"
    peers = {"torch": ("matmul",), "jax": ("matmul",)}

    def case_list(self) -> list:
        return cases(self.cfg)

    def _inputs(self, case: Case):
        import torch

        from kernels.int4.reference import dequantize_int4, quantize_int4

        if getattr(self, "_case", None) == case:
            return self._data
        dev = "cuda" if self.device.kind == "cuda" else "cpu"
        g = torch.Generator(device="cpu").manual_seed(self.seed + zlib.crc32(case.id.encode()))
        w = torch.randn(case.out_features, case.in_features, generator=g) * case.in_features**-0.5
        packed, scales, zeros = quantize_int4(w, case.group_size, asymmetric=case.asymmetric)
        x = torch.randn(case.rows, case.in_features, generator=g).to(getattr(torch, case.dtype))
        dense = dequantize_int4(packed, scales, zeros, case.group_size)  # fp32 [out, in]
        ref = (x.float() @ dense.T).numpy()
        data = tuple(None if t is None else t.to(dev) for t in (x, packed, scales, zeros))
        self._case, self._data = case, (*data, dense.to(dev, getattr(torch, case.dtype)), ref)
        return self._data

    def _torch_fn(self, impl, case):
        import torch

        from kernels import _platform, torch_ops

        if impl == "matmul":
            return (lambda x, p, s, z, w: torch.matmul(x, w.T)), "eager"
        blocks = None
        if impl == "triton-autotune":  # the fastest candidate_blocks, tuned on the first call
            impl, blocks = "triton", "autotune"
        if impl not in torch_ops.INT4_IMPLS:
            raise Skip(f"unknown torch impl {impl!r}")
        mode = ("interpret" if _platform.triton_interpreting() else "compiled") if impl == "triton" else "eager"
        return (lambda x, p, s, z, w: torch_ops.int4_matmul(x, p, s, z, case.group_size, impl=impl,
                                                            blocks=blocks)), mode

    def _jax_fn(self, impl, case):
        import jax
        import jax.numpy as jnp

        from kernels import _platform, jax_ops

        if impl == "matmul":
            return jax.jit(lambda x, p, s, z, w: jnp.matmul(x, w.T)), "xla"
        if impl not in jax_ops.INT4_IMPLS:
            raise Skip(f"unknown jax impl {impl!r}")
        mode = ("interpret" if _platform.pallas_interpret_default() else "compiled") if impl == "pallas" else "xla"
        fn = jax.jit(lambda x, p, s, z, w: jax_ops.int4_matmul(x, p, s, z, case.group_size, impl=impl))
        return fn, mode

    def _steady_calls(self, case: Case, impl: str) -> list:
        """The torch row's call over distinct copies of its weights (x shared: a decode step's
        activations are a few KB)."""
        x, packed, scales, zeros, dense, _ = self._inputs(case)
        fn, _ = self._torch_fn(impl, case)
        n = steady_copies(case.bytes(impl), self.cfg.steady_calls)
        clone = lambda t: None if t is None else t.clone()  # noqa: E731
        if impl == "matmul":
            sets = [(packed, scales, zeros, dense)] + [(packed, scales, zeros, dense.clone()) for _ in range(n - 1)]
        else:
            sets = [(packed, scales, zeros, dense)] + [(packed.clone(), scales.clone(), clone(zeros), dense)
                                                       for _ in range(n - 1)]
        return [lambda s=s: fn(x, *s) for s in sets]

    def _jax_steady(self, case: Case, impl: str):
        """(fn, argument tuples): the JAX row's call over distinct copies of the weights it
        reads (the packed codes and scales, or the dense matrix for ``matmul``)."""
        import jax.numpy as jnp

        fn, args = self._jax_args[(case, impl)]
        n = steady_copies(case.bytes(impl), self.cfg.steady_calls)
        copy = lambda a: None if a is None else jnp.array(a, copy=True)  # noqa: E731
        x, packed, scales, zeros, dense = args
        if impl == "matmul":
            sets = [args] + [(x, packed, scales, zeros, copy(dense)) for _ in range(n - 1)]
        else:
            sets = [args] + [(x, copy(packed), copy(scales), copy(zeros), dense) for _ in range(n - 1)]
        return fn, sets

    def check(self, case: Case, framework: str, impl: str):
        """Correctness first: (record, timed callable), or (failed record, None) over tolerance."""
        x, packed, scales, zeros, dense, ref = self._inputs(case)
        args = (x, packed, scales, zeros, dense)
        if framework == "torch":
            fn, mode = self._torch_fn(impl, case)
            got = fn(*args).float().cpu().numpy()
        else:
            import jax.numpy as jnp

            fn, mode = self._jax_fn(impl, case)
            to_jax = lambda t, dt: None if t is None else jnp.asarray(t.float().cpu().numpy()).astype(dt)  # noqa: E731
            args = (to_jax(x, case.dtype), jnp.asarray(packed.cpu().numpy()), to_jax(scales, "float16"),
                    to_jax(zeros, "float16"), to_jax(dense, case.dtype))
            got = np.asarray(fn(*args), np.float32)
            self._jax_args = {(case, impl): (fn, args)}  # the steady timing's inputs (this row only)
        err = rel_err(got, ref)
        tol = BENCH_RTOL[case.dtype]
        rec = {"max_error": err, "tolerance": tol, "mode": mode, "flops": case.flops(),
               "bytes": case.bytes(impl)}
        if not np.isfinite(err) or err > tol:
            return {**rec, "status": "failed"}, None
        return rec, (lambda: fn(*args))

    def run(self, case: Case, framework: str, impl: str) -> dict:
        rec, timed = self.check(case, framework, impl)
        if timed is None:
            return rec
        graphs = True if self.cfg.cuda_graphs else None  # None: the run's timer setting
        timer = self.timer_factory(framework, interpret=(rec["mode"] == "interpret"), cuda_graphs=graphs)
        t = timer(timed)
        out = {**rec, "status": "ok", "timing": t.to_dict(), "median_ms": t.median_s * 1e3,
               "tflops": case.flops() / t.median_s / 1e12, "gbps": rec["bytes"] / t.median_s / 1e9}
        if self.cfg.steady_calls and rec["mode"] != "interpret":
            if framework == "torch":
                out.update(steady_record(timer, self._steady_calls(case, impl), rec["bytes"]))
            else:
                fn, args = self._jax_steady(case, impl)
                out.update(steady_record(timer, args, rec["bytes"], jax_fn=fn))
        if impl == "triton-autotune":  # the pick and every candidate's time, for this class
            from kernels._autotune import summary
            from kernels.int4.triton_autotune import TUNING, problem_class

            x, packed, scales, zeros = self._inputs(case)[:4]
            key = problem_class(x.reshape(-1, x.shape[-1]), packed, scales, zeros, case.group_size)
            out["autotune"] = summary({key: TUNING[key]})
        return out
