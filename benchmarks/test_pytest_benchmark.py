"""The attention grid (the attention suite only) as a pytest-benchmark suite:

    [BENCH_PRESET=gpu] pytest benchmarks/ --benchmark-json=out.json

The BENCH_PRESET environment variable names the conf/bench preset (default cpu). Each
(case, impl) is checked against the reference first (a failure fails the test with its
error); then pytest-benchmark times it, with TFLOP/s, GB/s, the error and the mode in
``extra_info``. Interpret-mode kernels run one round (their time is the interpreter's).
"""
from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import pytest  # noqa: E402

from benchmarks import config as bench_config  # noqa: E402
from benchmarks.hardware import detect_device  # noqa: E402
from benchmarks.suites.attention import AttentionSuite  # noqa: E402
from benchmarks.suites.common import Skip  # noqa: E402
from benchmarks.timing import _block  # noqa: E402

PRESET = os.environ.get("BENCH_PRESET", "cpu")


def _suite():
    from hydra import compose, initialize_config_dir

    bench_config.register()
    conf_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
    with initialize_config_dir(config_dir=conf_dir, version_base=None):
        cfg = compose(config_name="benchmark", overrides=[f"bench={PRESET}"])
    return AttentionSuite(cfg.bench.attention, detect_device(), timer_factory=None, seed=cfg.seed)


SUITE = _suite()
ENTRIES = list(SUITE.entries())


@pytest.mark.parametrize("entry", ENTRIES, ids=[f"{c.id} {fw}:{impl}" for c, fw, impl in ENTRIES])
def test_attention(benchmark, entry):
    case, framework, impl = entry
    try:
        rec, timed = SUITE.check(case, framework, impl)
    except Skip as e:
        pytest.skip(str(e))
    assert timed is not None, f"max error {rec['max_error']:.3e} > tolerance {rec['tolerance']}"
    cuda = SUITE.device.kind == "cuda"

    def call():
        out = _block(timed())
        if cuda:
            import torch

            torch.cuda.synchronize()
        return out

    if rec["mode"] == "interpret":
        benchmark.pedantic(call, rounds=1, iterations=1)
    else:
        benchmark.pedantic(call, rounds=10, iterations=1, warmup_rounds=2)
    t = benchmark.stats.stats.median
    benchmark.extra_info.update(
        mode=rec["mode"], max_error=rec["max_error"], flops=rec["flops"], bytes=rec["bytes"],
        tflops=rec["flops"] / t / 1e12, gbps=rec["bytes"] / t / 1e9, device=SUITE.device.name)
