"""linear_cross_entropy (kernels/cross_entropy) vs a float64 reference, loss and gradients.

The Triton path (chunked logits, the row kernel in the interpreter, its gradient written in
place) in fp32 / fp16 / bf16 (no tl.dot in the kernel: the matmuls are torch's, so bf16 is
testable here); bound from conftest.assert_close. Odd sizes: vocab 301 (not a block
multiple), rows 1 and 21 with a partial last chunk, masked rows holding -100, softcap.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kernels import torch_ops
from kernels.cross_entropy import reference, triton_cross_entropy
from kernels.cross_entropy.triton_cross_entropy import CrossEntropyBlocks

from conftest import assert_close

WIDTH, VOCAB = 32, 301


def _data(rng, lead, vocab=VOCAB, width=WIDTH):
    x = torch.tensor(rng.standard_normal((*lead, width)))
    w = torch.tensor(rng.standard_normal((vocab, width)) / (width / 10) ** 0.5)
    t = torch.tensor(rng.integers(0, vocab, lead))
    m = torch.tensor(rng.random(lead) > 0.3)
    return x, w, torch.where(m, t, -100), m


def _run(fn, x, w, dtype, device="cpu"):
    xx, ww = (a.detach().to(device, dtype).clone().requires_grad_() for a in (x, w))
    loss = fn(xx, ww)
    (loss * 1.5).backward()  # a non-unit upstream gradient
    return [t.cpu() for t in (loss.detach(), xx.grad, ww.grad)]


@pytest.mark.parametrize("softcap", [None, 4.0], ids=["plain", "softcap"])
@pytest.mark.parametrize("lead,chunk", [((3, 7), 5), ((1, 1), 0), ((21,), 21)], ids=["3x7-chunk5", "one-row", "one-chunk"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_triton_matches_float64(rng, dtype, lead, chunk, softcap):
    x, w, t, m = _data(rng, lead)
    blocks = CrossEntropyBlocks(block_v=64, num_warps=4, chunk_rows=chunk)  # 5 column steps, the last partial
    kw = dict(mask=m, softcap=softcap)
    triton_cross_entropy.LAUNCHES.clear()
    got = _run(lambda a, b: triton_cross_entropy.linear_cross_entropy_triton(
        a.reshape(-1, WIDTH), b, torch.where(m, t, 0).reshape(-1), (m.float() / m.sum().clamp_min(1)).reshape(-1),
        softcap=softcap, blocks=blocks), x, w, dtype)
    n = m.numel()
    assert triton_cross_entropy.LAUNCHES == {"_ce_kernel": -(-n // (chunk or n))}
    ref = _run(lambda a, b: reference._linear_cross_entropy(a, b, t, **kw), x, w, torch.float64)
    base = _run(lambda a, b: reference._linear_cross_entropy(a, b, t, **kw, upcast=False), x, w, dtype)
    for name, g, r, b in zip(["loss", "dx", "dweight"], got, ref, base):
        assert g.dtype == (torch.float32 if name == "loss" else dtype)
        assert_close(g, r, b, dtype, name)


def test_public_api_matches_the_models_loss(rng):
    """triton == reference == model.losses.torch_masked_cross_entropy on full logits."""
    from model.losses import torch_masked_cross_entropy

    x, w, t, m = _data(rng, (2, 9))
    x, w = x.float(), w.float()
    want = torch_masked_cross_entropy(x @ w.T, t.clamp_min(0), m)  # it gathers every row's target
    for impl in ("triton", "reference"):
        got = torch_ops.linear_cross_entropy(x, w, t, mask=m, impl=impl)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    full = torch_masked_cross_entropy(x @ w.T, t.clamp_min(0), torch.ones_like(m), normalizer=7.0)
    torch.testing.assert_close(torch_ops.linear_cross_entropy(x, w, t.clamp_min(0), normalizer=7.0), full)


def test_autocast_runs_the_head_in_bf16_and_reaches_fp32_weights(rng, monkeypatch):
    """Under bf16 autocast the kernel gets bf16 x and weight (recorded at the autograd Function),
    and loss and dweight match float64 on the bf16-rounded inputs (input rounding is not kernel
    error) within the bf16 rule of conftest.assert_close; the fp32 weight gets an fp32 gradient."""
    x, w, t, m = _data(rng, (2, 5))
    x, w = x.float(), w.float().requires_grad_()
    seen, apply = [], triton_cross_entropy._LinearCrossEntropy.apply
    monkeypatch.setattr(triton_cross_entropy._LinearCrossEntropy, "apply",
                        lambda xx, ww, *a: seen.append((xx.dtype, ww.dtype)) or apply(xx, ww, *a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch_ops.linear_cross_entropy(x, w, t, mask=m)
    (loss * 1.5).backward()  # _run's upstream gradient
    assert seen == [(torch.bfloat16, torch.bfloat16)], f"kernel inputs {seen}, want bf16 x and weight"
    assert w.grad.dtype == torch.float32
    xb, wb = x.bfloat16(), w.detach().bfloat16()
    ref = _run(lambda a, b: reference._linear_cross_entropy(a, b, t, m), xb, wb, torch.float64)
    base = _run(lambda a, b: reference._linear_cross_entropy(a, b, t, m, upcast=False), xb, wb, torch.bfloat16)
    assert_close(loss.detach(), ref[0], base[0], torch.bfloat16, "loss")
    assert_close(w.grad, ref[2], base[2], torch.bfloat16, "dweight")


def test_bad_input_is_refused_before_launch(rng):
    x, w, t, m = _data(rng, (2, 3))
    x, w = x.float(), w.float()
    cases = [
        (dict(weight=w[:, :-1]), ValueError, "weight must be"),
        (dict(weight=w.half()), TypeError, "weight dtype"),
        (dict(targets=t.float()), TypeError, "targets must be an integer"),
        (dict(targets=t[:1]), ValueError, "targets must have"),
        (dict(mask=m.int()), TypeError, "mask must be a bool"),
        (dict(softcap=0.0), ValueError, "softcap"),
        (dict(normalizer=-1.0), ValueError, "normalizer"),
        (dict(targets=torch.where(m, VOCAB, t)), ValueError, r"targets must lie in \[0, vocab=301\)"),
        (dict(impl="liger"), ValueError, "impl"),
    ]
    args = dict(x=x, weight=w, targets=t, mask=m)
    for change, err, match in cases:
        kw = {**args, **change}
        with pytest.raises(err, match=match):
            torch_ops.linear_cross_entropy(kw.pop("x"), kw.pop("weight"), kw.pop("targets"), **kw)
    with pytest.raises(ValueError, match="chunk_rows"):
        CrossEntropyBlocks(chunk_rows=-1)
    # a 0-d tensor normalizer: as a number (JAX takes a 0-d array the same way), checked on the host
    for impl in ("triton", "reference"):
        want = torch_ops.linear_cross_entropy(x, w, t, mask=m, normalizer=3.0, impl=impl)
        for n in (torch.tensor(3.0), torch.tensor(3)):
            torch.testing.assert_close(torch_ops.linear_cross_entropy(x, w, t, mask=m, normalizer=n, impl=impl),
                                       want)
    for bad, err, match in ((torch.tensor(0.0), ValueError, "normalizer must be > 0, got 0.0"),
                            (torch.tensor(-2.0), ValueError, "normalizer must be > 0, got -2.0"),
                            (torch.tensor(float("nan")), ValueError, "normalizer must be finite"),
                            (torch.ones(1), ValueError, r"normalizer must be a number or a 0-d array, got shape"),
                            (torch.tensor(True), TypeError, "normalizer must have an integer or floating"),
                            (torch.tensor(3.0, device="meta"), ValueError, "normalizer must be on x's device cpu"),
                            (np.float32(3.0), TypeError, "normalizer must be a number or a 0-d array of x's")):
        with pytest.raises(err, match=match):
            torch_ops.linear_cross_entropy(x, w, t, mask=m, normalizer=bad)
    # check_targets=False (a step captured as a CUDA graph): no host read, the same loss
    checked = torch_ops.linear_cross_entropy(x, w, t, mask=m, impl="reference")
    unchecked = torch_ops.linear_cross_entropy(x, w, t, mask=m, impl="reference", check_targets=False)
    assert torch.equal(checked, unchecked)
