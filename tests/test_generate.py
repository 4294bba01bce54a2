"""Tokenizer, sampling and generation (model/tokenizer.py, model/sampling.py, model/generate.py).

Generation: greedy decoding through the KV cache (prefill, then one token per step on the
model's decode path) equals greedy decoding that recomputes the whole sequence each step,
token for token, for a batch of prompts of different lengths, in PyTorch and JAX. Sampling:
a seed reproduces a run and different seeds differ; top_k=1 and a tiny top_p are greedy;
the exponential-race draw follows softmax (frequency test); stop tokens end rows one by one.
"""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from model import tokenizer as tk
from model.sampling import SamplingConfig, filter_logits_jax, filter_logits_torch, sample_jax, sample_torch

TEXTS = ["", "hello", "héllo wörld 🙂 \x00\n\t", "a" * 300]


# --- tokenizer ---

@pytest.mark.parametrize("text", TEXTS, ids=["empty", "ascii", "unicode", "long"])
def test_byte_tokenizer_round_trip(text):
    t = tk.ByteTokenizer()
    ids = t.encode(text, bos=True, eos=True)
    assert ids[0] == tk.BOS_ID and ids[-1] == tk.EOS_ID
    assert ids[1:-1] == list(text.encode("utf-8"))
    assert t.decode(ids) == text
    assert tk.decode(np.asarray(ids)) == text == tk.decode(torch.tensor(ids))
    assert t.decode(ids, skip_special=False) == "<bos>" + text + "<eos>"


def test_special_ids_layout():
    ids = list(tk.SPECIAL_IDS.values())
    assert len(set(ids)) == len(ids)
    assert all(tk.BYTE_VOCAB <= i < tk.VOCAB_MIN for i in ids)
    assert tk.ByteTokenizer.vocab_size == tk.VOCAB_MIN
    span = tk.multimodal_span("image", 3)
    assert span == [tk.IMAGE_START_ID] + [tk.MEDIA_PLACEHOLDER_ID] * 3 + [tk.IMAGE_END_ID]
    assert tk.decode(span + list(b"ok")) == "ok"


def test_tokenizer_bad_input():
    t = tk.ByteTokenizer()
    with pytest.raises(ValueError, match=r"token id 272 at position 1 is out of range \[0, 272\)"):
        t.decode([65, 272])
    with pytest.raises(ValueError, match=r"token id -1 at position 0"):
        tk.decode([-1])
    with pytest.raises(TypeError, match="text must be str or bytes, got int"):
        t.encode(3)
    with pytest.raises(ValueError, match="kind must be one of"):
        tk.multimodal_span("smell", 2)


def _tiny_tokenizer_json(folder):
    """A small byte-level BPE trained here and saved as ``folder/tokenizer.json``."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 8, trainer)
    tok.save(str(folder / "tokenizer.json"))


def test_hf_tokenizer_json(tmp_path):
    assert isinstance(tk.load_tokenizer(str(tmp_path)), tk.ByteTokenizer)  # no tokenizer.json
    _tiny_tokenizer_json(tmp_path)
    t = tk.load_tokenizer(str(tmp_path / "model.safetensors"))  # the checkpoint file's folder
    assert isinstance(t, tk.HFTokenizer)
    assert (t.pad_id, t.eos_id, t.bos_id) == (0, 1, 2)
    assert len(t.encode("the quick brown fox")) < len("the quick brown fox")  # merges apply
    for text in TEXTS:
        ids = t.encode(text, bos=True, eos=True)
        assert ids[0] == t.bos_id and ids[-1] == t.eos_id
        assert t.decode(ids) == text
    with pytest.raises(ValueError, match=rf"token id {t.vocab_size} at position 0 is out of range"):
        t.decode([t.vocab_size])


# --- sampling ---

def test_sampling_config_bad_input():
    for bad, msg in [(dict(temperature=-1.0), "temperature must be"), (dict(top_k=0), "top_k must be"),
                     (dict(top_p=0.0), "top_p must be"), (dict(top_p=1.5), "top_p must be"),
                     (dict(temperature=float("nan")), "temperature must be")]:
        with pytest.raises(ValueError, match=msg):
            SamplingConfig(**bad)
    with pytest.raises(ValueError, match=r"unknown sampling option\(s\) \['top_q'\]; known options"):
        SamplingConfig.from_options(temperature=1.0, top_q=0.5)
    with pytest.raises(ValueError, match="top_k 600 exceeds the vocabulary size 512"):
        SamplingConfig(temperature=1.0, top_k=600).check_vocab(512)


def _draw_torch(logits, cfg, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return sample_torch(logits.expand(n, -1), cfg, g).numpy()


def _draw_jax(logits, cfg, n, seed=0):
    import jax
    import jax.numpy as jnp

    return np.asarray(sample_jax(jnp.broadcast_to(jnp.asarray(logits.numpy()), (n, logits.shape[-1])),
                                 cfg, jax.random.key(seed)))


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_sampling_follows_softmax(framework):
    """Frequencies of 40k draws at temperature 0.7 vs softmax(logits / 0.7), within 5 sigma;
    top_k / top_p draws stay in their support and follow the renormalised distribution."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    draw = _draw_torch if framework == "torch" else _draw_jax
    n = 40000
    for cfg, keep in [(SamplingConfig(temperature=0.7), 6), (SamplingConfig(temperature=0.7, top_k=3), 3),
                      (SamplingConfig(temperature=0.7, top_p=0.8), None)]:
        p = torch.softmax(logits[0] / 0.7, -1).double().numpy()
        if keep is None:  # smallest prefix with mass >= 0.8
            keep = int(np.searchsorted(np.cumsum(p), 0.8) + 1)
        p[keep:] = 0
        p /= p.sum()
        counts = np.bincount(draw(logits, cfg, n), minlength=6)
        assert counts[keep:].sum() == 0, f"{cfg}: drew outside the top {keep}: {counts}"
        sigma = np.sqrt(n * p * (1 - p)) + 1
        assert np.all(np.abs(counts - n * p) <= 5 * sigma), f"{cfg}: counts {counts} vs expected {n * p}"


def test_filters_agree_across_frameworks(rng):
    import jax.numpy as jnp

    logits = torch.tensor(rng.standard_normal((4, 97)) * 3, dtype=torch.float32)
    for cfg in [SamplingConfig(temperature=0.9, top_k=5), SamplingConfig(temperature=1.3, top_p=0.7),
                SamplingConfig(temperature=1.0, top_k=20, top_p=0.5)]:
        a = filter_logits_torch(logits, cfg).numpy()
        b = np.asarray(filter_logits_jax(jnp.asarray(logits.numpy()), cfg))
        np.testing.assert_array_equal(np.isinf(a), np.isinf(b))
        np.testing.assert_allclose(a[np.isfinite(a)], b[np.isfinite(b)], rtol=1e-6)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_top_k_1_and_tiny_top_p_are_greedy(framework, rng):
    logits = torch.tensor(rng.standard_normal((64, 300)), dtype=torch.float32)
    greedy = logits.argmax(-1).numpy()
    for cfg in [SamplingConfig(temperature=1.5, top_k=1), SamplingConfig(temperature=1.5, top_p=1e-6)]:
        for seed in range(3):
            if framework == "torch":
                got = sample_torch(logits, cfg, torch.Generator().manual_seed(seed)).numpy()
            else:
                import jax
                import jax.numpy as jnp

                got = np.asarray(sample_jax(jnp.asarray(logits.numpy()), cfg, jax.random.key(seed)))
            np.testing.assert_array_equal(got, greedy)


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_top_p_boundary_keeps_the_smallest_prefix_reaching_it(framework):
    """HF TopPLogitsWarper's convention: probabilities [.5, .25, .25] (exact in fp32) and
    top_p=.5 keep only the first token, whose mass already reaches top_p. A strict ``>`` would
    keep a second token too."""
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]], np.float32))
    cfg = SamplingConfig(temperature=1.0, top_p=0.5)
    if framework == "torch":
        out = filter_logits_torch(torch.from_numpy(logits), cfg).numpy()
    else:
        import jax.numpy as jnp

        out = np.asarray(filter_logits_jax(jnp.asarray(logits), cfg))
    np.testing.assert_array_equal(np.isfinite(out), [[True, False, False], [False, True, False]])


# --- generation ---

from model.config import KernelConfig, ModelConfig  # noqa: E402
from model.generate import generate, parse_args  # noqa: E402

CFG = ModelConfig(name="gen_test", vocab_size=300, width=64, layers=2, heads=4, kv_heads=1, head_dim=16,
                  mlp_dim=128, max_seq_len=48)
PROMPTS = [[tk.BOS_ID, 10, 20, 30, 40, 50, 60], [tk.BOS_ID], [tk.BOS_ID, 1, 2, 3, 4]]  # lengths 7, 1, 5
NEW = 8


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny shapes: intra-op threads only contend (seconds per step on a loaded 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def torch_model():
    """A small model with weights large enough that attention and the MLP move the argmax
    (at the usual 0.02 init, greedy just repeats the last token and proves nothing). Seed 2:
    the greedy top-1 / top-2 logit gap is >= 0.48 at every step, far above rounding noise."""
    from model.torch_model import GeminiModel

    model = GeminiModel(CFG).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif "embed" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 6 / p.shape[1] ** 0.5)
    return model


@pytest.fixture(scope="module")
def jax_params(torch_model):
    import jax.numpy as jnp

    return {k: jnp.asarray(v.numpy()) for k, v in torch_model.state_dict().items()}


def _gen(framework, torch_model, jax_params, prompts=PROMPTS, **kw):
    kw.setdefault("max_new_tokens", NEW)
    if framework == "torch":
        return generate(torch_model, prompts, **kw)
    return generate(jax_params, prompts, framework="jax", cfg=CFG, **kw)


@pytest.fixture(scope="module")
def greedy(torch_model, jax_params):
    """Greedy tokens with the cache, per framework (computed once, reused by several tests)."""
    return {fw: _gen(fw, torch_model, jax_params).tokens for fw in ("torch", "jax")}


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_greedy_cache_equals_recompute(framework, torch_model, jax_params, greedy):
    cached = greedy[framework]
    recomputed = _gen(framework, torch_model, jax_params, use_cache=False).tokens
    assert cached == recomputed
    assert [len(t) for t in cached] == [NEW] * len(PROMPTS)
    assert len({tok for row in cached for tok in row}) > NEW, f"degenerate greedy output {cached}"


def test_greedy_same_across_frameworks_and_batching(torch_model, greedy):
    assert greedy["torch"] == greedy["jax"]
    for prompt, row in zip(PROMPTS, greedy["torch"]):  # padding in the batch changes nothing
        assert generate(torch_model, [prompt], max_new_tokens=NEW).tokens == [row]


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_sampling_seeded(framework, torch_model, jax_params, greedy):
    opts = dict(temperature=1.0, top_k=50, top_p=0.95)
    a = _gen(framework, torch_model, jax_params, seed=0, **opts).tokens
    assert _gen(framework, torch_model, jax_params, seed=0, **opts).tokens == a
    assert _gen(framework, torch_model, jax_params, seed=1, **opts).tokens != a
    assert a != greedy[framework]
    for opts in (dict(temperature=1.0, top_k=1), dict(temperature=2.0, top_p=1e-6)):
        assert _gen(framework, torch_model, jax_params, seed=3, **opts).tokens == greedy[framework]


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_stop_tokens_end_rows_independently(framework, torch_model, jax_params, greedy):
    full = greedy[framework]
    stop = full[0][2]  # row 0 stops after 3 tokens; the others where (if) they meet it
    out = _gen(framework, torch_model, jax_params, stop_tokens=(stop,))
    for row, got in zip(full, out.tokens):
        want = row[:row.index(stop) + 1] if stop in row else row
        assert got == want
    assert out.finish_reasons[0] == "stop"
    assert [r == "stop" for r in out.finish_reasons] == [stop in row for row in full]
    assert any(r == "length" for r in out.finish_reasons), "pick a stop id some row never meets"


def test_text_prompts_and_texts(torch_model):
    out = generate(torch_model, ["hi", "hello there"], max_new_tokens=4)
    assert all(t < tk.VOCAB_MIN for row in out.tokens for t in row)  # padding ids never drawn
    assert out.texts == [tk.decode(row) for row in out.tokens]
    want = generate(torch_model, [tk.encode("hi", bos=True), tk.encode("hello there", bos=True)],
                    max_new_tokens=4).tokens
    assert out.tokens == want


def test_generate_bad_input(torch_model, jax_params):
    long = [1] * 45
    with pytest.raises(ValueError, match=r"prompt 1 has 45 tokens; with max_new_tokens=8 that is 53 > "
                                         r"the model's context max_seq_len=48"):
        generate(torch_model, [[1, 2], long], max_new_tokens=8)
    with pytest.raises(ValueError, match=r"prompt 0: token id 300 at position 1 is out of range \[0, 300\)"):
        generate(torch_model, [[1, 300]], max_new_tokens=2)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        generate(torch_model, [[]], max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1, got 0"):
        generate(torch_model, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="top_k 400 exceeds the vocabulary size 272"):
        generate(torch_model, PROMPTS, max_new_tokens=2, temperature=1.0, top_k=400)
    with pytest.raises(ValueError, match="top_p must be None or a number in"):
        generate(torch_model, PROMPTS, max_new_tokens=2, temperature=1.0, top_p=2.0)
    with pytest.raises(ValueError, match="stop_tokens: token id 999"):
        generate(torch_model, PROMPTS, max_new_tokens=2, stop_tokens=(999,))
    with pytest.raises(ValueError, match="framework must be one of"):
        generate(torch_model, PROMPTS, max_new_tokens=2, framework="tf")
    with pytest.raises(ValueError, match="kernels .* differ from the model's"):
        generate(torch_model, PROMPTS, max_new_tokens=2, kernels=KernelConfig(preset="triton"))
    with pytest.raises(ValueError, match="framework='jax' needs cfg=ModelConfig"):
        generate(jax_params, PROMPTS, max_new_tokens=2, framework="jax")
    with pytest.raises(TypeError, match="unexpected keyword argument 'top_q'"):
        generate(torch_model, PROMPTS, max_new_tokens=2, top_q=0.5)
    with pytest.raises(ValueError, match=r"kernels='triton' is a PyTorch preset; framework=jax takes the presets"):
        generate(jax_params, PROMPTS, max_new_tokens=2, framework="jax", cfg=CFG, kernels="triton")
    with pytest.raises(ValueError, match=r"kernels.decode='sdpa' is a PyTorch impl; framework=jax takes"):
        generate(jax_params, PROMPTS, max_new_tokens=2, framework="jax", cfg=CFG, kernels=KernelConfig(decode="sdpa"))


def test_cli_bad_input():
    with pytest.raises(ValueError, match=r"unknown option 'top_q'; known options: \['ckpt', 'prompt'"):
        parse_args(["ckpt=x.safetensors", "prompt=hi", "top_q=0.5"])
    with pytest.raises(ValueError, match="arguments are key=value"):
        parse_args(["ckpt=x.safetensors", "hello"])
    with pytest.raises(ValueError, match="bad option value for 'top_k'"):
        parse_args(["ckpt=x.safetensors", "prompt=hi", "top_k=abc"])
    with pytest.raises(ValueError, match="ckpt=PATH"):
        parse_args(["prompt=hi"])
    args = parse_args(["ckpt=x.safetensors", "prompt=a b", "prompt=c=d", "top_p=0.9", "max_new_tokens=3"])
    assert args.prompt == ["a b", "c=d"] and args.top_p == 0.9 and args.max_new_tokens == 3


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_cli_end_to_end(framework, torch_model, greedy, tmp_path, capsys):
    """``python -m model.generate`` from a saved checkpoint prints each prompt's completion."""
    from model.checkpoint import save_checkpoint
    from model.generate import main

    ckpt = save_checkpoint(tmp_path / "model.safetensors", torch_model, CFG)
    prompts = ["hi", "hello there"]
    out = main([f"ckpt={ckpt}", f"prompt={prompts[0]}", f"prompt={prompts[1]}", "max_new_tokens=4",
                f"framework={framework}", "kernels=reference", "device=cpu"])
    assert out.tokens == generate(torch_model, prompts, max_new_tokens=4).tokens
    printed = capsys.readouterr().out
    for prompt, text in zip(prompts, out.texts):
        assert prompt + text in printed
    with pytest.raises(ValueError, match=r"prompt 0 has 3 tokens; with max_new_tokens=46 that is 49 > "
                                         r"the model's context max_seq_len=48"):
        main([f"ckpt={ckpt}", "prompt=hi", "max_new_tokens=46", f"framework={framework}"])


def test_cli_kernel_overrides_and_stop_tokens_options():
    from model.train_config import kernel_config

    args = parse_args(["ckpt=x.safetensors", "prompt=hi", "kernels=triton"])
    assert kernel_config(args.kernels) == KernelConfig(preset="triton") and args.stop_tokens is None
    args = parse_args(["ckpt=x.safetensors", "prompt=hi", "kernels.decode=triton", "kernels.attention=sdpa",
                       "stop_tokens=10"])
    assert kernel_config(args.kernels) == KernelConfig(decode="triton", attention="sdpa")
    assert args.stop_tokens == [10]
    assert parse_args(["ckpt=x", "prompt=hi", "stop_tokens=[10, 258]"]).stop_tokens == [10, 258]
    assert parse_args(["ckpt=x", "prompt=hi", "stop_tokens=null"]).stop_tokens is None
    with pytest.raises(ValueError, match=r"unknown option 'kernels.softmax'; kernels options: \['preset', "
                                         r"'attention', 'decode'"):
        parse_args(["ckpt=x.safetensors", "prompt=hi", "kernels.softmax=triton"])
    with pytest.raises(ValueError, match="bad option value for 'stop_tokens"):
        parse_args(["ckpt=x.safetensors", "prompt=hi", "stop_tokens=eos"])
    # an impl / preset of the other framework: refused at parse time, naming the key
    with pytest.raises(ValueError, match=re.escape("kernels.attention='xla' is a JAX impl; framework=torch "
                                                   "takes ['reference', 'sdpa', 'triton']")):
        parse_args(["ckpt=x.safetensors", "prompt=hi", "kernels.attention=xla"])
    with pytest.raises(ValueError, match=re.escape("kernels='triton' is a PyTorch preset; framework=jax")):
        parse_args(["ckpt=x.safetensors", "prompt=hi", "framework=jax", "kernels=triton"])
    with pytest.raises(ValueError, match="framework must be one of"):
        parse_args(["ckpt=x.safetensors", "prompt=hi", "framework=tf"])
    assert kernel_config(parse_args(["ckpt=x", "prompt=hi", "framework=jax", "kernels=pallas",
                                     "kernels.attention=xla"]).kernels) == KernelConfig("pallas", attention="xla")
    with pytest.raises(ValueError, match="int4_blocks='autotune' tunes torch's Triton int4 kernel"):
        parse_args(["ckpt=x.safetensors", "prompt=hi", "int4_blocks=autotune", "kernels.mlp=triton"])


def test_cli_stop_tokens_and_per_op_kernels_end_to_end(torch_model, tmp_path):
    from model.checkpoint import save_checkpoint
    from model.generate import main

    ckpt = save_checkpoint(tmp_path / "model.safetensors", torch_model, CFG)
    full = generate(torch_model, ["hi"], max_new_tokens=6).tokens[0]
    stop = full[2]
    out = main([f"ckpt={ckpt}", "prompt=hi", "max_new_tokens=6", f"stop_tokens={stop}", "device=cpu",
                "kernels.decode=triton"])
    assert out.tokens == [full[:full.index(stop) + 1]] and out.finish_reasons == ["stop"]


def test_cli_checkpoint_errors_and_hf_directories(torch_model, tmp_path):
    """Missing, truncated, directory: errors naming the path and the cause (exit status 2, no
    traceback); a Hugging Face Gemma directory (config.json + *.safetensors) generates as the
    same weights in a checkpoint file do."""
    import json
    import subprocess
    import sys

    from safetensors.torch import save_file

    from model.checkpoint import save_checkpoint
    from model.generate import main

    run = ["prompt=hi", "max_new_tokens=3", "device=cpu"]
    with pytest.raises(FileNotFoundError, match=f"ckpt={tmp_path}/nope.safetensors: no such file or directory"):
        main([f"ckpt={tmp_path}/nope.safetensors", *run])
    good = save_checkpoint(tmp_path / "model.safetensors", torch_model, CFG)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-64])
    with pytest.raises(ValueError, match=f"{cut} is not a valid safetensors file .*truncated"):
        main([f"ckpt={cut}", *run])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"ckpt={empty} is a directory without config.json"):
        main([f"ckpt={empty}", *run])
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({
        "model_type": "gemma", "vocab_size": CFG.vocab_size, "hidden_size": CFG.width,
        "num_hidden_layers": CFG.layers, "num_attention_heads": CFG.heads,
        "num_key_value_heads": CFG.kv_heads, "head_dim": CFG.head_dim,
        "intermediate_size": CFG.mlp_dim, "max_position_embeddings": CFG.max_seq_len}))
    save_file({k: v.contiguous() for k, v in torch_model.state_dict().items()}, hf / "model.safetensors")
    want = generate(torch_model, ["hi"], max_new_tokens=3).tokens
    for framework in ("torch", "jax"):
        assert main([f"ckpt={hf}", f"framework={framework}", *run]).tokens == want
    proc = subprocess.run([sys.executable, "-m", "model.generate", f"ckpt={cut}", *run], capture_output=True,
                          text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: {cut} is not a valid safetensors file"), proc.stderr


@pytest.mark.parametrize("framework,kernels", [("torch", KernelConfig(decode="triton")),
                                               ("jax", KernelConfig(decode="pallas"))],
                         ids=["torch-triton-decode", "jax-pallas-decode"])
def test_greedy_with_decode_kernel(framework, kernels, torch_model, jax_params, greedy):
    """The cached path on the hand-written decode kernel (interpret mode here) gives the
    reference path's greedy tokens."""
    if framework == "torch":
        from model.torch_model import GeminiModel

        model = GeminiModel(CFG, kernels).eval()
        model.load_state_dict(torch_model.state_dict())
        out = generate(model, PROMPTS, max_new_tokens=4, kernels=kernels)
    else:
        out = generate(jax_params, PROMPTS, max_new_tokens=4, framework="jax", cfg=CFG, kernels=kernels)
    assert out.tokens == [row[:4] for row in greedy[framework]]


@pytest.mark.gpu
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_greedy_compiled_kernels_on_gpu(framework, torch_model, greedy):
    """Compiled Triton / Pallas presets on a GPU give the CPU reference's greedy tokens, with
    the cache and by recomputation (the >= 0.48 logit gap absorbs TF32 rounding)."""
    if framework == "torch":
        from model.torch_model import GeminiModel

        kernels = KernelConfig(preset="triton")
        model = GeminiModel(CFG, kernels).eval()
        model.load_state_dict(torch_model.state_dict())
        model = model.cuda()
        run = lambda **kw: generate(model, PROMPTS, max_new_tokens=NEW, **kw).tokens  # noqa: E731
    else:
        import jax
        import jax.numpy as jnp

        if jax.default_backend() != "gpu":
            pytest.skip(f"JAX sees no GPU (backend {jax.default_backend()!r})")
        params = {k: jnp.asarray(v.numpy()) for k, v in torch_model.state_dict().items()}
        run = lambda **kw: generate(params, PROMPTS, max_new_tokens=NEW, framework="jax",  # noqa: E731
                                    cfg=CFG, kernels="pallas", **kw).tokens
    assert run() == greedy[framework]
    assert run(use_cache=False) == greedy[framework]


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_multimodal_prompt_embeds(framework, torch_model, jax_params, greedy):
    """embeds at placeholder positions: the token's own embedding gives the text-only greedy
    tokens; other embeddings change them, with the cache equal to recomputation."""
    s = max(len(p) for p in PROMPTS)
    mask = np.zeros((len(PROMPTS), s), bool)
    mask[0, 2:5] = mask[2, 1] = True  # inside rows 0 and 2 (lengths 7 and 5)
    table = torch_model.model.embed_tokens.weight.detach()
    padded = torch.tensor([p + [0] * (s - len(p)) for p in PROMPTS])
    own = (table[padded] * CFG.width ** 0.5).numpy()  # what the model would embed itself
    other = np.random.default_rng(0).standard_normal(own.shape).astype(np.float32) * 8
    assert _gen(framework, torch_model, jax_params, embeds=own, embed_mask=mask).tokens == greedy[framework]
    cached = _gen(framework, torch_model, jax_params, embeds=other, embed_mask=mask).tokens
    assert cached == _gen(framework, torch_model, jax_params, embeds=other, embed_mask=mask,
                          use_cache=False).tokens
    assert cached[1] == greedy[framework][1]  # the row without placeholders is untouched
    assert cached[0] != greedy[framework][0] and cached[2] != greedy[framework][2]
    bad = mask.copy()
    bad[1, 1] = True
    with pytest.raises(ValueError, match="embed_mask row 1 is True at position 1, past its prompt length 1"):
        _gen(framework, torch_model, jax_params, embeds=other, embed_mask=bad)
    with pytest.raises(ValueError, match=r"embeds must be \[batch=3, S >= 7 \(longest prompt\), width=64\]"):
        _gen(framework, torch_model, jax_params, embeds=other[:, :5], embed_mask=mask[:, :5])


def test_text_segment_refuses_what_is_not_token_ids():
    """model.multimodal.Text (a prompt segment) takes integer ids only: a str would be read
    character by character through int() and a float silently truncated."""
    from model.multimodal import Text

    assert list(Text([1, 2]).ids) == [1, 2] and len(Text(np.arange(3)).ids) == 3
    assert Text(torch.tensor([5, 6])).ids.tolist() == [5, 6] and list(Text([]).ids) == []
    with pytest.raises(TypeError, match=r"Text ids must be a sequence of token ids \(ints\), got str 'hello': "
                                        r"encode text first"):
        Text("hello")
    with pytest.raises(TypeError, match=r"got element 1.5 \(float; array dtype float64\); a float is not truncated"):
        Text([1.5])
    with pytest.raises(TypeError, match=r"got element 2.0 \(float"):
        Text(np.array([2.0]))
    with pytest.raises(TypeError, match=r"got element True \(bool"):
        Text([True, False])
    with pytest.raises(TypeError, match=r"got element 'a' \(str"):
        Text([1, "a"])
