"""Attention prefill suite: operator x impl grid, forward and forward+backward.

PyTorch impls (baseline: the best SDPA backend in the same case) and JAX impls
(baseline: XLA). Each case is checked before it is timed: the last ``check_rows``
query rows (bottom-right causal alignment makes that a valid sub-problem at any
length) against the fp32 reference, and for the backward the gradients of those rows
(dO is zero elsewhere). A case over tolerance is reported failed with its error and
not timed. FLOPs: 4*B*H*Sq*Skv*D, halved when causal; fwd+bwd counts 3.5x that.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from benchmarks.suites.common import GridSuite, Skip, rel_err
from kernels.attention.spec import AttentionProblem, attention_flops
from kernels.tolerances import BENCH_RTOL

REFERENCE_MAX_GB = 8  # above this the O(S^2) references are skipped, with the reason


@dataclass(frozen=True)
class Case:
    batch: int
    seq: int
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool
    dtype: str
    direction: str

    @property
    def id(self) -> str:
        group = "mqa" if self.kv_heads == 1 else ("mha" if self.kv_heads == self.heads else "gqa")
        return (f"{group}{self.heads}/{self.kv_heads} b{self.batch} s{self.seq} d{self.head_dim} "
                f"{'causal' if self.causal else 'full'} {self.direction}")

    def problem(self) -> AttentionProblem:
        return AttentionProblem(self.batch, self.seq, self.seq, self.heads, self.kv_heads,
                                self.head_dim, self.causal, None, None, self.head_dim**-0.5, False)

    def flops(self) -> float:
        f = attention_flops(self.problem())
        return f * 3.5 if self.direction == "fwd+bwd" else f

    def bytes(self) -> float:
        """Minimum HBM traffic: forward reads q, k, v and writes o; the backward also reads
        q, k, v, o, dO and writes dq, dk, dv (what a fused kernel cannot avoid)."""
        el = {"float32": 4, "float16": 2, "bfloat16": 2}[self.dtype]
        qo = self.batch * self.seq * self.heads * self.head_dim
        kv = self.batch * self.seq * self.kv_heads * self.head_dim
        fwd = 2 * qo + 2 * kv
        return el * (fwd + (4 * qo + 4 * kv if self.direction == "fwd+bwd" else 0))


def cases(cfg) -> list[Case]:
    out = []
    for seq in cfg.seq_lens:
        batch = max(1, cfg.tokens // seq) if cfg.tokens else cfg.batch
        for kvh in cfg.kv_heads:
            for causal in cfg.causal:
                for direction in cfg.directions:
                    if direction != "fwd" and cfg.max_bwd_seq and seq > cfg.max_bwd_seq:
                        continue
                    out.append(Case(batch, seq, cfg.heads, kvh, cfg.head_dim, causal, cfg.dtype,
                                    direction))
    return out


# ---- PyTorch impls -------------------------------------------------------------------

def torch_impl(name: str, device_kind: str):
    """Return (fn(q, k, v, causal) -> o, mode) for a PyTorch impl name, or raise Skip."""
    import torch

    from kernels import _platform, torch_ops

    if name == "triton":
        mode = "interpret" if _platform.triton_interpreting() else "compiled"
        return (lambda q, k, v, causal: torch_ops.attention(q, k, v, causal=causal, impl="triton")), mode
    if name in ("triton-tma", "triton-autotune"):  # the same op with other blocks
        from kernels.attention import triton_attention as ta

        mode = "interpret" if _platform.triton_interpreting() else "compiled"

        def blocks_for(q):
            if name == "triton-autotune":
                return "autotune"
            cap = ta._capability(q)
            if cap is not None and cap[0] < 9:
                raise Skip(f"triton-tma needs sm_90 or later, got sm_{cap[0]}{cap[1]}")
            return tuple(ta.tma_blocks(ta.default_blocks(q.shape[-1], q.dtype, backward=bwd,
                                                         capability=cap), backward=bwd)
                         for bwd in (False, True))

        return (lambda q, k, v, causal: ta.attention_triton(q, k, v, causal=causal,
                                                            blocks=blocks_for(q))), mode
    if name == "reference":
        return (lambda q, k, v, causal: torch_ops.attention(q, k, v, causal=causal, impl="reference")), "eager"
    if name == "reference-compiled":
        from kernels.attention.reference import _attention

        compiled = torch.compile(_attention, dynamic=False)
        return (lambda q, k, v, causal: compiled(
            q, k, v, causal=causal, window=None, softcap=None, scale=q.shape[-1] ** -0.5,
            q_segment_ids=None, kv_segment_ids=None)), "torch.compile"
    if name == "flash-attn":  # FlashAttention 2/3 where the user has it installed
        try:
            from flash_attn import flash_attn_func
        except ImportError as e:
            raise Skip(f"flash-attn is not installed ({e})") from None
        if device_kind != "cuda":
            raise Skip("flash-attn needs a CUDA device")
        return (lambda q, k, v, causal: flash_attn_func(q, k, v, causal=causal)), "compiled"
    if name.startswith("sdpa"):
        from torch.nn.attention import SDPBackend

        from kernels.attention.sdpa import attention_sdpa

        backend = {"sdpa": None, "sdpa-flash": SDPBackend.FLASH_ATTENTION,
                   "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
                   "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa-math": SDPBackend.MATH}.get(name, "?")
        if backend == "?":
            raise Skip(f"unknown sdpa backend {name!r}")
        if backend not in (None, SDPBackend.MATH) and device_kind != "cuda":
            raise Skip(f"{name} needs a CUDA device")

        def run_sdpa(q, k, v, causal):
            if backend == SDPBackend.EFFICIENT_ATTENTION and k.shape[2] != q.shape[2]:
                # torch 2.11 on an H200: "No available kernel" for enable_gqa (kv_heads < heads)
                raise Skip(f"torch {torch.__version__}'s mem-efficient SDPA kernel has no grouped-query "
                           f"path (kv_heads {k.shape[2]} < heads {q.shape[2]}); it needs K/V repeated")
            return attention_sdpa(
                q, k, v, causal=causal, window=None, softcap=None, scale=q.shape[-1] ** -0.5,
                q_segment_ids=None, kv_segment_ids=None, backend=backend)

        return run_sdpa, "eager"
    raise Skip(f"unknown torch impl {name!r}")


class AttentionSuite(GridSuite):
    name = "attention"
    peers = {"torch": ("sdpa",), "jax": ("xla",)}

    def case_list(self) -> list:
        return cases(self.cfg)

    # inputs and references are shared by every impl of a case
    def _inputs(self, case: Case):
        import torch

        if getattr(self, "_case", None) == case:
            return self._data
        dev = "cuda" if self.device.kind == "cuda" else "cpu"
        g = torch.Generator(device="cpu").manual_seed(self.seed + zlib.crc32(case.id.encode()))
        dt = getattr(torch, case.dtype)
        q = torch.randn(case.batch, case.seq, case.heads, case.head_dim, generator=g).to(dev, dt)
        k = torch.randn(case.batch, case.seq, case.kv_heads, case.head_dim, generator=g).to(dev, dt)
        v = torch.randn(case.batch, case.seq, case.kv_heads, case.head_dim, generator=g).to(dev, dt)
        m = min(self.cfg.check_rows, case.seq)
        do = torch.zeros_like(q)
        do[:, -m:] = torch.randn(case.batch, m, case.heads, case.head_dim, generator=g).to(dev, dt)
        ref = self._reference(q, k, v, do, m, case)
        self._case, self._data = case, (q, k, v, do, m, ref)
        return self._data

    @staticmethod
    def _reference(q, k, v, do, m, case):
        import torch

        from kernels.attention.reference import _attention

        qs = q[:, -m:].detach().float().requires_grad_()
        kf, vf = (x.detach().float().requires_grad_() for x in (k, v))
        o = _attention(qs, kf, vf, causal=case.causal, window=None, softcap=None,
                       scale=case.head_dim**-0.5, q_segment_ids=None, kv_segment_ids=None)
        if case.direction == "fwd":
            return (o.detach().cpu(),)
        dq, dk, dv = torch.autograd.grad(o, (qs, kf, vf), do[:, -m:].float())
        return tuple(t.detach().cpu() for t in (o, dq, dk, dv))

    def run(self, case: Case, framework: str, impl: str) -> dict:
        rec, timed = self.check(case, framework, impl)
        if timed is None:
            return rec
        timer = self.timer_factory(framework, interpret=(rec["mode"] == "interpret"))
        t = timer(timed)
        return {**rec, "status": "ok", "timing": t.to_dict(), "median_ms": t.median_s * 1e3,
                "tflops": case.flops() / t.median_s / 1e12, "gbps": case.bytes() / t.median_s / 1e9}

    def check(self, case: Case, framework: str, impl: str):
        """Correctness first: (record, timed callable), or (failed record, None) over tolerance."""
        if impl.startswith("reference"):
            scores_gb = case.batch * case.heads * case.seq**2 * 4 * (3 if case.direction != "fwd" else 1) / 1e9
            if scores_gb > REFERENCE_MAX_GB:
                raise Skip(f"the reference materializes B*H*S^2 fp32 scores ({scores_gb:.0f} GB "
                           f"> {REFERENCE_MAX_GB} GB)")
        q, k, v, do, m, ref = self._inputs(case)
        if framework == "torch":
            fn, mode = torch_impl(impl, self.device.kind)
            got, timed = self._torch_calls(fn, case, q, k, v, do, m)
        else:
            fn, mode = self._jax_impl(impl, case)
            got, timed = self._jax_calls(fn, case, q, k, v, do, m)
        err = max(rel_err(g, r) for g, r in zip(got, ref))
        tol = BENCH_RTOL[case.dtype]
        rec = {"max_error": err, "tolerance": tol, "mode": mode, "flops": case.flops(),
               "bytes": case.bytes()}
        if impl == "triton-autotune":  # which forward blocks won, and every candidate's time
            from kernels.attention.triton_autotune import tuning_record

            rec["autotune"] = tuning_record(q, k, causal=case.causal)
        if not np.isfinite(err) or err > tol:
            return {**rec, "status": "failed"}, None
        return rec, timed

    @staticmethod
    def _torch_calls(fn, case, q, k, v, do, m):
        import torch

        if case.direction == "fwd":
            with torch.no_grad():
                o = fn(q, k, v, case.causal)
            return (o[:, -m:].float().cpu(),), lambda: fn(q, k, v, case.causal)
        qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))

        def step():
            o = fn(qg, kg, vg, case.causal)
            return (o, *torch.autograd.grad(o, (qg, kg, vg), do))

        o, dq, dk, dv = step()
        got = (o[:, -m:], dq[:, -m:], dk, dv)
        return tuple(t.detach().float().cpu() for t in got), step

    def _jax_impl(self, impl, case):
        import jax
        import jax.numpy as jnp

        from kernels import _platform, jax_ops

        scale = case.head_dim**-0.5
        if impl in jax_ops.ATTENTION_IMPLS:
            backend = _platform.jax_backend()
            mode = {"pallas": "interpret" if _platform.pallas_interpret_default() else "compiled",
                    "pallas_tpu": "compiled" if backend == "tpu" else "interpret",
                    "pallas_mgpu": "compiled" if backend in ("gpu", "cuda") else "interpret",
                    }.get(impl, "xla")
            return (lambda q, k, v: jax_ops.attention(q, k, v, causal=case.causal, impl=impl)), mode
        if impl == "xla-cudnn":
            if self.device.kind != "cuda":
                raise Skip("cuDNN attention through jax.nn needs a CUDA device")
            from kernels.attention.xla import attention_xla

            return (lambda q, k, v: attention_xla(
                q, k, v, causal=case.causal, window=None, softcap=None, scale=scale,
                q_segment_ids=None, kv_segment_ids=None, implementation="cudnn")), "cudnn"
        if impl == "pallas-jax-mgpu":  # JAX's own Hopper (Mosaic GPU) attention
            cap = self.device.extra.get("capability", "")
            if self.device.kind != "cuda" or not cap.startswith("9"):
                raise Skip(f"attention_mgpu needs a Hopper GPU (sm_90), got {self.device.name}")
            if case.dtype != "float16":  # jax 0.11.2 on an H200: "src had type bfloat16 and dst float16"
                raise Skip(f"jax {jax.__version__}'s attention_mgpu runs float16 only, the case is {case.dtype}")
            from jax.experimental.pallas.ops.gpu import attention_mgpu

            config = attention_mgpu.TuningConfig(block_q=64, block_kv=64, max_concurrent_steps=2,
                                                 causal=case.causal)

            def run_mgpu(q, k, v):  # it applies no softmax scale: fold it into q
                return attention_mgpu.attention(q * jnp.asarray(scale, q.dtype), k, v, config)

            return run_mgpu, "compiled"
        if impl == "splash":  # JAX's TPU splash attention (compiled on TPUs only)
            if self.device.kind != "tpu":
                raise Skip("splash attention is timed on TPUs only")
            from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
            from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

            mask_cls = sm.CausalMask if case.causal else sm.FullMask
            mask = sm.MultiHeadMask([mask_cls((case.seq, case.seq)) for _ in range(case.heads)])
            group = case.heads // case.kv_heads
            kernel = sk.make_splash_mqa_single_device(mask) if group == case.heads else sk.make_splash_mha_single_device(mask)

            def run_splash(q, k, v):  # [B, S, H, D] -> splash's [H, S, D] per batch row
                qt = jnp.swapaxes(q * jnp.asarray(scale, q.dtype), 1, 2)
                kt, vt = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
                if group == case.heads:  # MQA: one kv head
                    out = jax.vmap(kernel)(qt, kt[:, 0], vt[:, 0])
                else:
                    out = jax.vmap(kernel)(qt, jnp.repeat(kt, group, 1), jnp.repeat(vt, group, 1))
                return jnp.swapaxes(out, 1, 2)

            return run_splash, "compiled"
        if impl == "pallas-jax-ops":
            if self.device.kind != "cuda":
                raise Skip("jax.experimental.pallas.ops.gpu.attention is timed on GPUs only "
                           "(interpret mode on CPU would time the interpreter)")
            from jax.experimental.pallas.ops.gpu import attention as jax_pallas

            group = case.heads // case.kv_heads

            def run(q, k, v):  # no GQA in JAX's kernel: K/V are repeated (its limitation)
                k2, v2 = (jnp.repeat(x, group, axis=2) for x in (k, v))
                return jax_pallas.mha(q, k2, v2, segment_ids=None, sm_scale=scale, causal=case.causal)

            return run, "compiled (K/V repeated)"
        raise Skip(f"unknown jax impl {impl!r}")

    @staticmethod
    def _jax_calls(fn, case, q, k, v, do, m):
        import jax
        import jax.numpy as jnp

        to_jax = lambda t: jnp.asarray(t.detach().float().cpu().numpy()).astype(case.dtype)  # noqa: E731
        qj, kj, vj, doj = map(to_jax, (q, k, v, do))
        if case.direction == "fwd":
            f = jax.jit(fn)
            o = f(qj, kj, vj)
            return (np.asarray(o[:, -m:], np.float32),), lambda: f(qj, kj, vj)

        @jax.jit
        def step(q_, k_, v_, do_):
            o, vjp = jax.vjp(fn, q_, k_, v_)
            return (o, *vjp(do_))

        o, dq, dk, dv = step(qj, kj, vj, doj)
        got = (o[:, -m:], dq[:, -m:], dk, dv)
        return tuple(np.asarray(t, np.float32) for t in got), lambda: step(qj, kj, vj, doj)
