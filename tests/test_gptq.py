"""model.gptq: GPTQ beats round-to-nearest on correlated inputs, equals it where the math says
so (diagonal H; the first group's scales and first column), writes the RTN layout that the
loaders and int4_matmul read, and refuses bad arguments by name."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kernels.int4.reference import dequantize_int4, int4_matmul_reference, quantize_int4, unpack_int4
from model import quantize as mq
from model.gptq import gptq_quantize, output_error

OUT, IN = 48, 256
SCHEMES = pytest.mark.parametrize("asym", [False, True], ids=["sym", "asym"])


def correlated_inputs(rows: int, seed: int) -> torch.Tensor:
    """x [rows, IN] = z @ A + noise: strongly correlated input features (fixed A, fresh z)."""
    mix = torch.randn(IN, IN, generator=torch.Generator().manual_seed(0)) / IN ** 0.5
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, IN, generator=g) @ mix + 0.1 * torch.randn(rows, IN, generator=g)


def hessian(x: torch.Tensor) -> torch.Tensor:
    return 2.0 * x.double().T @ x.double() / x.shape[0]


@pytest.fixture(scope="module")
def weight():
    return torch.randn(OUT, IN, generator=torch.Generator().manual_seed(1))


def same(a, b) -> bool:
    return all((x is None and y is None) or torch.equal(x, y) for x, y in zip(a, b))


@SCHEMES
@pytest.mark.parametrize("group", [32, IN], ids=["g32", "per-channel"])
def test_gptq_output_error_below_rtn(weight, asym, group):
    h = hessian(correlated_inputs(2048, seed=2))
    held_out = correlated_inputs(1024, seed=3)  # the same distribution, not the calibration rows
    errs = {}
    for name, q in (("rtn", quantize_int4(weight, group, asymmetric=asym)),
                    ("gptq", gptq_quantize(weight, h, group, asymmetric=asym))):
        w_hat = dequantize_int4(*q, group, dtype=torch.float64)
        errs[name] = float(torch.linalg.norm(held_out.double() @ (weight.double() - w_hat).T))
    print(f"held-out ||X W^T - X W_hat^T||: {errs}")
    assert errs["gptq"] < 0.85 * errs["rtn"]  # measured 0.73-0.74x (squared: ~0.54x)


@SCHEMES
@pytest.mark.parametrize("group", [32, IN], ids=["g32", "per-channel"])
def test_diagonal_hessian_is_rtn(weight, asym, group):
    """No input correlation: H^-1's Cholesky factor is diagonal, nothing is compensated."""
    h = torch.diag(torch.rand(IN, generator=torch.Generator().manual_seed(4)).double() + 0.5)
    assert same(gptq_quantize(weight, h, group, asymmetric=asym), quantize_int4(weight, group, asymmetric=asym))


@SCHEMES
def test_first_group_scales_and_first_column_are_rtn(weight, asym):
    """Column 0 is quantized before any update: its group's scales / zeros and its codes are RTN's."""
    gq = gptq_quantize(weight, hessian(correlated_inputs(512, seed=5)), 32, asymmetric=asym)
    rq = quantize_int4(weight, 32, asymmetric=asym)
    torch.testing.assert_close(gq[1][0], rq[1][0], rtol=0, atol=0)
    if asym:
        torch.testing.assert_close(gq[2][0], rq[2][0], rtol=0, atol=0)
    assert torch.equal(unpack_int4(gq[0])[:, 0], unpack_int4(rq[0])[:, 0])
    assert not same(gq, rq)  # and the compensation did change later columns


def test_dead_columns_and_blocks(weight):
    """Inputs that are always 0 get weight 0; the lazy block size changes nothing but rounding."""
    x = correlated_inputs(512, seed=6)
    x[:, [3, 100]] = 0.0
    h = hessian(x)
    q = gptq_quantize(weight, h, 64, percdamp=0.0)
    w_hat = dequantize_int4(*q, 64)
    assert torch.all(w_hat[:, [3, 100]] == 0) and torch.isfinite(w_hat).all()
    small = dequantize_int4(*gptq_quantize(weight, h, 64, percdamp=0.0, blocksize=16), 64)
    assert (small != w_hat).float().mean() < 0.01
    e_small, e = output_error(weight, small, h), output_error(weight, w_hat, h)
    assert abs(e_small - e) < 1e-3 * e


def test_bad_arguments(weight, tmp_path):
    h = torch.eye(IN)
    with pytest.raises(ValueError, match=r"hessian must be \[in, in\] = \[256, 256\]"):
        gptq_quantize(weight, torch.eye(IN - 1), 32)
    with pytest.raises(ValueError, match="blocksize=48 and group_size=32 must divide one another"):
        gptq_quantize(weight, h, 32, blocksize=48)
    with pytest.raises(ValueError, match="group_size=512 must divide the input dimension"):
        gptq_quantize(weight, h, 512)
    with pytest.raises(ValueError, match="not positive definite after dampening"):
        gptq_quantize(weight, -h, 32)
    src = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({"model.layers.0.mlp.up_proj.weight": weight.contiguous()}, str(src))
    with pytest.raises(ValueError, match="method must be one of .*'awq'"):
        mq.quantize_checkpoint(src, tmp_path / "o.safetensors", method="awq")
    with pytest.raises(ValueError, match="calib_batches must be an int >= 1, got 0"):
        mq.quantize_checkpoint(src, tmp_path / "o.safetensors", method="gptq", calib_batches=0)
    with pytest.raises(ValueError, match="needs its config in the metadata"):
        mq.quantize_checkpoint(src, tmp_path / "o.safetensors", method="gptq")
    for argv, msg in ((["--method", "awq"], "invalid choice: 'awq'"),
                      (["--method", "gptq", "--calib-batches", "0"], "--calib-batches must be >= 1, got 0")):
        with pytest.raises(SystemExit):
            mq.main([str(src), str(tmp_path / "o.safetensors"), *argv])


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A random tiny checkpoint with a training-results-like file beside it (data, seed, batch)."""
    from model.checkpoint import save_checkpoint
    from model.config import PRESETS
    from model.torch_model import GeminiModel

    d = tmp_path_factory.mktemp("gptq")
    model = GeminiModel(PRESETS["tiny"])
    model.init_weights(7)
    save_checkpoint(str(d / "model.safetensors"), model, PRESETS["tiny"])
    (d / "state.json").write_text(json.dumps({"config": {
        "seed": 0, "batch_size": 4,
        "data": {"kind": "retrieval", "retrieval": {"pairs": 4, "key_len": 1, "value_len": 1,
                                                    "queries": 2, "seq_len": 24}}}}))
    return d


@pytest.mark.parametrize("asym", [False, True], ids=["sym", "asym"])
def test_gptq_checkpoint_loads_and_runs(tiny_ckpt, tmp_path, asym, capsys):
    """--method gptq writes the RTN layout: same names, shapes and dtypes, RTN embedding; it
    loads through load_quantized_torch / load_quantized_jax and int4_matmul_reference."""
    from safetensors import safe_open

    from model.config import KernelConfig
    from model.jax_model import forward as jax_forward

    src, rtn, gptq = tiny_ckpt / "model.safetensors", tmp_path / "rtn.safetensors", tmp_path / "gptq.safetensors"
    flags = ["--group-size", "64"] + ["--asymmetric"] * asym
    mq.main([str(src), str(rtn), *flags])
    mq.main([str(src), str(gptq), *flags, "--method", "gptq", "--calib-batches", "2"])
    assert "wrote" in capsys.readouterr().out
    with safe_open(str(rtn), framework="pt") as r, safe_open(str(gptq), framework="pt") as g:
        assert set(r.keys()) == set(g.keys())
        q = json.loads(g.metadata()[mq.QUANT_KEY])
        assert q["method"] == "gptq" and q["calibration"]["batches"] == 2 and q["calibration"]["batch_size"] == 4
        assert q["format"] == json.loads(r.metadata()[mq.QUANT_KEY])["format"] == mq.FORMAT == "gemini-int4-v1"
        assert q["calibration"]["act_order"] is False and json.loads(r.metadata()[mq.QUANT_KEY])["method"] == "rtn"
        err = q["calibration"]["mean_layer_output_error"]
        assert err["gptq"] < err["rtn"]
        for n in r.keys():
            a, b = r.get_tensor(n), g.get_tensor(n)
            assert (a.shape, a.dtype) == (b.shape, b.dtype), n
            if n.startswith(mq.EMBED) or not n.endswith(mq.SUFFIXES):
                assert torch.equal(a, b), n  # embedding (RTN) and norms unchanged
        down = "model.layers.1.mlp.down_proj.weight.qweight"
        assert not torch.equal(r.get_tensor(down), g.get_tensor(down))  # calibration changed codes

    tm = mq.load_quantized_torch(str(gptq), KernelConfig("reference"), impl="reference")
    w = tm.model.layers[0].self_attn.q_proj.weight
    x = torch.randn(3, w.shape[1], generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(int4_matmul_reference(x, w.qweight, w.scales, w.zeros, 64), w.linear(x))
    tokens = torch.randint(0, tm.cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(9))
    params, cfg = mq.load_quantized_jax(str(gptq), impl="reference")
    with torch.no_grad():
        ref = tm(tokens)
    got = jax_forward(params, np.asarray(tokens), cfg=cfg, kernels=KernelConfig("reference"))
    np.testing.assert_allclose(np.asarray(got), ref.numpy(), rtol=1e-4, atol=1e-4)


def test_quant_eval_compare(tiny_ckpt):
    from model.config import ModelConfig
    from model.quant_eval import compare

    res = compare(str(tiny_ckpt / "state.json"), str(tiny_ckpt / "model.safetensors"), group_size=32,
                  batches=2, calib_batches=2)
    rtn, gptq = res["methods"]["rtn"], res["methods"]["gptq"]
    assert rtn["int4"]["answers"] == gptq["int4"]["answers"] == res["float"]["answers"] == 2 * 4 * 2
    # what the CLI writes: its metadata, an int4 embedding, the file's bytes = quantized_size_bytes
    assert gptq["quantization"]["method"] == "gptq" and rtn["quantization"]["method"] == "rtn"
    assert gptq["quantization"]["format"] == mq.FORMAT and gptq["quantization"]["embed"] == res["embed"] == "int4"
    err = gptq["quantization"]["calibration"]["mean_layer_output_error"]
    assert err["gptq"] < err["rtn"]
    cfg = ModelConfig(**res["model"])
    assert res["quantized_weight_bytes"] == res["resident_weight_bytes"] == \
        mq.quantized_size_bytes(cfg, 32, embed="int4", float_bytes=4)
    assert res["gptq_vs_rtn"]["logits_kl_ratio"] == gptq["logits_kl_nats"] / rtn["logits_kl_nats"]
