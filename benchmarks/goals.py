"""Each issue's GPU goal, read from a results file: the best measured rows, the goal, met or not.

    python -m benchmarks.goals RESULTS.json     a markdown table on stdout

The goals as the issues state them (for an H100; the table reads whatever GPU the file
records and says which): the ratios and fractions are the file's own measurements, side by
side in one run, against its own measured ceilings (copy bandwidth, matmul). Nothing here is
typed in: a goal with no row in the file reads "not measured". Rows are the compiled ones
that passed their correctness check (``status`` ok). Where a row has a steady-state time
(``steady``: back-to-back calls in one graph) or a whole-step graph (``graph``), the better
of it and the single-call time counts, and the table says which.

- #2 attention forward, MQA causal head_dim 128 bf16, 8k-32k: Triton >= 550 TFLOP/s and
  >= 1.1x the best SDPA backend; forward+backward >= 1.0x it.
- #3 decode, MQA head_dim 128 bf16, 32k cache: Triton >= 85 % of measured copy bandwidth.
- #4 rms_norm, layer_norm, gated_gelu: Triton >= 90 % of copy and >= 1.2x torch.compile;
  patch_embed within 10 % of cuBLAS on the same GEMM shape.
- #5 nano1 8k bf16 train step: Triton >= 50 % MFU (of the measured matmul peak, the file's
  convention) and faster than SDPA.
- #8 int4 at decode rows (1-16) on nano1's layer shapes: >= 3x the bf16 matmul and >= 80 %
  of copy on the bytes it reads.
"""
from __future__ import annotations

import argparse
import json
from typing import Callable, Optional

TRITON = ("triton", "triton-tma", "triton-autotune", "triton-graph", "triton-pdl")


def _ok(records, suite, pred: Callable[[dict], bool]) -> list[dict]:
    return [r for r in records if r.get("suite") == suite and r.get("status") == "ok"
            and r.get("mode") != "interpret" and pred(r)]


def _best(rows, key: Callable[[dict], Optional[float]], lowest=False) -> Optional[dict]:
    rows = [r for r in rows if key(r) is not None]
    if not rows:
        return None
    return (min if lowest else max)(rows, key=key)


def _sub(r: dict, name: str) -> dict:
    """The row's ``steady`` or ``graph`` timing; {} for a graph whose capture failed (the
    model suite then timed the step eagerly: not a graph, and the row's own time says so)."""
    sub = r.get(name, {})
    return {} if name == "graph" and sub.get("captured") is False else sub


def _ms(r: dict) -> tuple[float, str]:
    """The row's best time and how it was taken: single call, steady state or whole graph."""
    options = [(r["median_ms"], "per call")]
    for sub in ("steady", "graph"):
        if "median_ms" in _sub(r, sub):
            options.append((r[sub]["median_ms"], sub))
    return min(options)


def _frac_bw(r: dict) -> Optional[float]:
    options = [r.get("frac_measured_bw")] + [r.get("steady", {}).get("frac_measured_bw")]
    options = [x for x in options if x is not None]
    return max(options) if options else None


SPREAD = 1.1  # a row whose median run is this much slower than its fastest gets its spread said


def _runs_note(r: dict) -> str:
    """What the row's runs say beyond the median, where it matters: a median over SPREAD x the
    fastest run (the H100's 8k forward ran at 0.81 ms in some runs and 1.1 in most of another
    call), the SM clocks read after the runs and any clock-event reasons (power cap, thermal;
    benchmarks/timing.py). Empty for a tight, unthrottled row or one timed without them."""
    t = r.get("timing", {})
    parts = []
    if t.get("min_s") and t.get("median_s", 0) > SPREAD * t["min_s"]:
        parts.append(f"runs {1e3 * t['min_s']:.3g}-{1e3 * t.get('p80_s', t['median_s']):.3g} ms (min-p80)")
    clocks = t.get("sm_clock_mhz") or []
    if clocks and (parts or t.get("clock_events")):
        parts.append(f"SM {min(clocks)}-{max(clocks)} MHz")
    if t.get("clock_events"):
        parts.append("clocks held by " + "+".join(t["clock_events"]))
    return f" [{', '.join(parts)}]" if parts else ""


def _row(goal, measured, met) -> dict:
    return {"goal": goal, "measured": measured, "met": met}


def attention(records) -> list[dict]:
    out = []
    for direction, want in (("fwd", 1.1), ("fwd+bwd", 1.0)):
        for seq in (8192, 16384, 32768):
            def case(r, seq=seq, direction=direction):
                c = r.get("config", {})
                return (r.get("framework") == "torch" and c.get("seq") == seq and c.get("kv_heads") == 1
                        and c.get("head_dim") == 128 and c.get("causal") and c.get("direction") == direction
                        and c.get("dtype") == "bfloat16")
            rows = _ok(records, "attention", case)
            tri = _best([r for r in rows if r["impl"] in TRITON], lambda r: r.get("tflops"))
            peer = _best([r for r in rows if r["impl"].startswith("sdpa")], lambda r: r.get("tflops"))
            goal = f"#2 attention {direction} MQA causal hd128 bf16 s{seq}: " + (
                "≥ 550 TFLOP/s and ≥ 1.1× best SDPA" if direction == "fwd" else "≥ 1.0× best SDPA")
            if tri is None:
                out.append(_row(goal, "not measured", None))
                continue
            text = f"{tri['impl']} {tri['tflops']:.0f} TFLOP/s{_runs_note(tri)}"
            met = direction != "fwd" or tri["tflops"] >= 550
            if peer is None:
                text += "; no SDPA row"
                met = None
            else:
                ratio = tri["tflops"] / peer["tflops"]
                text += f"; best SDPA {peer['impl']} {peer['tflops']:.0f}{_runs_note(peer)} ({ratio:.2f}×)"
                met = met and ratio >= want
            out.append(_row(goal, text, met))
    return out


def decode(records) -> list[dict]:
    out = []
    for batch in (1, 16):
        def case(r, batch=batch):
            c = r.get("config", {})
            return (r.get("framework") == "torch" and r["impl"] in TRITON and c.get("cache_len") == 32768
                    and c.get("kv_heads") == 1 and c.get("head_dim") == 128 and c.get("batch") == batch
                    and c.get("dtype") == "bfloat16")
        best = _best(_ok(records, "decode", case), _frac_bw)
        goal = f"#3 decode MQA hd128 bf16 32k cache, batch {batch}: ≥ 85 % of copy"
        if best is None:
            out.append(_row(goal, "not measured", None))
            continue
        frac = _frac_bw(best)
        how = "steady" if frac != best.get("frac_measured_bw") else "per call"
        out.append(_row(goal, f"{best['impl']} {100 * frac:.0f} % of copy ({how})", frac >= 0.85))
    return out


def elementwise(records) -> list[dict]:
    out = []
    for op in ("rms_norm", "layer_norm", "gated_gelu"):
        for direction in ("fwd", "fwd+bwd"):
            def case(r, op=op, direction=direction):
                c = r.get("config", {})
                return (r.get("framework") == "torch" and c.get("op") == op and c.get("direction") == direction
                        and c.get("dtype") == "bfloat16")
            rows = _ok(records, "elementwise", case)
            goal = f"#4 {op} {direction} bf16: ≥ 90 % of copy and ≥ 1.2× torch.compile"
            pairs = []
            for r in rows:
                if r["impl"] != "triton":
                    continue
                peer = next((p for p in rows if p["impl"] == "compiled" and p["case"] == r["case"]), None)
                if peer is not None and r.get("frac_measured_bw") is not None:
                    pairs.append((r, peer))
            if not pairs:
                out.append(_row(goal, "not measured", None))
                continue
            worst = min(pairs, key=lambda rp: min(rp[0]["frac_measured_bw"] / 0.9,
                                                  rp[1]["median_ms"] / rp[0]["median_ms"] / 1.2))
            r, peer = worst
            ratio = peer["median_ms"] / r["median_ms"]
            text = (f"worst of {len(pairs)} shapes: {r['case'].split()[1]} {100 * r['frac_measured_bw']:.0f} % of copy, "
                    f"{ratio:.2f}× compile")
            out.append(_row(goal, text, r["frac_measured_bw"] >= 0.9 and ratio >= 1.2))
    return out


def patch_embed(records) -> list[dict]:
    rows = _ok(records, "encoder_kernels", lambda r: r.get("config", {}).get("op") == "patch_embed"
               and r.get("config", {}).get("direction") == "fwd" and r.get("framework") == "torch")
    goal = "#4 patch_embed forward: within 10 % of cuBLAS on the GEMM shape"
    tri = _best([r for r in rows if r["impl"] in TRITON], lambda r: -r["median_ms"])
    peer = _best([r for r in rows if r["impl"] == "cublas"], lambda r: -r["median_ms"])
    if tri is None or peer is None:
        return [_row(goal, "not measured", None)]
    ratio = peer["median_ms"] / tri["median_ms"]
    return [_row(goal, f"{tri['impl']} {tri['median_ms']:.3f} ms, cuBLAS {peer['median_ms']:.3f} ms "
                       f"({ratio:.2f}×)", ratio >= 1 / 1.1)]


_FLAGS = ("tma", "dq_atomic", "dq_tma", "gluon_dkdv", "dkdv_per_head")


def _brief(blocks_repr: str) -> str:
    """'TritonAttentionBlocks(block_m=128, ..., gluon=3, ...)' -> '128x64/4w/3st gluon=3' (tile,
    warps, stages, and the options that are on)."""
    import re

    f = dict(re.findall(r"(\w+)=([\w.]+)", blocks_repr))
    out = f"{f.get('block_m')}x{f.get('block_n')}/{f.get('num_warps')}w/{f.get('num_stages')}st"
    out += "".join(f" {n}" for n in _FLAGS if f.get(n) == "True")
    out += f" gluon={f['gluon']}" if f.get("gluon", "0") != "0" else ""
    out += " two-pass" if f.get("dkdv_passes") == "2" else ""
    return out


def _picks(row) -> str:
    """'; picked fwd ..., bwd ...' from a triton-autotune row's tuning summary (the attention
    tiles its first step timed), or ''."""
    picks = [("bwd" if "backward" in p["problem"] else "fwd", _brief(p["pick"])) for p in row.get("autotune") or []]
    return "; picked " + ", ".join(f"{kind} {b}" for kind, b in sorted(picks)) if picks else ""


def model(records) -> list[dict]:
    def nano1_step(r):
        return (r.get("config", {}).get("model") == "nano1" and r.get("config", {}).get("mode") == "train_step"
                and r.get("framework") == "torch")
    rows = _ok(records, "model", nano1_step)
    goal = "#5 nano1 8k bf16 train step: ≥ 50 % MFU (measured peak) and faster than SDPA"

    def mfu(r):
        return max([r.get("frac_measured_peak") or 0] + [_sub(r, "graph").get("frac_measured_peak") or 0])
    tri = _best([r for r in rows if r["impl"] in TRITON], mfu)
    peer = _best([r for r in rows if r["impl"].startswith("sdpa")], lambda r: -_ms(r)[0])
    if tri is None:
        return [_row(goal, "not measured", None)]
    ms, how = _ms(tri)
    text = f"{tri['impl']} {100 * mfu(tri):.0f} % MFU, {ms:.0f} ms ({how})" + _picks(tri)
    for r in records:  # a peer that could not run (out of memory on an 80 GB card) is said so
        if (r.get("suite") == "model" and r.get("status") == "error" and r.get("impl", "").startswith("sdpa")
                and nano1_step(r)):
            text += f"; {r['impl']} {str(r.get('reason', 'error')).split(':')[0]}"
    met = mfu(tri) >= 0.5
    if peer is None:
        return [_row(goal, text + "; no SDPA row", None)]
    pms, phow = _ms(peer)
    text += f"; {peer['impl']} {pms:.0f} ms ({phow})"
    return [_row(goal, text, met and ms < pms)]


def int4(records) -> list[dict]:
    out = []
    shapes = {(2048, 2048), (2048, 9984), (9984, 2048)}
    rows = _ok(records, "int4", lambda r: r.get("framework") == "torch" and r.get("config", {}).get("rows", 0) <= 16
               and (r["config"].get("in_features"), r["config"].get("out_features")) in shapes)
    cases = sorted({r["case"] for r in rows})
    results = []
    for case in cases:
        tri = _best([r for r in rows if r["case"] == case and r["impl"] in TRITON], lambda r: -_ms(r)[0])
        peer = next((r for r in rows if r["case"] == case and r["impl"] == "matmul"), None)
        if tri is None or peer is None:
            continue
        results.append((case, tri, _ms(peer)[0] / _ms(tri)[0], _frac_bw(tri) or 0.0))
    goal = "#8 int4 at 1-16 rows, nano1's shapes: ≥ 3× the bf16 matmul and ≥ 80 % of copy"
    if not results:
        return [_row(goal, "not measured", None)]
    worst = min(results, key=lambda x: min(x[2] / 3, x[3] / 0.8))
    case, tri, speedup, frac = worst
    out.append(_row(goal, f"worst of {len(results)}: {case} {tri['impl']} {speedup:.2f}× matmul, "
                          f"{100 * frac:.0f} % of copy", all(s >= 3 and f >= 0.8 for _, _, s, f in results)))
    return out


def goals(results: dict) -> list[dict]:
    recs = results.get("records", [])
    return attention(recs) + decode(recs) + elementwise(recs) + patch_embed(recs) + model(recs) + int4(recs)


def table(results: dict, path: str = "") -> str:
    dev = results.get("device", {})
    lines = [f"Goals read from {path or 'the results file'} ({dev.get('name', '?')}, "
             f"{results.get('created_utc', '?')}; the issues state them for an H100):", "",
             "| goal | measured | met |", "|---|---|---|"]
    for g in goals(results):
        met = {True: "yes", False: "no", None: "–"}[g["met"]]
        lines.append(f"| {g['goal']} | {g['measured']} | {met} |")
    return "\n".join(lines)


def gpu_tests(xml_path: str, collected_path: Optional[str] = None) -> str:
    """What a GPU test stage ran (its JUnit XML) against what it collected (the ids tests/conftest.py
    writes): passed, failed, errors, skipped, and the test functions it never reached (a stage
    stopped at its time budget has no result for them: untested, not passed)."""
    import xml.etree.ElementTree as ET

    ran: dict = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        if not case.get("name"):  # the nameless entries of workers stopped mid-run
            continue
        mod = case.get("classname", "").replace(".", "/") + ".py"
        kind = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        ran[f"{mod}::{case.get('name')}"] = kind
    counts = {k: sum(v == k for v in ran.values()) for k in ("passed", "failure", "error", "skipped")}
    line = (f"GPU tests ({xml_path}): {len(ran)} ran: {counts['passed']} passed, {counts['failure']} failed, "
            f"{counts['error']} errors, {counts['skipped']} skipped")
    if not collected_path:
        return line
    with open(collected_path) as f:
        collected = [ln.strip() for ln in f if ln.strip()]
    missing = [i for i in collected if i not in ran]
    funcs = sorted({i.split("[")[0] for i in missing} - {i.split("[")[0] for i in ran})
    line += f"; {len(collected)} collected, {len(missing)} not run (untested, not passed)"
    if funcs:
        line += "; functions with no case run: " + ", ".join(f.split("::")[-1] for f in funcs)
    return line


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="a benchmarks.run results file (JSON)")
    ap.add_argument("--tests", help="the GPU test stage's JUnit XML (make bench-gpu's gpu-tests.xml)")
    ap.add_argument("--collected", help="the ids that stage collected (KERNELS_GPU_TESTS_COLLECTED)")
    args = ap.parse_args(argv)
    with open(args.results) as f:
        text = table(json.load(f), args.results)
    if args.tests:
        try:
            text += "\n\n" + gpu_tests(args.tests, args.collected)
        except (OSError, ValueError) as e:  # ET.ParseError is a ValueError
            text += f"\n\nGPU tests: no summary ({type(e).__name__}: {e})"
    print(text)
    return text


if __name__ == "__main__":
    main()
