"""model.quantize: the checkpoint CLI (names, layout, metadata, atomic write, refusals), the
quantized tiny model in PyTorch and JAX (logits KL to the float model, reported), and nano1's
quantized size from the specs."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model import quantize as mq
from model.config import PRESETS, KernelConfig, param_specs

CFG = PRESETS["tiny"]
# nats per position, for the randomly initialized tiny model (LeCun init, logits of std ~1):
# int4 g128 perturbs each weight by ~11 % rms of its scale, measured KL 1.0e-2 (JAX asym) to
# 1.6e-2 (torch sym); a wrong scale, code or zero point gives KL of order 1 or more.
KL_BOUND = 5e-2


@pytest.fixture(scope="module")
def float_model():
    from model.torch_model import GeminiModel

    m = GeminiModel(CFG, KernelConfig("reference"))
    m.init_weights(0)
    return m.eval()


@pytest.fixture(scope="module")
def float_ckpt(tmp_path_factory, float_model):
    path = tmp_path_factory.mktemp("q") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in float_model.state_dict().items()}, str(path),
              metadata={"config": json.dumps(CFG.to_dict())})
    return path


@pytest.mark.parametrize("asym,int8_embed", [(False, False), (True, True)], ids=["sym", "asym-int8embed"])
def test_cli_writes_quantized_checkpoint(tmp_path, float_ckpt, asym, int8_embed, capsys):
    out = tmp_path / "tiny-int4.safetensors"
    mq.main([str(float_ckpt), str(out), "--group-size", "64"] + ["--asymmetric"] * asym
            + ["--int8-embed"] * int8_embed)
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp file left behind
    with safe_open(str(out), framework="pt") as f:
        meta, names = f.metadata(), set(f.keys())
        q = json.loads(meta[mq.QUANT_KEY])
        assert q["group_size"] == 64 and q["scheme"] == ("asymmetric" if asym else "symmetric")
        assert json.loads(meta["config"])["name"] == "tiny"
        for name, (shape, _) in param_specs(CFG).items():
            if name == mq.EMBED and int8_embed:
                assert f.get_tensor(name + ".qweight").dtype == torch.int8
                assert f.get_tensor(name + ".scales").shape == (shape[0],)
            elif mq.is_quantized_name(name):
                qw, s = f.get_tensor(name + ".qweight"), f.get_tensor(name + ".scales")
                assert qw.dtype == torch.uint8 and qw.shape == (shape[0], shape[1] // 2)
                assert s.dtype == torch.float16 and s.shape == (shape[1] // 64, shape[0])
                assert (name + ".zeros" in names) == asym
            else:
                assert f.get_tensor(name).shape == shape
    weights, qmeta = mq.load_quantized(out, impl="reference")
    w = weights["model.layers.0.mlp.down_proj.weight"]
    assert isinstance(w, mq.QuantizedWeight) and w.shape == param_specs(CFG)["model.layers.0.mlp.down_proj.weight"][0]
    # a quantized file refused by the float path, naming what it is
    with pytest.raises(ValueError, match="is a quantized checkpoint"):
        mq.check_not_quantized(meta, out)
    with pytest.raises(ValueError, match="is a quantized checkpoint"):
        mq.quantize_checkpoint(out, tmp_path / "again.safetensors")
    with pytest.raises(ValueError, match="not a quantized checkpoint"):
        mq.load_quantized(float_ckpt)
    with pytest.raises(ValueError, match="group_size=256 must divide the input dimension in=128"):
        mq.quantize_checkpoint(float_ckpt, tmp_path / "bad.safetensors", group_size=256)


def test_torch_quantized_model_kl(float_model):
    tokens = torch.randint(0, CFG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = float_model(tokens)
        qm = mq.quantize_torch_model(copy.deepcopy(float_model), 128, impl="reference")
        kl = mq.logits_kl(ref, qm(tokens))
        kl32 = mq.logits_kl(ref, mq.quantize_torch_model(copy.deepcopy(float_model), 32, impl="reference")(tokens))
    print(f"tiny int4 symmetric: logits KL to float = {kl:.3e} (g128), {kl32:.3e} (g32) nats/position")
    assert 0 < kl32 < kl < KL_BOUND  # finer groups, smaller error
    assert "model.layers.0.self_attn.q_proj.weight.qweight" in qm.state_dict()


def test_torch_linear_dispatch_runs_triton(float_model):
    from kernels.int4.triton_int4 import LAUNCHES
    from model.torch_layers import linear

    w = float_model.state_dict()["model.layers.1.mlp.up_proj.weight"]
    qw = mq.QuantizedWeight.quantize(w, 64, asymmetric=True, impl="triton")
    x = torch.randn(3, CFG.width)
    before = LAUNCHES["_int4_matmul_kernel"]
    y = linear(x, qw)
    assert LAUNCHES["_int4_matmul_kernel"] == before + 1
    torch.testing.assert_close(y, x @ qw.dequantize().T, rtol=1e-4, atol=1e-4)


def test_jax_quantized_model_kl(float_model):
    import functools

    import jax
    import jax.numpy as jnp

    from model.jax_model import forward as forward_eager

    forward = jax.jit(functools.partial(forward_eager, cfg=CFG, kernels=KernelConfig("reference")))
    params = {k: jnp.asarray(v.numpy()) for k, v in float_model.state_dict().items()}
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, CFG.vocab_size, (2, 12)))
    ref = forward(params, tokens)
    qparams = mq.quantize_jax_params(params, 128, asymmetric=True, impl="reference")
    assert isinstance(qparams["model.layers.0.mlp.gate_proj.weight"], mq.QuantizedWeightJax)
    got = forward(qparams, tokens)
    kl = mq.logits_kl(torch.tensor(np.asarray(ref)), torch.tensor(np.asarray(got)))
    print(f"tiny int4 g128 asymmetric (JAX): logits KL to float = {kl:.3e} nats/position")
    assert 0 < kl < KL_BOUND


def test_nano1_quantized_size_under_1gb():
    nano1 = PRESETS["nano1"]
    size = mq.quantized_size_bytes(nano1, 128)
    print(f"nano1 int4 g128 (int4 embedding): {size / 1e9:.3f} GB; "
          f"int8 embedding {mq.quantized_size_bytes(nano1, 128, embed='int8') / 1e9:.3f} GB")
    assert size <= 1.0e9
    assert mq.info_memory_format(nano1) == size
    # the count from specs equals the bytes the quantizer writes for the tiny model
    state = {n: torch.zeros(shape) for n, (shape, _) in param_specs(CFG).items()}
    tensors = mq.quantize_state_dict({k: v.half() for k, v in state.items()}, group_size=64, asymmetric=True)
    assert sum(t.numel() * t.element_size() for t in tensors.values()) == \
        mq.quantized_size_bytes(CFG, 64, asymmetric=True)


def test_quant_eval_reports_accuracy_and_kl(tmp_path):
    """model.quant_eval: float vs int4 held-out retrieval accuracy and logits KL on one checkpoint."""
    import json

    from model.checkpoint import save_checkpoint
    from model.config import PRESETS
    from model.quant_eval import run
    from model.torch_model import GeminiModel

    model = GeminiModel(PRESETS["tiny"])
    model.init_weights(3)
    ckpt = tmp_path / "model.safetensors"
    save_checkpoint(str(ckpt), model, PRESETS["tiny"])
    results = tmp_path / "train.json"
    results.write_text(json.dumps({"config": {
        "seed": 0, "batch_size": 4,
        "data": {"kind": "retrieval", "retrieval": {"pairs": 4, "key_len": 1, "value_len": 1,
                                                    "queries": 2, "seq_len": 24}}}}))
    res = run(str(results), str(ckpt), group_size=32, batches=2)
    assert res["float"]["answers"] == res["int4"]["answers"] == 2 * 4 * 2
    assert abs(res["accuracy_drop_points"]) <= 100 / 16  # at most one answer of 16 flips
    assert 0 <= res["logits_kl_nats"] < KL_BOUND
    assert res["quantized_weight_bytes"] > 0 and res["quantization"]["group_size"] == 32


def test_quantized_checkpoint_generates_in_both_frameworks(tmp_path):
    """python -m model.quantize's file loads into both models; greedy generation through
    model.generate agrees between them and with dequantized float weights."""
    from model.checkpoint import save_checkpoint
    from model.config import PRESETS, KernelConfig
    from model.generate import generate
    from model.quantize import load_quantized_jax, load_quantized_torch, main as quantize_main
    from model.torch_model import GeminiModel

    cfg = PRESETS["tiny"]
    model = GeminiModel(cfg)
    model.init_weights(5)
    src, dst = tmp_path / "f.safetensors", tmp_path / "q.safetensors"
    save_checkpoint(str(src), model, cfg)
    quantize_main([str(src), str(dst), "--group-size", "32"])
    prompts = ["ab", "hello"]
    tq = load_quantized_torch(str(dst), KernelConfig(preset="reference"), impl="reference")
    out_t = generate(tq, prompts, max_new_tokens=4, framework="torch")
    params, qcfg = load_quantized_jax(str(dst), impl="reference")
    out_j = generate(params, prompts, max_new_tokens=4, framework="jax", cfg=qcfg, kernels="reference")
    assert out_t.tokens == out_j.tokens and all(len(t) == 4 for t in out_t.tokens)
    # the same tokens as the float model whose weights are the dequantized int4 values
    deq = GeminiModel(cfg)
    with torch.no_grad():
        for name, p in deq.named_parameters():
            w = dict(tq.named_modules())[name.rsplit(".", 1)[0]].weight
            p.copy_(w.dequantize() if hasattr(w, "dequantize") else w)
    assert generate(deq, prompts, max_new_tokens=4, framework="torch").tokens == out_t.tokens
    # the CLI takes the int4 file as it is: the same tokens, through the reference and the
    # Triton kernel with autotuned tiles (interpreted here), and in JAX
    from model.generate import main as generate_main

    base = [f"ckpt={dst}", "prompt=ab", "prompt=hello", "max_new_tokens=4"]
    assert generate_main(base).tokens == out_t.tokens
    assert generate_main(base + ["kernels=triton", "int4_blocks=autotune"]).tokens == out_t.tokens
    assert generate_main(base + ["framework=jax"]).tokens == out_t.tokens
    with pytest.raises(ValueError, match="int4_blocks='autotune' tunes torch's Triton int4 kernel"):
        generate_main(base + ["int4_blocks=autotune"])
    with pytest.raises(ValueError, match="is not an int4 checkpoint"):
        generate_main([f"ckpt={src}", "prompt=ab", "kernels=triton", "int4_blocks=autotune"])
