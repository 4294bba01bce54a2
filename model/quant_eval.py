"""What int4 costs a trained model: held-out retrieval accuracy and logits KL, float vs int4.

    python -m model.quant_eval TRAIN_RESULTS.json CKPT [--group-size 128] [--asymmetric]
                               [--impl reference|triton] [--batches 8] [--out-dir benchmarks/results]
                               [--methods rtn|gptq ...] [--calib-batches 8] [--int8-embed]
                               [--scale-dtype float16|bfloat16]

TRAIN_RESULTS.json is the results file ``python -m model.train`` wrote (it names the data
task and seed); CKPT is that run's model checkpoint (``<checkpoint.dir>/step_N/model.safetensors``
or a ``model/checkpoint.py`` file). What is evaluated is exactly what ``python -m
model.quantize`` writes: per method, ``quantize_checkpoint`` (the CLI's function and options:
int4 embedding unless --int8-embed) into a temporary file, loaded back with
``load_quantized_torch`` (embedding / tied head packed, projections through int4_matmul).
The float model and each quantized one are evaluated on the same held-out batches with the
training code's answer-level accuracy; the KL is KL(float || quantized) per target position,
in nats. ``--impl triton`` runs int4_matmul through the Triton kernel (interpret mode on CPU:
slow); ``reference`` dequantizes in plain torch, the same arithmetic. Recorded: the file's
"quantization" metadata (format, method, embed, scale_dtype, calibration), its weight bytes
(``quantized_weight_bytes``: the file's tensors, checked equal to ``quantized_size_bytes``)
and the loaded model's (``resident_weight_bytes``). A results file with provenance is written
atomically: ``quant-eval-<model>-<stamp>.json`` for round-to-nearest alone (schema 2),
``quant-eval-<model>-rtn-vs-gptq-g<G>-<sym|asym>-<stamp>.json`` for several methods
(``compare``: the float model once, then per method its accuracy, drop and KL, and
"gptq_vs_rtn"). GPTQ (``model/gptq.py``, sequential) calibrates on --calib-batches batches of
the training data's train split (TRAIN_RESULTS is its --calib-config); the held-out batches
are the eval split, as for RTN. Schema 1 files (before 2026-11-27) evaluated a model whose
embedding stayed float while their bytes counted it int4.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile

import json

import numpy as np
import torch

from model import losses
from model.checkpoint import load_into_torch, read_config
from model.config import KernelConfig
from model.gptq import training_source
from model.quantize import (METHODS, QUANT_KEY, SCALE_DTYPES, load_quantized_torch, logits_kl,
                            quantize_checkpoint, quantized_size_bytes)
from model.torch_model import GeminiModel
from model.train import evaluate


class _Evaluator:
    """The piece of a trainer that ``model.train.evaluate`` calls, over a fixed model."""

    def __init__(self, model):
        self.model = model.eval()
        self.logits = []

    def eval_batch(self, b):
        inputs, targets, mask = (torch.as_tensor(x) for x in (b.inputs, b.targets, b.mask))
        with torch.no_grad():
            logits = self.model(inputs.long()).float()
        self.logits.append((logits, mask.bool()))
        nll = losses.torch_masked_cross_entropy(logits, targets.long(), mask.bool(), normalizer=1.0)
        return float(nll), logits.argmax(-1).numpy()


def _weight_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _quantize(ckpt: str, train_results: str, method: str, folder: str, *, group_size: int, asymmetric: bool,
              int8_embed: bool, scale_dtype: str, impl: str, calib_batches: int) -> tuple[torch.nn.Module, dict, int]:
    """(the model ``python -m model.quantize`` CKPT OUT [options] writes, loaded back; its "quantization"
    record; the file's weight bytes) for method "rtn" or "gptq"."""
    from safetensors import safe_open

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    path = quantize_checkpoint(ckpt, os.path.join(folder, f"{method}.safetensors"), group_size=group_size,
                               asymmetric=asymmetric, int8_embed=int8_embed, method=method,
                               calib_batches=calib_batches, calib_config=train_results, scale_dtype=scale_dtype)
    with safe_open(str(path), framework="pt") as f:
        q = json.loads(f.metadata()[QUANT_KEY])
        file_bytes = _weight_bytes(f.get_tensor(n) for n in f.keys())
    model = load_quantized_torch(str(path), KernelConfig(preset="reference"), impl=impl)
    return model, {"impl": impl, **q}, file_bytes


def compare(train_results: str, ckpt: str, *, methods=("rtn", "gptq"), group_size: int = 128,
            asymmetric: bool = False, impl: str = "reference", batches: int = 8,
            calib_batches: int = 8, int8_embed: bool = False, scale_dtype: str = "float16") -> dict:
    """The float model and each method's quantized file (as the CLI writes it) on the same
    held-out batches."""
    source, batch_size, desc = training_source(train_results)
    if desc["data"]["kind"] != "retrieval":
        raise ValueError(f"{train_results}: data.kind must be 'retrieval' for a retrieval accuracy, "
                         f"got {desc['data']['kind']!r}")
    cfg = read_config(ckpt)
    model = GeminiModel(cfg, KernelConfig(preset="reference"))
    load_into_torch(model, ckpt)
    f_eval = _Evaluator(model)
    f_acc = evaluate(f_eval, source, batches, batch_size)
    embed = "int8" if int8_embed else "int4"
    float_bytes = {p.element_size() for p in model.parameters()}
    if len(float_bytes) != 1:
        raise ValueError(f"{ckpt}: parameters of mixed dtypes, the byte count assumes one float dtype")
    want = quantized_size_bytes(cfg, group_size, asymmetric=asymmetric, embed=embed, float_bytes=float_bytes.pop())
    out, sizes = {}, set()
    with tempfile.TemporaryDirectory(prefix="quant-eval-") as folder:
        for method in methods:
            qmodel, quant, file_bytes = _quantize(ckpt, train_results, method, folder, group_size=group_size,
                                                  asymmetric=asymmetric, int8_embed=int8_embed,
                                                  scale_dtype=scale_dtype, impl=impl, calib_batches=calib_batches)
            resident = _weight_bytes(list(qmodel.parameters()) + list(qmodel.buffers()))
            if file_bytes != want:
                raise AssertionError(f"{method}: the file holds {file_bytes} weight bytes, quantized_size_bytes "
                                     f"says {want} ({embed} embedding)")
            sizes.add((file_bytes, resident))
            q_eval = _Evaluator(qmodel)
            q_acc = evaluate(q_eval, source, batches, batch_size)
            kl = [logits_kl(fl[m], ql[m]) for (fl, m), (ql, _) in zip(f_eval.logits, q_eval.logits)]
            out[method] = {"int4": q_acc, "accuracy_drop_points": 100 * (f_acc["accuracy"] - q_acc["accuracy"]),
                           "logits_kl_nats": float(np.mean(kl)), "quantization": quant}
    (file_bytes, resident), = sizes  # the same format for every method
    res = {"float": f_acc, "methods": out, "embed": embed, "scale_dtype": scale_dtype,
           "quantized_weight_bytes": file_bytes, "resident_weight_bytes": resident,
           "model": cfg.to_dict(), "train_results": os.path.basename(train_results), "checkpoint": ckpt}
    if {"rtn", "gptq"} <= set(out):
        res["gptq_vs_rtn"] = {
            "accuracy_gain_points": out["rtn"]["accuracy_drop_points"] - out["gptq"]["accuracy_drop_points"],
            "logits_kl_ratio": out["gptq"]["logits_kl_nats"] / out["rtn"]["logits_kl_nats"]}
    return res


def run(train_results: str, ckpt: str, *, group_size: int = 128, asymmetric: bool = False,
        impl: str = "reference", batches: int = 8, method: str = "rtn", calib_batches: int = 8,
        int8_embed: bool = False, scale_dtype: str = "float16") -> dict:
    """One method's record (the single-method layout): float, int4, drop, KL, quantization."""
    res = compare(train_results, ckpt, methods=(method,), group_size=group_size, asymmetric=asymmetric,
                  impl=impl, batches=batches, calib_batches=calib_batches, int8_embed=int8_embed,
                  scale_dtype=scale_dtype)
    m = res.pop("methods")[method]
    return {"float": res.pop("float"), "int4": m["int4"], "accuracy_drop_points": m["accuracy_drop_points"],
            "logits_kl_nats": m["logits_kl_nats"], **res, "quantization": m["quantization"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("train_results")
    ap.add_argument("ckpt")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--asymmetric", action="store_true")
    ap.add_argument("--impl", default="reference", choices=["reference", "triton"])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--methods", nargs="+", default=["rtn"], choices=METHODS,
                    help="one: the single-method file; several: one comparison file")
    ap.add_argument("--calib-batches", type=int, default=8, help="gptq: train-split batches (>= 1)")
    ap.add_argument("--int8-embed", action="store_true", help="embedding int8 per row (else int4), as the CLI")
    ap.add_argument("--scale-dtype", default="float16", choices=sorted(SCALE_DTYPES))
    ap.add_argument("--out-dir", default="benchmarks/results")
    args = ap.parse_args(argv)
    if args.calib_batches < 1:
        ap.error(f"--calib-batches must be >= 1, got {args.calib_batches}")
    from benchmarks.hardware import detect_device
    from benchmarks.results import git_commit, library_versions, write_json_atomic

    opts = dict(group_size=args.group_size, asymmetric=args.asymmetric, impl=args.impl, batches=args.batches,
                calib_batches=args.calib_batches, int8_embed=args.int8_embed, scale_dtype=args.scale_dtype)
    single = len(args.methods) == 1
    res = (run(args.train_results, args.ckpt, method=args.methods[0], **opts) if single
           else compare(args.train_results, args.ckpt, methods=tuple(args.methods), **opts))
    stamp = dt.datetime.now(dt.timezone.utc)
    kind = "" if single and args.methods == ["rtn"] else "-" + "-vs-".join(args.methods) + \
        f"-g{args.group_size}-{'asym' if args.asymmetric else 'sym'}"
    payload = {"schema": "gemini-kernels-quant-eval/2" if single else "gemini-kernels-quant-eval-compare/2",
               "created_utc": stamp.isoformat(timespec="seconds"), "device": detect_device().to_dict(),
               "commit": git_commit(), "versions": library_versions(), **res}
    path = write_json_atomic(os.path.join(args.out_dir, f"quant-eval-{cfg_name(res)}{kind}-"
                                          f"{stamp.strftime('%Y%m%dT%H%M%SZ')}.json"), payload)
    for method, m in ({args.methods[0]: res} if single else res["methods"]).items():
        print(f"{method}: float accuracy {res['float']['accuracy']:.4f}, int4 accuracy {m['int4']['accuracy']:.4f} "
              f"({m['accuracy_drop_points']:+.2f} points drop), logits KL {m['logits_kl_nats']:.3e} nats")
    print(f"results: {path}")


def cfg_name(res: dict) -> str:
    return res["model"]["name"]


if __name__ == "__main__":
    main()
