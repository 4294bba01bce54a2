"""Load a Hugging Face Gemma-format directory (``config.json`` + ``*.safetensors``) into both models.

    ckpt = load_hf(directory, framework="torch" | "jax" | "numpy")
    ckpt.cfg (ModelConfig), ckpt.params (HF names == param_specs names), ckpt.tokenizer_path
    model, tokenizer_path = load_hf_torch(directory, kernels=None)

Supported: ``model_type: gemma`` (Gemma 1: RMSNorm (1 + w), GeGLU with gelu_pytorch_tanh,
rotate-half RoPE, scale head_dim ** -0.5, tied head). Gemma 2/3 add norms this architecture
does not have (pre/post feed-forward norms, q/k norms) and are refused, as are untied heads,
attention biases, non-default RoPE scaling and bidirectional attention. Our parameter names
are HF's, so the tensors map one to one; a saved ``lm_head.weight`` must equal the embedding.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch

from model.checkpoint import check_params, convert, read_tensors
from model.config import KernelConfig, ModelConfig, param_specs


class HFCheckpoint(NamedTuple):
    cfg: ModelConfig
    params: dict
    tokenizer_path: Path | None  # tokenizer.json when the directory has one


def config_from_hf(hf: dict, *, name: str = "hf") -> ModelConfig:
    """Map a Gemma ``config.json`` dict to ModelConfig; refuse what the model cannot express."""
    if hf.get("model_type") != "gemma":
        raise ValueError(f"config.json model_type must be 'gemma' (Gemma 1 layout), got "
                         f"{hf.get('model_type')!r}")
    act = hf.get("hidden_act") or hf.get("hidden_activation") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu"):  # HF maps legacy "gelu" to the tanh approximation
        raise ValueError(f"config.json hidden_act must be gelu_pytorch_tanh, got {act!r}")
    for key, bad in (("attention_bias", True), ("use_bidirectional_attention", True),
                     ("tie_word_embeddings", False)):
        if bool(hf.get(key, not bad)) == bad:
            raise ValueError(f"config.json {key}={hf[key]!r} is not supported")
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise ValueError(f"config.json: only default RoPE is supported, got {rope or hf.get('rope_scaling')}")
    heads = hf["num_attention_heads"]
    return ModelConfig(
        name=name, vocab_size=hf["vocab_size"], width=hf["hidden_size"],
        layers=hf["num_hidden_layers"], heads=heads, kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, mlp_dim=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 8192),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)))


def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [directory / n for n in names]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {directory}")
    return files


def load_hf(directory, *, framework: str = "torch") -> HFCheckpoint:
    """Read config, weights (all shards) and the tokenizer path of a Gemma-format directory."""
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in {directory}")
    cfg = config_from_hf(json.loads(config_file.read_text()), name=directory.name or "hf")
    tensors: dict[str, torch.Tensor] = {}
    for f in _weight_files(directory):
        tensors.update(read_tensors(f)[0])
    head = tensors.pop("lm_head.weight", None)
    embed = tensors.get("model.embed_tokens.weight")
    if head is not None and (embed is None or not torch.equal(head, embed)):
        raise ValueError(f"{directory}: lm_head.weight differs from model.embed_tokens.weight; "
                         "only tied output heads are supported")
    check_params({n: tuple(t.shape) for n, t in tensors.items()}, cfg, where=f"load_hf({directory})")
    tok = directory / "tokenizer.json"
    params = convert({n: tensors[n] for n in param_specs(cfg)}, framework)  # param_specs order
    return HFCheckpoint(cfg, params, tok if tok.is_file() else None)


def load_hf_torch(directory, kernels: KernelConfig | None = None):
    """(GeminiModel with the directory's weights, tokenizer.json path or None)."""
    from model.torch_model import GeminiModel

    ckpt = load_hf(directory, framework="torch")
    model = GeminiModel(ckpt.cfg, kernels)
    model.load_state_dict(ckpt.params, strict=True)
    return model, ckpt.tokenizer_path
