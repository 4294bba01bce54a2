"""Helper process for tests/test_ring_attention.py (not collected): torch ring attention on gloo.

    python tests/_ring_torch_worker.py '<json: {"seed", "world", "cases": [...]}>'

Spawns ``world`` gloo ranks on 127.0.0.1. Every rank builds the same random global inputs,
runs ``sharding.ring_attention_torch.ring_attention`` forward and backward on its zigzag shard
and all-gathers the results; rank 0 compares them with the single-device Triton kernel, the
float64 reference (on the rounded inputs) and torch's math in the input dtype, and prints one ``RESULT {json}`` line per quantity
(the test asserts on them), then ``CHECK {json}`` lines for the input-validation errors.
"""
import json
import os
import socket
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _max_err(x, ref):
    return float((x.double() - ref.double()).abs().max())


def _vjp(fn, tensors, do):
    ts = [t.detach().clone().requires_grad_() for t in tensors]
    o = fn(*ts)
    o.backward(do.to(o.dtype))
    return [o.detach(), *(t.grad for t in ts)]


def _case(case, rng, rank, world):
    import torch
    import torch.distributed as dist

    from kernels.attention import reference
    from kernels.attention import triton_attention as ta
    from sharding.ring_attention_torch import ring_attention, zigzag_shard, zigzag_unshard

    b, s, h, kvh, d = (case[key] for key in ("batch", "seq", "heads", "kv_heads", "head_dim"))
    causal, softcap = case["causal"], case["softcap"]
    arrays = [rng.standard_normal(shape) for shape in
              ((b, s, h, d), (b, s, kvh, d), (b, s, kvh, d), (b, s, h, d))]
    q, k, v, do = (torch.tensor(a).to(getattr(torch, case["dtype"])) for a in arrays)

    launches = ta.LAUNCHES["_attn_fwd_kernel"]
    ring = _vjp(lambda q, k, v: ring_attention(q, k, v, causal=causal, softcap=softcap),
                [zigzag_shard(x, rank, world) for x in (q, k, v)], zigzag_shard(do, rank, world))
    launches = ta.LAUNCHES["_attn_fwd_kernel"] - launches
    full = []
    for x in ring:
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        full.append(zigzag_unshard(parts))
    if rank:
        return []

    def ref(dtype, upcast):
        return lambda q, k, v: reference._attention(
            q.to(dtype), k.to(dtype), v.to(dtype), causal=causal, window=None, softcap=softcap,
            scale=d ** -0.5, q_segment_ids=None, kv_segment_ids=None, upcast=upcast)

    kernel = _vjp(lambda q, k, v: ta.attention_triton(q, k, v, causal=causal, softcap=softcap),
                  [q, k, v], do)
    ref64 = _vjp(ref(torch.float64, True), [x.double() for x in (q, k, v)], do.double())
    base = _vjp(ref(q.dtype, False), [q, k, v], do)  # torch's math in the input dtype
    return [dict(case=case["id"], what=what, err_ring=_max_err(r, f), err_kernel=_max_err(kk, f),
                 err_base=_max_err(bb, f), diff_ring_kernel=_max_err(r, kk),
                 ref_max=float(f.abs().max()), launches=launches)
            for what, r, kk, f, bb in zip(("o", "dq", "dk", "dv"), full, kernel, ref64, base)]


def _checks(rank, world):
    """Input errors, raised before any communication: (name, error type, message)."""
    import torch

    from sharding.ring_attention_torch import ring_attention, zigzag_shard

    x, kv = torch.zeros(1, 6, 2, 16), torch.zeros(1, 6, 1, 16)
    odd, odd_kv = torch.zeros(1, 5, 2, 16), torch.zeros(1, 5, 1, 16)
    attempts = {
        "seq_not_divisible": lambda: zigzag_shard(torch.zeros(1, 4 * world + 2, 2, 16), rank, world),
        "odd_local_len": lambda: ring_attention(odd, odd_kv, odd_kv, causal=True),
        "window": lambda: ring_attention(x, kv, kv, causal=True, window=4),
        "segment_ids": lambda: ring_attention(x, kv, kv, segment_ids=torch.zeros(1, 6, dtype=torch.int64)),
        "heads": lambda: ring_attention(x, torch.zeros(1, 6, 3, 16), torch.zeros(1, 6, 3, 16)),
    }
    out = []
    for name, fn in attempts.items():
        try:
            fn()
            out.append(dict(check=name, error=None, message=""))
        except (ValueError, TypeError) as e:
            out.append(dict(check=name, error=type(e).__name__, message=str(e)))
    return out


def _rank_main(rank, world, port, spec):
    sys.path.insert(0, ROOT)
    import torch.distributed as dist

    from kernels import torch_ops  # noqa: F401  (TRITON_INTERPRET before any triton kernel loads)

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        rng = np.random.default_rng(spec["seed"])
        for case in spec["cases"]:
            for row in _case(case, rng, rank, world):
                print("RESULT " + json.dumps(row), flush=True)
        if rank == 0:
            for row in _checks(rank, world):
                print("CHECK " + json.dumps(row), flush=True)
        dist.barrier()  # no rank tears gloo down while a peer is still in a collective
    finally:
        dist.destroy_process_group()
    from sharding.launch import exit_past_gloo_teardown

    exit_past_gloo_teardown()  # gloo's threads vs interpreter teardown: a rare SIGABRT once done


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    import torch.multiprocessing as mp

    spec = json.loads(sys.argv[1])
    mp.spawn(_rank_main, args=(spec["world"], _free_port(), spec), nprocs=spec["world"], join=True)
