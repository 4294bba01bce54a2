"""What int4 costs a trained model: held-out retrieval accuracy and logits KL, float vs int4.

    python -m model.quant_eval TRAIN_RESULTS.json CKPT [--group-size 128] [--asymmetric]
                               [--impl reference|triton] [--batches 8] [--out-dir benchmarks/results]
                               [--methods rtn|gptq ...] [--calib-batches 8]

TRAIN_RESULTS.json is the results file ``python -m model.train`` wrote (it names the data
task and seed); CKPT is that run's model checkpoint (``<checkpoint.dir>/step_N/model.safetensors``
or a ``model/checkpoint.py`` file). The float model and its round-to-nearest int4 copy
(``model.quantize.quantize_torch_model``) are evaluated on the same held-out batches with the
training code's answer-level accuracy; the KL is KL(float || int4) per target position, in
nats. ``--impl triton`` runs the projections through the Triton int4 kernel (interpret mode
on CPU: slow); ``reference`` dequantizes in plain torch, the same arithmetic. A results file
with provenance is written atomically: ``quant-eval-<model>-<stamp>.json`` for round-to-nearest
alone (schema 1), ``quant-eval-<model>-rtn-vs-gptq-g<G>-<sym|asym>-<stamp>.json`` for several
methods (``compare``: the float model once, then per method its accuracy, drop and KL, and
"gptq_vs_rtn"). GPTQ (``model/gptq.py``, sequential) calibrates on --calib-batches batches of
the training data's train split; the held-out batches are the eval split, as for RTN.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import os

import numpy as np
import torch

from model import losses
from model.checkpoint import load_into_torch, read_config
from model.config import KernelConfig
from model.gptq import calibration_tokens, gptq_torch_model, training_source
from model.quantize import METHODS, logits_kl, quantize_torch_model, quantized_size_bytes
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


def _quantize(model, method: str, source, batch_size: int, *, group_size: int, asymmetric: bool,
              impl: str, calib_batches: int) -> tuple[torch.nn.Module, dict]:
    """(quantized copy of model, its "quantization" record) for method "rtn" or "gptq"."""
    q = {"group_size": group_size, "scheme": "asymmetric" if asymmetric else "symmetric", "impl": impl,
         "rounding": "nearest" if method == "rtn" else method}
    if method == "rtn":
        return quantize_torch_model(copy.deepcopy(model), group_size, asymmetric=asymmetric, impl=impl), q
    if method != "gptq":
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    tokens = calibration_tokens(source, calib_batches, batch_size)
    qmodel, report = gptq_torch_model(copy.deepcopy(model), tokens, group_size, asymmetric=asymmetric, impl=impl)
    q["calibration"] = {"batches": calib_batches, "batch_size": batch_size, "split": "train",
                        "percdamp": 0.01, "blocksize": 128, "act_order": False, "order": "sequential"}
    q["layer_output_error"] = report  # per projection, on its calibration inputs: rtn vs gptq
    return qmodel, q


def compare(train_results: str, ckpt: str, *, methods=("rtn", "gptq"), group_size: int = 128,
            asymmetric: bool = False, impl: str = "reference", batches: int = 8,
            calib_batches: int = 8) -> dict:
    """The float model and each method's int4 copy on the same held-out batches."""
    source, batch_size, desc = training_source(train_results)
    if desc["data"]["kind"] != "retrieval":
        raise ValueError(f"{train_results}: data.kind must be 'retrieval' for a retrieval accuracy, "
                         f"got {desc['data']['kind']!r}")
    cfg = read_config(ckpt)
    model = GeminiModel(cfg, KernelConfig(preset="reference"))
    load_into_torch(model, ckpt)
    f_eval = _Evaluator(model)
    f_acc = evaluate(f_eval, source, batches, batch_size)
    out = {}
    for method in methods:
        qmodel, quant = _quantize(model, method, source, batch_size, group_size=group_size,
                                  asymmetric=asymmetric, impl=impl, calib_batches=calib_batches)
        q_eval = _Evaluator(qmodel)
        q_acc = evaluate(q_eval, source, batches, batch_size)
        kl = [logits_kl(fl[m], ql[m]) for (fl, m), (ql, _) in zip(f_eval.logits, q_eval.logits)]
        out[method] = {"int4": q_acc, "accuracy_drop_points": 100 * (f_acc["accuracy"] - q_acc["accuracy"]),
                       "logits_kl_nats": float(np.mean(kl)), "quantization": quant}
    res = {"float": f_acc, "methods": out,
           "quantized_weight_bytes": quantized_size_bytes(cfg, group_size, asymmetric=asymmetric),
           "model": cfg.to_dict(), "train_results": os.path.basename(train_results), "checkpoint": ckpt}
    if {"rtn", "gptq"} <= set(out):
        res["gptq_vs_rtn"] = {
            "accuracy_gain_points": out["rtn"]["accuracy_drop_points"] - out["gptq"]["accuracy_drop_points"],
            "logits_kl_ratio": out["gptq"]["logits_kl_nats"] / out["rtn"]["logits_kl_nats"]}
    return res


def run(train_results: str, ckpt: str, *, group_size: int = 128, asymmetric: bool = False,
        impl: str = "reference", batches: int = 8, method: str = "rtn", calib_batches: int = 8) -> dict:
    """One method's record (the schema-1 layout): float, int4, drop, KL, quantization."""
    res = compare(train_results, ckpt, methods=(method,), group_size=group_size, asymmetric=asymmetric,
                  impl=impl, batches=batches, calib_batches=calib_batches)
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
    ap.add_argument("--out-dir", default="benchmarks/results")
    args = ap.parse_args(argv)
    if args.calib_batches < 1:
        ap.error(f"--calib-batches must be >= 1, got {args.calib_batches}")
    from benchmarks.hardware import detect_device
    from benchmarks.results import git_commit, library_versions, write_json_atomic

    opts = dict(group_size=args.group_size, asymmetric=args.asymmetric, impl=args.impl, batches=args.batches,
                calib_batches=args.calib_batches)
    single = len(args.methods) == 1
    res = (run(args.train_results, args.ckpt, method=args.methods[0], **opts) if single
           else compare(args.train_results, args.ckpt, methods=tuple(args.methods), **opts))
    stamp = dt.datetime.now(dt.timezone.utc)
    kind = "" if single and args.methods == ["rtn"] else "-" + "-vs-".join(args.methods) + \
        f"-g{args.group_size}-{'asym' if args.asymmetric else 'sym'}"
    payload = {"schema": "gemini-kernels-quant-eval/1" if single else "gemini-kernels-quant-eval-compare/1",
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
