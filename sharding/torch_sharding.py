"""PyTorch back end: FSDP2 (``fully_shard``) on a ``DeviceMesh``, and full-state checkpoints.

``apply_fsdp(model, mesh)`` shards every decoder layer and then the root (embedding, final
norm; the tied head reuses the root's gathered embedding) over a 1-D mesh: parameters,
gradients and optimizer state are DTensors sharded on dim 0 (ZeRO-3); ``reshard_after_
forward`` frees gathered layers between forward and backward. Launch one process per device
with ``torchrun --nnodes N --nproc-per-node M`` (env:// rendezvous) and build the mesh with
``torch.distributed.device_mesh.init_device_mesh``.

Checkpoints: ``full_state_dict(model)`` gathers the sharded parameters into full CPU tensors
(every rank takes part; use rank 0's for ``model.checkpoint.save_checkpoint``), and
``load_full_state_dict(model, params)`` scatters a full (unsharded) dict into a sharded model.

Limits: tensor parallelism (``parallelize_module``) is not wired yet: the model reshapes
projections with the global head count (``view(b, s, cfg.heads, ...)``), which a
column-parallel local output does not have (see the report of the sharding issue).
"""
from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     set_model_state_dict)
from torch.distributed.fsdp import fully_shard


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
