"""model.quantize: the checkpoint CLI (names, layout, metadata, atomic write, refusals), the
quantized tiny model in PyTorch and JAX (logits KL to the float model, reported), nano1's
quantized size from the specs, and the loaded file: embedding kept packed (logits equal to the
dequantized float model's, resident bytes = quantized_size_bytes, both frameworks), malformed
tensors refused by name, the format name (old files still load), bf16 scales."""
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


def test_logits_kl_is_kl_of_the_reference_to_the_quantized():
    """logits_kl(ref, q) = sum p log(p / q) with p the reference's softmax: the reverse direction
    (KL(q || p)) differs on these distributions (0.676 vs 0.635 nats)."""
    p, q = np.array([0.7, 0.2, 0.1]), np.array([0.2, 0.3, 0.5])
    got = mq.logits_kl(torch.tensor(np.log(p))[None], torch.tensor(np.log(q))[None])
    assert got == pytest.approx(float((p * np.log(p / q)).sum()), rel=1e-9)


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


# model.quant_eval on a trained model (accuracy within 2 points, KL): tests/test_train.py's
# test_retrieval_accuracy_short_budget, which trains one


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


# --- the loaded model: packed embedding, resident bytes, checks, format, scale dtype -------

EMBED_FORMATS = {  # id -> CLI flags
    "int4-sym-fp16": ["--group-size", "32"],
    "int8embed-asym-fp16": ["--group-size", "32", "--asymmetric", "--int8-embed"],
    "int4-asym-bf16": ["--group-size", "64", "--asymmetric", "--scale-dtype", "bfloat16"],
}


def _quantized_file(tmp_path, float_ckpt, flags, name="q.safetensors"):
    out = tmp_path / name
    mq.main([str(float_ckpt), str(out), *flags])
    with safe_open(str(out), framework="pt") as f:
        return out, {n: f.get_tensor(n) for n in f.keys()}, dict(f.metadata())


def _dequantized_model(tq):
    """A float32 GeminiModel whose weights are tq's dequantized values (the model has no
    float64 path: its norm kernels take fp16/bf16/fp32)."""
    from model.torch_model import GeminiModel

    deq, mods = GeminiModel(CFG, KernelConfig("reference"), seed=None), dict(tq.named_modules())
    with torch.no_grad():
        for name, p in deq.named_parameters():
            w = mods[name.rsplit(".", 1)[0]].weight
            p.data = w.float() if isinstance(w, torch.Tensor) else w.dequantize(torch.float32)
    return deq.eval()


def _assert_logits_close(got, ref, what):
    """Same math in the same precision (fp32): within the fp32 floor of kernels/tolerances.py."""
    from kernels.tolerances import ATOL_FLOOR

    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    err, floor = np.abs(got - ref).max(), ATOL_FLOOR["float32"] * max(1.0, np.abs(ref).max())
    assert got.shape == ref.shape and err <= floor, f"{what}: max error {err:.3e} > {floor:.3e}"


@pytest.mark.parametrize("fmt", list(EMBED_FORMATS))
def test_loaded_model_keeps_the_embedding_packed(tmp_path, float_ckpt, fmt):
    """load_quantized_torch / load_quantized_jax hold exactly ``quantized_size_bytes`` (what
    model.info prints): the embedding stays packed, its lookup dequantizes the tokens' rows and
    the tied head runs on the packed table; the logits are those of the float model whose
    weights are the dequantized values (within the
    fp32 floor), in PyTorch and JAX."""
    import functools

    import jax
    import jax.numpy as jnp

    from model.jax_model import forward as jax_forward

    out, tensors, meta = _quantized_file(tmp_path, float_ckpt, EMBED_FORMATS[fmt])
    q = json.loads(meta[mq.QUANT_KEY])
    want = mq.quantized_size_bytes(CFG, q["group_size"], asymmetric=q["scheme"] == "asymmetric",
                                   embed=q["embed"], float_bytes=4)  # norms loaded in float32
    tq = mq.load_quantized_torch(str(out), KernelConfig("reference"), impl="reference")
    table = tq.model.embed_tokens.weight
    assert isinstance(table, mq.QuantizedEmbedding) and table.fmt == q["embed"]
    assert sum(t.numel() * t.element_size() for t in [*tq.parameters(), *tq.buffers()]) == want
    # bf16 norms (model.info's row): 2 bytes a norm weight, the packed tensors unchanged
    bf = mq.load_quantized_torch(str(out), KernelConfig("reference"), impl="reference", dtype=torch.bfloat16)
    held_bf = sum(t.numel() * t.element_size() for t in [*bf.parameters(), *bf.buffers()])
    assert held_bf == mq.quantized_size_bytes(CFG, q["group_size"], asymmetric=q["scheme"] == "asymmetric",
                                              embed=q["embed"], float_bytes=2)
    tokens = torch.randint(0, CFG.vocab_size, (2, 9), generator=torch.Generator().manual_seed(4))
    deq = _dequantized_model(tq)
    with torch.no_grad():
        got, ref = tq(tokens), deq(tokens)
    _assert_logits_close(got, ref, f"torch {fmt}")
    params, cfg = mq.load_quantized_jax(str(out), impl="reference")
    assert isinstance(params[mq.EMBED], mq.QuantizedEmbeddingJax)
    assert sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(params)) == want
    params_bf, _ = mq.load_quantized_jax(str(out), impl="reference", dtype=jnp.bfloat16)
    assert sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(params_bf)) == held_bf
    fparams = {n: jnp.asarray(p.detach().numpy()) for n, p in deq.named_parameters()}
    fwd = jax.jit(functools.partial(jax_forward, cfg=cfg, kernels=KernelConfig("reference")))
    got_j, ref_j = fwd(params, jnp.asarray(tokens.numpy())), fwd(fparams, jnp.asarray(tokens.numpy()))
    _assert_logits_close(got_j, ref_j, f"jax {fmt}")
    if fmt == "int4-sym-fp16":  # the int4 head through the model's linear is one Triton int4_matmul launch
        from kernels.int4.triton_int4 import LAUNCHES
        from model.torch_layers import linear

        head = mq.QuantizedEmbedding(table.qweight, table.scales, table.zeros, table.group_size, "int4",
                                     impl="triton")
        x = torch.randn(3, CFG.width, generator=torch.Generator().manual_seed(5))
        before = LAUNCHES["_int4_matmul_kernel"]
        y = linear(x, head)
        assert LAUNCHES["_int4_matmul_kernel"] == before + 1
        _assert_logits_close(y, x @ table.dequantize().T, "triton int4 head")


def test_cli_bf16_scales_round_trip(tmp_path, float_ckpt, float_model):
    """--scale-dtype bfloat16: every scale and zero is bf16, the codes are the round-to-nearest
    ones for the bf16 scales (int4 and the int8 embedding); the file loads and int4_matmul
    (Triton, fp32 x) reads the bf16 scales."""
    from kernels import torch_ops
    from kernels.int4.reference import quantize_int4

    out, tensors, meta = _quantized_file(tmp_path, float_ckpt, ["--group-size", "32", "--asymmetric",
                                                                "--scale-dtype", "bfloat16", "--int8-embed"])
    assert json.loads(meta[mq.QUANT_KEY])["scale_dtype"] == "bfloat16"
    state = float_model.state_dict()
    name = "model.layers.1.self_attn.o_proj.weight"
    qw, s, z = quantize_int4(state[name], 32, asymmetric=True, scale_dtype=torch.bfloat16)
    assert torch.equal(tensors[name + ".qweight"], qw) and torch.equal(tensors[name + ".scales"], s)
    assert torch.equal(tensors[name + ".zeros"], z) and s.dtype == z.dtype == torch.bfloat16
    emb, es = state[mq.EMBED], tensors[mq.EMBED + ".scales"]
    assert es.dtype == torch.bfloat16 and es.shape == (CFG.vocab_size,)
    assert torch.equal(tensors[mq.EMBED + ".qweight"],
                       torch.round(emb / es.float()[:, None]).clamp(-127, 127).to(torch.int8))
    tq = mq.load_quantized_torch(str(out), KernelConfig("reference"), impl="reference")
    w = tq.model.layers[1].self_attn.o_proj.weight
    x = torch.randn(5, w.shape[1], generator=torch.Generator().manual_seed(6))
    y = torch_ops.int4_matmul(x, w.qweight, w.scales, w.zeros, 32, impl="triton")
    torch.testing.assert_close(y, x @ w.dequantize().T, rtol=1e-4, atol=1e-4)
    with pytest.raises(SystemExit):  # argparse: only the two kernel scale dtypes
        mq.main([str(float_ckpt), str(tmp_path / "x.safetensors"), "--scale-dtype", "float32"])
    with pytest.raises(ValueError, match="scale_dtype must be one of"):
        mq.quantize_checkpoint(float_ckpt, tmp_path / "x.safetensors", scale_dtype="float32")


def test_cli_names_a_missing_or_truncated_checkpoint(tmp_path, capsys):
    """A bad input file is "error: <path> ..." with exit status 2, not a safetensors traceback."""
    src = tmp_path / "t.safetensors"
    save_file({"w": torch.zeros(4, 8)}, str(src))
    src.write_bytes(src.read_bytes()[:-16])  # truncated
    missing = tmp_path / "missing.safetensors"
    for path, cause in ((src, "corrupt or truncated"), (missing, "not found"), (tmp_path, "is a directory")):
        with pytest.raises(SystemExit) as e:
            mq.main([str(path), str(tmp_path / "out.safetensors")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and str(path) in err and cause in err, err
        with pytest.raises((ValueError, OSError), match=cause):  # the readers name it too
            mq.load_quantized(path)
    assert not (tmp_path / "out.safetensors").exists()


DOWN = "model.layers.0.mlp.down_proj.weight"  # [128, 512]: qweight [128, 256], scales [16, 128] at g32
BAD_FILES = {  # id -> (edit of (tensors, quantization record), error pattern after the file name)
    "short-qweight": (lambda t, q: t.update({DOWN + ".qweight": t[DOWN + ".qweight"][:, :-1].contiguous()}),
                      rf"tensor '{DOWN}.qweight' must be torch.uint8 \[128, 256\].*got torch.uint8 \[128, 255\]"),
    "int16-qweight": (lambda t, q: t.update({DOWN + ".qweight": t[DOWN + ".qweight"].to(torch.int16)}),
                      rf"tensor '{DOWN}.qweight' must be torch.uint8 \[128, 256\].*got torch.int16"),
    "missing-scales": (lambda t, q: t.pop(DOWN + ".scales"), rf"no tensor '{DOWN}.scales'"),
    "missing-zeros": (lambda t, q: t.pop(DOWN + ".zeros"), rf"no tensor '{DOWN}.zeros'"),
    "bf16-scales-recorded-fp16": (lambda t, q: t.update({DOWN + ".scales": t[DOWN + ".scales"].bfloat16()}),
                                  rf"tensor '{DOWN}.scales' must be torch.float16 \[16, 128\].*got torch.bfloat16"),
    "group-size-mismatch": (lambda t, q: q.update(group_size=64),
                            r"tensor 'model.embed_tokens.weight.scales' must be torch.float16 \[2, 512\]"
                            r".*got torch.float16 \[4, 512\]"),
    "group-size-too-large": (lambda t, q: q.update(group_size=256),
                             r"metadata group_size 256 does not fit 'model.embed_tokens.weight' \[512, 128\]"),
    "norm-shape": (lambda t, q: t.update({"model.norm.weight": t["model.norm.weight"][:-1].contiguous()}),
                   r"tensor 'model.norm.weight' must be a float \[128\], got torch.float32 \[127\]"),
    "extra-tensor": (lambda t, q: t.update({DOWN + ".extra": torch.zeros(2)}),
                     rf"tensor '{DOWN}.extra' is not expected"),
    "unknown-format": (lambda t, q: q.update(format="gemini-int3-v9"), r"unknown quantized format \(gemini-int3-v9"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_malformed_quantized_checkpoint_refused_naming_tensor_and_file(tmp_path, float_ckpt, case):
    import re

    from safetensors.torch import save_file as save

    _, tensors, meta = _quantized_file(tmp_path, float_ckpt, ["--group-size", "32", "--asymmetric"])
    edit, pattern = BAD_FILES[case]
    q = json.loads(meta[mq.QUANT_KEY])
    edit(tensors, q)
    bad = tmp_path / f"bad-{case}.safetensors"
    save(tensors, str(bad), metadata={**meta, mq.QUANT_KEY: json.dumps(q)})
    for load in (lambda: mq.load_quantized_torch(str(bad), KernelConfig("reference"), impl="reference"),
                 lambda: mq.load_quantized_jax(str(bad), impl="reference")):
        with pytest.raises(ValueError, match=re.escape(str(bad)) + ": " + pattern):
            load()


def test_format_name_and_old_files(tmp_path, float_ckpt):
    """New files say format "gemini-int4-v1" and their method; files of the old name
    "gemini-int4-rtn-v1" (no method: round-to-nearest; GPTQ ones said "method": "gptq") still
    load; the float loader's refusal prints format and method."""
    from safetensors.torch import save_file as save

    out, tensors, meta = _quantized_file(tmp_path, float_ckpt, ["--group-size", "32"])
    q = json.loads(meta[mq.QUANT_KEY])
    assert (q["format"], q["method"], q["scale_dtype"]) == ("gemini-int4-v1", "rtn", "float16")
    with pytest.raises(ValueError, match=r"quantized checkpoint \(gemini-int4-v1, method rtn, group_size 32"):
        mq.check_not_quantized(meta, out)
    tokens = torch.randint(0, CFG.vocab_size, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = mq.load_quantized_torch(str(out), KernelConfig("reference"), impl="reference")(tokens)
    for old in ({"format": "gemini-int4-rtn-v1"}, {"format": "gemini-int4-rtn-v1", "method": "gptq"}):
        oq = {k: v for k, v in q.items() if k not in ("method", "scale_dtype")} | old
        path = tmp_path / f"old-{old.get('method', 'rtn')}.safetensors"
        save(tensors, str(path), metadata={**meta, mq.QUANT_KEY: json.dumps(oq)})
        with torch.no_grad():
            got = mq.load_quantized_torch(str(path), KernelConfig("reference"), impl="reference")(tokens)
        assert torch.equal(got, ref)
        method = old.get("method", "rtn")
        with pytest.raises(ValueError, match=rf"\(gemini-int4-rtn-v1, method {method}, group_size 32"):
            mq.check_not_quantized({mq.QUANT_KEY: json.dumps(oq)}, path)


def test_quantized_models_refuse_the_loss(tmp_path):
    """A loaded int4 model is for forward / generate: its loss is refused by name in both
    frameworks (the packed table is not a dense one for the cross-entropy kernel)."""
    import jax.numpy as jnp

    from model import jax_model
    from model.checkpoint import save_checkpoint
    from model.config import KernelConfig, ModelConfig
    from model.quantize import load_quantized_jax, load_quantized_torch, quantize_checkpoint
    from model.torch_model import GeminiModel

    cfg = ModelConfig(name="q", vocab_size=288, width=32, layers=1, heads=2, kv_heads=1, head_dim=16,
                      mlp_dim=64, max_seq_len=16)
    src, dst = tmp_path / "f.safetensors", tmp_path / "q.safetensors"
    save_checkpoint(src, {k: v.detach() for k, v in GeminiModel(cfg, seed=0).state_dict().items()}, cfg)
    quantize_checkpoint(src, dst, group_size=16)
    tokens = torch.tensor([[1, 2, 3, 4]])
    with pytest.raises(TypeError, match="quantized models run forward / generate only"):
        load_quantized_torch(dst, KernelConfig("reference"), impl="reference").loss(tokens[:, :-1], tokens[:, 1:])
    params, qcfg = load_quantized_jax(dst, impl="reference")
    with pytest.raises(TypeError, match="quantized models run forward / generate only"):
        jax_model.loss(params, jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:]), cfg=qcfg)
