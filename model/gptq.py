"""GPTQ calibration (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers") into the same packed int4 format as round-to-nearest.

    gptq_quantize(w, H, group_size)        one Linear weight [out, in] -> (qweight, scales, zeros)
    gptq_torch_model(model, tokens, ...)   every projection of a GeminiModel, block by block

Per weight, with H = 2 X^T X / n over the layer's calibration inputs X [n, in] (float64):
dead columns (H[i, i] = 0) get H[i, i] = 1 and W[:, i] = 0; H += percdamp * mean(diag H) * I;
U = the upper Cholesky factor of H^-1. Columns are quantized left to right; each column's
error, divided by U[i, i], is spread onto the columns not yet quantized through row i of U
(optimal brain surgeon update), within a block of ``blocksize`` columns at once and onto the
columns after the block in one lazy matmul. A group's scale / zero (``kernels.int4.reference.
group_params``, the RTN formulas) is computed when its first column comes up, from the
weights as the updates so far left them, as in the reference implementation. Codes, scales
and zeros land in the layout of ``kernels/int4/spec.py``: every kernel and loader reads them.
No act-order (quantizing columns by decreasing H[i, i]): it would mix groups across the
permutation, which the contiguous group layout cannot express.

Sequential (as in GPTQ): block i's projections are calibrated on the outputs of blocks < i
already quantized; inside a block in the order q/k/v, o, gate/up, down, each sub-group's
inputs recomputed through the projections quantized before it. The PyTorch model's block
API is used directly (``model.model.embed_tokens``, ``model.model.layers``). W and the
updates run in float32 on CPU, H and its factorization in float64. With a diagonal H there is
nothing to compensate and the result is round-to-nearest exactly.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from kernels.int4.reference import SYMMETRIC_ZERO, group_params, pack_int4, quantize_codes
from kernels.int4.spec import check_group_size
from model.quantize import QuantizedWeight, is_quantized_name

# one block's projections in data-flow order: each sub-group shares its input
SEQUENCE = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
            ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, group_size: int = 128, *,
                  asymmetric: bool = False, percdamp: float = 0.01, blocksize: int = 128,
                  scale_dtype: torch.dtype = torch.float16):
    """GPTQ of w [out, in] for H [in, in] -> (packed uint8 [out, in // 2], scales [in // g, out],
    zeros [in // g, out] or None), the return of ``quantize_int4``."""
    out, k = w.shape
    g = check_group_size(group_size, k)
    if tuple(hessian.shape) != (k, k):
        raise ValueError(f"hessian must be [in, in] = [{k}, {k}] for w {tuple(w.shape)}, "
                         f"got {tuple(hessian.shape)}")
    if percdamp < 0:
        raise ValueError(f"percdamp must be >= 0, got {percdamp}")
    if blocksize < 1 or (blocksize % g and g % blocksize):
        raise ValueError(f"{blocksize=} and {group_size=} must divide one another (a group starts at a "
                         f"block start or inside one block)")
    W = w.detach().to(torch.float32).clone()
    H = hessian.detach().to(torch.float64).clone()
    dead = H.diagonal() == 0  # inputs that are always 0: any value is exact, store 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(percdamp * H.diagonal().mean())
    try:
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError as e:
        raise ValueError(f"hessian is not positive definite after dampening ({percdamp=}); "
                         f"raise percdamp") from e
    U = U.to(torch.float32)  # H^-1 = U^T U
    Q = torch.empty_like(W)  # codes [out, in]
    scales = W.new_empty(k // g, out)
    zeros = W.new_empty(k // g, out) if asymmetric else None
    for i1 in range(0, k, blocksize):
        i2 = min(i1 + blocksize, k)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if col % g == 0:  # this group's columns as compensated so far (a group past the
                cur = torch.cat([W1[:, i:i + g], W[:, i2:col + g]], 1)  # block starts it: i = 0)
                scale, zero = group_params(cur, asymmetric=asymmetric, scale_dtype=scale_dtype)
                scales[col // g] = scale
                if asymmetric:
                    zeros[col // g] = zero
            q = quantize_codes(W1[:, i], scale, zero)  # [out]
            Q[:, col] = q
            deq = (q - (SYMMETRIC_ZERO if zero is None else zero)) * scale
            err1[:, i] = (W1[:, i] - deq) / U1[i, i]
            W1[:, i:] -= err1[:, i, None] * U1[i, None, i:]
        W[:, i2:] -= err1 @ U[i1:i2, i2:]  # the lazy update of every later column
    return (pack_int4(Q).contiguous(), scales.to(scale_dtype),
            None if zeros is None else zeros.to(scale_dtype))


def output_error(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """||X W^T - X W_hat^T||^2 / ||X W^T||^2 through H = 2 X^T X / n (the ratio GPTQ lowers)."""
    d, w, h = (w - w_hat).double(), w.double(), hessian.double()
    return float(torch.einsum("oi,ij,oj->", d, h, d) / torch.einsum("oi,ij,oj->", w, h, w).clamp_min(1e-300))


def _accumulate(stats: dict, name: str, module, inputs, output) -> None:
    x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()  # (rows, in)
    xtx, n = stats.get(name, (0.0, 0))
    stats[name] = (xtx + x.T @ x, n + x.shape[0])


@torch.no_grad()
def gptq_torch_model(model: torch.nn.Module, tokens: list, group_size: int = 128, *,
                     asymmetric: bool = False, percdamp: float = 0.01, blocksize: int = 128,
                     impl: str = "triton", scale_dtype: torch.dtype = torch.float16) -> tuple[torch.nn.Module, dict]:
    """Replace, in place, every projection weight of a float GeminiModel with a GPTQ
    QuantizedWeight calibrated on ``tokens`` (a list of int [B, S] batches), sequentially (see
    the module docstring). The embedding is used as the model holds it. Returns (model,
    {weight name: {"rtn": e, "gptq": e}}), e = ``output_error`` on that layer's calibration inputs."""
    if len(tokens) < 1:
        raise ValueError(f"GPTQ needs at least one calibration batch, got {len(tokens)}")
    body, report = model.model, {}
    hs = [body.embed_tokens(t.long()) for t in tokens]  # (B, S, W) per batch
    pos = [torch.arange(t.shape[1])[None].expand(t.shape[0], -1) for t in tokens]
    for li, layer in enumerate(body.layers):
        have = {n for n, m in layer.named_modules() if isinstance(m._parameters.get("weight"), torch.nn.Parameter)
                and is_quantized_name(f"{n}.weight")}
        if have != set(sum(SEQUENCE, ())):
            raise ValueError(f"layer {li}: projections {sorted(have)} differ from the GPTQ order {SEQUENCE}")
        for group in SEQUENCE:
            stats = {}
            hooks = [layer.get_submodule(n).register_forward_hook(functools.partial(_accumulate, stats, n))
                     for n in group]
            try:
                for h, p in zip(hs, pos):
                    layer(h, p, None, None)
            finally:
                for hook in hooks:
                    hook.remove()
            for n in group:
                module, (xtx, rows) = layer.get_submodule(n), stats[n]
                H, w = 2.0 * xtx / rows, module.weight.detach()
                qw = QuantizedWeight(*gptq_quantize(w, H, group_size, asymmetric=asymmetric, percdamp=percdamp,
                                                    blocksize=blocksize, scale_dtype=scale_dtype),
                                     group_size, "reference")
                rtn = QuantizedWeight.quantize(w, group_size, asymmetric=asymmetric, impl="reference",
                                               scale_dtype=scale_dtype)
                report[f"model.layers.{li}.{n}.weight"] = {"rtn": output_error(w, rtn.dequantize(), H),
                                                           "gptq": output_error(w, qw.dequantize(), H)}
                del module._parameters["weight"]
                module.weight = qw  # later sub-groups and blocks see the quantized projection
        hs = [layer(h, p, None, None) for h, p in zip(hs, pos)]
    for m in model.modules():
        if isinstance(m, QuantizedWeight):
            m.impl = impl
    return model, report


def training_source(path) -> tuple[object, int, dict]:
    """(data source, batch size, its description) from a JSON file with the training config
    under "config": ``python -m model.train``'s results file or a checkpoint's state.json."""
    from model.data import make_source

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {str(path)!r} not found: pass the training run's "
                                f"results file or the checkpoint's state.json")
    tcfg = json.loads(path.read_text()).get("config")
    if not isinstance(tcfg, dict) or "data" not in tcfg:
        raise ValueError(f"{path}: no training config with a 'data' section under 'config'")
    data = tcfg["data"]
    source = make_source(data["kind"], seed=tcfg["seed"], retrieval=data.get("retrieval") or {},
                         text=data.get("text") or {})
    return source, int(tcfg["batch_size"]), {"data": data, "seed": tcfg["seed"], "from": path.name}


def check_calib_batches(batches) -> int:
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"calib_batches must be an int >= 1, got {batches!r}")
    return batches


def calibration_tokens(source, batches: int, batch_size: int) -> list[torch.Tensor]:
    """``batches`` token batches [batch_size, S] of the source's train split (never the held-out one)."""
    check_calib_batches(batches)
    return [torch.as_tensor(source.batch("train", i, batch_size).inputs).long() for i in range(batches)]


def gptq_checkpoint_tensors(state: dict, weights: dict, cfg, calib_config, calib_batches: int, *,
                            group_size: int = 128, asymmetric: bool = False, percdamp: float = 0.01,
                            blocksize: int = 128, scale_dtype: torch.dtype = torch.float16) -> tuple[dict, dict]:
    """(the GPTQ ``<name>.qweight/.scales/.zeros`` of every projection of the float checkpoint
    ``state``, scales in ``scale_dtype``, the "calibration" metadata). The calibration model's
    embedding is the one the quantized file will hold (``weights``: ``model.quantize.
    weights_from_tensors`` of its RTN tensors; its packed embedding dequantized here)."""
    from model.config import KernelConfig
    from model.quantize import EMBED
    from model.torch_model import GeminiModel

    source, batch_size, desc = training_source(calib_config)
    tokens = calibration_tokens(source, calib_batches, batch_size)
    model = GeminiModel(cfg, KernelConfig(preset="reference"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(weights[name].dequantize(torch.float32) if name == EMBED else state[name])
    model, report = gptq_torch_model(model, tokens, group_size, asymmetric=asymmetric, percdamp=percdamp,
                                     blocksize=blocksize, impl="reference", scale_dtype=scale_dtype)
    out = {}
    for name, m in model.named_modules():  # a QuantizedWeight's module path is its weight's name
        if isinstance(m, QuantizedWeight):
            out.update({name + ".qweight": m.qweight, name + ".scales": m.scales})
            if m.zeros is not None:
                out[name + ".zeros"] = m.zeros
    mean = lambda key: sum(r[key] for r in report.values()) / len(report)  # noqa: E731
    return out, dict(batches=calib_batches, batch_size=batch_size, split="train", **desc,
                     percdamp=percdamp, blocksize=blocksize, act_order=False, order="sequential",
                     embed="round-to-nearest", mean_layer_output_error={"rtn": mean("rtn"), "gptq": mean("gptq")})
