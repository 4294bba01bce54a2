"""Decode attention suite: split-KV decode, impl x case grid, latency and achieved GB/s.

Cases: MQA and GQA, batch 1 and 16, cache lengths from the config (CPU default tiny,
GPU 4k-128k); every row uses the full cache length. PyTorch impls (peer: SDPA) and JAX
impls (peer: XLA). Each case is checked against the fp32 reference before it is timed; a
case over tolerance is reported failed and not timed. Throughput: ``gbps`` = bytes of K
and V the kernel must read (attended positions only) / median time; the runner adds the
fraction of the measured copy bandwidth (the copy counts read + write, so 1.0 means
reading K/V as fast as the copy moves bytes).
Timing: the torch rows run ``kernels.torch_ops.decode_attention``, checked once and timed
with ``check_lengths=False`` (no host read of the lengths: one device-to-host sync a call),
as the JAX rows are timed without theirs; ``triton-graph`` replays the call captured as a
CUDA graph (no launch overhead, as serving engines run decode steps); ``triton-pdl`` (sm_90+)
runs the default tiles with both kernels launched as programmatic dependents (the combine
starts under the split's tail; in the steady graph each call's split under the last call's
combine). With ``steady_calls``
(GPU preset) each torch row is also timed as that many calls back to back in one graph over
distinct caches, per call ("steady": the decode step's layers in a serving engine's graph,
cold L2 each replay, as FlashInfer times its kernels), and each JAX row as the same calls in
one jitted program, per call from the difference with half as many (``Timer.steady_jax``:
JAX's dispatch, tens of microseconds a call, cancels; a 32k decode reads for a few).
Paged rows (impls ``triton_paged`` / ``pallas_paged`` / ``pallas_tpu_paged``): the same case's
cache scattered into a shuffled pool of ``page_size`` pages read through a block table, so
their GB/s compare directly with the contiguous ``triton`` / ``pallas`` rows (same bytes,
same lengths).
``pallas_tpu`` / ``pallas_tpu_paged``: the TPU (Mosaic) kernels, compiled on a TPU. Elsewhere
they run in TPU interpret mode, a CPU simulator costing ~10 s a row at the CPU preset's 2048
positions (compile, check, one timed call): there only the first ``tpu_interpret_cases``
cases run (checked, timed once, labeled "interpret"), the rest are skipped saying so; on a
GPU host they are skipped (they would time the simulator, not the GPU).
"""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field

import numpy as np

from benchmarks.suites.common import GridSuite, Skip, rel_err, steady_copies, steady_record
from kernels.tolerances import BENCH_RTOL


@dataclass
class DecodeBenchConfig:
    enabled: bool = True
    batches: list[int] = field(default_factory=lambda: [1, 16])
    cache_lens: list[int] = field(default_factory=lambda: [1024, 4096])  # GPU: 4096 ... 131072
    heads: int = 8
    kv_heads: list[int] = field(default_factory=lambda: [1, 2])  # MQA, GQA
    head_dim: int = 128
    dtype: str = "float32"  # GPU: bfloat16 / float16
    torch_impls: list[str] = field(default_factory=lambda: ["triton", "sdpa", "reference"])
    jax_impls: list[str] = field(default_factory=lambda: ["pallas", "xla", "reference"])
    page_size: int = 64  # the *_paged impls: cache_lens must be multiples of it
    # every torch row as a CUDA-graph replay (GPU preset), as serving engines run decode steps;
    # False: only the triton-graph row is
    cuda_graphs: bool = False
    # > 0 (GPU preset): each torch row also timed as that many calls back to back in one CUDA
    # graph over distinct caches (fewer for caches past 256 MiB of copies), per call: "steady"
    steady_calls: int = 0
    # pallas_tpu* rows without a TPU (TPU interpret mode, ~10 s a row on 2 cores): only the
    # first this many cases run; the rest are skipped with that reason
    tpu_interpret_cases: int = 1


@dataclass(frozen=True)
class Case:
    batch: int
    cache_len: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str

    @property
    def id(self) -> str:
        group = "mqa" if self.kv_heads == 1 else ("mha" if self.kv_heads == self.heads else "gqa")
        return f"{group}{self.heads}/{self.kv_heads} b{self.batch} T{self.cache_len} d{self.head_dim}"

    def kv_bytes(self) -> int:
        itemsize = np.dtype("float16" if self.dtype == "bfloat16" else self.dtype).itemsize
        return 2 * self.batch * self.cache_len * self.kv_heads * self.head_dim * itemsize


def cases(cfg) -> list[Case]:
    return [Case(b, t, cfg.heads, kvh, cfg.head_dim, cfg.dtype)
            for t in cfg.cache_lens for b in cfg.batches for kvh in cfg.kv_heads]


def _decode_tpu(q, k, v, lens, *, window, softcap, scale, block_table=None):
    """The TPU kernels (``pallas_tpu_decode`` / ``pallas_tpu_paged_decode``), blocks by chip."""
    from kernels.decode.pallas_tpu_decode import decode_attention_pallas_tpu
    from kernels.decode.pallas_tpu_paged_decode import paged_decode_attention_pallas_tpu

    if block_table is None:
        return decode_attention_pallas_tpu(q, k, v, lens, window=window, softcap=softcap, scale=scale)
    return paged_decode_attention_pallas_tpu(q, k, v, lens, block_table, window=window,
                                             softcap=softcap, scale=scale)


class DecodeSuite(GridSuite):
    name = "decode"
    peers = {"torch": ("sdpa",), "jax": ("xla",)}

    def case_list(self) -> list:
        return cases(self.cfg)

    def _inputs(self, case: Case):
        import torch

        if getattr(self, "_case", None) == case:
            return self._data
        from kernels.decode.reference import _decode

        dev = "cuda" if self.device.kind == "cuda" else "cpu"
        # drawn on the device: a 128k x 16-row cache is 10^9 numbers, seconds on a host
        g = torch.Generator(device=dev).manual_seed(self.seed + zlib.crc32(case.id.encode()))
        dt = getattr(torch, case.dtype)
        q = torch.randn(case.batch, case.heads, case.head_dim, generator=g, device=dev).to(dt)
        k = torch.randn(case.batch, case.cache_len, case.kv_heads, case.head_dim, generator=g, device=dev).to(dt)
        v = torch.randn(case.batch, case.cache_len, case.kv_heads, case.head_dim, generator=g, device=dev).to(dt)
        lens = torch.full((case.batch,), case.cache_len, dtype=torch.int32, device=dev)
        ref = _decode(q.float(), k.float(), v.float(), lens, window=None, softcap=None,
                      scale=case.head_dim**-0.5).cpu()
        self._case, self._data = case, (q, k, v, lens, ref)
        return self._data

    def _paged(self, case: Case):
        """The case's K/V scattered into shuffled page pools, and the int32 block table."""
        import torch

        if getattr(self, "_paged_case", None) == case:
            return self._paged_data
        _, k, v, _, _ = self._inputs(case)
        ps = self.cfg.page_size
        if case.cache_len % ps:
            raise Skip(f"cache_len {case.cache_len} is not a multiple of page_size {ps}")
        b, ppr = case.batch, case.cache_len // ps
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        table = torch.randperm(b * ppr, generator=g).reshape(b, ppr).to(k.device)
        pools = []
        for x in (k, v):
            pool = torch.empty((b * ppr, ps, *x.shape[2:]), dtype=x.dtype, device=x.device)
            pool[table] = x.reshape(b, ppr, ps, *x.shape[2:])
            pools.append(pool)
        self._paged_case, self._paged_data = case, (*pools, table.to(torch.int32))
        return self._paged_data

    def _torch_fn(self, impl):
        from kernels import _platform, torch_ops

        if impl == "flash-attn":  # FlashAttention's split-KV decode, where the user has it
            try:
                from flash_attn import flash_attn_with_kvcache
            except ImportError as e:
                raise Skip(f"flash-attn is not installed ({e})") from None
            if self.device.kind != "cuda":
                raise Skip("flash-attn needs a CUDA device")
            return (lambda q, k, v, L: flash_attn_with_kvcache(
                q[:, None], k, v, cache_seqlens=L, softmax_scale=q.shape[-1] ** -0.5)[:, 0]), "compiled"
        if impl not in ("triton", "sdpa", "reference", "triton_paged", "triton-graph", "triton-pdl"):
            raise Skip(f"unknown torch impl {impl!r}")
        if impl == "triton-graph" and self.device.kind != "cuda":
            raise Skip("CUDA-graph replay needs a CUDA device")
        if impl == "triton-pdl":  # the default tiles, split and combine as programmatic dependent launches
            import torch

            if self.device.kind != "cuda" or torch.cuda.get_device_capability() < (9, 0):
                raise Skip("programmatic dependent launch needs an sm_90+ GPU")
            return self._pdl_fn(), "compiled"
        kernel = impl.startswith("triton")
        mode = ("interpret" if _platform.triton_interpreting() else "compiled") if kernel else "eager"
        impl = impl.removesuffix("_paged").removesuffix("-graph")  # *_paged rows: args[4] = table
        return (lambda q, k, v, L, *bt, check=True: torch_ops.decode_attention(
            q, k, v, L, block_table=bt[0] if bt else None, impl=impl, check_lengths=check)), mode

    @staticmethod
    def _pdl_fn():
        import dataclasses

        import torch

        from kernels import torch_ops
        from kernels._autotune import excluded_blocks
        from kernels.decode import triton_decode as td

        picked = {}  # (head_dim, dtype, span) -> blocks: resolved (and the canary's file read) once

        def f(q, k, v, L, *bt, check=True):
            span = k.shape[1] if not bt else bt[0].shape[1] * k.shape[1]
            key = (q.shape[-1], q.dtype, span)
            if key not in picked:
                blocks = dataclasses.replace(td.default_blocks(*key, capability=torch.cuda.get_device_capability()),
                                             pdl=True)
                why = excluded_blocks().get(repr(blocks))
                if why:  # the canary saw these launches end or hang a process
                    raise Skip(f"the canary excluded {blocks!r}: {why}")
                picked[key] = blocks
            return torch_ops.decode_attention(q, k, v, L, block_table=bt[0] if bt else None, impl="triton",
                                              check_lengths=check, blocks=picked[key])
        return f

    def _jax_fn(self, impl):
        import jax

        from kernels import _platform
        from kernels.decode.pallas_decode import decode_pallas
        from kernels.decode.reference_jax import _decode
        from kernels.decode.xla import decode_xla

        fns = {"pallas": decode_pallas, "pallas_paged": decode_pallas, "xla": decode_xla, "reference": _decode,
               "pallas_tpu": _decode_tpu, "pallas_tpu_paged": _decode_tpu}
        if impl == "pallas-jax-ops":  # JAX's own Pallas GPU decode (split-K, GQA)
            if self.device.kind != "cuda":
                raise Skip("jax.experimental.pallas.ops.gpu.decode_attention is timed on GPUs only "
                           "(interpret mode on CPU would time the interpreter)")
            from jax.experimental.pallas.ops.gpu import decode_attention as jax_decode

            f = jax.jit(lambda q, k, v, L: jax_decode.gqa(q, k, v, kv_seq_len=L, sm_scale=q.shape[-1] ** -0.5))
            return f, "compiled"
        if impl not in fns:
            raise Skip(f"unknown jax impl {impl!r}")
        kernel = impl.startswith("pallas")
        mode = ("interpret" if _platform.pallas_interpret_default() else "compiled") if kernel else "xla"
        if impl.startswith("pallas_tpu"):
            if self.device.kind == "cuda":
                raise Skip("pallas_tpu is the TPU kernel: compiled on TPUs; on a GPU host it would "
                           "run (and time) the CPU simulator of TPU interpret mode")
            mode = "compiled" if _platform.jax_backend() == "tpu" else "interpret"
        # Timed without the public API's host-side length check (a sync per call); the
        # correctness run below goes through the same kernels.

        def f(q, k, v, L, *bt):  # *_paged rows: bt = (block_table,)
            kw = dict(block_table=bt[0]) if bt else {}
            return fns[impl](q, k, v, L, window=None, softcap=None, scale=q.shape[-1] ** -0.5, **kw)

        return jax.jit(f), mode

    def run(self, case: Case, framework: str, impl: str) -> dict:
        if impl.startswith("pallas_tpu") and self.device.kind == "cpu":  # TPU interpret mode
            n = self.cfg.tpu_interpret_cases
            if cases(self.cfg).index(case) >= n:
                raise Skip(f"TPU interpret mode (no TPU) costs ~10 s a row: pallas_tpu runs on the "
                           f"first {n} case(s) only (decode.tpu_interpret_cases)")
        q, k, v, lens, ref = self._inputs(case)
        table = ()
        if impl.endswith("_paged"):
            k, v, table = self._paged(case)
            table = (table,)
        timer_kw = {}
        if framework == "torch":
            fn, mode = self._torch_fn(impl)
            args = (q, k, v, lens, *table)
            got = fn(*args).float().cpu().numpy()  # the lengths checked once, here
            if impl != "flash-attn":
                fn = functools.partial(fn, check=False)
            if impl == "triton-graph" or self.cfg.cuda_graphs:  # replayed as serving engines run decode
                timer_kw = dict(cuda_graphs=True)
        else:
            import jax.numpy as jnp

            fn, mode = self._jax_fn(impl)
            to_jax = lambda t: jnp.asarray(t.detach().float().cpu().numpy()).astype(case.dtype)  # noqa: E731
            ints = lambda t: jnp.asarray(t.cpu().numpy())  # noqa: E731
            args = (to_jax(q), to_jax(k), to_jax(v), ints(lens), *map(ints, table))
            got = np.asarray(fn(*args), np.float32)
        err = rel_err(got, ref.numpy())
        tol = BENCH_RTOL[case.dtype]
        rec = {"max_error": err, "tolerance": tol, "mode": mode, "bytes": case.kv_bytes()}
        if not np.isfinite(err) or err > tol:
            return {**rec, "status": "failed"}
        timer = self.timer_factory(framework, interpret=(mode == "interpret"), **timer_kw)
        t = timer(lambda: fn(*args))
        gbps = case.kv_bytes() / t.median_s / 1e9
        rec.update(status="ok", timing=t.to_dict(), median_ms=t.median_s * 1e3, gbps=gbps)
        if self.cfg.steady_calls and mode != "interpret":
            n = steady_copies(case.kv_bytes(), self.cfg.steady_calls)
            if framework == "torch":
                caches = [(k, v)] + [(k.clone(), v.clone()) for _ in range(n - 1)]
                rec.update(steady_record(timer, [functools.partial(fn, q, kc, vc, lens, *table)
                                                 for kc, vc in caches], case.kv_bytes()))
            else:  # the same calls in one jitted program, dispatch cancelled (Timer.steady_jax)
                import jax.numpy as jnp

                q_, k_, v_, *rest = args
                sets = [args] + [(q_, jnp.array(k_, copy=True), jnp.array(v_, copy=True), *rest)
                                 for _ in range(n - 1)]
                rec.update(steady_record(timer, sets, case.kv_bytes(), jax_fn=fn))
        return rec
