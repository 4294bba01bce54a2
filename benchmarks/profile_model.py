"""Where a model step's GPU time goes: torch.profiler over one step per kernel preset, the
device time summed by kernel name, grouped into a few families.

    python -m benchmarks.profile_model --out-dir DIR [--model nano1] [--seq 8192]
        [--mode train_step] [--impls triton,sdpa]

The step is the model suite's own (``benchmarks.suites.model``: the same weights, loss and
AdamW step, bf16), run twice to warm up, then once under the profiler. Writes a JSON file
(atomically, with device, versions and commit) and prints the top kernels per preset. The
times are the profiler's kernel durations, not the suite's timed medians. Needs a CUDA GPU;
``--smoke`` runs the tiny model on the CPU with the profiler's CPU op times (checks this script).
"""
from __future__ import annotations

import argparse
import datetime
import re

from benchmarks.hardware import detect_device
from benchmarks.results import git_commit, library_versions, results_path, write_json_atomic

FAMILIES = [  # first match wins; patterns over the lower-cased kernel name. The report derives
    # the families from the stored names with these (benchmarks.report.profile_table), so a fix
    # here also regroups older files. cuDNN's SDPA: flash_fprop / flash_bprop, and its backward's
    # helpers (dot_do_o, convert_dq, fmha_reduce_head); xformers / mem-efficient: fmha_cutlassF/B
    ("attention fwd", r"_attn_fwd|flash_fwd|fmha.*fwd|fmha_cutlassf|attention.*fwd|cudnn.*fprop"),
    ("attention bwd", r"_attn_bwd|flash_bwd|fmha.*bwd|fmha_cutlassb|attention.*bwd|cudnn.*(bprop|dgrad)"
                      r"|dot_do_o|convert_dq|fmha_reduce_head|dkdv|_bwd_dq"),
    ("cross-entropy", r"_ce_kernel|cross_entropy|log_softmax|nll_loss"),
    ("norms", r"norm"),
    ("rope", r"rope"),
    ("gelu / mlp act", r"gelu|geglu|gated"),
    ("gemm", r"gemm|nvjet|sm90_xmma|cutlass|cublas|matmul|xmma"),
    ("optimizer", r"adam|foreach|multi_tensor"),
]


def family(name: str) -> str:
    low = name.lower()
    for fam, pat in FAMILIES:
        if re.search(pat, low):
            return fam
    return "other"


def profile_step(step, warmup: int = 2, *, cuda: bool = True) -> list[dict]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        step()
        sync()
    rows = []
    for e in prof.key_averages():
        if cuda:
            us = getattr(e, "device_time_total", None)
            if us is None:
                us = getattr(e, "cuda_time_total", 0.0)
        else:
            us = e.self_cpu_time_total
        if us > 0:
            rows.append(dict(kernel=e.key, family=family(e.key), calls=e.count, ms=us / 1e3))
    return sorted(rows, key=lambda r: -r["ms"])


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--model", default="nano1")
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--mode", default="train_step", choices=["forward", "train_step"])
    ap.add_argument("--impls", default="triton,sdpa")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks this script")
    args = ap.parse_args(argv)
    import torch

    if args.smoke:
        args.model, args.seq, args.impls = "tiny", 64, "reference"
    elif not torch.cuda.is_available():
        raise SystemExit("benchmarks.profile_model needs a CUDA GPU (torch.cuda.is_available() is False); "
                         "--smoke checks the script on the CPU")
    from benchmarks.suites.model import Case, ModelBenchConfig, ModelSuite

    impls = [i for i in args.impls.split(",") if i]
    device = detect_device()
    dtype = "float32" if args.smoke else "bfloat16"
    cfg = ModelBenchConfig(model=args.model, batch=args.batch, seq_len=args.seq, modes=[args.mode],
                           dtype=dtype, torch_impls=impls, jax_impls=[])
    suite = ModelSuite(cfg, device, timer_factory=None)
    case = Case(args.model, args.mode, args.batch, args.seq, dtype)
    path = results_path(args.out_dir, "profile-" + device.name)
    payload = dict(schema="gemini-kernels-profile/1",
                   created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   device=device.to_dict(), commit=git_commit(), versions=library_versions(),
                   config=vars(args), case=case.id,
                   method=("torch.profiler CPU self times (smoke)" if args.smoke else
                           "torch.profiler kernel durations") + ", one step after 2 warm-ups",
                   profiles={})
    for impl in impls:
        _, step, _ = suite._torch(case, impl)
        rows = profile_step(step, cuda=not args.smoke)
        total = sum(r["ms"] for r in rows)
        fams: dict = {}
        for r in rows:
            fams[r["family"]] = fams.get(r["family"], 0.0) + r["ms"]
        payload["profiles"][impl] = dict(total_kernel_ms=total, families=fams, kernels=rows)
        if impl == "triton-autotune":  # the attention tiles its first step timed and picked
            from kernels.attention.triton_autotune import tuning_summary

            payload["profiles"][impl]["autotune"] = tuning_summary()
        write_json_atomic(path, payload)
        print(f"\n== {case.id} {impl}: {total:.1f} ms of kernels")
        for fam, ms in sorted(fams.items(), key=lambda kv: -kv[1]):
            print(f"  {fam:16s} {ms:9.2f} ms  {100 * ms / total:5.1f}%")
        for r in rows[:args.top]:
            print(f"    {r['ms']:9.2f} ms {r['calls']:5d}x  {r['kernel'][:90]}")
        del step
        suite._free()
    print(f"profile -> {path}")
    return path


if __name__ == "__main__":
    main()
