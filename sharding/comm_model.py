"""Modeled per-device memory, collectives and FLOPs of one training step under a Plan.

Everything here is a model (labeled so wherever it is printed), calibrated against what
XLA's SPMD partitioner emits for the same step (tests/test_sharding_jax.py compares the
collectives of the compiled 8-device step with ``collectives`` within 0.1% per kind).
Collective bytes use the convention of ``sharding/hlo.py``: the full logical buffer of each
collective (gathered result, unreduced operand). Wire time: ring algorithms move
(n-1)/n of that buffer per device for all-gather / reduce-scatter and 2(n-1)/n for
all-reduce.

Counted per step (L layers, a = one [batch_local, seq_local, width] activation):
  dp / sp / fsdp axes: one gradient reduction over every parameter (reduce-scatter where
    fsdp shards it, all-reduce otherwise; the CPU backend forms no reduce-scatter, so
    ``backend="cpu"`` counts it as an all-reduce; batch and sequence axes are reduced by
    separate all-reduces, as XLA emits them). The tied embedding's lookup and head
    gradients are reduced separately (XLA does not add them first).
  fsdp: one all-gather of every sharded parameter per step (again with remat): the step
    gathers each parameter once, explicitly, to its compute sharding (the parameter's own
    minus the fsdp axis, ``sharding.jax_sharding.compute_shardings``), and the forward and
    backward both use that value (the embedding lookup then needs no token-id gather).
  tp: per layer 5 all-reduces of a (o_proj, down_proj forward; their input gradients and the
    norm-input gradient backward) plus dK, dV when kv heads are replicated (with remat one
    more a per step, not per layer: the policy saves the projections' all-reduced outputs);
    the vocab-parallel lookup and head input-gradient (2a) and 3 cross-entropy statistics.
  sp: ring attention (``Workload.context_parallel="ring"``, sharding/ring_attention_jax.py):
    per layer collective-permute hops of the local K/V block, n forward (the last unused but
    issued) and n - 1 backward (its first hop is the forward's, merged by XLA's CSE), plus n
    hops of the fp32 dK/dV accumulators backward (n = seq axis size). The hlo counter counts
    ring-loop bodies once per trip. With XLA's own partitioning ("all-gather"): per
    layer an all-gather of K and V forward and a reduction of their gradients backward.
"""
from __future__ import annotations

from dataclasses import dataclass

from model.config import ModelConfig, param_specs
from sharding.rules import Plan, param_axes


@dataclass(frozen=True)
class Workload:
    """One training step: global batch (sequences), sequence length, dtypes, remat."""

    global_batch: int
    seq_len: int
    param_bytes: int = 4  # fp32 master parameters (and their gradients)
    act_bytes: int = 2  # bf16 activations
    opt_bytes: int = 8  # Adam m and v in fp32
    remat: bool = False
    context_parallel: str = "ring"  # seq axis: "ring" (ring_attention_jax) or "all-gather" (XLA's)

    def __post_init__(self):
        if self.context_parallel not in ("ring", "all-gather"):
            raise ValueError(f"context_parallel must be 'ring' or 'all-gather', got {self.context_parallel!r}")
        for name in ("global_batch", "seq_len", "param_bytes", "act_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def local_tokens(plan: Plan, wl: Workload) -> tuple[int, int]:
    nb = plan.axis_product(plan.act_rules.get("batch", ()))
    ns = plan.axis_product(plan.act_rules.get("seq", ()))
    return wl.global_batch // nb, wl.seq_len // ns


def _kv_replicated(plan: Plan, cfg: ModelConfig) -> bool:
    axes = param_axes(plan, cfg)["model.layers.0.self_attn.k_proj.weight"][0]
    return plan.mesh["tensor"] > 1 and not axes


def collectives(cfg: ModelConfig, plan: Plan, wl: Workload, *, backend: str = "gpu") -> list[dict]:
    """Modeled collectives of one step: dicts kind, axes, bytes (full buffer), what, overlap."""
    out = []

    def add(kind, axes, nbytes, what, overlap):
        axes = tuple(a for a in axes if plan.mesh[a] > 1)
        if axes and nbytes:
            out.append(dict(kind=kind, axes=axes, bytes=int(nbytes), what=what, overlap=overlap))

    specs, paxes = param_specs(cfg), param_axes(plan, cfg)
    b, s = local_tokens(plan, wl)
    a = b * s * cfg.width * wl.act_bytes
    L = cfg.layers
    reduce_axes = tuple(dict.fromkeys(plan.act_rules.get("batch", ()) + plan.act_rules.get("seq", ())))
    fsdp = plan.mesh["fsdp"] > 1

    # gradient reduction (and FSDP gathers), parameter by parameter
    rs = ar = ag = 0
    for name, (shape, _) in specs.items():
        dims = paxes[name]
        tp_split = plan.axis_product([x for d in dims for x in d if x == "tensor"])
        full = _numel(shape) // tp_split * wl.param_bytes  # buffer over the fsdp group
        fsdp_sharded = any("fsdp" in d for d in dims)
        # tied: the lookup's and the head's gradients are reduced separately (XLA does not add first)
        reductions = 2 if name == "model.embed_tokens.weight" else 1
        if fsdp_sharded:
            ag += (2 if wl.remat else 1) * full
            if backend == "cpu":
                ar += reductions * full
            else:
                rs += reductions * full
                rest = tuple(x for x in reduce_axes if x != "fsdp")
                if rest:
                    add("all-reduce", rest, reductions * full // plan.mesh["fsdp"], "gradients (replicas)", True)
        elif reduce_axes:
            ar += reductions * full
    if fsdp:
        add("all-gather", ("fsdp",), ag, "FSDP parameter gathers", True)
        if rs:
            add("reduce-scatter", ("fsdp",), rs, "FSDP gradient reduce-scatter", True)
    # XLA reduces over the batch axes and over the sequence axis in separate all-reduces
    groups = sum(1 for g in ("batch", "seq") if any(plan.mesh[x] > 1 for x in plan.act_rules.get(g, ())))
    add("all-reduce", reduce_axes, ar * max(groups, 1), "gradient all-reduce", True)
    add("all-reduce", reduce_axes, 4, "loss", False)

    if plan.mesh["tensor"] > 1:
        per_layer = 5 * a
        if _kv_replicated(plan, cfg):
            per_layer += 2 * b * s * cfg.kv_heads * cfg.head_dim * wl.act_bytes
        # remat (jax_sharding's policy saves every projection's output, which under TP is the
        # all-reduced value): the recomputed forward redoes no layer's all-reduce; XLA adds one
        # activation all-reduce per step, whatever the depth (compiled 2- and 3-layer steps)
        add("all-reduce", ("tensor",), L * per_layer + (a if wl.remat else 0), "Megatron activation all-reduces", False)
        add("all-reduce", ("tensor",), 2 * a + 3 * b * s * 4, "vocab-parallel embedding / loss", False)
    if plan.mesh["seq"] > 1 and wl.context_parallel == "ring":
        # K/V block: n hops forward (the n-th issued, unused) and n backward, of which the first
        # is the forward's first (same value, same pairs: XLA CSEs it); the fp32 dK/dV
        # accumulators travel with the block backward, n hops to get home
        n, kv_bytes = plan.mesh["seq"], 2 * b * s * cfg.kv_heads * cfg.head_dim
        kv_hops = (2 * n - 1) + (n if wl.remat else 0)
        hops = kv_bytes * (kv_hops * wl.act_bytes + n * 4)
        add("collective-permute", ("seq",), L * hops, "ring K/V (+ dK/dV) hops (context parallel)", False)
    elif plan.mesh["seq"] > 1:
        kv = 2 * b * s * plan.mesh["seq"] * cfg.kv_heads * cfg.head_dim * wl.act_bytes
        add("all-gather", ("seq",), L * kv * (2 if wl.remat else 1), "K/V gathers (context parallel)", False)
        add("reduce-scatter" if backend != "cpu" else "all-reduce", ("seq",), L * kv,
            "dK/dV reduction (context parallel)", False)
    return out


def by_kind(items: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[it["kind"]] = out.get(it["kind"], 0) + it["bytes"]
    return out


def memory(cfg: ModelConfig, plan: Plan, wl: Workload) -> dict[str, float]:
    """Modeled bytes per device: params, grads, optimizer state, activations (saved for backward)."""
    specs, paxes = param_specs(cfg), param_axes(plan, cfg)
    n_local = sum(_numel(shape) // plan.axis_product([x for d in paxes[n] for x in d])
                  for n, (shape, _) in specs.items())
    b, s = local_tokens(plan, wl)
    tp = plan.mesh["tensor"]
    kv_div = 1 if _kv_replicated(plan, cfg) else tp
    w, hd, kvd, m = cfg.width, cfg.heads * cfg.head_dim // tp, cfg.kv_heads * cfg.head_dim // kv_div, cfg.mlp_dim // tp
    # saved per token per layer: x, norm out (x2), q, k, v, attention out, gate, up, gelu*up
    per_layer = (4 * w + 2 * hd + 2 * kvd + 3 * m) * wl.act_bytes
    logits = cfg.vocab_size // tp * 4 * 2  # fp32 logits and their softmax
    full = b * s * (cfg.layers * per_layer + logits)
    remat = b * s * (cfg.layers * w * wl.act_bytes + per_layer + logits)
    return {"params": n_local * wl.param_bytes, "grads": n_local * wl.param_bytes,
            "optimizer": n_local * wl.opt_bytes, "activations": full, "activations_remat": remat,
            "local_params": n_local}


def flops(cfg: ModelConfig, plan: Plan, wl: Workload) -> dict[str, float]:
    """Model FLOPs of the step (``model.config.flops_per_token``: attention in full, the MFU
    convention) and hardware FLOPs per device: the work done, causal attention's half that a
    flash kernel skips left out, a second forward added under remat."""
    from model.config import flops_per_token

    tokens = wl.global_batch * wl.seq_len
    model = flops_per_token(cfg, wl.seq_len, train=True) * tokens
    skipped = 6 * cfg.layers * cfg.heads * cfg.head_dim * wl.seq_len * tokens  # causal: half of 12 L H D S
    hardware = (model - skipped) * (4 / 3 if wl.remat else 1.0)
    return {"model_flops": model, "device_flops": hardware / plan.devices}
