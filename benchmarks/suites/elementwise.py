"""Memory-bound encoder kernels: rms_norm, layer_norm, rope, gated_gelu; op x impl grid.

Throughput is GB/s of the HBM traffic a fused kernel cannot avoid (each op's ``*_bytes`` in
its spec), reported against the measured copy bandwidth. Peers: torch eager and
torch.compile of the reference on the PyTorch side, XLA (jitted jnp reference) on the JAX
side. Correctness first: every impl's output (and, for fwd+bwd, input gradients) against
the fp32 torch reference; over tolerance is reported failed and not timed. With
``steady_calls`` (GPU preset) each JAX row is also timed with its dispatch cancelled
("steady", ``Timer.steady_jax``); the torch rows are CUDA-graph replays already.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from benchmarks.suites.common import Skip, rel_err, steady_copies, steady_record
from kernels.tolerances import BENCH_RTOL

OPS = ("rms_norm", "layer_norm", "rope", "gated_gelu")
PEERS = {"torch": ("reference", "compiled"), "jax": ("xla",)}
ROPE_HEAD_DIM = 128


@dataclass
class ElementwiseBenchConfig:
    enabled: bool = True
    ops: list[str] = field(default_factory=lambda: list(OPS))
    shapes: list[list[int]] = field(default_factory=lambda: [[512, 1152], [256, 2048]])  # rows, hidden
    dtype: str = "float32"
    directions: list[str] = field(default_factory=lambda: ["fwd", "fwd+bwd"])
    torch_impls: list[str] = field(default_factory=lambda: ["triton", "reference"])
    jax_impls: list[str] = field(default_factory=lambda: ["pallas", "xla"])
    # torch rows as CUDA-graph replays (GPU preset): a norm over 16k x 2k rows runs for tens of
    # us, less than the Python launch path of any of the impls (triton, eager, torch.compile)
    cuda_graphs: bool = False
    # > 0 (GPU preset): each JAX row also timed as up to that many calls over distinct inputs
    # in one jitted program, per call from the difference with half as many ("steady",
    # ``Timer.steady_jax``): JAX's dispatch is as long as these kernels
    steady_calls: int = 0


@dataclass(frozen=True)
class Case:
    op: str
    rows: int
    hidden: int
    dtype: str
    direction: str

    @property
    def id(self) -> str:
        return f"{self.op} {self.rows}x{self.hidden} {self.dtype} {self.direction}"

    def bytes(self) -> int:
        from kernels.activations.spec import gelu_bytes
        from kernels.norms.spec import NormProblem, norm_bytes
        from kernels.rope.spec import RopeProblem, rope_bytes

        el = {"float32": 4, "float16": 2, "bfloat16": 2}[self.dtype]
        bwd = self.direction == "fwd+bwd"
        if self.op in ("rms_norm", "layer_norm"):
            p = NormProblem(self.rows, self.hidden, self.op == "rms_norm", 1e-6, 0.0, False)
            return norm_bytes(p, el) + (norm_bytes(p, el, backward=True) if bwd else 0)
        if self.op == "rope":
            p = RopeProblem(1, self.rows, self.hidden // ROPE_HEAD_DIM, ROPE_HEAD_DIM, 1, 1e4)
            return rope_bytes(p, el) * (2 if bwd else 1)
        n = self.rows * self.hidden
        return gelu_bytes(n, el, gated=True) + (gelu_bytes(n, el, gated=True, backward=True) if bwd else 0)


def _inputs(case: Case, rng: np.random.Generator) -> dict:
    """float32 numpy inputs; 'x'-like tensors are differentiated, the rest are held fixed."""
    r, h = case.rows, case.hidden
    normal = lambda *shape: rng.standard_normal(shape, dtype=np.float32)  # noqa: E731
    if case.op == "rms_norm":
        return dict(diff=[normal(r, h), 0.1 * normal(h)], fixed=[])
    if case.op == "layer_norm":
        return dict(diff=[normal(r, h), 1 + 0.1 * normal(h), 0.1 * normal(h)], fixed=[])
    if case.op == "rope":
        return dict(diff=[normal(1, r, h // ROPE_HEAD_DIM, ROPE_HEAD_DIM)],
                    fixed=[np.arange(r, dtype=np.int64)[None]])
    return dict(diff=[normal(r, h), normal(r, h)], fixed=[])


def _rel_err_torch(x, ref) -> float:
    """benchmarks.suites.common.rel_err on torch tensors, where they are (no host copy)."""
    import torch

    x, ref = x.detach().to(torch.float64), ref.detach().to(torch.float64)
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1.0))


def _call(ops, op: str, impl: str):
    """The op from ``ops`` (kernels.torch_ops or kernels.jax_ops) as f(*diff, *fixed)."""
    if op == "rms_norm":
        return lambda x, w: ops.rms_norm(x, w, gemma=True, impl=impl)
    if op == "layer_norm":
        return lambda x, w, b: ops.layer_norm(x, w, b, impl=impl)
    if op == "rope":
        return lambda x, pos: ops.rope(x, pos, impl=impl)
    return lambda g, u: ops.gated_gelu(g, u, impl=impl)


class ElementwiseSuite:
    name = "elementwise"
    peers = PEERS

    def __init__(self, cfg, device, timer_factory, seed: int = 0):
        self.cfg, self.device, self.timer_factory, self.seed = cfg, device, timer_factory, seed

    def entries(self):
        for op in self.cfg.ops:
            for rows, hidden in self.cfg.shapes:
                for direction in self.cfg.directions:
                    case = Case(op, rows, hidden, self.cfg.dtype, direction)
                    for impl in self.cfg.torch_impls:
                        yield case, "torch", impl
                    for impl in self.cfg.jax_impls:
                        yield case, "jax", impl

    def _dev(self) -> str:
        return "cuda" if self.device.kind == "cuda" else "cpu"

    def _data(self, case: Case):
        """(numpy inputs, numpy dY, device tensors, device fp32 reference) of the last case:
        drawn once, moved once, the reference computed on the bench device (seconds on the
        host for 16k x 4k rows, the bulk of a GPU run's time in this suite before)."""
        import torch

        if getattr(self, "_case", None) != case:
            self._case = None
            rng = np.random.default_rng(self.seed + zlib.crc32(case.id.encode()))
            data = _inputs(case, rng)
            dy = rng.standard_normal(data["diff"][0].shape, dtype=np.float32)
            dev = self._dev()
            tensors = dict(diff=[torch.from_numpy(x).to(dev) for x in data["diff"]],
                           fixed=[torch.from_numpy(x).to(dev) for x in data["fixed"]],
                           dy=torch.from_numpy(dy).to(dev))
            self._payload = (data, dy, tensors, self._reference(case, tensors))
            self._case = case
        return self._payload

    def _host_reference(self, ref) -> list:
        """The case's reference as numpy, copied from the device once for all JAX rows."""
        if getattr(self, "_host_ref_of", None) is not ref:
            self._host_ref_of, self._host_ref = ref, [r.cpu().numpy() for r in ref]
        return self._host_ref

    @staticmethod
    def _reference(case, tensors):
        """fp32 torch reference outputs (and input gradients for fwd+bwd), on the tensors' device."""
        import torch

        from kernels import torch_ops

        diff = [x.detach().float().requires_grad_() for x in tensors["diff"]]
        y = _call(torch_ops, case.op, "reference")(*diff, *tensors["fixed"])
        if case.direction == "fwd":
            return [y.detach()]
        grads = torch.autograd.grad(y, diff, tensors["dy"].float())
        return [y.detach(), *grads]

    def check(self, case: Case, framework: str, impl: str):
        data, dy, tensors, ref = self._data(case)
        if framework == "torch":
            fn, mode, got, timed = self._torch(case, impl, tensors)
            err = max(_rel_err_torch(g, r) for g, r in zip(got, ref))
        else:
            fn, mode, got, timed = self._jax(case, impl, data, dy)
            err = max(rel_err(g, r) for g, r in zip(got, self._host_reference(ref)))
        rec = {"max_error": err, "tolerance": BENCH_RTOL[case.dtype], "mode": mode, "bytes": case.bytes()}
        if not np.isfinite(err) or err > rec["tolerance"]:
            return {**rec, "status": "failed"}, None
        return rec, timed

    def run(self, case: Case, framework: str, impl: str) -> dict:
        rec, timed = self.check(case, framework, impl)
        if timed is None:
            return rec
        graphs = True if self.cfg.cuda_graphs else None  # None: the run's timer setting
        timer = self.timer_factory(framework, interpret=rec["mode"] == "interpret", cuda_graphs=graphs)
        t = timer(timed)
        out = {**rec, "status": "ok", "timing": t.to_dict(), "median_ms": t.median_s * 1e3,
               "gbps": case.bytes() / t.median_s / 1e9}
        if self.cfg.steady_calls and framework == "jax" and rec["mode"] != "interpret":
            import jax.numpy as jnp

            step, args = self._jax_steady
            n = steady_copies(case.bytes(), self.cfg.steady_calls)
            sets = [args] + [tuple(jnp.array(a, copy=True) for a in args) for _ in range(n - 1)]
            out.update(steady_record(timer, sets, case.bytes(), jax_fn=step))
        return out

    def _torch(self, case, impl, tensors):
        import torch

        from kernels import _platform, torch_ops

        if impl not in torch_ops.NORM_IMPLS:
            raise Skip(f"unknown torch impl {impl!r}")
        dt = getattr(torch, case.dtype)
        diff = [x.to(dt).requires_grad_() for x in tensors["diff"]]
        fixed = tensors["fixed"]
        dyt = tensors["dy"].to(dt)
        fn = _call(torch_ops, case.op, impl)
        mode = {"triton": "interpret" if _platform.triton_interpreting() else "compiled",
                "compiled": "torch.compile"}.get(impl, "eager")
        if case.direction == "fwd":
            def step():  # inference: no autograd graph, nothing saved for a backward
                with torch.no_grad():
                    return fn(*diff, *fixed)

            got = [step()]
        else:
            def step():
                y = fn(*diff, *fixed)
                return (y, *torch.autograd.grad(y, diff, dyt))

            got = list(step())
        return fn, mode, got, step

    def _jax(self, case, impl, data, dy):
        import jax
        import jax.numpy as jnp

        from kernels import _platform, jax_ops

        if impl not in jax_ops.NORM_IMPLS:
            raise Skip(f"unknown jax impl {impl!r}")
        diff = [jnp.asarray(x, case.dtype) for x in data["diff"]]
        fixed = [jnp.asarray(x, jnp.int32) for x in data["fixed"]]
        fn = _call(jax_ops, case.op, impl)
        mode = "interpret" if impl == "pallas" and _platform.pallas_interpret_default() else (
            "compiled" if impl == "pallas" else "xla")
        if case.direction == "fwd":
            step = jax.jit(lambda *d: fn(*d, *fixed))
            got = [step(*diff)]
        else:
            @jax.jit
            def step(*d):
                y, vjp = jax.vjp(lambda *dd: fn(*dd, *fixed), *d)
                return (y, *vjp(jnp.asarray(dy, y.dtype)))

            got = list(step(*diff))
        self._jax_steady = (step, tuple(diff))  # the steady timing's call and inputs (this row)
        return fn, mode, [np.asarray(g, np.float32) for g in got], lambda: step(*diff)
