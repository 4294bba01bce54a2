"""PyTorch back end: FSDP2 (``fully_shard``), tensor parallel (DTensor) and both on a
``DeviceMesh``, and full-state checkpoints.

``apply_fsdp(model, mesh)`` shards every decoder layer and then the root (embedding, final
norm; the tied head reuses the root's gathered embedding) over a 1-D mesh: parameters,
gradients and optimizer state are DTensors sharded on dim 0 (ZeRO-3); ``reshard_after_
forward`` frees gathered layers between forward and backward. Launch one process per device
with ``torchrun --nnodes N --nproc-per-node M`` (env:// rendezvous) and build the mesh with
``torch.distributed.device_mesh.init_device_mesh``.

Checkpoints: ``full_state_dict(model)`` gathers the sharded parameters into full CPU tensors
(every rank takes part; use rank 0's for ``model.checkpoint.save_checkpoint``), and
``load_full_state_dict(model, params)`` scatters a full (unsharded) dict into a sharded model.

``apply_tp(model, tp_mesh)`` is Megatron tensor parallelism with ``parallelize_module``
(the strategy "tp" of ``sharding/rules.py``): q_proj, gate_proj, up_proj column-parallel
(each rank computes its heads / MLP columns; the model's ``view(b, s, -1, head_dim)`` sees
the local heads), o_proj, down_proj row-parallel (output all-reduced). K/V projections are
split by kv heads only when the mesh divides ``kv_heads``; otherwise (MQA: one kv head) they
stay whole on every rank, and their output's gradient, which each rank holds only for its
own query heads, is summed over the tensor group (``ReplicatedKV``, Megatron's "f"
operator). Embedding / tied head and norms stay replicated (their inputs are full).
``apply_fsdp_tp(model, mesh)`` composes both on a 2-D mesh ("fsdp", "tensor"): TP inside,
then FSDP2 over "fsdp" (TP weights become 2-D sharded DTensors, the rest 1-D).

Limits: every rank of a tensor group must see the same batch; heads and mlp_dim must be
divisible by the tensor size (ValueError before anything is sharded).
"""
from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     set_model_state_dict)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle, parallelize_module

from model.torch_layers import Linear


class LinearParallel(ParallelStyle):
    """Column- or row-parallel ``model.torch_layers.Linear`` (bias-free, weight [out, in]).

    torch's ColwiseParallel / RowwiseParallel accept only nn.Linear / nn.Embedding; this is the
    same placement logic for the model's own projection module (whose forward is the one
    ``torch_layers.linear`` dispatch point). ``colwise``: weight Shard(0), input replicated,
    output the local columns (last dim). Row-wise: weight Shard(1), input the local columns,
    output all-reduced (Replicate). Inputs and outputs are plain local tensors.
    """

    def __init__(self, *, colwise: bool):
        super().__init__()
        self.colwise = colwise

    def _apply(self, module: torch.nn.Module, device_mesh) -> torch.nn.Module:
        if not isinstance(module, Linear):
            raise TypeError(f"LinearParallel expects a model.torch_layers.Linear, got {type(module).__name__}")
        weight_placement = Shard(0) if self.colwise else Shard(1)
        input_placement = Replicate() if self.colwise else Shard(-1)

        def partition(_name, mod, mesh):
            mod.register_parameter("weight", torch.nn.Parameter(
                distribute_tensor(mod.weight, mesh, [weight_placement], src_data_rank=self.src_data_rank),
                requires_grad=mod.weight.requires_grad))

        def prepare_input(mod, inputs, mesh):
            x = inputs[0]
            return x if isinstance(x, DTensor) else DTensor.from_local(x, mesh, [input_placement],
                                                                        run_check=False)

        def prepare_output(mod, out, mesh):
            if not self.colwise:
                out = out.redistribute(placements=[Replicate()])  # Partial -> all-reduce
            return out.to_local()

        return distribute_module(module, device_mesh, partition, prepare_input, prepare_output)


class ReplicatedKV(ParallelStyle):
    """A projection kept whole on every rank whose OUTPUT gradient is partial over the mesh.

    Forward: identity (weights replicated, input full). Backward: the output gradient is
    all-reduced over the tensor group before it reaches the weight and input gradients,
    because each rank's attention used only its own query heads of the shared kv head.
    """

    def _apply(self, module: torch.nn.Module, device_mesh) -> torch.nn.Module:
        def hook(_module, _inputs, out):
            # Replicate forward; the cotangent arrives Partial and is all-reduced to Replicate
            return DTensor.from_local(out, device_mesh, [Replicate()], run_check=False).to_local(
                grad_placements=[Partial()])

        module.register_forward_hook(hook)
        return module


def tp_plan(cfg, tp_size: int) -> dict:
    """parallelize_module plan for one DecoderLayer (keys relative to the layer)."""
    col, row = LinearParallel(colwise=True), LinearParallel(colwise=False)
    kv = col if cfg.kv_heads % tp_size == 0 else ReplicatedKV()
    return {"self_attn.q_proj": col, "self_attn.k_proj": kv, "self_attn.v_proj": kv,
            "self_attn.o_proj": row, "mlp.gate_proj": col, "mlp.up_proj": col, "mlp.down_proj": row}


def apply_tp(model: torch.nn.Module, tp_mesh) -> torch.nn.Module:
    """Megatron TP on ``model`` (a ``GeminiModel``) over the 1-D DeviceMesh ``tp_mesh``; in place."""
    if tp_mesh.ndim != 1:
        raise ValueError(f"apply_tp needs a 1-D DeviceMesh, got {tp_mesh.ndim} dims {tp_mesh.mesh_dim_names}")
    cfg, n = model.cfg, tp_mesh.size()
    for attr, what in (("heads", "heads"), ("mlp_dim", "mlp hidden")):
        if getattr(cfg, attr) % n:
            raise ValueError(f"tensor mesh size {n} does not divide the {what} dimension "
                             f"({attr}={getattr(cfg, attr)})")
    for layer in model.model.layers:
        parallelize_module(layer, tp_mesh, tp_plan(cfg, n))
    return model


def apply_fsdp_tp(model: torch.nn.Module, mesh, *, reshard_after_forward: bool = True) -> torch.nn.Module:
    """TP over ``mesh["tensor"]``, then FSDP2 over ``mesh["fsdp"]`` (a 2-D mesh with those names)."""
    if mesh.ndim != 2 or tuple(mesh.mesh_dim_names or ()) != ("fsdp", "tensor"):
        raise ValueError(f"apply_fsdp_tp needs a 2-D DeviceMesh named ('fsdp', 'tensor'), got "
                         f"{mesh.ndim} dims {mesh.mesh_dim_names}")
    apply_tp(model, mesh["tensor"])
    return apply_fsdp(model, mesh["fsdp"], reshard_after_forward=reshard_after_forward)


def apply_fsdp(model: torch.nn.Module, mesh, *, reshard_after_forward: bool = True) -> torch.nn.Module:
    """FSDP2 on ``model`` (a ``GeminiModel``) over the 1-D DeviceMesh ``mesh``; in place."""
    if mesh.ndim != 1:
        raise ValueError(f"apply_fsdp needs a 1-D DeviceMesh, got {mesh.ndim} dims {mesh.mesh_dim_names}")
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """name -> full CPU tensor (collective: call on every rank)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: torch.nn.Module, params: dict[str, torch.Tensor]) -> None:
    """Copy full (unsharded) tensors into a sharded model (collective; every rank passes them)."""
    set_model_state_dict(model, params, options=StateDictOptions(full_state_dict=True, strict=True))
