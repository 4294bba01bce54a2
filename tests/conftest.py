"""Shared test settings: the one tolerance table, and reference comparisons.

Accuracy rule (FlashAttention's): a kernel's max error against a float64 reference
is at most 2x the error of the framework doing the same math in the same precision,
plus a small floor per dtype (scaled by the reference's magnitude) so exact-ish
fp32 paths don't fail on rounding noise.
"""
from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch and JAX share a GPU


def _fast_xla_compiles() -> None:
    """Without a GPU: XLA:CPU at LLVM optimization level 0 (tests only). The tests compile
    hundreds of small programs (a fresh jit per case, interpret-mode Pallas kernels) and run
    each once or twice on tiny shapes, so compile time dominates: level 0 takes about a third
    off the JAX tests' CPU time. IEEE arithmetic either way (XLA:CPU has no fast-math by
    default); the multi-device subprocesses inherit it. A user's XLA_FLAGS that sets the
    level wins; on a GPU machine (the GPU test stage) nothing changes."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" in flags:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()


_fast_xla_compiles()

import numpy as np
import pytest

from kernels.tolerances import ATOL_FLOOR, ERROR_RATIO, dtype_name  # noqa: F401  (one table)


def to_numpy64(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def max_err(x, ref) -> float:
    return float(np.max(np.abs(to_numpy64(x) - to_numpy64(ref)), initial=0.0))


def assert_close(out, ref64, baseline, dtype, what="output"):
    """Assert ``out`` is within ERROR_RATIO x the same-precision baseline's error of ref64."""
    ref = to_numpy64(ref64)
    out64 = to_numpy64(out)
    assert out64.shape == ref.shape, f"{what}: shape {out64.shape} != reference {ref.shape}"
    assert np.all(np.isfinite(out64)), f"{what}: non-finite values"
    err = max_err(out64, ref)
    base = max_err(baseline, ref)
    floor = ATOL_FLOOR[dtype_name(dtype)] * max(1.0, float(np.max(np.abs(ref), initial=0.0)))
    bound = ERROR_RATIO * base + floor
    assert err <= bound, (
        f"{what}: max error {err:.3e} > bound {bound:.3e} "
        f"(framework same-precision error {base:.3e}, floor {floor:.3e}, dtype {dtype_name(dtype)})"
    )
    return err


def refused(fn, fragment):
    """``fn()`` raises a ValueError whose message holds ``fragment`` (for the subprocess scripts
    of the multi-device tests, which import it from here)."""
    try:
        fn()
    except ValueError as e:
        assert fragment in str(e), (fragment, str(e))
        return
    raise AssertionError(f"no ValueError, expected {fragment!r}")


def run_two_device_script(script: str) -> None:
    """Run a multi-device check script in a fresh Python (XLA_FLAGS must be set before JAX
    starts) from the repository root; it prints DEVICE CHECKS OK when every check held."""
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=240, cwd=root, env=env)
    assert proc.returncode == 0 and "DEVICE CHECKS OK" in proc.stdout, proc.stderr[-3000:]


@pytest.fixture
def rng():
    """Fresh random data each run; the seed is printed on failure through the test id log."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed {seed}")
    return np.random.default_rng(seed)


def attention_inputs(rng, b, sq, skv, h, kvh, d):
    """Float64 numpy q, k, v and an output cotangent dO, standard normal."""
    q = rng.standard_normal((b, sq, h, d))
    k = rng.standard_normal((b, skv, kvh, d))
    v = rng.standard_normal((b, skv, kvh, d))
    do = rng.standard_normal((b, sq, h, d))
    return q, k, v, do


def torch_attention_vjp(fn, q, k, v, do, dtype, **kwargs):
    """Run a torch attention ``fn`` on numpy inputs cast to ``dtype``; return (o, dq, dk, dv).

    Inputs are cast to ``dtype`` first, so a float64 run on ``dtype``-rounded values is the
    ground truth for a ``dtype`` run (input rounding is not counted as kernel error).
    """
    import torch

    ts = [torch.tensor(x).to(dtype).requires_grad_() for x in (q, k, v)]
    o = fn(*ts, **kwargs)
    o.backward(torch.tensor(do).to(o.device, o.dtype))  # o may be on the GPU
    return (o.detach(), *(t.grad for t in ts))


def rounded(x, dtype):
    """numpy float64 array rounded through a torch dtype."""
    import torch

    return torch.tensor(x).to(dtype).double().numpy()


def breadth_first(items):
    """Each test function's first case, then each one's second, ...: a GPU test stage stopped
    at its time budget (``make bench-gpu``) has then run every function at least once, rather
    than every case of the first files. Deterministic, so pytest-xdist workers agree."""
    groups: dict = {}
    for item in items:
        groups.setdefault((item.nodeid.split("::")[0], getattr(item, "originalname", item.name)), []).append(item)
    rounds = max((len(g) for g in groups.values()), default=0)
    return [g[r] for r in range(rounds) for g in groups.values() if r < len(g)]


def _record_collected(nodeids) -> None:
    """``KERNELS_GPU_TESTS_COLLECTED=PATH``: the collected test ids, one per line (written
    atomically), for ``benchmarks.goals --collected`` to count the tests a stopped run never reached."""
    path = os.environ.get("KERNELS_GPU_TESTS_COLLECTED")
    if not path:
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write("".join(f"{i}\n" for i in nodeids))
    os.replace(tmp, path)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """The controller's copy of a worker's collection (all workers collect the same ids)."""
    _record_collected(ids)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        items[:] = breadth_first(items)
        if not hasattr(config, "workerinput"):  # no xdist (under xdist the controller records)
            _record_collected([i.nodeid for i in items])
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (runs in `make bench-gpu` on the device machines)")
    for item in items:  # a module may opt in to a CPU self-check (tests/test_kernels_gpu.py)
        if "gpu" in item.keywords and not getattr(item.module, "GPU_TESTS_ON_CPU", False):
            item.add_marker(skip)
