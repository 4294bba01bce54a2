"""Run sharded train steps on one or many hosts: the multi-process entry point of ``sharding/``.

    # JAX: one process per host (it drives all the host's GPUs), the same command on every host
    python -m sharding.launch framework=jax strategy=fsdp_tp model=nano1 distributed=true \
        coordinator=HOST0:1234 num_processes=N process_id=I
    # PyTorch: one process per GPU, started by torchrun on every node
    torchrun --nnodes N --nproc-per-node M --rdzv-backend c10d --rdzv-endpoint HOST0:29500 \
        -m sharding.launch framework=torch strategy=fsdp_tp model=nano1

strategy: a ``conf/sharding/<name>.yaml`` (mesh.<axis>=K overrides its mesh; the -1 axis is
inferred from the GLOBAL device count). Runs ``steps`` Adam steps on one synthetic batch
(``batch_per_device`` sequences per device of the batch axes, random tokens from ``seed``,
the same on every process) and prints, from process 0, each step's loss and wall time;
``main`` returns them. JAX: ``jax.distributed.initialize`` (``distributed=true``; with no
coordinator it auto-detects SLURM / Open MPI / TPU pods) before any device is touched, then
``sharding.jax_sharding.make_train_step`` (ring attention where the strategy splits the
sequence). PyTorch: ``init_process_group`` from torchrun's env (nccl on GPUs, gloo on CPU),
a DeviceMesh ("fsdp", "tensor") and ``sharding.torch_sharding`` (fsdp, tp, fsdp+tp only).

Limits: every process builds the full model on the host before sharding (fine for the
nano presets); synthetic data only (the training loop with real data is ``model.train``,
single process).
"""
from __future__ import annotations

import os
import sys
import time

from omegaconf import OmegaConf

from model.config import PRESETS, KernelConfig
from sharding.profile import load_strategy
from sharding.rules import make_plan

DEFAULTS = dict(framework="jax", strategy="fsdp", model="tiny", kernels="reference", steps=3,
                batch_per_device=2, seq_len=128, lr=1e-3, seed=0, mesh={},
                distributed=False, coordinator=None, num_processes=None, process_id=None)
TORCH_PARTS = {"fsdp", "tp"}  # what sharding/torch_sharding.py implements


def _options(argv):
    opts = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(argv))
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    if opts.framework not in ("jax", "torch"):
        raise ValueError(f"framework must be 'jax' or 'torch', got {opts.framework!r}")
    if opts.model not in PRESETS:
        raise ValueError(f"unknown model {opts.model!r}; known: {sorted(PRESETS)}")
    if not isinstance(opts.kernels, str):
        raise ValueError(f"kernels must be a preset name, got {opts.kernels!r}")
    KernelConfig(opts.kernels).validate(opts.framework)  # before any process group or device
    return opts


def _global_batch(plan, per_device: int) -> int:
    return per_device * plan.axis_product(plan.act_rules.get("batch", ()))


def run_jax(opts, cfg, conf) -> dict:
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    if opts.distributed:  # before anything asks for devices
        jax.distributed.initialize(coordinator_address=opts.coordinator, num_processes=opts.num_processes,
                                   process_id=opts.process_id)
    from model.jax_model import forward, init_params
    from sharding import jax_sharding as js

    devices = jax.devices()
    plan = make_plan(conf["strategy"], {**conf["mesh"], **opts.mesh}, len(devices))
    batch, s = _global_batch(plan, opts.batch_per_device), opts.seq_len
    kernels = KernelConfig(opts.kernels, attention="ring" if plan.mesh["seq"] > 1 else None)
    mesh = js.make_mesh(plan, devices)
    step = js.make_train_step(forward, cfg, plan, mesh, kernels=kernels, batch=batch, seq_len=s)
    params = js.shard_params(init_params(cfg, jax.random.key(opts.seed)), plan, cfg, mesh)
    ps = js.param_shardings(plan, cfg, mesh)  # optimizer state placed like the step returns it
    opt = jax.device_put(js.adam_init(params), {"m": ps, "v": ps, "step": NamedSharding(mesh, P())})
    rng = np.random.default_rng(opts.seed)
    tokens, targets = (rng.integers(0, cfg.vocab_size, (batch, s)).astype(np.int32) for _ in range(2))
    if js.uses_ring(kernels):
        order = js.zigzag_order(plan, s)
        tokens, targets = tokens[:, order], targets[:, order]
    bs = js.batch_sharding(plan, cfg, mesh)
    tokens, targets = (jax.device_put(x, bs) for x in (tokens, targets))  # same value on every process
    losses, times = [], []
    for _ in range(opts.steps):
        t = time.perf_counter()
        loss, _, params, opt = step(params, opt, tokens, targets)
        losses.append(float(loss))  # replicated scalar: blocks until the step is done
        times.append(time.perf_counter() - t)
    return dict(process=jax.process_index(), processes=jax.process_count(), devices=len(devices),
                mesh=plan.mesh, global_batch=batch, losses=losses, step_s=times)


def run_torch(opts, cfg, conf) -> dict:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from model.torch_model import GeminiModel
    from sharding.torch_sharding import apply_fsdp, apply_fsdp_tp, apply_tp

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")  # env:// from torchrun
    try:
        world, rank = dist.get_world_size(), dist.get_rank()
        plan = make_plan(conf["strategy"], {**conf["mesh"], **opts.mesh}, world)
        axis = {"dp": "data", "sp": "seq"}
        missing = [p for p in plan.parts if p not in TORCH_PARTS and plan.mesh[axis[p]] > 1]
        if missing:
            raise ValueError(f"the torch back end implements fsdp, tp and fsdp+tp, got strategy "
                             f"{plan.strategy!r} with mesh.{axis[missing[0]]}={plan.mesh[axis[missing[0]]]} "
                             f"(conf/sharding/{opts.strategy}.yaml; set it to 1)")
        fsdp, tp, dev = plan.mesh["fsdp"], plan.mesh["tensor"], "cuda" if cuda else "cpu"
        mesh = init_device_mesh(dev, (fsdp, tp), mesh_dim_names=("fsdp", "tensor"))
        model = GeminiModel(cfg, KernelConfig(opts.kernels))
        model.init_weights(opts.seed)
        model.to(dev)
        if fsdp > 1 and tp > 1:
            apply_fsdp_tp(model, mesh)
        elif tp > 1:
            apply_tp(model, mesh["tensor"])
        else:
            apply_fsdp(model, mesh["fsdp"])
        batch, s = opts.batch_per_device * fsdp, opts.seq_len
        g = torch.Generator().manual_seed(opts.seed)
        tokens, targets = (torch.randint(0, cfg.vocab_size, (batch, s), generator=g) for _ in range(2))
        r = mesh.get_local_rank("fsdp")
        sl = slice(r * opts.batch_per_device, (r + 1) * opts.batch_per_device)
        tokens, targets = tokens[sl].to(dev), targets[sl].to(dev)
        optim = torch.optim.Adam(model.parameters(), lr=opts.lr, betas=(0.9, 0.95), eps=1e-8)
        losses, times = [], []
        for _ in range(opts.steps):
            t = time.perf_counter()
            logits = model(tokens)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), targets.reshape(-1))
            loss.backward()
            optim.step()
            optim.zero_grad(set_to_none=True)
            total = loss.detach().clone()
            dist.all_reduce(total)  # TP ranks hold equal losses: the mean over all ranks is the batch mean
            losses.append(float(total) / world)
            times.append(time.perf_counter() - t)
        return dict(process=rank, processes=world, devices=world, mesh=plan.mesh, global_batch=batch,
                    losses=losses, step_s=times)
    finally:
        # every rank done before teardown: with gloo, a rank that exits while a peer's
        # collective is still in flight aborts ("terminate called without an active exception")
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str]) -> dict:
    opts = _options(argv)
    cfg, conf = PRESETS[opts.model], load_strategy(opts.strategy)
    out = (run_jax if opts.framework == "jax" else run_torch)(opts, cfg, conf)
    if out["process"] == 0:
        for i, (loss, t) in enumerate(zip(out["losses"], out["step_s"])):
            print(f"step {i}: loss {loss:.6f}  {t * 1e3:.1f} ms  ({opts.framework} {opts.strategy} on "
                  f"{out['devices']} devices, {out['processes']} processes, mesh {out['mesh']})", flush=True)
    return out


def exit_past_gloo_teardown() -> None:
    """Leave a finished torch.distributed (gloo) process without the interpreter's teardown.
    Every rank is past its barrier and its process group is destroyed, yet gloo's threads still
    race the C++ static destructors now and then ("terminate called without an active
    exception", SIGABRT after the work returned: about 1 torchrun run in 6 here, and once a
    test worker in a CI run). The work and its output are done: flush and leave."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
    if _options(sys.argv[1:]).framework == "torch":
        exit_past_gloo_teardown()
