"""The reference model end to end: forward and train-step tokens/s and MFU per kernel
choice, and decode tokens/s against a long KV cache.

Impls are kernel presets: PyTorch ``reference`` (eager), ``compiled`` (torch.compile of the
reference-kernel model), ``triton``, ``sdpa``; JAX ``xla``, ``pallas``, ``reference``.
Peers: the PyTorch eager/compiled model, JAX XLA.

MFU (stated, torchtitan's convention, causal attention NOT halved):
  train step  = (6·N + 12·L·H·D·S) FLOP per token
  forward     = (2·N + 4·L·H·D·S)  FLOP per token
N = non-embedding parameters + the tied head's matmul (vocab·width), L layers, H heads,
D head_dim, S sequence length. MFU = FLOP/s ÷ the device's measured matmul ceiling (and
÷ the datasheet peak). Decode reports tokens/s and the bytes of weights + KV read per step.
Correctness first: logits (forward, decode) or loss (train step) against the
reference-kernel model in fp32 with the same parameters.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from benchmarks.suites.common import Skip, rel_err
from kernels.tolerances import BENCH_RTOL

TORCH_PRESETS = {"reference": "reference", "compiled": "reference", "triton": "triton", "sdpa": "sdpa"}
JAX_PRESETS = {"xla": "xla", "pallas": "pallas", "reference": "reference"}


@dataclass
class ModelBenchConfig:
    enabled: bool = True
    model: str = "tiny"  # a model.config.PRESETS name
    batch: int = 2
    seq_len: int = 128
    decode_batches: list[int] = field(default_factory=lambda: [1, 16])
    decode_cache_len: int = 1024  # GPU: 32768
    modes: list[str] = field(default_factory=lambda: ["forward", "train_step", "decode"])
    dtype: str = "float32"
    torch_impls: list[str] = field(default_factory=lambda: ["reference", "triton"])
    jax_impls: list[str] = field(default_factory=lambda: ["xla", "pallas"])


@dataclass(frozen=True)
class Case:
    model: str
    mode: str
    batch: int
    seq: int  # forward/train: tokens per row; decode: cache length
    dtype: str

    @property
    def id(self) -> str:
        what = f"cache {self.seq}" if self.mode == "decode" else f"s{self.seq}"
        return f"{self.model} {self.mode} b{self.batch} {what} {self.dtype}"


def flops_per_token(cfg, seq: int, *, train: bool) -> float:
    from model.config import param_count

    n = param_count(cfg) - cfg.vocab_size * cfg.width - (2 * cfg.layers + 1) * cfg.width  # no embed/norms
    n += cfg.vocab_size * cfg.width  # the tied head is a matmul
    attn = cfg.layers * cfg.heads * cfg.head_dim * seq
    return 6 * n + 12 * attn if train else 2 * n + 4 * attn


class ModelSuite:
    name = "model"
    peers = {"torch": ("reference", "compiled"), "jax": ("xla",)}

    def __init__(self, cfg, device, timer_factory, seed: int = 0):
        self.cfg, self.device, self.timer_factory, self.seed = cfg, device, timer_factory, seed

    def entries(self):
        c = self.cfg
        for mode in c.modes:
            batches = c.decode_batches if mode == "decode" else [c.batch]
            for b in batches:
                case = Case(c.model, mode, b, c.decode_cache_len if mode == "decode" else c.seq_len, c.dtype)
                for impl in c.torch_impls:
                    yield case, "torch", impl
                for impl in c.jax_impls:
                    yield case, "jax", impl

    def _model_cfg(self):
        from model.config import PRESETS

        return PRESETS[self.cfg.model]

    def _data(self, case: Case):
        if getattr(self, "_case", None) != case:
            import torch

            from model.torch_model import GeminiModel

            mcfg = self._model_cfg()
            rng = np.random.default_rng(self.seed + zlib.crc32(case.id.encode()))
            tokens = rng.integers(0, mcfg.vocab_size, size=(case.batch, 1 if case.mode == "decode" else case.seq))
            ref_model = GeminiModel(mcfg)
            ref_model.init_weights(self.seed)
            params = {k: v.detach().numpy().copy() for k, v in ref_model.state_dict().items()}
            kv = None
            if case.mode == "decode":  # a cache filled to length seq - 1 with random K/V
                shape = (mcfg.layers, case.batch, case.seq, mcfg.kv_heads, mcfg.head_dim)
                kv = (rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32))
            ref = self._torch_run(ref_model, torch, tokens, case, kv, check_only=True)
            self._case, self._payload = case, (mcfg, tokens, params, kv, ref)
        return self._payload

    def check(self, case: Case, framework: str, impl: str):
        mcfg, tokens, params, kv, ref = self._data(case)
        got, timed, mode = (self._torch if framework == "torch" else self._jax)(case, impl, mcfg, tokens, params, kv)
        err = rel_err(got, ref)
        rec = {"max_error": err, "tolerance": BENCH_RTOL[case.dtype], "mode": mode}
        if not np.isfinite(err) or err > rec["tolerance"]:
            return {**rec, "status": "failed"}, None
        return rec, timed

    def run(self, case: Case, framework: str, impl: str) -> dict:
        rec, timed = self.check(case, framework, impl)
        if timed is None:
            return rec
        t = self.timer_factory(framework, interpret=rec["mode"] == "interpret")(timed)
        tokens = case.batch * (1 if case.mode == "decode" else case.seq)
        out = {**rec, "status": "ok", "timing": t.to_dict(), "median_ms": t.median_s * 1e3,
               "tokens_per_s": tokens / t.median_s}
        if case.mode != "decode":
            flops = flops_per_token(self._model_cfg(), case.seq, train=case.mode == "train_step") * tokens
            out.update(flops=flops, tflops=flops / t.median_s / 1e12)
        return out

    # --- PyTorch ------------------------------------------------------------------------
    def _torch(self, case, impl, mcfg, tokens, params, kv):
        import torch

        from kernels import _platform
        from model.config import KernelConfig
        from model.torch_model import GeminiModel

        if impl not in TORCH_PRESETS:
            raise Skip(f"unknown torch impl {impl!r}")
        dev = "cuda" if self.device.kind == "cuda" else "cpu"
        model = GeminiModel(mcfg, KernelConfig(preset=TORCH_PRESETS[impl]))
        model.load_state_dict({k: torch.tensor(v) for k, v in params.items()})
        model = model.to(dev, getattr(torch, case.dtype))
        run_model = torch.compile(model) if impl == "compiled" else model
        mode = {"triton": "interpret" if _platform.triton_interpreting() else "compiled",
                "compiled": "torch.compile"}.get(impl, "eager")
        got = self._torch_run(run_model, torch, tokens, case, kv, device=dev)
        timed = self._torch_step(run_model, torch, tokens, case, kv, dev)
        return got, timed, mode

    @staticmethod
    def _torch_run(model, torch, tokens, case, kv, device="cpu", check_only=False):
        t = torch.tensor(tokens, device=device)
        dtype = next(model.parameters()).dtype
        if case.mode == "forward":
            with torch.no_grad():
                return model(t).float().cpu().numpy()
        if case.mode == "train_step":
            logits = model(t)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), t[:, 1:].flatten())
            return np.array([loss.item()])
        from model.torch_model import KVCache

        cfg = model.cfg if hasattr(model, "cfg") else model._orig_mod.cfg
        cache = KVCache.create(cfg, case.batch, case.seq, dtype=dtype, device=device)
        for i in range(cfg.layers):
            cache.k[i].copy_(torch.tensor(kv[0][i]).to(device, dtype))
            cache.v[i].copy_(torch.tensor(kv[1][i]).to(device, dtype))
        cache.lengths.fill_(case.seq - 1)
        with torch.no_grad():
            return model(t, cache=cache).float().cpu().numpy()

    @staticmethod
    def _torch_step(model, torch, tokens, case, kv, dev):
        t = torch.tensor(tokens, device=dev)
        if case.mode == "forward":
            def step():
                with torch.no_grad():
                    return model(t)
            return step
        if case.mode == "train_step":
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def step():
                opt.zero_grad(set_to_none=True)
                logits = model(t)
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1),
                                                         t[:, 1:].flatten())
                loss.backward()
                opt.step()
                return loss
            return step
        from model.torch_model import KVCache

        cfg = model.cfg if hasattr(model, "cfg") else model._orig_mod.cfg
        dtype = next(model.parameters()).dtype
        cache = KVCache.create(cfg, case.batch, case.seq, dtype=dtype, device=dev)

        def step():  # one decode step at length seq - 1 (the cache is reset each time)
            cache.lengths.fill_(case.seq - 1)
            with torch.no_grad():
                return model(t, cache=cache)
        return step

    # --- JAX ----------------------------------------------------------------------------
    def _jax(self, case, impl, mcfg, tokens, params, kv):
        import functools

        import jax
        import jax.numpy as jnp

        from kernels import _platform
        from model import jax_model
        from model.config import KernelConfig

        if impl not in JAX_PRESETS:
            raise Skip(f"unknown jax impl {impl!r}")
        kernels = KernelConfig(preset=JAX_PRESETS[impl])
        p = {k: jnp.asarray(v, case.dtype) for k, v in params.items()}
        t = jnp.asarray(tokens, jnp.int32)
        fwd = functools.partial(jax_model.forward, cfg=mcfg, kernels=kernels)
        mode = ("interpret" if _platform.pallas_interpret_default() else "compiled") if impl == "pallas" else "xla"
        if case.mode == "forward":
            f = jax.jit(fwd)
            return np.asarray(f(p, t), np.float32), (lambda: f(p, t)), mode
        if case.mode == "train_step":
            def loss_fn(params_):
                logits = fwd(params_, t).astype(jnp.float32)
                logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
                return -jnp.take_along_axis(logp, t[:, 1:, None], axis=-1).mean()

            @jax.jit
            def step(params_):  # loss, grads and a plain Adam-free SGD update (the optimizer is not the point)
                loss, grads = jax.value_and_grad(loss_fn)(params_)
                return loss, jax.tree_util.tree_map(lambda a, g: a - 1e-4 * g, params_, grads)

            loss, _ = step(p)
            return np.array([float(loss)]), (lambda: step(p)), mode
        cache = jax_model.KVCache.create(mcfg, case.batch, case.seq, dtype=jnp.dtype(case.dtype))
        cache = cache._replace(k=tuple(jnp.asarray(x, case.dtype) for x in kv[0]),
                               v=tuple(jnp.asarray(x, case.dtype) for x in kv[1]),
                               lengths=jnp.full((case.batch,), case.seq - 1, jnp.int32))
        f = jax.jit(lambda p_, t_, c_: fwd(p_, t_, cache=c_))
        logits, _ = f(p, t, cache)
        return np.asarray(logits, np.float32), (lambda: f(p, t, cache)), mode
