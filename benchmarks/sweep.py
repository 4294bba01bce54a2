"""Block-size sweep on a GPU or a TPU: every ``candidate_blocks`` of the tiled Triton kernels
(GPU) or of the Pallas TPU kernels (TPU), timed at the shapes the issues' goals name, so
defaults are chosen from measurements.

    python -m benchmarks.sweep --out-dir DIR [--ops attention,int4,patch_embed,decode] [--deadline-s 120]
    python -m benchmarks.sweep --out-dir DIR [--ops tpu_attention,tpu_decode]   # on a TPU

- attention: MQA causal bf16, nano1's head_dim 256 (8 heads, 8k tokens), then head_dim 128
  (16 heads, 16k tokens): each backward candidate timed forward+backward with the default
  forward, with one profiled call's time per kernel (so the dK/dV and dQ passes can be
  picked apart), then each forward candidate forward-only (TFLOP/s by the attention suite's
  count).
- int4: decode rows 1 and 16 on nano1's layer shapes, each candidate against the bf16 matmul
  of the same shape and a copy moving the same bytes (all CUDA-graph replays).
- patch_embed: the forward at 8 x 896 px, patch 14, dim 1152 (SigLIP-So400m), each candidate
  against cuBLAS on the same GEMM shape with the patches unfolded beforehand.
- decode: MQA (8 heads, head_dim 128) against a full 32k cache at batch 1 and 16, each split
  kernel candidate at the split count ``num_kv_splits`` picks and at half and twice it, in
  GB/s of K and V read, beside a copy moving the same bytes (CUDA-graph replays; the goal is
  a fraction of the copy bandwidth).
- tpu_attention (TPU only): ``kernels.attention.pallas_tpu.candidate_blocks`` for the chip
  (the ``chip_blocks`` table entry first), MQA causal bf16 at the attention shapes above:
  each candidate forward (checked against the fp32 reference on the last 256 rows) and
  forward+backward (gradients against the table entry's), wall-clock, block_until_ready.
- tpu_decode (TPU only): ``decode_candidate_blocks`` for the chip, MQA (8 heads, head_dim
  128) bf16 against a full 32k cache at batch 16 and 1, GB/s of K and V read.
Every candidate's output is compared with the reference (relative max error); a candidate
that fails to compile or errs is recorded with its error, not dropped. The results file
(written after each op, atomically) carries the device, versions and commit like
``benchmarks.run``'s. The GPU ops need a CUDA GPU, the tpu_* ops a TPU backend (the default
--ops is the GPU set on a GPU, the TPU set on a TPU); ``--smoke`` runs every op on the CPU at
tiny sizes in the interpreters (Triton's; TPU interpret mode for the tpu_* ops, over the first
two attention candidates and every decode one): a check of this script, no timings worth reading.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import time
import traceback

import torch

from benchmarks.hardware import detect_device
from benchmarks.results import git_commit, library_versions, results_path, write_json_atomic
from benchmarks.timing import Timer
from kernels._autotune import excluded_blocks

BF16 = torch.bfloat16


@dataclasses.dataclass(frozen=True)
class Setup:
    """Where the sweep runs: the device ("cuda"; "tpu" for the tpu_* ops; or "cpu" for
    --smoke, tiny sizes in the interpreters), the capability the GPU candidate lists are for,
    and the GPU ops' data dtype."""

    dev: str = "cuda"
    cap: tuple = (9, 0)

    @property
    def smoke(self) -> bool:
        return self.dev == "cpu"

    @property
    def dtype(self):
        return BF16 if self.dev == "cuda" else torch.float16  # the interpreter's bf16 dot is wrong


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _try(row: dict, fn) -> dict:
    why = excluded_blocks().get(row.get("blocks"))
    if why is not None:  # a canary run saw this candidate kill its process: never launched here
        row.update(status="excluded", error=why)
        return row
    try:
        row.update(fn())
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - a candidate that breaks is a result too
        row.update(status="error", error=f"{type(e).__name__}: {str(e)[:300]}")
        traceback.print_exc(limit=2)
    return row


def _kernel_ms(fn, setup: Setup) -> dict | None:
    """Device time per kernel name of one call (torch.profiler), so a backward candidate's
    dK/dV and dQ passes can be chosen apart (``dq_block_m`` / ``dq_block_n``). None on the CPU."""
    if setup.smoke:
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out: dict = {}
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)
        if us and e.key.startswith("_attn"):
            out[e.key] = round(us / 1e3, 4)
    return out


def sweep_attention(setup: Setup, timer: Timer, past_deadline) -> list[dict]:
    from kernels.attention import triton_attention as ta
    from kernels.attention.reference import _attention as ref

    cap, dt, dev = setup.cap, setup.dtype, setup.dev
    rows = []
    # nano1's head_dim 256 first (its backward is most of a nano1 train step), backward first
    for b, s, h, d in ((1, 8192, 8, 256), (1, 16384, 16, 128)) if not setup.smoke else (
            (1, 70, 2, 256), (1, 100, 2, 128)):
        g = torch.Generator(device=dev).manual_seed(s + d)
        q = torch.randn(b, s, h, d, device=dev, dtype=dt, generator=g)
        k, v = (torch.randn(b, s, 1, d, device=dev, dtype=dt, generator=g) for _ in range(2))
        do = torch.randn_like(q)
        fwd_flops = 4 * b * h * s * s * d / 2  # causal
        m = min(256, s)  # the last query rows against a float32 reference (full-length keys)
        want = ref(q[:, -m:].float(), k.float(), v.float(), causal=True, window=None, softcap=None,
                   scale=d ** -0.5, q_segment_ids=None, kv_segment_ids=None)
        base_f = ta.default_forward_blocks(q, k, v, cap)  # what attention_triton picks for these
        base_b = ta.default_backward_blocks(q, k, v, cap)  # what attention_triton picks for these
        default_grads: list = []  # the default blocks' (dq, dk, dv), made once per shape

        def defaults():
            if not default_grads:
                qd, kd, vd = (x.detach().requires_grad_() for x in (q, k, v))
                o = ta.attention_triton(qd, kd, vd, causal=True, blocks=(base_f, base_b))
                default_grads.extend(torch.autograd.grad(o, (qd, kd, vd), do))
            return default_grads
        for backward in (True, False):
            for blk in ta.candidate_blocks(d, dt, backward=backward, capability=cap):
                if past_deadline():
                    return rows
                pair = (base_f, blk) if backward else (blk, base_b)
                row = dict(op="attention", shape=f"mqa b{b} s{s} h{h}/1 d{d} causal {dt}",
                           pass_="fwd+bwd" if backward else "fwd", blocks=repr(blk),
                           default=blk == (base_b if backward else base_f))

                def run(pair=pair, backward=backward):
                    if not backward:
                        fn = lambda: ta.attention_triton(q, k, v, causal=True, blocks=pair)  # noqa: E731
                        err = _rel(fn()[:, -m:], want)
                        t = timer(fn)
                        return dict(err=err, ms=t.median_s * 1e3, tflops=fwd_flops / t.median_s / 1e12)
                    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))

                    def fn():
                        o = ta.attention_triton(qg, kg, vg, causal=True, blocks=pair)
                        return torch.autograd.grad(o, (qg, kg, vg), do)

                    dq, dk, dv = fn()  # against the default blocks' gradients (checked by the tests)
                    err = max(_rel(a, r) for a, r in zip((dq, dk, dv), defaults()))
                    t = timer(fn)
                    return dict(err_vs_default=err, ms=t.median_s * 1e3,
                                tflops=3.5 * fwd_flops / t.median_s / 1e12, kernel_ms=_kernel_ms(fn, setup))

                rows.append(_try(row, run))
                print(row)
        del q, k, v, do
        if not setup.smoke:
            torch.cuda.empty_cache()
    return rows


def _copy_ms(nbytes: int, dev: str, timer: Timer) -> float:
    """A device-to-device copy moving ``nbytes`` (half read, half written), timed like the
    kernels beside it: what the memory system gives a call of that size with that timer."""
    src = torch.ones(max(1, nbytes // 8), dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    return timer(lambda: dst.copy_(src)).median_s * 1e3


def sweep_int4(setup: Setup, timer: Timer, past_deadline) -> list[dict]:
    from kernels.int4 import reference as ref
    from kernels.int4 import triton_int4 as ti

    rows = []
    dt, dev = setup.dtype, setup.dev
    for n, kdim in ((2048, 2048), (9984, 2048), (2048, 9984)) if not setup.smoke else ((256, 256), (384, 256)):
        g = torch.Generator(device=dev).manual_seed(n + kdim)
        w = torch.randn(n, kdim, device=dev, generator=g)
        packed, scales, _ = ref.quantize_int4(w, 128, asymmetric=False, scale_dtype=dt)
        wd = ref.dequantize_int4(packed, scales, None, 128).to(dt)  # [n, k]: the bf16 peer's weight
        for m in (1, 16):
            x = torch.randn(m, kdim, device=dev, dtype=dt, generator=g)
            want = x.float() @ wd.float().t()
            t_mm = timer(lambda: torch.matmul(x, wd.t()))
            int4_bytes = packed.numel() + scales.numel() * 2 + x.numel() * 2 + m * n * 2
            copy_ms = _copy_ms(int4_bytes, dev, timer)
            for blk in ti.candidate_blocks(m, dt, capability=setup.cap):
                if past_deadline():
                    return rows
                row = dict(op="int4", shape=f"m{m} {kdim}->{n} g128 {dt}", blocks=repr(blk),
                           default=blk == ti.default_blocks(m, dt, capability=setup.cap),
                           bf16_matmul_ms=t_mm.median_s * 1e3, copy_same_bytes_ms=copy_ms)

                def run(blk=blk):
                    fn = lambda: ti.int4_matmul_triton(x, packed, scales, None, 128, blocks=blk)  # noqa: E731
                    err = _rel(fn(), want)
                    t = timer(fn)
                    return dict(err=err, ms=t.median_s * 1e3, speedup_vs_bf16=t_mm.median_s / t.median_s,
                                gbps=int4_bytes / t.median_s / 1e9)

                rows.append(_try(row, run))
                print(row)
    return rows


def sweep_patch_embed(setup: Setup, timer: Timer, past_deadline) -> list[dict]:
    from kernels.patch_embed import triton_patch_embed as tp
    from kernels.patch_embed.reference import patch_embed_reference, unfold_patches, unfold_patches_aligned

    b, size, p, c, dim = (8, 896, 14, 3, 1152) if not setup.smoke else (1, 56, 14, 3, 64)
    dt, dev = setup.dtype, setup.dev
    n = (size // p) ** 2
    g = torch.Generator(device=dev).manual_seed(0)
    images = torch.randn(b, size, size, c, device=dev, dtype=dt, generator=g)
    weight = torch.randn(p * p * c, dim, device=dev, dtype=dt, generator=g) * (p * p * c) ** -0.5
    bias = torch.randn(dim, device=dev, dtype=dt, generator=g)
    pos = torch.randn(n, dim, device=dev, dtype=dt, generator=g)
    want = patch_embed_reference(images.float(), weight.float(), bias.float(), pos.float(), patch=p)
    a = unfold_patches_aligned(images, p)  # cuBLAS on 16-byte aligned rows (lda = K padded)
    t_mm = timer(lambda: torch.matmul(a, weight))
    a_packed = unfold_patches(images, p).contiguous()  # and on packed rows (unaligned at K = 588)
    t_mm_packed = timer(lambda: torch.matmul(a_packed, weight))
    flops = 2 * b * n * p * p * c * dim
    rows = []
    for blk in tp.candidate_blocks(dt, "fwd", capability=setup.cap):
        if past_deadline():
            break
        row = dict(op="patch_embed", shape=f"b{b} {size}px p{p} d{dim} {dt} fwd", blocks=repr(blk),
                   default=blk == tp.default_blocks(dt, "fwd", capability=setup.cap),
                   cublas_ms=t_mm.median_s * 1e3, cublas_packed_rows_ms=t_mm_packed.median_s * 1e3)

        def run(blk=blk):
            fn = lambda: tp.patch_embed_triton(images, weight, bias, pos, patch=p, blocks=blk)  # noqa: E731
            err = _rel(fn(), want)
            t = timer(fn)
            return dict(err=err, ms=t.median_s * 1e3, tflops=flops / t.median_s / 1e12,
                        vs_cublas=t_mm.median_s / t.median_s)

        rows.append(_try(row, run))
        print(row)
    return rows


def sweep_decode(setup: Setup, timer: Timer, past_deadline) -> list[dict]:
    from kernels._platform import compiled_sm_count
    from kernels.decode import triton_decode as td
    from kernels.decode.reference import decode_reference

    h, d, max_len = 8, 128, (32768 if not setup.smoke else 64)
    dt, dev = setup.dtype, setup.dev
    rows = []
    for b in (16, 1) if not setup.smoke else (2, 1):
        g = torch.Generator(device=dev).manual_seed(b)
        q = torch.randn(b, h, d, device=dev, dtype=dt, generator=g)
        k, v = (torch.randn(b, max_len, 1, d, device=dev, dtype=dt, generator=g) for _ in range(2))
        lens = torch.full((b,), max_len, dtype=torch.int32, device=dev)
        want = decode_reference(q.float(), k.float(), v.float(), lens)
        kv_bytes = 2 * k.numel() * k.element_size()
        copy_ms = _copy_ms(kv_bytes, dev, timer)
        for blk in td.candidate_blocks(d, dt, max_len, capability=setup.cap):
            base = td.num_kv_splits(b, 1, max_len, blk.block_n, compiled_sm_count(q))
            for splits in sorted({max(1, base // 2), base, min(td.MAX_SPLITS, 2 * base)}):
                if past_deadline():
                    return rows
                row = dict(op="decode", shape=f"mqa b{b} h{h}/1 d{d} cache {max_len} {dt}", blocks=repr(blk),
                           num_splits=splits, copy_same_bytes_ms=copy_ms,
                           default=blk == td.default_blocks(d, dt, max_len, capability=setup.cap) and splits == base)

                def run(blk=blk, splits=splits):
                    fn = lambda: td.decode_triton(q, k, v, lens, blocks=blk, num_splits=splits)  # noqa: E731
                    err = _rel(fn(), want)
                    t = timer(fn)
                    return dict(err=err, ms=t.median_s * 1e3, gbps=kv_bytes / t.median_s / 1e9)

                rows.append(_try(row, run))
                print(row)
        del q, k, v
    return rows


def _jax_rel(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-30))


def sweep_tpu_attention(setup: Setup, timer: Timer, past_deadline) -> list[dict]:
    """pallas_tpu.candidate_blocks on this chip (TPU; --smoke: interpret mode, 2 candidates)."""
    import jax
    import jax.numpy as jnp

    from kernels.attention import pallas_tpu as pt
    from kernels.attention.reference_jax import _attention as ref

    kind = jax.devices()[0].device_kind
    dt = jnp.float32 if setup.smoke else jnp.bfloat16
    interpret = True if setup.smoke else False  # smoke: TPU interpret mode on the CPU
    cands = pt.candidate_blocks(kind)
    base = cands[0]
    rows = []
    for b, s, h, d in ((1, 8192, 8, 256), (1, 16384, 16, 128)) if not setup.smoke else ((1, 100, 2, 128),):
        ks = jax.random.split(jax.random.key(s + d), 4)
        q = jax.random.normal(ks[0], (b, s, h, d), dt)
        k, v = (jax.random.normal(kk, (b, s, 1, d), dt) for kk in ks[1:3])
        do = jax.random.normal(ks[3], (b, s, h, d), dt)
        fwd_flops = 4 * b * h * s * s * d / 2  # causal
        m = min(256, s)  # the last query rows against an fp32 reference (full-length keys)
        kw = dict(causal=True, window=None, softcap=None, scale=d ** -0.5, q_segment_ids=None,
                  kv_segment_ids=None)
        want = ref(q[:, -m:].astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), **kw)

        def grads(blk):
            f = lambda q, k, v: pt.attention_pallas_tpu(q, k, v, blocks=blk, interpret=interpret, **kw)  # noqa: E731
            return jax.jit(lambda q, k, v, do: jax.vjp(f, q, k, v)[1](do))

        default_grads: list = []
        for blk in cands[:2] if setup.smoke else cands:
            for backward in (False, True):
                if past_deadline():
                    return rows
                row = dict(op="tpu_attention", shape=f"mqa b{b} s{s} h{h}/1 d{d} causal {jnp.dtype(dt).name}",
                           pass_="fwd+bwd" if backward else "fwd", blocks=repr(blk), default=blk == base,
                           device_kind=kind, candidates=len(cands))

                def run(blk=blk, backward=backward):
                    if not backward:
                        fn = jax.jit(lambda q, k, v: pt.attention_pallas_tpu(
                            q, k, v, blocks=blk, interpret=interpret, **kw))
                        err = _jax_rel(fn(q, k, v)[:, -m:], want)
                        t = timer(lambda: fn(q, k, v))
                        return dict(err=err, ms=t.median_s * 1e3, tflops=fwd_flops / t.median_s / 1e12)
                    fn = grads(blk)
                    got = fn(q, k, v, do)
                    if not default_grads:
                        default_grads.extend(got if blk == base else grads(base)(q, k, v, do))
                    err = max(_jax_rel(a, r) for a, r in zip(got, default_grads))
                    t = timer(lambda: fn(q, k, v, do))
                    return dict(err_vs_default=err, ms=t.median_s * 1e3,
                                tflops=3.5 * fwd_flops / t.median_s / 1e12)

                rows.append(_try(row, run))
                print(row)
    return rows


def sweep_tpu_decode(setup: Setup, timer: Timer, past_deadline) -> list[dict]:
    """pallas_tpu_decode.decode_candidate_blocks on this chip (TPU; --smoke: interpret mode)."""
    import jax
    import jax.numpy as jnp

    from kernels.decode.pallas_tpu_decode import decode_attention_pallas_tpu, decode_candidate_blocks
    from kernels.decode.reference_jax import _decode as ref

    kind = jax.devices()[0].device_kind
    h, d, max_len = 8, 128, (32768 if not setup.smoke else 256)
    dt = jnp.float32 if setup.smoke else jnp.bfloat16
    interpret = True if setup.smoke else False
    cands = decode_candidate_blocks(kind)
    rows = []
    for b in (16, 1) if not setup.smoke else (2,):
        ks = jax.random.split(jax.random.key(b), 3)
        q = jax.random.normal(ks[0], (b, h, d), dt)
        k, v = (jax.random.normal(kk, (b, max_len, 1, d), dt) for kk in ks[1:])
        lens = jnp.full((b,), max_len, jnp.int32)
        kw = dict(window=None, softcap=None, scale=d ** -0.5)
        want = ref(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), lens, **kw)
        kv_bytes = 2 * k.size * k.dtype.itemsize
        for blk in cands:
            if past_deadline():
                return rows
            row = dict(op="tpu_decode", shape=f"mqa b{b} h{h}/1 d{d} cache {max_len} {jnp.dtype(dt).name}",
                       blocks=repr(blk), default=blk == cands[0], device_kind=kind, candidates=len(cands))

            def run(blk=blk):
                fn = jax.jit(lambda q, k, v, lens: decode_attention_pallas_tpu(
                    q, k, v, lens, blocks=blk, interpret=interpret, **kw))
                err = _jax_rel(fn(q, k, v, lens), want)
                t = timer(lambda: fn(q, k, v, lens))
                return dict(err=err, ms=t.median_s * 1e3, gbps=kv_bytes / t.median_s / 1e9)

            rows.append(_try(row, run))
            print(row)
    return rows


GPU_SWEEPS = {"attention": sweep_attention, "int4": sweep_int4, "patch_embed": sweep_patch_embed,
              "decode": sweep_decode}
TPU_SWEEPS = {"tpu_attention": sweep_tpu_attention, "tpu_decode": sweep_tpu_decode}
SWEEPS = {**GPU_SWEEPS, **TPU_SWEEPS}


def parse_ops(text: str, known) -> list[str]:
    """``--ops a,b`` checked against ``known`` (names): unknown ones end the program, named."""
    ops = [o for o in text.split(",") if o]
    unknown = [o for o in ops if o not in known]
    if unknown:
        raise SystemExit(f"--ops: unknown {unknown}; known {sorted(known)}")
    return ops


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--ops", default=None, help="default: the GPU ops on a GPU, the tpu_* ops on a "
                    "TPU, all with --smoke")
    ap.add_argument("--deadline-s", type=float, default=120.0, help="no candidate starts after this")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, interpreter: checks this script")
    args = ap.parse_args(argv)
    import jax

    on_tpu = jax.default_backend() == "tpu"
    if args.ops is None:
        args.ops = ",".join(SWEEPS if args.smoke else TPU_SWEEPS if on_tpu else GPU_SWEEPS)
    ops = parse_ops(args.ops, SWEEPS)
    tpu_timer = events = graphs = None
    if args.smoke:
        setup = Setup(dev="cpu")
        events = graphs = tpu_timer = Timer("cpu", warmup=0, min_runs=1, max_runs=1)
    else:
        tpu_ops = [o for o in ops if o in TPU_SWEEPS]
        if tpu_ops and not on_tpu:
            raise SystemExit(f"--ops {tpu_ops} need a TPU backend (jax.default_backend() is "
                             f"{jax.default_backend()!r}); --smoke checks them on the CPU")
        if len(tpu_ops) < len(ops) and not torch.cuda.is_available():
            raise SystemExit("benchmarks.sweep's GPU ops need a CUDA GPU (torch.cuda.is_available() "
                             "is False); --smoke checks the script on the CPU")
        if on_tpu:
            setup = Setup(dev="tpu")
            tpu_timer = Timer("tpu", warmup=2, min_runs=5, max_runs=20, budget_s=0.2)
        if len(tpu_ops) < len(ops):
            setup = Setup(cap=tuple(torch.cuda.get_device_capability()))
            events = Timer("cuda", warmup=2, min_runs=5, max_runs=20, budget_s=0.2)
            graphs = Timer("cuda", warmup=2, min_runs=10, max_runs=50, budget_s=0.1, cuda_graphs=True)
    device = detect_device()
    end = time.monotonic() + args.deadline_s
    past = lambda: time.monotonic() > end  # noqa: E731
    path = results_path(args.out_dir, "sweep-" + device.name)
    payload = dict(schema="gemini-kernels-sweep/1",
                   created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   complete=False, device=device.to_dict(), commit=git_commit(), versions=library_versions(),
                   config=vars(args), timing={"attention": "cuda-events, L2 flushed by a read, the stream "
                                                           "held while the host enqueues each run",
                                              "int4, patch_embed, decode": "cuda-graph replay, cuda-events, "
                                                                           "L2 flushed by a read, the stream "
                                                                           "held while the host enqueues each run",
                                              "tpu_attention, tpu_decode": "wall-clock, block_until_ready"},
                   records=[])
    for op in ops:
        timer = tpu_timer if op in TPU_SWEEPS else events if op == "attention" else graphs
        payload["records"] += SWEEPS[op](setup, timer, past)
        write_json_atomic(path, payload)
    payload["complete"] = not past()
    write_json_atomic(path, payload)
    print(f"sweep: {len(payload['records'])} rows -> {path}")
    return path


if __name__ == "__main__":
    main()
