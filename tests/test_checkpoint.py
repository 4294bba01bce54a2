"""Checkpoints (model/checkpoint.py): round trip in both frameworks, atomic writes, refusals;
``python -m model.info`` sizes."""
from __future__ import annotations

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from model.checkpoint import load_checkpoint, load_into_torch, read_config, save_checkpoint
from model.config import PRESETS, ModelConfig, param_specs
from model.info import deviation, param_groups, report
from model.torch_model import GeminiModel

CFG = ModelConfig(name="ck", vocab_size=40, width=16, layers=2, heads=2, kv_heads=1, head_dim=8,
                  mlp_dim=24, max_seq_len=32, final_softcap=7.0)


def _model(seed):
    m = GeminiModel(CFG)
    m.init_weights(seed)
    return m


def test_round_trip_torch_jax_and_bf16(tmp_path):
    m = _model(1)
    path = save_checkpoint(tmp_path / "a.safetensors", m, CFG)
    assert read_config(path) == CFG
    tp, cfg = load_checkpoint(path)
    assert cfg == CFG and list(tp) == list(param_specs(CFG))
    assert all(torch.equal(tp[n], t) for n, t in m.state_dict().items())
    jp, _ = load_checkpoint(path, CFG, framework="jax")
    assert all(np.array_equal(np.asarray(jp[n]), t.numpy()) for n, t in m.state_dict().items())
    # JAX bf16 arrays -> file -> torch bf16, bit-exact; and load into a model
    bf = {n: a.astype(jnp.bfloat16) for n, a in jp.items()}
    save_checkpoint(tmp_path / "b.safetensors", bf, CFG)
    tb, _ = load_checkpoint(tmp_path / "b.safetensors")
    assert all(t.dtype == torch.bfloat16 and torch.equal(t, m.state_dict()[n].bfloat16())
               for n, t in tb.items())
    jb, _ = load_checkpoint(tmp_path / "b.safetensors", framework="jax")
    assert all(jb[n].dtype == jnp.bfloat16 and np.array_equal(np.asarray(jb[n]), np.asarray(bf[n]))
               for n in bf)
    m2 = _model(2)
    load_into_torch(m2, path)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "a.safetensors", _model(1), CFG)
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "fsync", broken_fsync)  # the atomic writer (benchmarks.results) fsyncs
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _model(2), CFG)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.safetensors"]  # no temp file left behind


def test_refusals_name_the_problem(tmp_path):
    m = _model(1)
    path = save_checkpoint(tmp_path / "a.safetensors", m, CFG)
    sd = dict(m.state_dict())
    with pytest.raises(ValueError, match=r"missing parameter 'model.layers.0.self_attn.q_proj.weight'"):
        save_checkpoint(tmp_path / "x.safetensors",
                        {k.replace("q_proj", "query"): v for k, v in sd.items()}, CFG)
    wrong = {**sd, "model.layers.1.mlp.up_proj.weight": torch.zeros(25, 16)}
    with pytest.raises(ValueError, match=r"'model.layers.1.mlp.up_proj.weight' has shape \(25, 16\).*\(24, 16\)"):
        save_checkpoint(tmp_path / "x.safetensors", wrong, CFG)
    with pytest.raises(ValueError, match="unexpected parameter 'lm_head.weight'"):
        save_checkpoint(tmp_path / "x.safetensors", {**sd, "lm_head.weight": sd["model.norm.weight"]}, CFG)
    bigger = ModelConfig(**{**CFG.to_dict(), "mlp_dim": 32})
    with pytest.raises(ValueError, match=r"'model.layers.0.mlp.gate_proj.weight' has shape \(24, 16\)"):
        load_checkpoint(path, bigger)
    deeper = ModelConfig(**{**CFG.to_dict(), "layers": 3})
    with pytest.raises(ValueError, match="missing parameter 'model.layers.2.input_layernorm.weight'"):
        load_into_torch(GeminiModel(deeper), path)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_checkpoint(tmp_path / "nope.safetensors")
    corrupt = tmp_path / "c.safetensors"
    corrupt.write_bytes(path.read_bytes()[:-100])  # truncated
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_checkpoint(corrupt)
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_checkpoint(corrupt)


def test_a_checkpoint_of_another_config_is_refused_even_when_shapes_match(tmp_path):
    """Configs that differ in scalars share every shape: the stored config decides, and the
    error names the first differing field and how to proceed. ``name`` alone is a label."""
    path = save_checkpoint(tmp_path / "a.safetensors", _model(1), CFG)
    shapes = lambda c: {n: s for n, (s, _) in param_specs(c).items()}  # noqa: E731
    for field, value in (("rope_theta", 500.0), ("final_softcap", None), ("local_window", 8)):
        other = ModelConfig(**{**CFG.to_dict(), field: value})
        assert shapes(other) == shapes(CFG)
        with pytest.raises(ValueError, match=rf"differs from the given config 'ck' in {field}: the file's config "
                                             rf"has .*, the given config {value!r}\. Load it with cfg=None"):
            load_checkpoint(path, other)
        with pytest.raises(ValueError, match=field):
            load_into_torch(GeminiModel(other), path)
    renamed = ModelConfig(**{**CFG.to_dict(), "name": "other-label"})
    params, cfg = load_checkpoint(path, renamed)
    assert cfg is renamed and list(params) == list(param_specs(CFG))


def test_check_file_reads_only_the_header(tmp_path):
    from model.checkpoint import check_file

    path = save_checkpoint(tmp_path / "a.safetensors", _model(1), CFG)
    assert read_config(path) == CFG and "config" in check_file(path)
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*nope.safetensors"):
        check_file(tmp_path / "nope.safetensors")
    with pytest.raises(IsADirectoryError, match=f"{tmp_path} is a directory, not a safetensors"):
        check_file(tmp_path)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_checkpoint(tmp_path)
    bad = tmp_path / "bad.safetensors"
    blob = path.read_bytes()
    for data, why in ((blob[:-100], r"its header describes \d+ bytes, the file has \d+"),
                      (blob[:5], "5 bytes cannot hold"), (blob[:200], "cannot hold its"),
                      (b"\x10" + bytes(7) + b"not json at all!", "corrupt header"),
                      (blob + b"x", "the file has")):
        bad.write_bytes(data)
        with pytest.raises(ValueError, match=f"{bad} is not a valid safetensors file .*{why}"):
            check_file(bad)


def test_failed_load_assigns_nothing(tmp_path):
    path = save_checkpoint(tmp_path / "a.safetensors", _model(1), CFG)
    other = ModelConfig(**{**CFG.to_dict(), "vocab_size": 41})
    m = GeminiModel(other)
    before = {n: t.clone() for n, t in m.state_dict().items()}
    with pytest.raises(ValueError, match="model.embed_tokens.weight"):
        load_into_torch(m, path)
    assert all(torch.equal(before[n], t) for n, t in m.state_dict().items())


def test_nano_sizes_within_two_percent_of_the_report():
    for name in ("nano1", "nano2"):
        assert abs(deviation(PRESETS[name])) <= 0.02, name
        assert sum(param_groups(PRESETS[name]).values()) == sum(
            int(np.prod(s)) for s, _ in param_specs(PRESETS[name]).values())
    assert "memory bf16" in report(PRESETS["tiny"]) and deviation(PRESETS["tiny"]) is None


def test_model_info_cli(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "model.info", *a], capture_output=True,  # noqa: E731
                                    text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    out = run("model=nano1")
    assert out.returncode == 0, out.stderr
    assert "1,798,383,616" in out.stdout and "deviation -0.09% (OK)" in out.stdout
    assert "memory bf16" in out.stdout
    int4_gb = float(out.stdout.split("memory int4-g128")[1].split("GB")[0])
    assert int4_gb <= 1.0, f"nano1 int4 weights {int4_gb} GB > 1.0 GB"  # the quantization issue's bound
    bad = run("model=nano1", "model.widht=3")  # strict: a typo fails
    assert bad.returncode != 0 and "widht" in bad.stderr
