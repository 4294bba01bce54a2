"""Helper process for tests/test_sharding_jax.py and tests/test_profile.py (not collected).

    python tests/_sharding_jax_worker.py '<json: {"seed", "cases": [{"id", "strategy", "mesh", "attention"}...]}>'

Runs with 8 simulated CPU devices (XLA_FLAGS set before JAX starts). For each case: one
sharded train step of a tiny model (model.jax_model, reference kernels, fp32; attention
"ring": context-parallel ring attention, tokens/targets fed in zigzag order) against the
unsharded step (loss, gradients; updated parameters against an unsharded Adam step on the
sharded step's own gradients), each parameter's / gradient's / Adam
moment's addressable shard shape against sharding.rules.shard_shape, and the collectives
of the compiled step (sharding.hlo) beside the modeled ones (sharding.comm_model,
backend="cpu"). Prints one ``RESULT {json}`` line per case, then ``CHECK {json}`` lines for
the bad-input errors (raised before compilation).
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from model.config import KernelConfig, ModelConfig, param_specs  # noqa: E402
from model.jax_model import forward, init_params  # noqa: E402
from sharding import comm_model as cm  # noqa: E402
from sharding import jax_sharding as js  # noqa: E402
from sharding.hlo import collectives  # noqa: E402
from sharding.rules import make_plan, param_axes, shard_shape  # noqa: E402

CFG = ModelConfig(vocab_size=256, width=64, layers=2, heads=8, kv_heads=1, head_dim=16, mlp_dim=256)
KERNELS = KernelConfig("reference")
B, S = 8, 16


def _err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def run_case(case, params, tokens, targets, ref):
    plan = make_plan(case["strategy"], case["mesh"], 8)
    mesh = js.make_mesh(plan)
    kernels = KernelConfig("reference", attention=case.get("attention"))
    ring = js.uses_ring(kernels)
    if ring:  # the ring step takes the sequence in zigzag order (the mean loss does not care)
        order = js.zigzag_order(plan, S)
        tokens, targets = tokens[:, order], targets[:, order]
    remat = bool(case.get("remat"))
    step = js.make_train_step(forward, CFG, plan, mesh, kernels=kernels, batch=B, seq_len=S, remat=remat)
    sp = js.shard_params(params, plan, CFG, mesh)
    opt = js.adam_init(sp)
    compiled = step.lower(sp, opt, tokens, targets).compile()
    loss, grads, new, opt2 = compiled(sp, opt, tokens, targets)
    axes = param_axes(plan, CFG)
    shard_ok, worst = True, None
    for name, (shape, _) in param_specs(CFG).items():
        want = shard_shape(shape, axes[name], plan)
        for what, arr in (("param", new[name]), ("grad", grads[name]), ("adam_m", opt2["m"][name])):
            got = {tuple(s.data.shape) for s in arr.addressable_shards}
            if got != {want}:
                shard_ok, worst = False, f"{what} {name}: shards {got}, promised {want}"
    ckpt_ok = _checkpoint_round_trip(new, plan, mesh)
    ref_loss, ref_grads = ref
    # the sharded Adam step against the unsharded Adam step on the SAME gradients: a first Adam
    # step is lr * g / (|g| + eps), which turns a 1e-8 gradient difference at g ~ 0 into up
    # to lr, so updates from the reference gradients are not a fair comparison
    with jax.default_device(jax.devices()[0]):
        host_grads = {k: jnp.asarray(np.asarray(v)) for k, v in grads.items()}
        own_new, _ = js.adam_update(params, host_grads, js.adam_init(params))
    grad_scale = max(float(np.max(np.abs(g))) for g in ref_grads.values())
    measured = {k: v["bytes"] for k, v in collectives(compiled.as_text()).items()}
    wl = cm.Workload(B, S, 4, 4, context_parallel="ring" if ring else "all-gather", remat=remat)
    modeled = cm.by_kind(cm.collectives(CFG, plan, wl, backend="cpu"))
    return dict(strategy=case.get("id", case["strategy"]), mesh=plan.mesh, loss=float(loss), ref_loss=float(ref_loss),
                grad_err=max(_err(grads[k], ref_grads[k]) for k in grads), grad_scale=grad_scale,
                param_err=max(_err(new[k], own_new[k]) for k in new), shard_ok=shard_ok, shard_issue=worst,
                measured=measured, modeled=modeled, checkpoint_round_trip=ckpt_ok)


def _checkpoint_round_trip(sharded: dict, plan, mesh) -> bool:
    """Sharded params -> safetensors -> unsharded host arrays -> resharded: identical values."""
    import tempfile

    from model.checkpoint import load_checkpoint, save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        save_checkpoint(path, {k: np.asarray(v) for k, v in sharded.items()}, CFG)  # gathers each shard
        loaded, _ = load_checkpoint(path, CFG, framework="numpy")
    same = all(np.array_equal(loaded[k], np.asarray(sharded[k])) for k in sharded)
    back = js.shard_params({k: jnp.asarray(v) for k, v in loaded.items()}, plan, CFG, mesh)
    same &= all(np.array_equal(np.asarray(back[k]), np.asarray(sharded[k])) and
                back[k].sharding.is_equivalent_to(sharded[k].sharding, sharded[k].ndim) for k in sharded)
    return bool(same)


def checks():
    """Bad inputs: each must raise ValueError before anything compiles."""
    big = ModelConfig(vocab_size=256, width=64, layers=1, heads=6, kv_heads=1, head_dim=16, mlp_dim=200)
    cases = {
        "mesh_product": lambda: make_plan("fsdp+tp", {"fsdp": 2, "tensor": 2}, 8),
        "unknown_strategy": lambda: make_plan("zero9", {"data": -1}, 8),
        "heads": lambda: js.make_train_step(forward, big, make_plan("dp+tp", {"tensor": 4, "data": 2}, 8),
                                            None, batch=B, seq_len=S),
        "mlp": lambda: js.make_train_step(forward, ModelConfig(vocab_size=256, width=64, layers=1, heads=8,
                                                               head_dim=16, mlp_dim=100),
                                          make_plan("tp", {"tensor": 8}, 8), None, batch=B, seq_len=S),
        "seq": lambda: js.make_train_step(forward, CFG, make_plan("sp", {"seq": 8}, 8), None, batch=B, seq_len=12),
        "batch": lambda: js.make_train_step(forward, CFG, make_plan("dp", {"data": 8}, 8), None, batch=6, seq_len=S),
        "unused_axis": lambda: make_plan("fsdp", {"fsdp": 4, "tensor": 2}, 8),
        "two_inferred": lambda: make_plan("fsdp+tp", {"fsdp": -1, "tensor": -1}, 8),
        "ring_without_seq": lambda: js.make_train_step(forward, CFG, make_plan("dp", {"data": 8}, 8), None,
                                                       kernels=KernelConfig("reference", attention="ring"),
                                                       batch=B, seq_len=S),
    }
    for name, fn in cases.items():
        try:
            fn()
            print("CHECK " + json.dumps({"check": name, "error": None}))
        except ValueError as e:
            print("CHECK " + json.dumps({"check": name, "error": str(e)}))


def main():
    spec = json.loads(sys.argv[1])
    assert len(jax.devices()) == 8, jax.devices()
    params = init_params(CFG, jax.random.key(spec["seed"] % 2**31))
    rng = np.random.default_rng(spec["seed"])
    tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (B, S)), jnp.int32)
    targets = jnp.asarray(rng.integers(0, CFG.vocab_size, (B, S)), jnp.int32)
    with jax.default_device(jax.devices()[0]):
        loss, grads = jax.value_and_grad(js.loss_fn)(params, tokens, targets, forward=forward, cfg=CFG,
                                                     kernels=KERNELS)
    ref = (loss, grads)
    for case in spec["cases"]:
        print("RESULT " + json.dumps(run_case(case, params, tokens, targets, ref)), flush=True)
    checks()


if __name__ == "__main__":
    main()
