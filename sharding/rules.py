"""Sharding strategies as data: mesh axes, one rules table per strategy, composition, validation.

A strategy maps the model's logical axis names to mesh axes, separately for parameters
(``model.config.param_specs`` axes: "vocab", "embed", "heads", "kv_heads", "mlp") and for
activations (("batch", "seq", "embed"), ("batch", "seq", "heads", ...), logits "vocab").
Strategies compose by merging their tables (``"fsdp+tp"``); the mesh sizes come from the
config (``conf/sharding/*.yaml``: ``mesh: {data: 2, fsdp: -1, tensor: 2, seq: 1}``, at most
one -1, inferred from the device count). Framework-free: the JAX and torch back ends and
the analytic profile all read this module, and every validation error here is raised
before anything compiles, naming the mesh axis and the model dimension.

Mesh axis order (outermost first, slowest links outermost): data, fsdp, seq, tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from model.config import ModelConfig, param_specs

MESH_AXES = ("data", "fsdp", "seq", "tensor")

# name -> (param rules, activation rules): logical axis -> mesh axes (in order)
STRATEGY_RULES: dict[str, tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]] = {
    # data parallel: replicated parameters, batch split; gradients all-reduced
    "dp": ({}, {"batch": ("data",)}),
    # ZeRO-3: every parameter (and its gradient and optimizer state) split along its "embed"
    # dimension; batch split over the same axis; parameters all-gathered for use
    "fsdp": ({"embed": ("fsdp",)}, {"batch": ("fsdp",)}),
    # Megatron: q/o, gate/up/down split by heads / mlp columns and rows; vocab-parallel tied
    # embedding; kv_heads split only when divisible (MQA: the one kv head is replicated)
    "tp": ({"heads": ("tensor",), "kv_heads": ("tensor",), "mlp": ("tensor",), "vocab": ("tensor",)},
           {"heads": ("tensor",), "kv_heads": ("tensor",), "mlp": ("tensor",), "vocab": ("tensor",)}),
    # sequence / context parallel: activations split along the sequence
    "sp": ({}, {"seq": ("seq",)}),
}
# logical axes that fall back to replication when the mesh axis does not divide them
REPLICABLE = {"kv_heads"}
# logical axis -> the model dimension (in units the split must divide) and its name
_DIMS = {"heads": ("heads", "heads"), "kv_heads": ("kv_heads", "kv_heads"),
         "mlp": ("mlp_dim", "mlp hidden"), "vocab": ("vocab_size", "vocab"),
         "embed": ("width", "embed width")}


def parse_strategy(name: str) -> tuple[str, ...]:
    """``"fsdp+tp"`` -> ("fsdp", "tp"); unknown names raise ValueError listing the known ones."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"strategy must be a non-empty string like 'fsdp' or 'fsdp+tp', got {name!r}")
    parts = tuple(p.strip() for p in name.split("+"))
    for p in parts:
        if p not in STRATEGY_RULES:
            raise ValueError(f"unknown strategy {p!r} in {name!r}; known: {sorted(STRATEGY_RULES)} "
                             "(combine with '+')")
    if len(set(parts)) != len(parts):
        raise ValueError(f"strategy {name!r} names a part twice")
    return parts


def _merge(tables) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for table in tables:
        for logical, axes in table.items():
            out[logical] = out.get(logical, ()) + tuple(a for a in axes if a not in out.get(logical, ()))
    # batch splits go outermost-first so the mesh layout is data-major
    if "batch" in out:
        out["batch"] = tuple(a for a in MESH_AXES if a in out["batch"])
    return out


@dataclass(frozen=True)
class Plan:
    """A resolved strategy: parts, mesh axis sizes (all MESH_AXES, 1 = unused) and rules."""

    strategy: str
    parts: tuple[str, ...]
    mesh: dict = field(hash=False)
    param_rules: dict = field(hash=False)
    act_rules: dict = field(hash=False)

    @property
    def devices(self) -> int:
        n = 1
        for a in MESH_AXES:
            n *= self.mesh[a]
        return n

    def axis_product(self, axes) -> int:
        n = 1
        for a in axes:
            n *= self.mesh[a]
        return n

    def mesh_shape(self) -> tuple[int, ...]:
        return tuple(self.mesh[a] for a in MESH_AXES)


def resolve_mesh(mesh: dict, devices: int) -> dict:
    """Fill in the -1 axis and check the product equals ``devices`` (ValueError otherwise)."""
    unknown = set(mesh) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; known: {list(MESH_AXES)}")
    sizes = {a: int(mesh.get(a, 1)) for a in MESH_AXES}
    inferred = [a for a, s in sizes.items() if s == -1]
    for a, s in sizes.items():
        if s == 0 or s < -1:
            raise ValueError(f"mesh.{a} must be >= 1 or -1 (inferred), got {s}")
    if len(inferred) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {inferred}")
    known = 1
    for a, s in sizes.items():
        if s != -1:
            known *= s
    if inferred:
        if devices % known:
            raise ValueError(f"mesh.{inferred[0]}=-1 cannot be inferred: {devices} devices are not "
                             f"divisible by the product {known} of the other axes {sizes}")
        sizes[inferred[0]] = devices // known
    elif known != devices:
        raise ValueError(f"mesh product {known} ({' x '.join(f'{a}={s}' for a, s in sizes.items())}) "
                         f"differs from the device count {devices}")
    return sizes


def make_plan(strategy: str, mesh: dict, devices: int) -> Plan:
    """Resolve ``strategy`` (e.g. ``"fsdp+tp"``) on ``mesh`` for ``devices`` devices.

    Every mesh axis larger than 1 must be used by some part (a tensor axis without "tp" would
    silently replicate work): ValueError naming the axis otherwise.
    """
    parts = parse_strategy(strategy)
    sizes = resolve_mesh(mesh, devices)
    param_rules = _merge(STRATEGY_RULES[p][0] for p in parts)
    act_rules = _merge(STRATEGY_RULES[p][1] for p in parts)
    used = {a for axes in (*param_rules.values(), *act_rules.values()) for a in axes}
    for a in MESH_AXES:
        if sizes[a] > 1 and a not in used:
            raise ValueError(f"mesh.{a}={sizes[a]} but strategy {strategy!r} does not use the "
                             f"{a!r} axis (add the strategy that does, or set mesh.{a}=1)")
    # drop axes of size 1 so specs stay minimal
    param_rules = {k: tuple(a for a in v if sizes[a] > 1) for k, v in param_rules.items()}
    act_rules = {k: tuple(a for a in v if sizes[a] > 1) for k, v in act_rules.items()}
    return Plan("+".join(parts), parts, sizes, param_rules, act_rules)


def _split(plan: Plan, rules: dict, logical: str, cfg: ModelConfig) -> tuple[str, ...]:
    """Mesh axes that split logical dimension ``logical``, after the divisibility check."""
    axes = rules.get(logical, ())
    if not axes:
        return ()
    n = plan.axis_product(axes)
    attr, what = _DIMS[logical]
    dim = getattr(cfg, attr)
    if dim % n:
        if logical in REPLICABLE:
            return ()
        axis_desc = " x ".join(f"mesh.{a}={plan.mesh[a]}" for a in axes)
        raise ValueError(f"{axis_desc} does not divide the {what} dimension ({attr}={dim}) "
                         f"that logical axis {logical!r} shards")
    return axes


def param_axes(plan: Plan, cfg: ModelConfig) -> dict[str, tuple]:
    """name -> per-dimension mesh axes (tuple of tuples; () = replicated) for every parameter."""
    out = {}
    for name, (shape, logical) in param_specs(cfg).items():
        out[name] = tuple(_split(plan, plan.param_rules, ax, cfg) for ax in logical)
    return out


def shard_shape(shape, dim_axes, plan: Plan) -> tuple[int, ...]:
    """The per-device shard shape of a tensor of ``shape`` split as ``dim_axes``."""
    return tuple(s // plan.axis_product(axes) for s, axes in zip(shape, dim_axes))


def validate(plan: Plan, cfg: ModelConfig, *, batch: int, seq_len: int) -> None:
    """Every check that can fail before compilation: params, batch, sequence, heads, mlp."""
    param_axes(plan, cfg)
    for logical in ("heads", "mlp", "vocab"):
        _split(plan, plan.act_rules, logical, cfg)
    b_axes = plan.act_rules.get("batch", ())
    nb = plan.axis_product(b_axes)
    if batch % nb:
        raise ValueError(f"{' x '.join(f'mesh.{a}={plan.mesh[a]}' for a in b_axes)} = {nb} does "
                         f"not divide the batch dimension (batch={batch})")
    s_axes = plan.act_rules.get("seq", ())
    ns = plan.axis_product(s_axes)
    if seq_len % ns:
        raise ValueError(f"mesh.seq={ns} does not divide the sequence dimension (seq_len={seq_len})")


def activation_axes(plan: Plan, cfg: ModelConfig, logical: tuple) -> tuple:
    """Per-dimension mesh axes for an activation with logical axes ``logical`` (None = any).

    Model dimensions the mesh does not divide fall back to replication here (the hook is
    advisory); ``validate`` is where a bad mesh is refused.
    """
    out = []
    for ax in logical:
        axes = plan.act_rules.get(ax, ()) if ax is not None else ()
        if axes and ax in _DIMS:
            attr, _ = _DIMS[ax]
            if getattr(cfg, attr) % plan.axis_product(axes):
                axes = ()
        out.append(axes)
    return tuple(out)
