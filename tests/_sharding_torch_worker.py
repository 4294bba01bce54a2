"""Helper process for tests/test_sharding_torch.py (not collected): FSDP2, TP, FSDP2+TP on 4 gloo ranks.

    python tests/_sharding_torch_worker.py '<json: {"seed", "world", "ckpt_dir", "cases"}>'

One process group runs every case. Every rank builds the same tiny GeminiModel (reference
kernels, fp32, MQA) and shards it with ``sharding.torch_sharding``: "fsdp2" (``apply_fsdp``,
1-D mesh, each rank a quarter of the batch), "tp" (``apply_tp``, 1-D mesh of 4: one query
head per rank, the kv head replicated, every rank the whole batch) and "fsdp2+tp"
(``apply_fsdp_tp``, 2 x 2 mesh ("fsdp", "tensor"), each fsdp group half the batch). Per case:
one step, full gradients gathered and compared by rank 0 with one process running the whole
batch; every parameter's local shard shape against the strategy's promise; then the sharded
model's weights go to a checkpoint, load into an unsharded model, and an unsharded model's
checkpoint loads back into a freshly sharded one (values compared exactly). Prints one
``RESULT {json}`` line per case from rank 0.
"""
import json
import os
import socket
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

COLWISE = ("q_proj", "gate_proj", "up_proj")  # split on dim 0 under TP
ROWWISE = ("o_proj", "down_proj")  # split on dim 1 under TP


def _promised_local_shape(name, shape, fsdp, tp, kv_heads):
    shape = list(shape)
    colwise = COLWISE + (("k_proj", "v_proj") if kv_heads % tp == 0 else ())  # MQA: kv head whole
    if tp > 1 and any(f".{k}." in name for k in colwise):
        shape[0] //= tp
    if tp > 1 and any(f".{k}." in name for k in ROWWISE):
        shape[1] //= tp
    shape[0] = -(-shape[0] // fsdp)  # FSDP2: dim 0, all dims here divide evenly
    return tuple(shape)


def _run_case(what, spec, rank, world, ctx):
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from model.checkpoint import load_checkpoint, save_checkpoint
    from model.config import param_specs
    from model.torch_model import GeminiModel
    from sharding.torch_sharding import (apply_fsdp, apply_fsdp_tp, apply_tp, full_state_dict,
                                         load_full_state_dict)

    cfg, kern, tokens, targets, ref, ref_loss, loss_of = ctx
    b = tokens.shape[0]
    if what == "fsdp2":
        fsdp, tp = world, 1
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
        shard, data_rank = (lambda m: apply_fsdp(m, mesh)), rank
    elif what == "tp":
        fsdp, tp = 1, world
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tensor",))
        shard, data_rank = (lambda m: apply_tp(m, mesh)), 0
    else:
        fsdp, tp = 2, world // 2
        mesh = init_device_mesh("cpu", (fsdp, tp), mesh_dim_names=("fsdp", "tensor"))
        shard, data_rank = (lambda m: apply_fsdp_tp(m, mesh)), mesh.get_local_rank("fsdp")
    model = GeminiModel(cfg, kern)
    model.init_weights(spec["seed"] % 2**31)
    shard(model)
    sl = slice(data_rank * b // fsdp, (data_rank + 1) * b // fsdp)
    loss = loss_of(model, tokens[sl], targets[sl])
    loss.backward()
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    specs = param_specs(cfg)
    shard_ok, issue, grads = True, None, {}
    for name, p in model.named_parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        want = _promised_local_shape(name, specs[name][0], fsdp, tp, cfg.kv_heads)
        if tuple(local.shape) != want:
            shard_ok, issue = False, f"rank {rank} {name}: local {tuple(local.shape)}, promised {want}"
        grads[name] = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
    ref_grads = dict(ref.named_parameters())
    grad_err = max(float((grads[n] - ref_grads[n].grad).abs().max()) for n in grads)
    grad_scale = max(float(p.grad.abs().max()) for p in ref_grads.values())

    # checkpoint: sharded -> file -> unsharded model -> file -> freshly sharded model
    full = full_state_dict(model)
    path = os.path.join(spec["ckpt_dir"], f"{what}-sharded.safetensors")
    if rank == 0:
        save_checkpoint(path, full, cfg)
    dist.barrier()
    plain = GeminiModel(cfg, kern)
    params, _ = load_checkpoint(path, cfg, framework="torch")
    plain.load_state_dict(params, strict=True)
    to_plain = max((float((plain.state_dict()[n] - full[n]).abs().max()) for n in full), default=0.0)
    plain.init_weights(spec["seed"] % 2**31 + 1)  # new values, saved unsharded
    path2 = os.path.join(spec["ckpt_dir"], f"{what}-plain.safetensors")
    if rank == 0:
        save_checkpoint(path2, plain, cfg)
    dist.barrier()
    fresh = shard(GeminiModel(cfg, kern))
    params2, _ = load_checkpoint(path2, cfg, framework="torch")
    load_full_state_dict(fresh, params2)
    back = full_state_dict(fresh)
    to_sharded = max((float((back[n] - plain.state_dict()[n]).abs().max()) for n in back), default=0.0)
    oks = [None] * world
    dist.all_gather_object(oks, (shard_ok, issue))
    if rank == 0:  # cpu_offload full state dicts live on rank 0 only
        assert len(full) == len(back) == len(plain.state_dict()), (len(full), len(back))
        bad = [i for ok, i in oks if not ok]
        # the mean of the data groups' losses (TP ranks of one group hold the same loss)
        mean_loss = float(torch.stack(losses).mean())
        print("RESULT " + json.dumps(dict(what=what, loss=mean_loss, ref_loss=float(ref_loss.detach()),
                                          grad_err=grad_err, grad_scale=grad_scale,
                                          shard_ok=not bad, shard_issue=bad[0] if bad else None,
                                          to_plain=to_plain, to_sharded=to_sharded)), flush=True)


def _rank_main(rank, world, port, spec):
    import torch
    import torch.distributed as dist

    from model.config import KernelConfig, ModelConfig
    from model.torch_model import GeminiModel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, width=64, layers=2, heads=4, kv_heads=1, head_dim=16, mlp_dim=128)
    kern = KernelConfig("reference")
    g = torch.Generator().manual_seed(spec["seed"])
    b, s = 2 * world, 8
    tokens = torch.randint(0, cfg.vocab_size, (b, s), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (b, s), generator=g)

    def loss_of(model, tok, tgt):
        logits = model(tok)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), tgt.reshape(-1))

    ref = GeminiModel(cfg, kern)
    ref.init_weights(spec["seed"] % 2**31)
    ref_loss = loss_of(ref, tokens, targets)
    ref_loss.backward()
    ctx = (cfg, kern, tokens, targets, ref, ref_loss, loss_of)
    for what in spec["cases"]:
        _run_case(what, spec, rank, world, ctx)
    dist.barrier()  # no rank tears gloo down while a peer is still in a collective (a rare SIGABRT)
    dist.destroy_process_group()
    from sharding.launch import exit_past_gloo_teardown

    exit_past_gloo_teardown()  # gloo's threads vs interpreter teardown: a rare SIGABRT once done


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    import torch.multiprocessing as mp

    spec = json.loads(sys.argv[1])
    mp.spawn(_rank_main, args=(spec["world"], _free_port(), spec), nprocs=spec["world"], join=True)


if __name__ == "__main__":
    main()
