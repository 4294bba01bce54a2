"""The reference model end to end: forward and train-step tokens/s and MFU per kernel
choice, and decode tokens/s against a long KV cache.

Impls are kernel presets: PyTorch ``reference`` (eager), ``compiled`` (torch.compile of the
reference-kernel model), ``triton``, ``sdpa``, ``sdpa-fused-loss`` (sdpa with the fused loss,
``TORCH_PRESETS``); JAX ``xla``, ``pallas``, ``reference``.
Peers: the PyTorch eager/compiled model, JAX XLA.

MFU (stated, torchtitan's convention, causal attention NOT halved):
  train step  = (6·N + 12·L·H·D·S) FLOP per token
  forward     = (2·N + 4·L·H·D·S)  FLOP per token
N = non-embedding parameters + the tied head's matmul (vocab·width), L layers, H heads,
D head_dim, S sequence length. MFU = FLOP/s ÷ the device's measured matmul ceiling (and
÷ the datasheet peak). Decode reports tokens/s and the bytes of weights + KV read per step.
Correctness first: the logits of the last ``check_rows`` positions (forward; in a causal model
they depend on every position), the logits (decode) or the loss (train step) against the
reference-kernel model in fp32 with the same, dtype-rounded, weights. The train step is the
model's ``loss`` (next-token cross-entropy through its ``loss`` kernel: the fused linear
cross-entropy for triton, full logits for the reference/sdpa/compiled peers), backward, AdamW
(one fused kernel on CUDA, as torchtitan's default; foreach on the CPU). With ``train_graph``
(GPU preset) a torch train-step row is also timed as the whole step captured once as a CUDA
graph and replayed ("graph": its ms, TFLOP/s and MFU beside the eager ones), as an XLA step
runs: the H200's eager triton step took 426 ms for 363 ms of kernels, the rest time between
kernels (likely Python launches: the norm, rope and GeGLU kernels of 8k tokens each run for
tens of microseconds).

CPU preset: the tiny model with the JAX model on XLA and the PyTorch model eager and under
torch.compile (plus the Triton / Pallas presets in their interpreters, for correctness); the
decode rows read a 32k cache except the interpreted ones (``interpret_decode_cache_len``).

Sized for nano1 at 8k on one GPU: the weights are drawn once per suite; the fp32 reference
runs on the bench device; torch models are built empty (no init) and loaded; the torch rows of
every case run before any JAX row, with torch's cached memory returned after each row (JAX's
allocator never shrinks, so the order matters on an 80 GB card); the decode cache is one random
K and one random V block copied into every layer; the JAX decode step donates its cache, as
``model.generate`` does, so no row times a copy of the cache.
"""
from __future__ import annotations

import gc
import zlib
from dataclasses import dataclass, field

import numpy as np

from benchmarks.suites.common import Skip, rel_err
from kernels.tolerances import BENCH_RTOL
from model.config import flops_per_token  # the one MFU convention

# impl -> the model's KernelConfig ("triton-autotune": Triton kernels, attention tiles autotuned;
# "sdpa-fused-loss": the sdpa preset with the loss alone swapped for the chunked fused linear
# cross-entropy, so the peer fits where its full fp32 [S, vocab] logits do not: nano1's 8k train
# step on an 80 GB H100 ran out of memory with them)
TORCH_PRESETS = {"reference": dict(preset="reference"), "compiled": dict(preset="reference"),
                 "triton": dict(preset="triton"), "sdpa": dict(preset="sdpa"),
                 "sdpa-fused-loss": dict(preset="sdpa", loss="triton"),
                 "triton-autotune": dict(preset="triton", attention_blocks="autotune")}
JAX_PRESETS = {"xla": "xla", "pallas": "pallas", "reference": "reference"}


@dataclass
class ModelBenchConfig:
    enabled: bool = True
    model: str = "tiny"  # a model.config.PRESETS name
    batch: int = 2
    seq_len: int = 128
    decode_batches: list[int] = field(default_factory=lambda: [1, 16])
    decode_cache_len: int = 1024  # the presets: 32768
    # > 0: the decode rows of impls that run in an interpreter (Triton / Pallas on a CPU) use
    # this shorter cache instead of decode_cache_len (an interpreted step at 32k costs minutes);
    # their times say nothing about a GPU anyway. 0: every decode row uses decode_cache_len
    interpret_decode_cache_len: int = 0
    modes: list[str] = field(default_factory=lambda: ["forward", "train_step", "decode"])
    dtype: str = "float32"
    torch_impls: list[str] = field(default_factory=lambda: ["reference", "triton"])
    jax_impls: list[str] = field(default_factory=lambda: ["xla", "pallas"])
    check_rows: int = 128  # forward: the logits of the last rows are checked
    # torch train-step rows (GPU preset): also the whole step (zero_grad, forward, loss,
    # backward, fused capturable AdamW) captured as one CUDA graph and replayed, as XLA runs
    # a whole jitted step: the Python launch gaps of an eager step out of the time ("graph")
    train_graph: bool = False


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


def _interpreted(framework: str, impl: str) -> bool:
    """Whether the impl's kernels run in an interpreter here (Triton / Pallas on a CPU)."""
    from kernels import _platform

    if framework == "torch":  # (sets TRITON_INTERPRET without CUDA, as importing a kernel would)
        return impl.startswith("triton") and _platform.configure_triton_interpret()
    return impl == "pallas" and _platform.pallas_interpret_default()


def decode_step_bytes(cfg, batch: int, cache_len: int, dtype: str) -> int:
    """Bytes one decode step reads at least: the 2-D weights (matmuls and the tied embedding
    head) once, and K and V of every layer over ``cache_len`` positions for each row, in
    ``dtype`` (the lower bound a step's GB/s is measured against)."""
    import torch

    from model.config import matmul_params

    item = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    weights = matmul_params(cfg)
    kv = 2 * cfg.layers * batch * cache_len * cfg.kv_heads * cfg.head_dim
    return (weights + kv) * item


class ModelSuite:
    name = "model"
    peers = {"torch": ("reference", "compiled"), "jax": ("xla",)}

    def __init__(self, cfg, device, timer_factory, seed: int = 0):
        self.cfg, self.device, self.timer_factory, self.seed = cfg, device, timer_factory, seed
        self._weights, self._refs, self._jax_params = {}, {}, {}

    def _short_cache(self) -> int | None:
        """The interpreted impls' decode cache length, when it differs from decode_cache_len and
        some configured impl runs in an interpreter here."""
        c = self.cfg
        short = c.interpret_decode_cache_len
        if not short or short == c.decode_cache_len:
            return None
        impls = [("torch", i) for i in c.torch_impls] + [("jax", i) for i in c.jax_impls]
        return short if any(_interpreted(fw, i) for fw, i in impls) else None

    def cases(self) -> list[Case]:
        c = self.cfg
        lens = {"decode": [c.decode_cache_len] + [n for n in [self._short_cache()] if n]}
        return [Case(c.model, mode, b, seq, c.dtype)
                for mode in c.modes for seq in lens.get(mode, [c.seq_len])
                for b in (c.decode_batches if mode == "decode" else [c.batch])]

    def entries(self):  # every torch row before any JAX row (see the module docstring)
        short = self._short_cache()
        for framework, impls in (("torch", self.cfg.torch_impls), ("jax", self.cfg.jax_impls)):
            for case in self.cases():
                for impl in impls:
                    # with a short interpreter cache: interpreted decode rows there, the rest at full length
                    if short is None or case.mode != "decode" or (case.seq == short) == _interpreted(framework, impl):
                        yield case, framework, impl

    def _model_cfg(self):
        from model.config import PRESETS

        return PRESETS[self.cfg.model]

    def _dev(self) -> str:
        return "cuda" if self.device.kind == "cuda" else "cpu"

    def _free(self) -> None:
        """Between rows on a GPU: the last row's cycles collected and its cached blocks given
        back, so the next row's memory is its own. Not on the CPU, where a full collection in
        a process with a large heap (the test suite) costs seconds and frees nothing needed."""
        if self.device.kind == "cuda":
            import torch

            gc.collect()
            torch.cuda.empty_cache()

    # --- data, shared by every impl of a case ---------------------------------------------
    def _weights_for(self, dtype: str) -> dict:
        """The model's weights (init seed ``self.seed``) as fp32 numpy, rounded through ``dtype``."""
        if dtype not in self._weights:
            import torch

            from model.torch_model import GeminiModel

            model = GeminiModel(self._model_cfg(), seed=self.seed)
            self._weights[dtype] = {k: v.detach().to(getattr(torch, dtype)).float().numpy()
                                    for k, v in model.state_dict().items()}
        return self._weights[dtype]

    def _data(self, case: Case):
        """(tokens, kv) for the case; kv: one random K and V block [B, seq, KVH, D] (decode).
        Kept for the last case: the reference and every impl of a case read the same draw."""
        import torch

        if getattr(self, "_data_case", None) == case:
            return self._data_cached
        mcfg = self._model_cfg()
        rng = np.random.default_rng(self.seed + zlib.crc32(case.id.encode()))
        tokens = rng.integers(0, mcfg.vocab_size, size=(case.batch, 1 if case.mode == "decode" else case.seq))
        kv = None
        if case.mode == "decode":  # a cache filled to length seq - 1 (every layer the same blocks)
            shape = (case.batch, case.seq, mcfg.kv_heads, mcfg.head_dim)
            dt = getattr(torch, case.dtype)
            kv = tuple(torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)).to(dt).float().numpy()
                       for _ in range(2))
        self._data_case, self._data_cached = case, (tokens, kv)
        return tokens, kv

    def _reference(self, case: Case):
        """The fp32 reference-kernel model's output on the case, run on the bench device."""
        if case not in self._refs:
            import torch

            tokens, kv = self._data(case)
            model = self._torch_model(TORCH_PRESETS["reference"], case.dtype, torch.float32)
            run = model.loss if case.mode == "train_step" else model
            self._refs[case] = self._torch_run(run, tokens, case, self._cache(model, case, kv))
            del model
            self._free()
        return self._refs[case]

    def check(self, case: Case, framework: str, impl: str):
        ref = self._reference(case)
        got, timed, mode = (self._torch if framework == "torch" else self._jax)(case, impl)
        err = rel_err(got, ref)
        rec = {"max_error": err, "tolerance": BENCH_RTOL[case.dtype], "mode": mode}
        if not np.isfinite(err) or err > rec["tolerance"]:
            return {**rec, "status": "failed"}, None
        return rec, timed

    def _graphed(self, case: Case, framework: str) -> bool:
        """Whether a train-step row is also timed as one CUDA graph (torch on a GPU)."""
        return (self.cfg.train_graph and case.mode == "train_step" and framework == "torch"
                and self.device.kind == "cuda")

    def run(self, case: Case, framework: str, impl: str) -> dict:
        graph_t = graph_err = None
        try:
            rec, timed = self.check(case, framework, impl)
            if timed is None:
                return rec
            t = self.timer_factory(framework, interpret=rec["mode"] == "interpret")(timed)
            if self._graphed(case, framework):
                try:
                    graph_t = self._graph_timing(framework, timed)
                except Exception as e:  # noqa: BLE001 - the row keeps its eager timing, says why
                    graph_err = f"{type(e).__name__}: {e}"[:500]
        finally:
            timed = None
            self._free()
        tokens = case.batch * (1 if case.mode == "decode" else case.seq)
        out = {**rec, "status": "ok", "timing": t.to_dict(), "median_ms": t.median_s * 1e3,
               "tokens_per_s": tokens / t.median_s}
        if case.mode != "decode":
            flops = flops_per_token(self._model_cfg(), case.seq, train=case.mode == "train_step") * tokens
            out.update(flops=flops, tflops=flops / t.median_s / 1e12)
        else:  # a step reads every weight matrix (the tied head once) and each layer's K/V cache
            nbytes = decode_step_bytes(self._model_cfg(), case.batch, case.seq, case.dtype)
            out.update(bytes=nbytes, gbps=nbytes / t.median_s / 1e9)
        if graph_t is not None:
            out["graph"] = {"median_ms": graph_t.median_s * 1e3, "tflops": out["flops"] / graph_t.median_s / 1e12,
                            "captured": "not a graph" not in graph_t.method, "timing": graph_t.to_dict()}
        elif graph_err is not None:
            out["graph"] = {"error": graph_err}
        if impl == "triton-autotune":  # the attention tiles it timed and picked
            from kernels.attention.triton_autotune import tuning_summary

            out["autotune"] = tuning_summary()
        return out

    def _graph_timing(self, framework: str, step):
        """``step`` captured as one CUDA graph and replayed (after two warm-up steps on a side
        stream, as PyTorch's whole-network capture recipe does); the timer says in its method
        when the capture failed and it timed eagerly instead."""
        import torch

        torch.cuda.empty_cache()  # the eager timing's cached blocks back before the graph's own pool
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        return self.timer_factory(framework, cuda_graphs=True)(step)

    # --- PyTorch ------------------------------------------------------------------------
    def _torch_model(self, kernels: dict, weights_dtype: str, dtype):
        """A model built empty on the meta device, then given the weights on the bench device."""
        import torch

        from model.config import KernelConfig
        from model.torch_model import GeminiModel

        with torch.device("meta"):
            model = GeminiModel(self._model_cfg(), KernelConfig(**kernels), seed=None)
        model = model.to(dtype).to_empty(device=self._dev())
        model.load_state_dict({k: torch.from_numpy(v) for k, v in self._weights_for(weights_dtype).items()})
        return model

    def _torch(self, case, impl):
        import torch

        from kernels import _platform

        if impl not in TORCH_PRESETS:
            raise Skip(f"unknown torch impl {impl!r}")
        model = self._torch_model(TORCH_PRESETS[impl], case.dtype, getattr(torch, case.dtype))
        run_model = torch.compile(model) if impl == "compiled" else model
        if case.mode == "train_step":  # the model's loss (its ``loss`` kernel), compiled with it
            run_model = torch.compile(model.loss) if impl == "compiled" else model.loss
        triton_mode = "interpret" if _platform.triton_interpreting() else "compiled"
        mode = {"triton": triton_mode, "triton-autotune": triton_mode, "sdpa-fused-loss": triton_mode,
                "compiled": "torch.compile"}.get(impl, "eager")
        tokens, kv = self._data(case)
        cache = self._cache(model, case, kv)
        got = self._torch_run(run_model, tokens, case, cache)
        return got, self._torch_step(run_model, model.parameters(), tokens, case, cache), mode

    def _cache(self, model, case, kv):
        """Decode: a KVCache whose every layer holds the case's K and V blocks; else None."""
        import torch

        from model.torch_model import KVCache

        if kv is None:
            return None
        dtype = next(model.parameters()).dtype
        cache = KVCache.create(model.cfg, case.batch, case.seq, dtype=dtype, device=self._dev())
        blocks = [torch.from_numpy(x).to(self._dev(), dtype) for x in kv]
        for i in range(model.cfg.layers):
            cache.k[i].copy_(blocks[0])
            cache.v[i].copy_(blocks[1])
        return cache

    @staticmethod
    def _next_tokens(t):
        """Next-token targets of tokens t [B, S] and their mask (the last position has none)."""
        import torch

        mask = torch.ones_like(t, dtype=torch.bool)
        mask[:, -1] = False
        return torch.roll(t, -1, 1), mask

    def _torch_run(self, model, tokens, case, cache):
        """The checked output as numpy: last rows' logits, the loss, or the decode logits.
        ``model``: the module, or its ``loss`` method for the train step."""
        import torch

        t = torch.tensor(tokens, device=self._dev())
        with torch.no_grad():
            if case.mode == "forward":
                return model(t)[:, -self.cfg.check_rows:].float().cpu().numpy()
            if case.mode == "train_step":
                return np.array([model(t, *self._next_tokens(t)).item()])
            cache.lengths.fill_(case.seq - 1)
            return model(t, cache=cache).float().cpu().numpy()

    def _torch_step(self, model, params, tokens, case, cache):
        import torch

        t = torch.tensor(tokens, device=self._dev())
        if case.mode == "forward":
            def step():
                with torch.no_grad():
                    return model(t)
            return step
        if case.mode == "train_step":  # model: the loss method
            graphed = self._graphed(case, "torch")  # also timed as one CUDA graph
            # capturable: the step counter on the device, so the step can be captured as a graph
            opt = torch.optim.AdamW(params, lr=1e-4, fused=t.device.type == "cuda", capturable=graphed)
            targets, mask = self._next_tokens(t)
            # the checked run read the targets once; a captured step cannot read them back
            kw = {"check_targets": False} if graphed else {}

            def step():
                opt.zero_grad(set_to_none=True)
                loss = model(t, targets, mask, **kw)
                loss.backward()
                opt.step()
                return loss
            return step

        def step():  # one decode step at length seq - 1 (the cache is reset each time)
            cache.lengths.fill_(case.seq - 1)
            with torch.no_grad():
                return model(t, cache=cache)
        return step

    # --- JAX ----------------------------------------------------------------------------
    def _jax_weights(self, dtype: str) -> dict:
        """The weights on the JAX device in ``dtype``, once (fp32 moved, then cast there)."""
        if dtype not in self._jax_params:
            import jax

            self._jax_params[dtype] = {k: jax.device_put(v).astype(dtype)
                                       for k, v in self._weights_for(dtype).items()}
        return self._jax_params[dtype]

    def _jax(self, case, impl):
        import functools

        import jax
        import jax.numpy as jnp

        from kernels import _platform
        from model import jax_model
        from model.config import KernelConfig

        if impl not in JAX_PRESETS:
            raise Skip(f"unknown jax impl {impl!r}")
        mcfg = self._model_cfg()
        kernels = KernelConfig(preset=JAX_PRESETS[impl])
        p = self._jax_weights(case.dtype)
        tokens, kv = self._data(case)
        t = jnp.asarray(tokens, jnp.int32)
        fwd = functools.partial(jax_model.forward, cfg=mcfg, kernels=kernels)
        mode = ("interpret" if _platform.pallas_interpret_default() else "compiled") if impl == "pallas" else "xla"
        if case.mode == "forward":
            f = jax.jit(fwd)
            return np.asarray(f(p, t)[:, -self.cfg.check_rows:], np.float32), (lambda: f(p, t)), mode
        if case.mode == "train_step":  # the model's loss (its ``loss`` kernel), as the torch step
            targets = jnp.roll(t, -1, axis=1)
            mask = jnp.ones(t.shape, bool).at[:, -1].set(False)  # the last position has no target

            def loss_fn(params_):
                return jax_model.loss(params_, t, targets, mask, cfg=mcfg, kernels=kernels)

            @jax.jit
            def step(params_):  # loss, grads and a plain Adam-free SGD update (the optimizer is not the point)
                loss, grads = jax.value_and_grad(loss_fn)(params_)
                return loss, jax.tree_util.tree_map(lambda a, g: a - 1e-4 * g, params_, grads)

            loss, _ = step(p)
            return np.array([float(loss)]), (lambda: step(p)), mode
        # decode: K/V donated (in place, as model.generate runs it), the lengths reset every step
        donate = () if jax.default_backend() == "cpu" else (2, 3)  # CPU cannot donate buffers
        f = jax.jit(lambda p_, t_, k_, v_, n_: fwd(p_, t_, cache=jax_model.KVCache(k_, v_, n_)),
                    donate_argnums=donate)
        blocks = [jax.device_put(x).astype(case.dtype) for x in kv]
        state = [tuple(jnp.copy(blocks[0]) for _ in range(mcfg.layers)),
                 tuple(jnp.copy(blocks[1]) for _ in range(mcfg.layers))]
        del blocks

        def step():
            logits, cache = f(p, t, *state, jnp.full((case.batch,), case.seq - 1, jnp.int32))
            state[:] = [cache.k, cache.v]
            return logits

        return np.asarray(step(), np.float32), step, mode
