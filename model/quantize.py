"""int4 weight-only quantization of a Gemini checkpoint, and the quantized weight types.

    python -m model.quantize CKPT OUT [--group-size 128] [--asymmetric] [--int8-embed]
                             [--method rtn|gptq] [--calib-batches 8] [--calib-config JSON]

Reads a float safetensors checkpoint (names from ``model.config.param_specs``) and writes a
quantized one, atomically (temp file in the same folder, fsync, os.replace). Per matrix
``<name>`` (every ``*_proj.weight``, and the tied embedding):
    <name>.qweight  uint8 [out, in // 2]   two codes per byte, low nibble = even input index
    <name>.scales   fp16 [in // g, out]    group-major (coalesced per-group loads)
    <name>.zeros    fp16 [in // g, out]    asymmetric only (symmetric: zero point 8, no tensor)
with --int8-embed the embedding is instead ``.qweight`` int8 [vocab, width] + ``.scales``
fp16 [vocab] (per row, symmetric). Norm weights are copied unchanged. Layout and the
dequantization formula: ``kernels/int4/spec.py``. Metadata: "config" (copied from the input)
and "quantization" (JSON: format, group_size, scheme, embed, quantized names count; for
--method gptq also "method" and "calibration"; no "method" means round-to-nearest).
--method gptq (``model/gptq.py``) calibrates the projections on --calib-batches batches of the
training data's train split, read from --calib-config (a ``python -m model.train`` results
file or state.json; default: state.json beside CKPT); the embedding stays round-to-nearest
(it is also a lookup table, which GPTQ's input-Hessian objective does not cover). Same layout.
A float loader must call ``check_not_quantized(metadata, path)`` first: it refuses a
quantized file by name instead of failing later on a missing tensor.

Runtime types: ``QuantizedWeight`` (torch nn.Module holding the buffers; ``model.torch_layers.
linear`` calls ``weight.linear(x)``) and ``QuantizedWeightJax`` (a pytree for ``model.jax_layers.
linear``), both running ``int4_matmul`` (impl "triton"/"pallas" or "reference").
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from benchmarks.results import write_bytes_atomic
from kernels.int4.reference import dequantize_int4, quantize_int4
from model.config import ModelConfig, param_specs

QUANT_KEY = "quantization"
FORMAT = "gemini-int4-rtn-v1"
EMBED = "model.embed_tokens.weight"
SUFFIXES = (".qweight", ".scales", ".zeros")


def is_quantized_name(name: str) -> bool:
    """Matrices that are quantized: every projection weight and the (tied) embedding."""
    return name.endswith("_proj.weight") or name == EMBED


# --- runtime types -------------------------------------------------------------------------

class QuantizedWeight(torch.nn.Module):
    """A group-wise int4 Linear weight [out, in]: buffers qweight, scales (and zeros)."""

    def __init__(self, qweight, scales, zeros, group_size: int, impl: str = "triton", blocks=None):
        super().__init__()
        if blocks is not None and impl != "triton":
            raise ValueError(f"blocks: only impl='triton' takes int4 tiles, got blocks={blocks!r} with impl={impl!r}")
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", zeros)  # None: symmetric
        # blocks: None (per-device defaults), an Int4Blocks, or "autotune" (kernels.torch_ops.int4_matmul)
        self.group_size, self.impl, self.blocks = int(group_size), impl, blocks

    @classmethod
    def quantize(cls, w: torch.Tensor, group_size: int = 128, *, asymmetric: bool = False,
                 impl: str = "triton", scale_dtype=torch.float16) -> "QuantizedWeight":
        return cls(*quantize_int4(w, group_size, asymmetric=asymmetric, scale_dtype=scale_dtype),
                   group_size, impl)

    @property
    def shape(self) -> tuple[int, int]:
        return self.qweight.shape[0], self.qweight.shape[1] * 2

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] @ dequant(W).T -> [..., out] through kernels.torch_ops.int4_matmul."""
        from kernels import torch_ops

        return torch_ops.int4_matmul(x, self.qweight, self.scales, self.zeros, self.group_size,
                                     impl=self.impl, blocks=self.blocks)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return dequantize_int4(self.qweight, self.scales, self.zeros, self.group_size, dtype)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, group_size={self.group_size}, impl={self.impl!r}"


def _jax_type():
    import jax

    @jax.tree_util.register_dataclass
    @dataclasses.dataclass(frozen=True)
    class QuantizedWeightJax:
        """JAX pytree of one int4 weight [out, in]; group_size and impl are static."""

        qweight: jax.Array
        scales: jax.Array
        zeros: Optional[jax.Array]
        group_size: int = dataclasses.field(metadata=dict(static=True))
        impl: str = dataclasses.field(default="pallas", metadata=dict(static=True))

        @property
        def shape(self):
            return self.qweight.shape[0], self.qweight.shape[1] * 2

        def linear(self, x):
            from kernels import jax_ops

            return jax_ops.int4_matmul(x, self.qweight, self.scales, self.zeros, self.group_size,
                                       impl=self.impl)

    return QuantizedWeightJax


_JAX_TYPE = None


def __getattr__(name):  # QuantizedWeightJax is built on first use: importing jax is not free
    global _JAX_TYPE
    if name == "QuantizedWeightJax":
        _JAX_TYPE = _JAX_TYPE or _jax_type()
        return _JAX_TYPE
    raise AttributeError(name)


def quantize_torch_model(model: torch.nn.Module, group_size: int = 128, *, asymmetric: bool = False,
                         impl: str = "triton") -> torch.nn.Module:
    """Replace, in place, every projection weight (``*_proj.weight``) of a GeminiModel with a
    QuantizedWeight. The embedding / tied head stays float (the model reads it directly)."""
    for name, module in list(model.named_modules()):
        w = module._parameters.get("weight")
        if w is not None and is_quantized_name(f"{name}.weight") and f"{name}.weight" != EMBED:
            del module._parameters["weight"]
            module.weight = QuantizedWeight.quantize(w.detach(), group_size, asymmetric=asymmetric,
                                                     impl=impl)
    return model


def quantize_jax_params(params: dict, group_size: int = 128, *, asymmetric: bool = False,
                        impl: str = "pallas") -> dict:
    """The flat JAX param dict with every projection weight replaced by a QuantizedWeightJax."""
    from kernels.int4.reference_jax import quantize_int4 as quantize_jax

    qt = __getattr__("QuantizedWeightJax")
    return {n: qt(*quantize_jax(w, group_size, asymmetric=asymmetric), group_size, impl)
            if is_quantized_name(n) and n != EMBED else w for n, w in params.items()}


# --- checkpoints ---------------------------------------------------------------------------

def quantize_state_dict(state: dict, *, group_size: int = 128, asymmetric: bool = False,
                        int8_embed: bool = False) -> dict[str, torch.Tensor]:
    """name -> tensor of the quantized checkpoint (see the module docstring)."""
    out = {}
    for name, w in state.items():
        if not is_quantized_name(name):
            out[name] = w.contiguous()
        elif name == EMBED and int8_embed:
            scale = (w.float().abs().amax(1) / 127.0).clamp(min=1e-12).half()
            out[name + ".qweight"] = torch.round(w.float() / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
            out[name + ".scales"] = scale
        else:
            q, s, z = quantize_int4(w, group_size, asymmetric=asymmetric)
            out.update({name + ".qweight": q, name + ".scales": s})
            if z is not None:
                out[name + ".zeros"] = z
    return out


def check_not_quantized(metadata: Optional[dict], path="checkpoint") -> None:
    """For float loaders: refuse an int4 checkpoint by name (call before checking tensors)."""
    if metadata and QUANT_KEY in metadata:
        q = json.loads(metadata[QUANT_KEY])
        raise ValueError(f"{path} is a quantized checkpoint ({q.get('format')}, group_size "
                         f"{q.get('group_size')}, {q.get('scheme')}): it holds <name>.qweight/.scales "
                         f"tensors, not float weights; load it with model.quantize.load_quantized")


METHODS = ("rtn", "gptq")


def quantize_checkpoint(src, dst, *, group_size: int = 128, asymmetric: bool = False,
                        int8_embed: bool = False, method: str = "rtn", calib_batches: int = 8,
                        calib_config=None) -> Path:
    from safetensors import safe_open

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "gptq":
        from model.gptq import check_calib_batches

        check_calib_batches(calib_batches)
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata() or {})
    check_not_quantized(meta, src)
    state = load_file(str(src))
    if "config" in meta:  # a model checkpoint: refuse names/shapes the config does not have
        specs = param_specs(ModelConfig(**json.loads(meta["config"])))
        for name, t in state.items():
            if name not in specs or tuple(t.shape) != specs[name][0]:
                raise ValueError(f"{src}: parameter {name!r} {tuple(t.shape)} does not match the config's "
                                 f"param_specs ({specs.get(name, (None,))[0]})")
    tensors = quantize_state_dict(state, group_size=group_size, asymmetric=asymmetric, int8_embed=int8_embed)
    q = dict(format=FORMAT, group_size=group_size, scheme="asymmetric" if asymmetric else "symmetric",
             embed="int8" if int8_embed else "int4", layout="qweight uint8 [out, in/2] low nibble = even k; "
             "scales/zeros [in/group, out]", quantized=sum(map(is_quantized_name, state)))
    if method == "gptq":
        if "config" not in meta:
            raise ValueError(f"{src}: --method gptq runs the model, so the checkpoint needs its "
                             f"config in the metadata (key 'config')")
        from model.gptq import gptq_checkpoint_tensors

        calib_config = calib_config or Path(src).parent / "state.json"
        gptq, q["calibration"] = gptq_checkpoint_tensors(
            state, weights_from_tensors(tensors, q, impl="reference"), ModelConfig(**json.loads(meta["config"])),
            calib_config, calib_batches, group_size=group_size, asymmetric=asymmetric)
        tensors.update(gptq)
        q["method"] = "gptq"
    meta[QUANT_KEY] = json.dumps(q)
    dst = Path(dst)
    write_bytes_atomic(dst, st_save(tensors, metadata=meta))
    return dst


def is_quantized(path) -> bool:
    """Whether the safetensors file at ``path`` is an int4 checkpoint (its metadata says so)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return QUANT_KEY in (f.metadata() or {})


def load_quantized(path, *, impl: str = "triton", dtype=torch.float32, blocks=None) -> tuple[dict, dict]:
    """(name -> QuantizedWeight | float tensor, quantization metadata) of a quantized file.

    The embedding (int4 or int8) is dequantized to ``dtype``: the model reads it directly."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if QUANT_KEY not in meta:
        raise ValueError(f"{path} is not a quantized checkpoint (no {QUANT_KEY!r} metadata)")
    q = json.loads(meta[QUANT_KEY])
    return weights_from_tensors(load_file(str(path)), q, impl=impl, dtype=dtype, blocks=blocks), q


def weights_from_tensors(tensors: dict, q: dict, *, impl: str = "triton", dtype=torch.float32,
                         blocks=None) -> dict:
    """name -> QuantizedWeight | float tensor of a quantized checkpoint's tensors (``load_quantized``);
    ``blocks``: the projections' int4 tiles (None, an Int4Blocks or "autotune"; triton only)."""
    out = {}
    for name in sorted({n.rsplit(".", 1)[0] for n in tensors if n.endswith(".qweight")}):
        qw, s, z = (tensors.get(name + sfx) for sfx in SUFFIXES)
        if qw.dtype == torch.int8:
            out[name] = (qw.float() * s.float()[:, None]).to(dtype)
        else:
            w = QuantizedWeight(qw, s, z, q["group_size"], impl, None if name == EMBED else blocks)
            out[name] = w.dequantize(dtype) if name == EMBED else w
    out.update({n: t.to(dtype) for n, t in tensors.items() if not n.endswith(SUFFIXES)})
    return out


# --- size and quality ----------------------------------------------------------------------

def load_quantized_torch(path, kernels=None, *, impl: str = "triton", dtype=torch.float32, blocks=None):
    """A ``GeminiModel`` from a quantized checkpoint: projections run ``int4_matmul`` (with
    ``blocks``: None, an Int4Blocks or "autotune"; impl="triton" only)."""
    from model.checkpoint import read_config
    from model.torch_model import GeminiModel

    cfg = read_config(path)
    tensors, _ = load_quantized(path, impl=impl, dtype=dtype, blocks=blocks)
    model = GeminiModel(cfg, kernels)
    for name, module in list(model.named_modules()):
        key = f"{name}.weight"
        if isinstance(tensors.get(key), QuantizedWeight):
            del module._parameters["weight"]
            module.weight = tensors.pop(key)
    missing = set(dict(model.named_parameters())) - set(tensors)
    if missing:
        raise ValueError(f"{path}: no tensor for {sorted(missing)[0]} (of {len(missing)} missing)")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(tensors[name].to(p.dtype))
    return model


def load_quantized_jax(path, *, impl: str = "pallas"):
    """(params, cfg) for ``model.jax_model``: projections as QuantizedWeightJax (int4_matmul)."""
    import jax.numpy as jnp

    from model.checkpoint import read_config

    tensors, q = load_quantized(path, impl="reference")
    qt = __getattr__("QuantizedWeightJax")
    j = lambda t: None if t is None else jnp.asarray(t.numpy())  # noqa: E731
    params = {n: qt(j(t.qweight), j(t.scales), j(t.zeros), q["group_size"], impl)
              if isinstance(t, QuantizedWeight) else j(t) for n, t in tensors.items()}
    return params, read_config(path)


def quantized_size_bytes(cfg: ModelConfig, group_size: int = 128, *, asymmetric: bool = False,
                         embed: str = "int4", scale_bytes: int = 2, float_bytes: int = 2) -> int:
    """Bytes of the quantized weights from ``param_specs`` (embed: "int4", "int8" or "float")."""
    total = 0
    for name, (shape, _) in param_specs(cfg).items():
        n = 1
        for s in shape:
            n *= s
        if not is_quantized_name(name) or (name == EMBED and embed == "float"):
            total += n * float_bytes
        elif name == EMBED and embed == "int8":
            total += n + shape[0] * scale_bytes
        else:
            total += n // 2 + (n // group_size) * scale_bytes * (2 if asymmetric else 1)
    return total


def info_memory_format(cfg: ModelConfig, groups=None) -> float:
    """``model.info.register_memory_format("int4-g128", info_memory_format)`` row."""
    return float(quantized_size_bytes(cfg))


def logits_kl(ref_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """Mean over positions of KL(softmax(ref) || softmax(quantized)), in nats."""
    p = torch.log_softmax(ref_logits.double(), -1)
    q = torch.log_softmax(q_logits.double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m model.quantize", description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt", help="float safetensors checkpoint")
    ap.add_argument("out", help="quantized safetensors checkpoint to write")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--asymmetric", action="store_true", help="per-group zero points")
    ap.add_argument("--int8-embed", action="store_true", help="embedding int8 per row (else int4)")
    ap.add_argument("--method", default="rtn", choices=METHODS, help="round-to-nearest or GPTQ calibration")
    ap.add_argument("--calib-batches", type=int, default=8, help="gptq: training-data batches (>= 1)")
    ap.add_argument("--calib-config", default=None,
                    help="gptq: JSON with the training config (default: state.json beside CKPT)")
    a = ap.parse_args(argv)
    if a.calib_batches < 1:
        ap.error(f"--calib-batches must be >= 1, got {a.calib_batches}")
    dst = quantize_checkpoint(a.ckpt, a.out, group_size=a.group_size, asymmetric=a.asymmetric,
                              int8_embed=a.int8_embed, method=a.method, calib_batches=a.calib_batches,
                              calib_config=a.calib_config)
    print(f"wrote {dst} ({os.path.getsize(dst) / 1e6:.1f} MB; input {os.path.getsize(a.ckpt) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
