"""Render results files (from any machines) into a markdown report and PNG plots.

    python -m benchmarks.report benchmarks/results/*.json --out benchmarks/report

- one measured table per results file, with its provenance;
- a cross-hardware table: each (case, impl) as a fraction of each chip's measured peak;
- modeled roofline times for the hardware table's chips that were not measured, from
  each case's counted FLOPs and bytes (decode and elementwise count bytes only: bytes / the
  chip's HBM bandwidth, a memory-bound time), in their own table labeled modeled;
- PNGs: throughput vs sequence length per impl, a roofline chart per device, and the
  cross-hardware comparison; PNGs an earlier report in the folder linked and this one does not
  are deleted.
Files missing a provenance field are refused: results come only from the runner.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
from collections import defaultdict

from benchmarks.hardware import hardware_table, match_hardware
from benchmarks.results import pct_of_ceiling, rate, save_figure_atomic, write_bytes_atomic, write_text_atomic

REQUIRED = ("schema", "created_utc", "device", "commit", "versions", "config", "ceilings", "records")


def load(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    missing = [k for k in REQUIRED if k not in data or data[k] in (None, "")]
    if missing:
        raise ValueError(f"{path}: missing provenance field(s) {missing}; results files come "
                         "only from `python -m benchmarks.run`")
    data["_path"] = path
    return data


def _f(x, spec):
    return "–" if x is None else format(x, spec)


def _dirty_note(commit: dict) -> str:
    """' (dirty)', with the files' tree hash where the run recorded it (results.git_commit: the
    commit whose tree it is holds the code that ran)."""
    if not commit.get("dirty"):
        return ""
    return f" (dirty; tree `{commit['tree']}`)" if commit.get("tree") else " (dirty)"


def _device_label(d: dict) -> str:
    return f"{d['device']['name']} ({d['created_utc']})"


def measured_table(d: dict) -> str:
    dev, ver, commit = d["device"], d["versions"], d["commit"]
    lines = [f"### {_device_label(d)}", "",
             f"- file: `{os.path.basename(d['_path'])}`; commit `{commit.get('commit')}`"
             f"{_dirty_note(commit)}; driver {dev.get('driver') or '–'}, "
             f"CUDA {dev.get('cuda') or '–'}",
             f"- python {ver.get('python')}, torch {ver.get('torch')}, triton {ver.get('triton')}, "
             f"jax {ver.get('jax')}",
             f"- measured ceilings: copy {d['ceilings']['copy_gbps']:.1f} GB/s, "
             f"{d['ceilings']['matmul_dtype']} matmul {d['ceilings']['matmul_tflops']:.2f} TFLOP/s",
             *([f"- small copies, graph replay (the timer floor first): " + ", ".join(
                 f"{c['bytes'] / 2**20:.3g} MiB {c['seconds'] * 1e6:.1f} µs" for c in d["ceilings"]["copy_curve"])]
               if d["ceilings"].get("copy_curve") else []),
             *[f"- note: {n}" for n in d.get("notes", [])],
             *(["- note: **incomplete run**: the runner stopped after the suites below (the file "
                "is rewritten after each suite)"] if d.get("complete") is False else []), "",
             "| suite | case | impl | mode | status | ms | TFLOP/s | GB/s | rate | % meas. ceiling | % datasheet "
             "| % same-size copy | vs peer | max err |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    skipped = collections.Counter(r["suite"] for r in d["records"] if r["status"] == "skipped")
    for r in d["records"]:
        if r["status"] == "skipped":  # counted below the table, each reason is in the file
            continue
        lines.append("| " + " | ".join([
            r["suite"], r["case"], r["impl"], r.get("mode", "–"), r["status"],
            _f(r.get("median_ms"), ".3f"), _f(r.get("tflops"), ".3g"), _f(r.get("gbps"), ".3g"),
            rate(r), _f(pct_of_ceiling(r), ".1f"), _f(pct_of_ceiling(r, "datasheet"), ".1f"),
            _f(None if r.get("frac_same_size_copy") is None else 100 * r["frac_same_size_copy"], ".1f"),
            _f(r.get("speedup_vs_peer"), ".2f"), _f(r.get("max_error"), ".1e")]) + " |")
    if skipped:
        lines += ["", "Skipped rows (not shown; their reasons are in the file): "
                  + ", ".join(f"{suite} {n}" for suite, n in skipped.items()) + "."]
    pct = lambda x: _f(None if x is None else 100 * x, ".1f")  # noqa: E731
    lines += _sub_table(d, "steady", "Steady state: each row's call over distinct inputs, back to back, per call; "
                        "its peer's the same way. Torch rows: one CUDA graph, L2 flushed before each replay. "
                        "JAX rows: one jitted program of n calls against one of n // 2, the difference per call "
                        "(the dispatch cancels).",
                        ["suite", "case", "impl", "calls", "µs per call", "GB/s", "% meas. copy", "vs peer"],
                        lambda r, st: [r["suite"], r["case"], r["impl"], str(st["calls"]),
                                       f"{st['median_ms'] * 1e3:.2f}", f"{st['gbps']:.4g}",
                                       pct(st.get("frac_measured_bw")), _f(st.get("speedup_vs_peer"), ".2f")])
    lines += _sub_table(d, "graph", "Train step as one CUDA graph (zero_grad, forward, loss, backward, AdamW "
                        "captured once and replayed): the eager step's Python launch gaps out.",
                        ["case", "impl", "captured", "ms", "TFLOP/s", "% meas. peak (MFU)", "eager ms"],
                        lambda r, g: [r["case"], r["impl"], "yes" if g["captured"] else "no (eager)",
                                      f"{g['median_ms']:.1f}", f"{g['tflops']:.3g}", pct(g.get("frac_measured_peak")),
                                      f"{r['median_ms']:.1f}"])
    return "\n".join(lines)


def _sub_table(d: dict, key: str, intro: str, header: list[str], cells) -> list[str]:
    """Lines of a table over the ok rows carrying a timed ``key`` sub-record (steady, graph):
    ``cells(row, sub)`` -> the row's cells. No rows: no lines."""
    rows = [r for r in d["records"] if r["status"] == "ok" and "median_ms" in r.get(key, {})]
    if not rows:
        return []
    return (["", intro, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(cells(r, r[key])) + " |" for r in rows])


def cross_hardware_table(files: list[dict]) -> str:
    """% of each device's measured ceiling (matmul for FLOP-bound rows, copy for memory-bound
    ones), per (case, impl); compiled runs only."""
    rows = defaultdict(dict)
    for d in files:
        for r in d["records"]:
            if r["status"] == "ok" and r.get("mode") != "interpret" and pct_of_ceiling(r):
                rows[(r["suite"], r["case"], r["impl"])][_device_label(d)] = pct_of_ceiling(r) / 100
    devices = [_device_label(d) for d in files]
    lines = ["| suite | case | impl | " + " | ".join(devices) + " |",
             "|---|---|---|" + "---|" * len(devices)]
    for (suite, case, impl), by_dev in sorted(rows.items()):
        lines.append(f"| {suite} | {case} | {impl} | "
                     + " | ".join(_f(None if by_dev.get(x) is None else 100 * by_dev[x], ".1f")
                                  for x in devices) + " |")
    return "\n".join(lines)


def _table_chip(device_name: str) -> str | None:
    """The hardware-table name of a device, TPU kinds through their generation (jax reports
    v5p as "TPU v5", which no ``match`` entry of conf/hardware/tpu_v5p.yaml catches)."""
    from kernels._tpu_chips import chip_generation

    entry = match_hardware(device_name)
    gen = chip_generation(device_name)
    if entry is None and gen is not None:
        entry = match_hardware(f"TPU {gen}")
    return (entry or {}).get("name")


def modeled_time_s(flops: float | None, nbytes: float, chip: dict) -> float:
    """Roofline lower bound on ``chip`` (a hardware-table entry): max(FLOPs / bf16 peak,
    bytes / HBM bandwidth); with no FLOPs counted (decode records carry only the K/V bytes,
    a memory-bound op) the memory term alone."""
    t_mem = nbytes / (chip["hbm_gb_per_s"] * 1e9)
    return t_mem if not flops else max(flops / (chip["bf16_tflops"] * 1e12), t_mem)


def modeled_table(files: list[dict]) -> str:
    """Roofline lower bounds on the table's chips that no file measured (MODELED, not measured).

    Records with FLOPs and bytes get max(compute, memory) time; records with bytes only
    (decode: the K/V bytes read; elementwise) get bytes / the chip's datasheet HBM
    bandwidth, marked "memory (bytes / HBM)" in the bound column."""
    present = {_table_chip(d["device"]["name"]) for d in files}
    chips = [e for e in hardware_table().values()
             if e.get("bf16_tflops") and e.get("hbm_gb_per_s") and e["name"] not in present]
    cases = {}
    for d in files:
        for r in d["records"]:
            if r.get("bytes"):  # bytes only (decode, elementwise): a memory-bound op
                cases[(r["suite"], r["case"])] = (r.get("flops"), r["bytes"])
    lines = ["| suite | case | bound | " + " | ".join(f"{c['name']} µs (modeled)" for c in chips) + " |",
             "|---|---|---|" + "---|" * len(chips)]
    for (suite, case), (flops, nbytes) in sorted(cases.items()):
        cells = [modeled_time_s(flops, nbytes, c) * 1e6 for c in chips]
        bound = "roofline (FLOPs, bytes)" if flops else "memory (bytes / HBM)"
        lines.append(f"| {suite} | {case} | {bound} | " + " | ".join(f"{t:.1f}" for t in cells) + " |")
    return "\n".join(lines)


def plots(files: list[dict], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import numpy as np

    written = []
    for i, d in enumerate(files):
        ok = [r for r in d["records"] if r["status"] == "ok" and r.get("tflops")]
        # throughput vs sequence length, one line per (framework, impl, variant)
        series = defaultdict(list)
        for r in ok:
            if r["suite"] != "attention":  # sequence-length sweeps are the attention suite's
                continue
            c = r["config"]
            key = (f"{r['framework']}:{r['impl']}", f"kv{c['kv_heads']} "
                   f"{'causal' if c['causal'] else 'full'} {c['direction']}")
            series[key].append((c["seq"], r["tflops"]))
        variants = sorted({k[1] for k in series})
        if variants:
            impls = sorted({k[0] for k in series})  # one color per impl in every panel
            colors = dict(zip(impls, plt.get_cmap("tab20")(np.linspace(0, 1, max(len(impls), 2)))))
            fig, axes = plt.subplots(1, len(variants), figsize=(4.2 * len(variants), 3.6), squeeze=False)
            for ax, variant in zip(axes[0], variants):
                for (impl, var), pts in sorted(series.items()):
                    if var == variant:
                        pts.sort()
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl,
                                color=colors[impl])
                ax.set_xscale("log", base=2)
                ax.set_title(variant, fontsize=9)
                ax.set_xlabel("sequence length")
                ax.set_ylabel("TFLOP/s (measured)")
            handles = [plt.Line2D([], [], color=colors[m], marker="o", label=m) for m in impls]
            axes[0][0].legend(handles=handles, fontsize=7)
            fig.suptitle(f"attention throughput — {_device_label(d)}", fontsize=10)
            written.append(_save(fig, out_dir, f"throughput-{i}.png"))
        # roofline against the measured ceilings
        c = d["ceilings"]
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ai = [r["flops"] / r["bytes"] for r in ok if r.get("bytes")]
        if ai:
            xs = np.logspace(np.log10(min(ai) / 4), np.log10(max(ai) * 4), 100)
            ax.plot(xs, np.minimum(c["matmul_tflops"], xs * c["copy_gbps"] / 1e3), "k-",
                    label="measured ceilings")
            by_impl = defaultdict(list)
            for r in ok:
                if r.get("bytes"):
                    by_impl[(f"{r['framework']}:{r['impl']}", r.get("mode") == "interpret")].append(
                        (r["flops"] / r["bytes"], r["tflops"]))
            for (impl, interp), pts in sorted(by_impl.items()):
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, label=impl,
                           marker="x" if interp else "o")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP/byte)")
        ax.set_ylabel("TFLOP/s (measured)")
        ax.set_title(f"roofline — {_device_label(d)}\n(x: interpret mode)", fontsize=9)
        ax.legend(fontsize=7)
        written.append(_save(fig, out_dir, f"roofline-{i}.png"))
    # cross-hardware: best compiled fraction of peak per impl on each device
    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels, vals = [], []
    for d in files:
        best = defaultdict(float)
        for r in d["records"]:
            if r["status"] == "ok" and r.get("mode") != "interpret" and r.get("frac_measured_peak"):
                best[f"{r['framework']}:{r['impl']}"] = max(best[f"{r['framework']}:{r['impl']}"],
                                                            r["frac_measured_peak"])
        for impl, v in sorted(best.items()):
            labels.append(f"{d['device']['name'][:18]}\n{impl}")
            vals.append(100 * v)
    ax.bar(range(len(vals)), vals)
    ax.set_xticks(range(len(vals)), labels, rotation=90, fontsize=6)
    ax.set_ylabel("best % of measured matmul peak")
    ax.set_title("cross-hardware (compiled runs only)", fontsize=9)
    written.append(_save(fig, out_dir, "cross-hardware.png"))
    return written


def _save(fig, out_dir, name):
    """The figure as a PNG in ``out_dir`` (atomically: no partial file or temporary on error)."""
    return save_figure_atomic(fig, os.path.join(out_dir, name))


def _provenance(d: dict, path: str) -> str:
    dev, v = d["device"], d["versions"]
    commit = d["commit"].get("commit", "?")[:10] + _dirty_note(d["commit"])
    return (f"`{path}`: {dev.get('name')} (driver {dev.get('driver', '–')}), torch {v.get('torch')}, "
            f"triton {v.get('triton')}, jax {v.get('jax')}, commit {commit}, {d['created_utc']}")


def sweep_table(path: str) -> str:
    """A ``benchmarks.sweep`` file: each candidate's time, rate and check, default marked."""
    with open(path) as f:
        d = json.load(f)
    md = [f"### Block-size sweep ({'complete' if d.get('complete') else 'cut at its deadline'})", "",
          _provenance(d, path) + f"; timing: {d.get('timing')}", "",
          "| op | shape | pass | blocks | default | ms | rate | vs peer | error | kernels (ms) | status |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["records"]:
        rate_ = (f"{r['tflops']:.1f} TFLOP/s" if "tflops" in r else
                 f"{r['gbps']:.0f} GB/s" if "gbps" in r else "–")
        peer = r.get("speedup_vs_bf16", r.get("vs_cublas"))
        err = r.get("err", r.get("err_vs_default"))
        blocks = r["blocks"] + (f", {r['num_splits']} splits" if "num_splits" in r else "")
        md.append(f"| {r['op']} | {r['shape']} | {r.get('pass_', 'fwd')} | `{blocks}` | "
                  f"{'yes' if r.get('default') else ''} | {_f(r.get('ms'), '.4f')} | {rate_} | "
                  f"{_f(peer, '.2f')} | {_f(err, '.1e')} | "
                  f"{', '.join(f'{k}: {v:.2f}' for k, v in (r.get('kernel_ms') or {}).items()) or '–'} | "
                  f"{r['status']} {r.get('error', '')[:80]} |")
    md += ["", "vs peer: int4 over the bf16 matmul of the shape (>1 is faster), patch_embed over "
           "cuBLAS on the unfolded GEMM (rows 16-byte aligned; older files: packed rows, and newer "
           "ones keep that time as cublas_packed_rows_ms); error: relative max error against the reference "
           "(attention backward: against the default blocks' gradients)."]
    return "\n".join(md)


def profile_table(path: str, top: int = 12) -> str:
    """A ``benchmarks.profile_model`` file: device time per kernel family and top kernels. The
    families are derived here from the stored kernel names (``benchmarks.profile_model.family``),
    not read from the file: a file written before a pattern was fixed reports as a new one would."""
    from benchmarks.profile_model import family

    with open(path) as f:
        d = json.load(f)
    md = [f"### Where a step's GPU time goes: {d['case']}", "", _provenance(d, path) + f"; {d['method']}",
          "", "Kernel families from the kernel names (`benchmarks/profile_model.py` FAMILIES).", ""]
    for impl, p in d["profiles"].items():
        total = p["total_kernel_ms"]
        fams: dict = defaultdict(float)
        for k in p["kernels"]:
            fams[family(k["kernel"])] += k["ms"]
        md += [f"**{impl}**: {total:.1f} ms of kernels", "", "| family | ms | share |", "|---|---|---|"]
        md += [f"| {fam} | {ms:.2f} | {100 * ms / total:.1f}% |"
               for fam, ms in sorted(fams.items(), key=lambda kv: -kv[1])]
        md += ["", "| kernel | calls | ms |", "|---|---|---|"]
        md += [f"| `{k['kernel'][:90]}` | {k['calls']} | {k['ms']:.2f} |" for k in p["kernels"][:top]]
        md.append("")
    return "\n".join(md)


def render(paths: list[str], out_dir: str, include: list[str] = (), sweeps: list[str] = (),
           profiles: list[str] = ()) -> str:
    """``include``: extra markdown files (inlined) and PNGs (linked, copied beside the report),
    e.g. the compile report and the sharding profiles that ``make bench`` also writes;
    ``sweeps`` / ``profiles``: ``benchmarks.sweep`` / ``benchmarks.profile_model`` files."""
    files = [load(p) for p in paths]
    files.sort(key=lambda d: d["created_utc"])
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "report.md")
    stale = _linked_pngs(path)  # what the previous report here showed; unlinked ones go below
    pngs = plots(files, out_dir)
    md = ["# Benchmark report", "",
          "Measured numbers come only from the results files listed; the modeled table is a "
          "roofline bound from counted FLOPs and bytes and the datasheet, labeled modeled.", "",
          ]
    gpu = [d for d in files if d.get("device", {}).get("kind") == "cuda"]
    if gpu:  # each issue's GPU goal against the GPU files' rows (benchmarks/goals.py)
        from benchmarks.goals import table as goals_table

        md += ["## Issue goals (read from the GPU results files)", ""]
        md += [goals_table(d, os.path.basename(d.get("_path", ""))) + "\n" for d in gpu]
    md += ["## Measured", ""]
    md += [measured_table(d) + "\n" for d in files]
    md += ["## Cross-hardware (% of each device's measured ceiling: matmul for attention, "
           "copy bandwidth for memory-bound kernels; compiled runs only)", "",
           cross_hardware_table(files), "",
           "## Modeled (roofline lower bound on chips not measured here; not a measurement)", "",
           modeled_table(files), "", "## Plots", ""]
    md += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in pngs]
    md += [x for p in profiles for x in ("", profile_table(p))]
    md += [x for p in sweeps for x in ("", sweep_table(p))]
    for extra in include:
        if extra.endswith(".png"):
            name = os.path.basename(extra)
            if os.path.abspath(os.path.dirname(extra)) != os.path.abspath(out_dir):
                with open(extra, "rb") as f:
                    write_bytes_atomic(os.path.join(out_dir, name), f.read())
            md += ["", f"![{name}]({name})"]
        else:
            with open(extra) as f:  # its headings move two levels down, under this report's
                md += [""] + [("##" + line) if line.startswith("#") else line for line in f.read().splitlines()]
    text = "\n".join(md) + "\n"
    write_text_atomic(path, text)
    own = {n for n in os.listdir(out_dir) if _OWN_PNG.fullmatch(n)}
    for name in (stale | own) - _linked_pngs(text=text):
        if os.path.isfile(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    return path


_OWN_PNG = re.compile(r"(throughput|roofline)-\d+\.png|cross-hardware\.png")  # the names plots() writes
_LINK = re.compile(r"^!\[[^\]]*\]\(([^)/\\]+\.png)\)$", re.M)  # a PNG beside the report


def _linked_pngs(path: str | None = None, text: str | None = None) -> set[str]:
    """The PNG names a report (file ``path``, or ``text``) links beside itself; none if no file."""
    if text is None:
        if not os.path.exists(path):
            return set()
        with open(path) as f:
            text = f.read()
    return set(_LINK.findall(text))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", help="results JSON files written by benchmarks.run")
    ap.add_argument("--latest", metavar="DIR",
                    help="also, per device in DIR, the newest benchmark results file and each older one "
                         "holding issue-goal rows the newer ones lack, and the newest sweep and profile file")
    ap.add_argument("--out", default="benchmarks/report", help="folder for report.md and PNGs")
    ap.add_argument("--include", nargs="*", default=[],
                    help="markdown files to inline and PNGs to show (compile report, profiles)")
    ap.add_argument("--sweep", nargs="*", default=[], help="benchmarks.sweep files to tabulate")
    ap.add_argument("--profile", nargs="*", default=[], help="benchmarks.profile_model files to tabulate")
    args = ap.parse_args(argv)
    files = list(args.files) + (latest_results(args.latest) if args.latest else [])
    files = list(dict.fromkeys(os.path.abspath(f) for f in files))  # a file named twice, once
    if not files:
        ap.error("no results files: pass FILES or --latest DIR")
    sweeps, profiles = list(args.sweep), list(args.profile)
    if args.latest:  # and the newest sweep and profile of each device beside them
        sweeps += latest_results(args.latest, "gemini-kernels-sweep")
        profiles += latest_results(args.latest, "gemini-kernels-profile")
    print(render(files, args.out, args.include, list(dict.fromkeys(sweeps)), list(dict.fromkeys(profiles))))


def latest_results(folder: str, schema: str = "gemini-kernels-bench") -> list[str]:
    """Files of ``schema`` (benchmark results by default; ``gemini-kernels-sweep``,
    ``gemini-kernels-profile``) in ``folder``, oldest first: per device the newest one and, for
    benchmark results, each older one that measured an issue goal (``benchmarks.goals``) none of
    that device's newer files measured. A short GPU run thus does not hide the goal rows of an
    earlier full one; a CPU machine measures no goal (interpret mode) and keeps its newest file."""
    by_dev: dict = defaultdict(list)
    for name in os.listdir(folder):
        if not name.endswith(".json"):
            continue
        path = os.path.join(folder, name)
        with open(path) as f:
            data = json.load(f)
        if not str(data.get("schema", "")).startswith(schema):
            continue
        by_dev[data.get("device", {}).get("name", "?")].append((data.get("created_utc", ""), path, data))
    if not by_dev and schema == "gemini-kernels-bench":
        raise FileNotFoundError(f"no benchmark results file in {folder}")
    from benchmarks.goals import goals

    keep = []
    for runs in by_dev.values():
        runs.sort(key=lambda x: x[:2], reverse=True)
        keep.append(runs[0][:2])
        if schema != "gemini-kernels-bench":
            continue
        seen = set()  # goals measured by this device's newer files
        for i, (stamp, path, data) in enumerate(runs):
            measured = {g["goal"] for g in goals(data) if g["measured"] != "not measured"}
            if i and measured - seen:
                keep.append((stamp, path))
            seen |= measured
    return [path for _, path in sorted(keep)]


if __name__ == "__main__":
    main()
