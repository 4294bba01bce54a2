"""The multi-process entry point (sharding/launch.py) as the README launches it, on CPU.

JAX: two processes (``jax.distributed.initialize`` on 127.0.0.1, two simulated CPU devices
each, gloo collectives) run fsdp+tp over the 4 global devices; their losses must equal one
process running the same global batch unsharded. PyTorch: ``torchrun --standalone
--nproc-per-node 2`` runs tensor parallelism over gloo; its first loss must equal the
unsharded model's on the same batch. Both must train (loss falls over the steps).
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP = re.compile(r"^step (\d+): loss ([\d.]+)", re.M)
ARGS = ["model=tiny", "steps=3", "seq_len=16", "seed=7"]


def _port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(text):
    return [float(v) for _, v in STEP.findall(text)]


def test_jax_two_processes_match_one():
    port, env = _port(), {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    procs = [subprocess.Popen([sys.executable, "-m", "sharding.launch", "framework=jax", "strategy=fsdp_tp",
                               "batch_per_device=2", *ARGS, "distributed=true",
                               f"coordinator=127.0.0.1:{port}", "num_processes=2", f"process_id={i}"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"rc {p.returncode}\n{out}\n{err[-3000:]}"
    assert "4 devices, 2 processes" in outs[0][0], outs[0][0]
    sharded = _losses(outs[0][0])

    from sharding.launch import main  # one process, this process's devices, global batch 4

    import jax

    n = len(jax.devices())
    if 4 % n:
        pytest.skip(f"{n} local devices do not split the global batch of 4")
    plain = main(["framework=jax", "strategy=dp", f"batch_per_device={4 // n}", *ARGS])["losses"]
    assert len(sharded) == 3 and np.allclose(sharded, plain, rtol=1e-5, atol=1e-5), (sharded, plain)
    assert sharded[2] < sharded[1] < sharded[0], sharded


def test_torchrun_tensor_parallel_matches_unsharded():
    import torch

    from model.config import PRESETS, KernelConfig
    from model.torch_model import GeminiModel

    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "sharding.launch",
                           "framework=torch", "strategy=tp", "batch_per_device=2", *ARGS],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    losses = _losses(proc.stdout)
    cfg = PRESETS["tiny"]
    model = GeminiModel(cfg, KernelConfig("reference"))
    model.init_weights(7)
    g = torch.Generator().manual_seed(7)
    tokens, targets = (torch.randint(0, cfg.vocab_size, (2, 16), generator=g) for _ in range(2))
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(model(tokens).reshape(-1, cfg.vocab_size), targets.reshape(-1))
    assert len(losses) == 3 and abs(losses[0] - float(ref)) <= 1e-4, (losses, float(ref))
    assert losses[2] < losses[1] < losses[0], losses


def test_options_refuse_a_preset_of_the_other_framework():
    """kernels=<preset> is checked against the framework before any process group or device."""
    from sharding.launch import _options

    with pytest.raises(ValueError, match=re.escape("kernels='pallas' is a JAX preset; framework=torch takes "
                                                   "the presets ['reference', 'sdpa', 'triton']")):
        _options(["framework=torch", "kernels=pallas"])
    with pytest.raises(ValueError, match=re.escape("kernels='triton' is a PyTorch preset; framework=jax")):
        _options(["kernels=triton"])
    with pytest.raises(ValueError, match="kernels must be a preset name"):
        _options(["kernels.attention=xla"])
    assert _options(["framework=torch", "kernels=triton"]).kernels == "triton"
