"""What int4 costs a trained model: held-out retrieval accuracy and logits KL, float vs int4.

    python -m model.quant_eval TRAIN_RESULTS.json CKPT [--group-size 128] [--asymmetric]
                               [--impl reference|triton] [--batches 8] [--out-dir benchmarks/results]

TRAIN_RESULTS.json is the results file ``python -m model.train`` wrote (it names the data
task and seed); CKPT is that run's model checkpoint (``<checkpoint.dir>/step_N/model.safetensors``
or a ``model/checkpoint.py`` file). The float model and its round-to-nearest int4 copy
(``model.quantize.quantize_torch_model``) are evaluated on the same held-out batches with the
training code's answer-level accuracy; the KL is KL(float || int4) per target position, in
nats. ``--impl triton`` runs the projections through the Triton int4 kernel (interpret mode
on CPU: slow); ``reference`` dequantizes in plain torch, the same arithmetic. A results file
with provenance is written atomically.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os

import numpy as np
import torch

from model import losses
from model.checkpoint import load_into_torch, read_config
from model.config import KernelConfig
from model.data import make_source
from model.quantize import logits_kl, quantize_torch_model, quantized_size_bytes
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


def run(train_results: str, ckpt: str, *, group_size: int = 128, asymmetric: bool = False,
        impl: str = "reference", batches: int = 8) -> dict:
    with open(train_results) as f:
        tres = json.load(f)
    tcfg = tres["config"]
    if tcfg["data"]["kind"] != "retrieval":
        raise ValueError(f"{train_results}: data.kind must be 'retrieval' for a retrieval accuracy, "
                         f"got {tcfg['data']['kind']!r}")
    cfg = read_config(ckpt)
    model = GeminiModel(cfg, KernelConfig(preset="reference"))
    load_into_torch(model, ckpt)
    qmodel = quantize_torch_model(copy.deepcopy(model), group_size, asymmetric=asymmetric, impl=impl)
    source = make_source("retrieval", seed=tcfg["seed"], retrieval=tcfg["data"]["retrieval"], text={})
    bs = tcfg["batch_size"]
    f_eval, q_eval = _Evaluator(model), _Evaluator(qmodel)
    f_acc = evaluate(f_eval, source, batches, bs)
    q_acc = evaluate(q_eval, source, batches, bs)
    kl = [logits_kl(fl[m], ql[m]) for (fl, m), (ql, _) in zip(f_eval.logits, q_eval.logits)]
    return {
        "float": f_acc, "int4": q_acc,
        "accuracy_drop_points": 100 * (f_acc["accuracy"] - q_acc["accuracy"]),
        "logits_kl_nats": float(np.mean(kl)),
        "quantized_weight_bytes": quantized_size_bytes(cfg, group_size, asymmetric=asymmetric),
        "model": cfg.to_dict(),
        "quantization": {"group_size": group_size, "scheme": "asymmetric" if asymmetric else "symmetric",
                         "impl": impl, "rounding": "nearest"},
        "train_results": os.path.basename(train_results), "checkpoint": ckpt,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("train_results")
    ap.add_argument("ckpt")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--asymmetric", action="store_true")
    ap.add_argument("--impl", default="reference", choices=["reference", "triton"])
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--out-dir", default="benchmarks/results")
    args = ap.parse_args(argv)
    from benchmarks.hardware import detect_device
    from benchmarks.results import git_commit, library_versions, write_json_atomic

    res = run(args.train_results, args.ckpt, group_size=args.group_size, asymmetric=args.asymmetric,
              impl=args.impl, batches=args.batches)
    stamp = dt.datetime.now(dt.timezone.utc)
    payload = {"schema": "gemini-kernels-quant-eval/1", "created_utc": stamp.isoformat(timespec="seconds"),
               "device": detect_device().to_dict(), "commit": git_commit(), "versions": library_versions(),
               **res}
    path = write_json_atomic(os.path.join(args.out_dir, f"quant-eval-{cfg_name(res)}-"
                                          f"{stamp.strftime('%Y%m%dT%H%M%SZ')}.json"), payload)
    print(f"float accuracy {res['float']['accuracy']:.4f}, int4 accuracy {res['int4']['accuracy']:.4f} "
          f"({res['accuracy_drop_points']:+.2f} points drop), logits KL {res['logits_kl_nats']:.3e} nats")
    print(f"results: {path}")


def cfg_name(res: dict) -> str:
    return res["model"]["name"]


if __name__ == "__main__":
    main()
