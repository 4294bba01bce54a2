"""Scaling profiles (modeled) of the sharding strategies, with a measured step where possible.

    python -m sharding.profile model=nano2 strategy=fsdp hardware=h100_sxm devices=[8,64,1024]
    python -m sharding.profile model=tiny strategy=[dp,fsdp,tp] hardware=cpu devices=[8] measure=true

strategy: names of ``conf/sharding/*.yaml`` (a list: one line per strategy in the PNG; the
output files are named profile-<model>-<strategies joined by '+'>-<hardware>.{json,png});
mesh.<axis>=N overrides the config's mesh. Per device count: per-device memory (params,
grads, Adam state, activations with and without remat), communication bytes per collective
kind, compute time, predicted step time and MFU (of the datasheet bf16 peak; all MODELED by
``sharding/comm_model.py``); a table on stdout, a PNG (step time and MFU vs devices) and a
results JSON (``benchmarks.results.write_json_atomic``, with provenance).

Compute runs at an achievable fraction of the datasheet bf16 peak, not at the peak itself
(the table and the results file say which and where it came from): ``matmul_efficiency=X``
if given, else the best bf16 matmul ceiling a ``benchmarks.run`` file in ``results_dir``
measured on this chip over its datasheet peak, else ``DEFAULT_MATMUL_EFFICIENCY``.

Network model (labeled "modeled"): mesh axes are laid out tensor innermost, then seq, fsdp,
data; an axis group whose span fits in one node (``devices_per_node``, 8 for GPU entries)
runs at half the NVLink total (one direction), otherwise at the per-GPU network rate; TPU
entries use half the ICI total for every axis. Ring collectives; gradient and FSDP traffic
overlaps compute, tensor / sequence-parallel traffic does not.

measure=true also times the real sharded JAX step (the model's reference kernels; ring
attention where the strategy splits the sequence) on the
present devices: on CPU these are simulated host devices (``XLA_FLAGS=
--xla_force_host_platform_device_count=N`` set before JAX starts) and labeled so.
"""
from __future__ import annotations

import json
import os
import sys
import time

from omegaconf import OmegaConf

from model.config import PRESETS, ModelConfig
from sharding import comm_model as cm
from benchmarks.results import save_figure_atomic
from sharding.rules import MESH_AXES, make_plan, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF_DIR = os.path.join(ROOT, "conf", "sharding")
DEFAULTS = dict(model="nano2", strategy="fsdp", hardware="h100_sxm", devices=[8, 16, 32, 64, 128, 256, 512, 1024],
                batch_per_device=4, seq_len=2048, remat=False, act_bytes=2, measure=False,
                measure_steps=3, out_dir="benchmarks/results/sharding", mesh={},
                matmul_efficiency=None, results_dir="benchmarks/results")
# the modeled compute's fraction of the datasheet bf16 peak where results_dir measured no matmul
# ceiling on the chip: the H200's bf16 8192^3 matmul, 803 of 989 TFLOP/s
# (benchmarks/results/nvidia-h200-20261126T213458Z.json)
DEFAULT_MATMUL_EFFICIENCY = 803 / 989
_DEFAULT_SOURCE = "default: the H200's measured bf16 matmul, 803 of 989 TFLOP/s"
SEP = "+"  # joins strategy names in output file names; refused inside a name


def load_strategy(name: str) -> dict:
    """conf/sharding/<name>.yaml -> {"strategy": "...", "mesh": {...}}; unknown names refused."""
    if SEP in name:
        raise ValueError(f"strategy names may not contain {SEP!r} (it joins them in output file names); "
                         f"got {name!r}: pass a list, strategy=[{name.replace(SEP, ',')}]")
    path = os.path.join(CONF_DIR, f"{name}.yaml")
    if not os.path.exists(path):
        known = sorted(f[:-5] for f in os.listdir(CONF_DIR) if f.endswith(".yaml"))
        raise ValueError(f"unknown strategy {name!r}: no conf/sharding/{name}.yaml; known: {known}")
    return OmegaConf.to_container(OmegaConf.load(path))


def axis_bandwidth(hw: dict, plan, axes) -> tuple[float, str]:
    """(bytes/s one direction, link name) for a collective over ``axes`` (modeled)."""
    if hw.get("ici_gb_per_s"):
        return hw["ici_gb_per_s"] / 2 * 1e9, "ici"
    if not hw.get("nvlink_gb_per_s"):
        raise ValueError(f"hardware {hw.get('name')!r} has no interconnect fields "
                         "(nvlink_gb_per_s / network_gb_per_s / ici_gb_per_s)")
    per_node = hw.get("devices_per_node", 8)
    inner = [a for a in reversed(MESH_AXES)]  # tensor first
    span = 1
    for a in inner[: max(inner.index(x) for x in axes) + 1]:
        span *= plan.mesh[a]
    if span <= per_node:
        return hw["nvlink_gb_per_s"] / 2 * 1e9, "nvlink"
    return hw["network_gb_per_s"] * 1e9, "network"


def _wire_time(item, plan, hw) -> float:
    n = plan.axis_product(item["axes"])
    # ring all-reduce 2(n-1)/n, all-gather / reduce-scatter (n-1)/n of the full buffer; a
    # collective-permute hop sends the whole (local) buffer once
    factor = {"all-reduce": 2 * (n - 1) / n, "collective-permute": 1.0}.get(item["kind"], (n - 1) / n)
    bw, _ = axis_bandwidth(hw, plan, item["axes"])
    return item["bytes"] * factor / bw


def matmul_efficiency(opts, hw: dict) -> tuple[float, str]:
    """(fraction of ``hw``'s datasheet bf16 peak the modeled compute runs at, where it came
    from): the option if set; else the best bf16 matmul ceiling measured on this chip by a
    results file in ``opts.results_dir``; else ``DEFAULT_MATMUL_EFFICIENCY``."""
    from benchmarks.hardware import match_hardware

    if opts.matmul_efficiency is not None:
        eff = opts.matmul_efficiency
        if isinstance(eff, bool) or not isinstance(eff, (int, float)) or not 0 < eff <= 1:
            raise ValueError(f"matmul_efficiency: expected a fraction of the datasheet peak in (0, 1], "
                             f"got {eff!r}")
        return float(eff), "matmul_efficiency option"
    folder = opts.results_dir if os.path.isabs(opts.results_dir) else os.path.join(ROOT, opts.results_dir)
    best = None
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith(".json"):
            continue
        with open(os.path.join(folder, name)) as f:
            data = json.load(f)
        ceil = data.get("ceilings") if isinstance(data, dict) else None
        if (not ceil or not str(data.get("schema", "")).startswith("gemini-kernels-bench")
                or ceil.get("matmul_dtype") != "bfloat16" or not ceil.get("matmul_tflops")):
            continue
        if (match_hardware(data["device"]["name"]) or {}).get("name") == hw["name"]:
            if best is None or ceil["matmul_tflops"] > best[0]:
                best = (ceil["matmul_tflops"], name)
    if best is not None:
        return best[0] / hw["bf16_tflops"], (f"measured: bf16 matmul {best[0]:.0f} of {hw['bf16_tflops']} "
                                             f"TFLOP/s in {opts.results_dir}/{best[1]}")
    return DEFAULT_MATMUL_EFFICIENCY, f"{_DEFAULT_SOURCE}; no {hw['name']} results file in {opts.results_dir}"


def profile_row(cfg: ModelConfig, name: str, conf: dict, devices: int, hw: dict, opts,
                efficiency: float = 1.0) -> dict:
    """One modeled row, compute at ``efficiency`` x the datasheet bf16 peak (MFU stays of the
    peak); an invalid configuration gives status 'invalid' and the reason."""
    row = {"strategy": name, "devices": devices, "modeled": True}
    try:
        plan = make_plan(conf["strategy"], {**conf["mesh"], **opts.mesh}, devices)
        nb = plan.axis_product(plan.act_rules.get("batch", ()))
        batch = max(opts.batch_per_device * devices // plan.mesh["tensor"], nb)
        validate(plan, cfg, batch=batch, seq_len=opts.seq_len)
    except ValueError as e:
        return {**row, "status": "invalid", "reason": str(e)}
    wl = cm.Workload(batch, opts.seq_len, act_bytes=opts.act_bytes, remat=bool(opts.remat))
    items = cm.collectives(cfg, plan, wl)
    mem, fl = cm.memory(cfg, plan, wl), cm.flops(cfg, plan, wl)
    peak = hw["bf16_tflops"] * 1e12
    compute = fl["device_flops"] / (peak * efficiency)
    overlap = sum(_wire_time(i, plan, hw) for i in items if i["overlap"])
    exposed = sum(_wire_time(i, plan, hw) for i in items if not i["overlap"])
    step = max(compute, overlap) + exposed
    return {**row, "status": "ok", "mesh": plan.mesh, "global_batch": batch, "seq_len": opts.seq_len,
            "memory_gb": {k: v / 1e9 for k, v in mem.items() if k != "local_params"},
            "comm_bytes": cm.by_kind(items), "collectives": items,
            "compute_s": compute, "comm_overlapped_s": overlap, "comm_exposed_s": exposed,
            "step_s": step, "mfu": fl["model_flops"] / (devices * peak * step)}


def table(rows, efficiency: tuple[float, str] = (1.0, "datasheet peak")) -> str:
    head = ("strategy", "devices", "mesh d/f/s/t", "params", "grads", "adam", "act", "act+remat",
            "AG GB", "RS GB", "AR GB", "CP GB", "compute ms", "step ms", "MFU")
    out = [head]
    for r in rows:
        if r["status"] != "ok":
            out.append((r["strategy"], str(r["devices"]), r["status"] + ": " + r["reason"][:70]))
            continue
        m, c = r["memory_gb"], r["comm_bytes"]
        out.append((r["strategy"], str(r["devices"]), "/".join(str(r["mesh"][a]) for a in MESH_AXES),
                    *(f"{m[k]:.2f}" for k in ("params", "grads", "optimizer", "activations", "activations_remat")),
                    *(f"{c.get(k, 0) / 1e9:.2f}" for k in ("all-gather", "reduce-scatter", "all-reduce", "collective-permute")),
                    f"{r['compute_s'] * 1e3:.1f}", f"{r['step_s'] * 1e3:.1f}", f"{100 * r['mfu']:.1f}%"))
    widths = [max(len(row[i]) for row in out if len(row) > i and len(row) == len(head)) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) if len(row) == len(head) else "  ".join(row)
             for row in out]
    lines.insert(1, "-" * len(lines[0]))
    return (f"MODELED (memory in GB per device, bytes per step per device; compute at {100 * efficiency[0]:.1f}% "
            f"of the datasheet bf16 peak ({efficiency[1]}), MFU of that peak)\n" + "\n".join(lines))


def plot(rows, path: str, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["strategy"] for r in rows):
        ok = [r for r in rows if r["strategy"] == name and r["status"] == "ok"]
        if ok:
            x = [r["devices"] for r in ok]
            ax1.plot(x, [r["step_s"] * 1e3 for r in ok], marker="o", label=f"{name} (modeled)")
            ax2.plot(x, [100 * r["mfu"] for r in ok], marker="o", label=f"{name} (modeled)")
    for ax, lab in ((ax1, "step time, ms (modeled)"), (ax2, "MFU, % (modeled)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("devices")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{title} — MODELED, not measured")
    return save_figure_atomic(fig, path)


def measure_step(cfg: ModelConfig, conf: dict, opts, batch_per_device: int, seq_len: int) -> dict:
    """Time the real sharded JAX train step on the present devices (median of a few steps)."""
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from model.config import KernelConfig
    from model.jax_model import forward, init_params
    from sharding import jax_sharding as js

    devs = jax.devices()
    plan = make_plan(conf["strategy"], {**conf["mesh"], **opts.mesh}, len(devs))
    batch = max(batch_per_device * len(devs) // plan.mesh["tensor"],
                plan.axis_product(plan.act_rules.get("batch", ())))
    mesh = js.make_mesh(plan, devs)
    # a seq axis runs context parallelism through the ring (as the profile models it)
    kernels = KernelConfig("reference", attention="ring" if plan.mesh["seq"] > 1 else None)
    step = js.make_train_step(forward, cfg, plan, mesh, kernels=kernels, batch=batch, seq_len=seq_len,
                              remat=bool(opts.remat))
    params = js.shard_params(init_params(cfg, jax.random.key(0)), plan, cfg, mesh)
    opt = js.adam_init(params)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq_len)), jnp.int32)
    jax.block_until_ready(step(params, opt, tokens, tokens))  # compile + warm-up
    times = []
    for _ in range(int(opts.measure_steps)):
        t = time.perf_counter()
        jax.block_until_ready(step(params, opt, tokens, tokens))
        times.append(time.perf_counter() - t)
    platform = devs[0].platform
    label = ("measured on SIMULATED CPU devices (host threads, not accelerators)" if platform == "cpu"
             else f"measured on {len(devs)} {devs[0].device_kind}")
    return {"devices": len(devs), "platform": platform, "device_kind": devs[0].device_kind,
            "label": label, "global_batch": batch, "seq_len": seq_len, "median_step_s": float(np.median(times)),
            "step_times_s": times}


def main(argv: list[str]) -> dict:
    from benchmarks.hardware import hardware_table
    from benchmarks.results import git_commit, library_versions, write_json_atomic

    opts = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(argv))
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    if opts.model not in PRESETS:
        raise ValueError(f"unknown model {opts.model!r}; known: {sorted(PRESETS)}")
    cfg = PRESETS[opts.model]
    hw_all = hardware_table()
    if opts.hardware not in hw_all:
        raise ValueError(f"unknown hardware {opts.hardware!r}; known: {sorted(hw_all)}")
    hw = hw_all[opts.hardware]
    if not hw.get("bf16_tflops"):
        raise ValueError(f"hardware {opts.hardware!r} has no datasheet peak (bf16_tflops); "
                         "pick a GPU/TPU entry for the modeled profile")
    names = list(opts.strategy) if OmegaConf.is_list(opts.strategy) else [str(opts.strategy)]
    confs = {n: load_strategy(n) for n in names}
    devices = list(opts.devices) if OmegaConf.is_list(opts.devices) else [int(opts.devices)]
    eff = matmul_efficiency(opts, hw)
    rows = [profile_row(cfg, n, confs[n], int(d), hw, opts, eff[0]) for n in names for d in devices]
    print(table(rows, eff))
    os.makedirs(opts.out_dir, exist_ok=True)
    stem = os.path.join(opts.out_dir, f"profile-{opts.model}-{SEP.join(names)}-{opts.hardware}")
    png = plot(rows, stem + ".png", f"{cfg.name} on {hw['name']}, compute at {100 * eff[0]:.0f}% of bf16 peak")
    measured = []
    if opts.measure:
        for n in names:
            m = measure_step(cfg, confs[n], opts, int(opts.batch_per_device), int(opts.seq_len))
            pred = profile_row(cfg, n, confs[n], m["devices"], hw, opts, eff[0])
            measured.append({"strategy": n, **m, "modeled_step_s_on": hw["name"],
                             "modeled_step_s": pred.get("step_s")})
            print(f"{n}: {m['label']}: step {m['median_step_s'] * 1e3:.1f} ms "
                  f"(modeled for {m['devices']} x {hw['name']}: "
                  f"{pred['step_s'] * 1e3 if pred.get('step_s') else float('nan'):.1f} ms)")
    payload = {"kind": "sharding_profile", "modeled": True, "model": cfg.to_dict(), "hardware": hw,
               "options": OmegaConf.to_container(opts), "rows": rows, "measured": measured,
               "matmul_efficiency": {"fraction": eff[0], "source": eff[1]},
               "png": png, "provenance": {"git": git_commit(), "versions": library_versions(),
                                          "argv": argv}}
    path = write_json_atomic(stem + ".json", payload)
    print(f"wrote {path} and {png}")
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
