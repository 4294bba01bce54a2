"""The PyTorch model's loss and backward make no host-to-device copy once warmed up, so a
train step can be captured as one CUDA graph (the model suite's "graph" rows: capture
refuses a copy from pageable host memory). Checked without a GPU on the meta device, with
a dispatch mode that reports every op reading a host tensor into a device result."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from model.config import PRESETS, KernelConfig
from model.torch_model import GeminiModel


class _HostReads(TorchDispatchMode):
    """Records ops that take a host (CPU) tensor of one element or more and return a meta one."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [a for a in tree_flatten((args, kwargs or {}))[0] if isinstance(a, torch.Tensor)]
        outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
        host = [a for a in ins if a.device.type == "cpu" and a.dim() > 0]
        if host and any(o.device.type == "meta" for o in outs):
            self.seen.append((str(func), [tuple(a.shape) for a in host]))
        return out


def _loss_and_backward(model, t, mask):
    loss = model.loss(t, t, mask, check_targets=False)
    loss.backward()


@pytest.mark.parametrize("preset", ["reference", "sdpa"])
def test_warm_train_step_reads_nothing_from_the_host(preset):
    with torch.device("meta"):
        model = GeminiModel(PRESETS["tiny"], KernelConfig(preset=preset), seed=None)
    t = torch.zeros((2, 16), dtype=torch.long, device="meta")
    mask = torch.ones((2, 16), dtype=torch.bool, device="meta")
    _loss_and_backward(model, t, mask)  # the first step may place its constant tables
    with _HostReads() as mode:
        _loss_and_backward(model, t, mask)
    assert mode.seen == []


def test_the_probe_sees_a_host_copy():
    """The check above can fail: a per-call host table (rope's old inv_freq copy) is seen."""
    x = torch.zeros(4, device="meta")
    with _HostReads() as mode:
        _ = x * torch.as_tensor([1.0, 2.0, 3.0, 4.0]).to("meta")
    assert mode.seen and "_to_copy" in mode.seen[0][0]


def test_rope_tables_are_placed_once():
    from kernels.rope import reference

    a = reference.inv_freq(64, 10000.0, "cpu", torch.float32)
    assert reference.inv_freq(64, 10000.0, torch.device("cpu"), torch.float32) is a
    assert reference.inv_freq(64, 500.0, "cpu", torch.float32) is not a
    assert torch.equal(a, torch.as_tensor(reference.inv_freq64(64, 10000.0)).float())
    with torch.inference_mode():  # a table first made in inference mode still serves autograd
        b = reference.inv_freq(32, 10000.0, "cpu", torch.float32)
    assert not b.is_inference()
