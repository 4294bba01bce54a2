"""Helper process for tests/test_sharding_torch.py (not collected): FSDP2 on 4 gloo ranks.

    python tests/_sharding_torch_worker.py '<json: {"seed", "world", "ckpt_dir"}>'

Every rank builds the same tiny GeminiModel (reference kernels, fp32), shards it with
``sharding.torch_sharding.apply_fsdp`` over a 1-D DeviceMesh, runs one step on its quarter of
the batch and gathers the full gradients; rank 0 compares loss and gradients with one process
running the whole batch. Then the sharded model's weights go to a checkpoint, load into an
unsharded model and back into a freshly sharded one (values compared exactly). Prints one
``RESULT {json}`` line per quantity from rank 0.
"""
import json
import os
import socket
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _rank_main(rank, world, port, spec):
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from model.checkpoint import load_checkpoint, save_checkpoint
    from model.config import KernelConfig, ModelConfig
    from model.torch_model import GeminiModel
    from sharding.torch_sharding import apply_fsdp, full_state_dict, load_full_state_dict

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

    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
    model = GeminiModel(cfg, kern)
    model.init_weights(spec["seed"] % 2**31)
    apply_fsdp(model, mesh)
    sl = slice(rank * b // world, (rank + 1) * b // world)
    loss = loss_of(model, tokens[sl], targets[sl])
    loss.backward()
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    shard_rows_ok = True
    grads = {}
    for name, p in model.named_parameters():
        assert isinstance(p, DTensor), name
        full_rows = p.shape[0]
        local_rows = p.to_local().shape[0]
        shard_rows_ok &= local_rows == -(-full_rows // world) or rank == world - 1
        grads[name] = p.grad.full_tensor()  # mean over local batch, averaged over ranks by FSDP
    ref_grads = dict(ref.named_parameters())
    grad_err = max(float((grads[n] - ref_grads[n].grad).abs().max()) for n in grads)
    grad_scale = max(float(p.grad.abs().max()) for p in ref_grads.values())

    # checkpoint: sharded -> file -> unsharded model -> file -> freshly sharded model
    full = full_state_dict(model)
    path = os.path.join(spec["ckpt_dir"], "sharded.safetensors")
    if rank == 0:
        save_checkpoint(path, full, cfg)
    dist.barrier()
    plain = GeminiModel(cfg, kern)
    params, _ = load_checkpoint(path, cfg, framework="torch")
    plain.load_state_dict(params, strict=True)
    to_plain = max((float((plain.state_dict()[n] - full[n]).abs().max()) for n in full), default=0.0)
    plain.init_weights(spec["seed"] % 2**31 + 1)  # new values, saved unsharded
    path2 = os.path.join(spec["ckpt_dir"], "plain.safetensors")
    if rank == 0:
        save_checkpoint(path2, plain, cfg)
    dist.barrier()
    fresh = apply_fsdp(GeminiModel(cfg, kern), mesh)
    params2, _ = load_checkpoint(path2, cfg, framework="torch")
    load_full_state_dict(fresh, params2)
    back = full_state_dict(fresh)
    to_sharded = max((float((back[n] - plain.state_dict()[n]).abs().max()) for n in back), default=0.0)
    if rank == 0:  # cpu_offload full state dicts live on rank 0 only
        assert len(full) == len(back) == len(plain.state_dict()), (len(full), len(back))
        mean_loss = float(torch.stack(losses).mean())
        print("RESULT " + json.dumps(dict(what="fsdp2", loss=mean_loss, ref_loss=float(ref_loss.detach()),
                                          grad_err=grad_err, grad_scale=grad_scale,
                                          shard_rows_ok=bool(shard_rows_ok), to_plain=to_plain,
                                          to_sharded=to_sharded)), flush=True)
    dist.destroy_process_group()


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
