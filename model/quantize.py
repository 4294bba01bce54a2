"""int4 weight-only quantization of a Gemini checkpoint, and the quantized weight types.

    python -m model.quantize CKPT OUT [--group-size 128] [--asymmetric] [--int8-embed]
                             [--method rtn|gptq] [--calib-batches 8] [--calib-config JSON]
                             [--scale-dtype float16|bfloat16]

Reads a float safetensors checkpoint (names from ``model.config.param_specs``) and writes a
quantized one, atomically (temp file in the same folder, fsync, os.replace). Per matrix
``<name>`` (every ``*_proj.weight``, and the tied embedding):
    <name>.qweight  uint8 [out, in // 2]   two codes per byte, low nibble = even input index
    <name>.scales   fp16 [in // g, out]    group-major (coalesced per-group loads)
    <name>.zeros    fp16 [in // g, out]    asymmetric only (symmetric: zero point 8, no tensor)
with --int8-embed the embedding is instead ``.qweight`` int8 [vocab, width] + ``.scales``
fp16 [vocab] (per row, symmetric). Scales and zeros are bf16 instead with --scale-dtype
bfloat16. Norm weights are copied unchanged. Layout and the dequantization formula:
``kernels/int4/spec.py``. Metadata: "config" (copied from the input) and "quantization" (JSON:
format "gemini-int4-v1", method "rtn" | "gptq", group_size, scheme, embed, scale_dtype,
quantized names count; for gptq also "calibration"). Files of the old format name
"gemini-int4-rtn-v1" (written for both methods; no "method" meant round-to-nearest, no
"scale_dtype" fp16) still load.
--method gptq (``model/gptq.py``) calibrates the projections on --calib-batches batches of the
training data's train split, read from --calib-config (a ``python -m model.train`` results
file or state.json; default: state.json beside CKPT); the embedding stays round-to-nearest
(it is also a lookup table, which GPTQ's input-Hessian objective does not cover). Same layout.
A float loader must call ``check_not_quantized(metadata, path)`` first: it refuses a
quantized file by name instead of failing later on a missing tensor. The quantized loaders
check every tensor's shape and dtype against ``param_specs`` and the metadata before use
(``check_quantized_tensors``), naming the tensor and the file.

Runtime types: ``QuantizedWeight`` (torch nn.Module holding the buffers; ``model.torch_layers.
linear`` calls ``weight.linear(x)``) and ``QuantizedWeightJax`` (a pytree for ``model.jax_layers.
linear``), both running ``int4_matmul`` (impl "triton"/"pallas" or "reference");
``QuantizedEmbedding`` / ``QuantizedEmbeddingJax``: the loaded embedding, kept packed (the
lookup dequantizes the gathered rows only, the tied head runs on the packed table), so a
loaded model holds ``quantized_size_bytes`` of weights.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from benchmarks.results import write_bytes_atomic
from kernels.int4.reference import dequantize_int4, quantize_int4
from kernels.int4.spec import check_group_size
from model.checkpoint import check_file
from model.config import ModelConfig, param_specs

QUANT_KEY = "quantization"
FORMAT = "gemini-int4-v1"  # the layout; how codes were chosen is "method" ("rtn" | "gptq")
# formats read: FORMAT and its old name, written before "method" was split out (files of
# either method carried it; a missing "method" means round-to-nearest)
FORMATS = (FORMAT, "gemini-int4-rtn-v1")
EMBED = "model.embed_tokens.weight"
SUFFIXES = (".qweight", ".scales", ".zeros")
SCALE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}  # --scale-dtype
HEAD_CHUNK = 8192  # int8 head: vocab rows converted to x's dtype at a time (the transient)


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


class QuantizedEmbedding(torch.nn.Module):
    """The tied embedding / output head [vocab, width], kept packed as the file holds it.

    fmt "int4": ``QuantizedWeight``'s layout (qweight uint8 [vocab, width // 2], scales / zeros
    [width // g, vocab]); fmt "int8": qweight int8 [vocab, width], scales [vocab] (per row,
    symmetric), zeros None. ``embed(tokens)`` gathers the packed rows of the tokens only and
    dequantizes those; ``linear(x)`` is the head x @ table.T: int4 through ``int4_matmul`` (the
    table's [vocab, width] is the kernel's [out, in]), int8 as (x @ q.T) * scale over HEAD_CHUNK
    vocab rows at a time (q converted to x's dtype a chunk at a time: exact, |q| <= 127 fits
    fp16/bf16's mantissa). ``dtype``: the model's compute dtype, that of the embedded rows."""

    def __init__(self, qweight, scales, zeros, group_size: int, fmt: str, *, dtype=torch.float32,
                 impl: str = "triton", blocks=None):
        super().__init__()
        if fmt not in ("int4", "int8"):
            raise ValueError(f"fmt must be 'int4' or 'int8', got {fmt!r}")
        if blocks is not None and (impl != "triton" or fmt != "int4"):
            raise ValueError(f"blocks: only an int4 table with impl='triton' takes int4 tiles, got "
                             f"blocks={blocks!r} with fmt={fmt!r}, impl={impl!r}")
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", zeros)  # None: symmetric (int4) or int8
        self.group_size, self.fmt, self.dtype, self.impl, self.blocks = int(group_size), fmt, dtype, impl, blocks

    @property
    def shape(self) -> tuple[int, int]:
        return self.qweight.shape[0], self.qweight.shape[1] * (2 if self.fmt == "int4" else 1)

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [...] -> rows [..., width] in ``dtype`` (unscaled): only the tokens' rows are
        dequantized (float32 math, as ``dequantize``), the table stays packed."""
        ids = tokens.reshape(-1)
        if self.fmt == "int8":  # [n, W] * [n, 1]
            rows = self.qweight[ids].float() * self.scales[ids].float()[:, None]
        else:  # packed rows [n, W // 2], their scales / zeros [W // g, n]
            rows = dequantize_int4(self.qweight[ids], self.scales[:, ids],
                                   None if self.zeros is None else self.zeros[:, ids], self.group_size)
        return rows.to(self.dtype).reshape(*tokens.shape, rows.shape[-1])

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """The head: x [..., width] @ dequant(table).T -> [..., vocab] in x's dtype."""
        from kernels import torch_ops

        if self.fmt == "int4":
            return torch_ops.int4_matmul(x, self.qweight, self.scales, self.zeros, self.group_size,
                                         impl=self.impl, blocks=self.blocks)
        if x.shape[-1] != self.qweight.shape[1]:
            raise ValueError(f"x's last dim must be the table's width {self.qweight.shape[1]}, got {tuple(x.shape)}")
        parts = [(x @ self.qweight[c:c + HEAD_CHUNK].to(x.dtype).T).float() * self.scales[c:c + HEAD_CHUNK].float()
                 for c in range(0, self.qweight.shape[0], HEAD_CHUNK)]  # [..., chunk] each, fp32
        return torch.cat(parts, -1).to(x.dtype)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        """The whole table [vocab, width] in ``dtype`` (tests, calibration; the model never builds it)."""
        if self.fmt == "int8":
            return (self.qweight.float() * self.scales.float()[:, None]).to(dtype)
        return dequantize_int4(self.qweight, self.scales, self.zeros, self.group_size, dtype)

    def extra_repr(self) -> str:
        return (f"shape={self.shape}, fmt={self.fmt!r}, group_size={self.group_size}, dtype={self.dtype}, "
                f"impl={self.impl!r}")


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

    @jax.tree_util.register_dataclass
    @dataclasses.dataclass(frozen=True)
    class QuantizedEmbeddingJax:
        """JAX pytree of the packed tied embedding / head (``QuantizedEmbedding``'s layouts and
        semantics); group_size, fmt, dtype (the compute dtype) and impl are static."""

        qweight: jax.Array
        scales: jax.Array
        zeros: Optional[jax.Array]
        group_size: int = dataclasses.field(metadata=dict(static=True))
        fmt: str = dataclasses.field(default="int4", metadata=dict(static=True))
        dtype: object = dataclasses.field(default=np.dtype("float32"), metadata=dict(static=True))
        impl: str = dataclasses.field(default="pallas", metadata=dict(static=True))

        @property
        def shape(self):
            return self.qweight.shape[0], self.qweight.shape[1] * (2 if self.fmt == "int4" else 1)

        def embed(self, tokens):
            """tokens [...] -> rows [..., width] in ``dtype``; only the tokens' rows dequantized."""
            import jax.numpy as jnp

            from kernels.int4.reference_jax import dequantize_int4 as dequantize_jax

            ids = tokens.reshape(-1)
            if self.fmt == "int8":
                rows = jnp.take(self.qweight, ids, 0).astype(jnp.float32) * \
                    jnp.take(self.scales, ids, 0).astype(jnp.float32)[:, None]
            else:  # packed rows [n, W // 2], scales / zeros [W // g, n]
                rows = dequantize_jax(jnp.take(self.qweight, ids, 0), jnp.take(self.scales, ids, 1),
                                      None if self.zeros is None else jnp.take(self.zeros, ids, 1),
                                      self.group_size)
            return rows.astype(self.dtype).reshape(*tokens.shape, rows.shape[-1])

        def linear(self, x):
            """The head x [..., width] @ dequant(table).T -> [..., vocab] in x's dtype."""
            import jax.numpy as jnp

            from kernels import jax_ops

            if self.fmt == "int4":
                return jax_ops.int4_matmul(x, self.qweight, self.scales, self.zeros, self.group_size,
                                           impl=self.impl)
            if x.shape[-1] != self.qweight.shape[1]:
                raise ValueError(f"x's last dim must be the table's width {self.qweight.shape[1]}, got {x.shape}")
            parts = [jnp.einsum("...w,vw->...v", x, self.qweight[c:c + HEAD_CHUNK].astype(x.dtype),
                                preferred_element_type=jnp.float32)
                     * self.scales[c:c + HEAD_CHUNK].astype(jnp.float32)
                     for c in range(0, self.qweight.shape[0], HEAD_CHUNK)]
            return jnp.concatenate(parts, -1).astype(x.dtype)

    return {"QuantizedWeightJax": QuantizedWeightJax, "QuantizedEmbeddingJax": QuantizedEmbeddingJax}


_JAX_TYPES = None


def __getattr__(name):  # the JAX types are built on first use: importing jax is not free
    global _JAX_TYPES
    if name in ("QuantizedWeightJax", "QuantizedEmbeddingJax"):
        _JAX_TYPES = _JAX_TYPES or _jax_type()
        return _JAX_TYPES[name]
    raise AttributeError(name)


def quantize_torch_model(model: torch.nn.Module, group_size: int = 128, *, asymmetric: bool = False,
                         impl: str = "triton") -> torch.nn.Module:
    """Replace, in place, every projection weight (``*_proj.weight``) of a GeminiModel with a
    QuantizedWeight. The embedding / tied head stays float: this is NOT what the CLI writes
    (``quantize_checkpoint`` + ``load_quantized_torch``: int4 embedding by default)."""
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

def scale_dtype_of(name) -> torch.dtype:
    """The torch dtype of a --scale-dtype name ("float16" | "bfloat16"; a torch dtype passes)."""
    if name in SCALE_DTYPES.values():
        return name
    if name not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be one of {sorted(SCALE_DTYPES)}, got {name!r}")
    return SCALE_DTYPES[name]


def _scale_dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in SCALE_DTYPES.items()}[scale_dtype_of(dtype)]


def quantize_state_dict(state: dict, *, group_size: int = 128, asymmetric: bool = False,
                        int8_embed: bool = False, scale_dtype="float16") -> dict[str, torch.Tensor]:
    """name -> tensor of the quantized checkpoint (see the module docstring); every scale and
    zero in ``scale_dtype`` ("float16" | "bfloat16")."""
    sdt = scale_dtype_of(scale_dtype)
    out = {}
    for name, w in state.items():
        if not is_quantized_name(name):
            out[name] = w.contiguous()
        elif name == EMBED and int8_embed:  # the row scale rounded to sdt first: codes for the stored scale
            scale = (w.float().abs().amax(1) / 127.0).to(sdt).float()
            scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero (or underflowing) row
            out[name + ".qweight"] = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
            out[name + ".scales"] = scale.to(sdt)
        else:
            q, s, z = quantize_int4(w, group_size, asymmetric=asymmetric, scale_dtype=sdt)
            out.update({name + ".qweight": q, name + ".scales": s})
            if z is not None:
                out[name + ".zeros"] = z
    return out


def describe(q: dict) -> str:
    """One line of a file's "quantization" record: format, method, group size, scheme, embedding, scales."""
    return (f"{q.get('format')}, method {q.get('method', 'rtn')}, group_size {q.get('group_size')}, "
            f"{q.get('scheme')}, {q.get('embed', 'int4')} embedding, {q.get('scale_dtype', 'float16')} scales")


def check_not_quantized(metadata: Optional[dict], path="checkpoint") -> None:
    """For float loaders: refuse an int4 checkpoint by name (call before checking tensors)."""
    if metadata and QUANT_KEY in metadata:
        q = json.loads(metadata[QUANT_KEY])
        raise ValueError(f"{path} is a quantized checkpoint ({describe(q)}): it holds <name>.qweight/.scales "
                         f"tensors, not float weights; load it with model.quantize.load_quantized")


METHODS = ("rtn", "gptq")


def quantize_checkpoint(src, dst, *, group_size: int = 128, asymmetric: bool = False,
                        int8_embed: bool = False, method: str = "rtn", calib_batches: int = 8,
                        calib_config=None, scale_dtype="float16") -> Path:
    from safetensors import safe_open

    sdt = scale_dtype_of(scale_dtype)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "gptq":
        from model.gptq import check_calib_batches

        check_calib_batches(calib_batches)
    check_file(src)  # missing / directory / truncated: named, before safetensors' own errors
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
    tensors = quantize_state_dict(state, group_size=group_size, asymmetric=asymmetric, int8_embed=int8_embed,
                                  scale_dtype=sdt)
    q = dict(format=FORMAT, method=method, group_size=group_size, scheme="asymmetric" if asymmetric else "symmetric",
             embed="int8" if int8_embed else "int4", scale_dtype=_scale_dtype_name(sdt),
             layout="qweight uint8 [out, in/2] low nibble = even k; scales/zeros [in/group, out]",
             quantized=sum(map(is_quantized_name, state)))
    if method == "gptq":
        if "config" not in meta:
            raise ValueError(f"{src}: --method gptq runs the model, so the checkpoint needs its "
                             f"config in the metadata (key 'config')")
        from model.gptq import gptq_checkpoint_tensors

        calib_config = calib_config or Path(src).parent / "state.json"
        cfg = ModelConfig(**json.loads(meta["config"]))
        gptq, q["calibration"] = gptq_checkpoint_tensors(
            state, weights_from_tensors(tensors, q, cfg=cfg, path=dst, impl="reference"), cfg,
            calib_config, calib_batches, group_size=group_size, asymmetric=asymmetric, scale_dtype=sdt)
        tensors.update(gptq)
    meta[QUANT_KEY] = json.dumps(q)
    dst = Path(dst)
    write_bytes_atomic(dst, st_save(tensors, metadata=meta))
    return dst


def is_quantized(path) -> bool:
    """Whether the safetensors file at ``path`` is an int4 checkpoint (its metadata says so)."""
    from safetensors import safe_open

    check_file(path)
    with safe_open(str(path), framework="pt") as f:
        return QUANT_KEY in (f.metadata() or {})


def load_quantized(path, *, impl: str = "triton", dtype=torch.float32, blocks=None) -> tuple[dict, dict]:
    """(name -> QuantizedWeight | QuantizedEmbedding | float tensor, quantization metadata) of a
    quantized file, every tensor checked first (``check_quantized_tensors``). The embedding stays
    packed (``QuantizedEmbedding``, compute dtype ``dtype``); norms are cast to ``dtype``."""
    from safetensors import safe_open

    check_file(path)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if QUANT_KEY not in meta:
        raise ValueError(f"{path} is not a quantized checkpoint (no {QUANT_KEY!r} metadata)")
    q = json.loads(meta[QUANT_KEY])
    if q.get("format") not in FORMATS:
        raise ValueError(f"{path}: unknown quantized format ({describe(q)}); this code reads {FORMATS}")
    cfg = None
    if "config" in meta:
        from model.checkpoint import read_config

        cfg = read_config(path)
    return weights_from_tensors(load_file(str(path)), q, cfg=cfg, path=path, impl=impl, dtype=dtype,
                                blocks=blocks), q


def check_quantized_tensors(tensors: dict, q: dict, cfg: Optional[ModelConfig] = None, path="checkpoint") -> None:
    """Refuse, naming the tensor and ``path``, any tensor of a quantized checkpoint that is not
    what ``q`` (its "quantization" record) and ``param_specs(cfg)`` say: per quantized matrix
    [out, in], <name>.qweight uint8 [out, in // 2], .scales [in // group_size, out] in the
    recorded scale dtype (float16 for files without one), .zeros the same iff asymmetric (an int8
    embedding: qweight int8 [vocab, width], scales [vocab]); every other parameter float with its
    spec's shape; no missing or extra tensor. cfg None (a file without a config): the matrices'
    shapes are taken from their qweights, the rest is checked the same."""
    g = q.get("group_size")
    if isinstance(g, bool) or not isinstance(g, int):
        raise ValueError(f"{path}: metadata group_size must be an int, got {g!r}")
    scheme, embed = q.get("scheme"), q.get("embed", "int4")
    if scheme not in ("symmetric", "asymmetric") or embed not in ("int4", "int8"):
        raise ValueError(f"{path}: metadata scheme must be symmetric/asymmetric and embed int4/int8, "
                         f"got {scheme!r}, {embed!r}")
    sname = q.get("scale_dtype", "float16")
    if sname not in SCALE_DTYPES:
        raise ValueError(f"{path}: metadata scale_dtype must be one of {sorted(SCALE_DTYPES)}, got {sname!r}")
    sdt = SCALE_DTYPES[sname]
    if cfg is not None:
        shapes = {n: tuple(shape) for n, (shape, _) in param_specs(cfg).items()}
    else:  # the matrices' shapes from their qweights, the rest from the tensors themselves
        shapes = {n: tuple(t.shape) for n, t in tensors.items() if not n.endswith(SUFFIXES)}
        for n, t in tensors.items():
            if n.endswith(".qweight") and t.ndim == 2:
                base = n[:-len(".qweight")]
                shapes[base] = tuple(t.shape) if t.dtype == torch.int8 else (t.shape[0], t.shape[1] * 2)

    def want(tname, shape, dtype):
        t = tensors.get(tname)
        if t is None:
            raise ValueError(f"{path}: no tensor {tname!r} (expected {dtype} {list(shape)} for {describe(q)})")
        if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
            raise ValueError(f"{path}: tensor {tname!r} must be {dtype} {list(shape)} ({describe(q)}), "
                             f"got {t.dtype} {list(t.shape)}")

    expected = set()
    for name, shape in shapes.items():
        if not is_quantized_name(name):
            expected.add(name)
            t = tensors.get(name)
            if t is None or tuple(t.shape) != shape or not t.is_floating_point():
                got = "nothing" if t is None else f"{t.dtype} {list(t.shape)}"
                raise ValueError(f"{path}: tensor {name!r} must be a float {list(shape)}, got {got}")
            continue
        out, k = shape
        if name == EMBED and embed == "int8":
            want(name + ".qweight", (out, k), torch.int8)
            want(name + ".scales", (out,), sdt)
            expected |= {name + ".qweight", name + ".scales"}
            continue
        try:
            check_group_size(g, k)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: metadata group_size {g} does not fit {name!r} [{out}, {k}]: {e}") from None
        want(name + ".qweight", (out, k // 2), torch.uint8)
        want(name + ".scales", (k // g, out), sdt)
        expected |= {name + ".qweight", name + ".scales"}
        if scheme == "asymmetric":
            want(name + ".zeros", (k // g, out), sdt)
            expected.add(name + ".zeros")
    extra = sorted(set(tensors) - expected)
    if extra:
        raise ValueError(f"{path}: tensor {extra[0]!r} is not expected in this checkpoint ({describe(q)}; "
                         f"{len(extra)} unexpected tensor(s) in all)")


def weights_from_tensors(tensors: dict, q: dict, *, cfg: Optional[ModelConfig] = None, path="checkpoint",
                         impl: str = "triton", dtype=torch.float32, blocks=None) -> dict:
    """name -> QuantizedWeight | QuantizedEmbedding | float tensor of a quantized checkpoint's
    tensors (``load_quantized``), checked first against ``q`` and ``param_specs(cfg)``
    (``check_quantized_tensors``; ``path`` names the file in errors); ``blocks``: the int4
    tiles (None, an Int4Blocks or "autotune"; triton only), also the int4 head's."""
    check_quantized_tensors(tensors, q, cfg, path)
    out = {}
    for name in sorted({n.rsplit(".", 1)[0] for n in tensors if n.endswith(".qweight")}):
        qw, s, z = (tensors.get(name + sfx) for sfx in SUFFIXES)
        if name == EMBED:
            fmt = "int8" if qw.dtype == torch.int8 else "int4"
            out[name] = QuantizedEmbedding(qw, s, z, q["group_size"], fmt, dtype=dtype, impl=impl,
                                           blocks=blocks if fmt == "int4" else None)
        else:
            out[name] = QuantizedWeight(qw, s, z, q["group_size"], impl, blocks)
    out.update({n: t.to(dtype) for n, t in tensors.items() if not n.endswith(SUFFIXES)})
    return out


def load_quantized_torch(path, kernels=None, *, impl: str = "triton", dtype=torch.float32, blocks=None):
    """A ``GeminiModel`` from a quantized checkpoint: projections run ``int4_matmul`` (with
    ``blocks``: None, an Int4Blocks or "autotune"; impl="triton" only); the embedding stays
    packed (``QuantizedEmbedding``: the lookup dequantizes the tokens' rows, the tied head runs
    on the packed table), norms in ``dtype``. What it holds is ``quantized_size_bytes``."""
    from model.checkpoint import read_config
    from model.torch_model import GeminiModel

    cfg = read_config(path)
    tensors, _ = load_quantized(path, impl=impl, dtype=dtype, blocks=blocks)
    model = GeminiModel(cfg, kernels, seed=None)
    for name, module in list(model.named_modules()):
        key = f"{name}.weight"
        if isinstance(tensors.get(key), (QuantizedWeight, QuantizedEmbedding)):
            del module._parameters["weight"]
            module.weight = tensors.pop(key)
    missing = set(dict(model.named_parameters())) - set(tensors)
    if missing:
        raise ValueError(f"{path}: no tensor for {sorted(missing)[0]} (of {len(missing)} missing)")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.data = tensors[name].to(dtype)  # the norms, in dtype (no float32 copy left behind)
    return model


def load_quantized_jax(path, *, impl: str = "pallas", dtype=None):
    """(params, cfg) for ``model.jax_model``: projections as QuantizedWeightJax (int4_matmul), the
    embedding packed as QuantizedEmbeddingJax (compute dtype ``dtype``, default float32)."""
    import jax.numpy as jnp

    from model.checkpoint import read_config

    dtype = np.dtype(jnp.float32 if dtype is None else dtype)
    tensors, q = load_quantized(path, impl="reference")
    qt, qe = __getattr__("QuantizedWeightJax"), __getattr__("QuantizedEmbeddingJax")

    def j(t):  # torch -> jax, bf16 through float32 (numpy has no bfloat16)
        if t is None:
            return None
        return jnp.asarray(t.float().numpy()).astype(jnp.bfloat16) if t.dtype == torch.bfloat16 \
            else jnp.asarray(t.numpy())

    def convert(n, t):
        if isinstance(t, QuantizedWeight):
            return qt(j(t.qweight), j(t.scales), j(t.zeros), q["group_size"], impl)
        if isinstance(t, QuantizedEmbedding):
            return qe(j(t.qweight), j(t.scales), j(t.zeros), q["group_size"], t.fmt, dtype, impl)
        return j(t).astype(dtype)

    return {n: convert(n, t) for n, t in tensors.items()}, read_config(path)


# --- size and quality ----------------------------------------------------------------------

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
    ap.add_argument("--scale-dtype", default="float16", choices=sorted(SCALE_DTYPES),
                    help="dtype of every scale and zero point (the kernels read both)")
    a = ap.parse_args(argv)
    if a.calib_batches < 1:
        ap.error(f"--calib-batches must be >= 1, got {a.calib_batches}")
    try:
        dst = quantize_checkpoint(a.ckpt, a.out, group_size=a.group_size, asymmetric=a.asymmetric,
                                  int8_embed=a.int8_embed, method=a.method, calib_batches=a.calib_batches,
                                  calib_config=a.calib_config, scale_dtype=a.scale_dtype)
    except (ValueError, FileNotFoundError, IsADirectoryError) as e:  # bad arguments / checkpoint
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {dst} ({os.path.getsize(dst) / 1e6:.1f} MB; input {os.path.getsize(a.ckpt) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
