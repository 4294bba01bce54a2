"""Ring attention (context parallelism) over torch.distributed on the project's Triton kernel.

Computes exactly ``kernels.torch_ops.attention(q, k, v, causal=..., softcap=..., scale=...)``
(self-attention; reference: ``kernels.attention.reference``) for a sequence split over the n
ranks of a process group (gloo on CPU, nccl on GPU). Each rank keeps its queries and passes
its K/V block to rank + 1 with ``dist.batch_isend_irecv`` while it computes on the block it
holds; the Triton kernel returns its log-sum-exp, so partial outputs merge exactly. The
backward recomputes with the final o and lse: dQ accumulates locally, dK/dV accumulators
travel with their K/V block and arrive home after n hops (each hop overlapped with compute).

Layout: zigzag. The global sequence is cut into 2n chunks and rank i holds chunks (i, 2n-1-i)
concatenated ([B, 2c, H, D], c = S / 2n; ``zigzag_shard`` / ``zigzag_unshard`` convert), so a
causal mask gives every rank the same work: step 0 is one causal call on the local block; a
block from rank j < i is needed only for its first chunk and by all local queries, one from
j > i only by the second local chunk (both causal=False). Fully masked pairs are skipped.

Limits: every rank passes the same shapes; local length even (q_len == kv_len); MHA/GQA/MQA,
softcap; window and segment_ids are refused. Per-step dQ/dK/dV partials are rounded to the
input dtype by the kernel, then summed in fp32; dK/dV accumulators travel in fp32.
Fast where: sequences too long for one GPU, K/V transfer hidden behind each step's
2 * c * c work. On CPU the kernel runs in the Triton interpreter (tests only).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from kernels import torch_ops  # noqa: F401  (sets TRITON_INTERPRET before triton kernels load)
from kernels.attention import triton_attention as ta
from kernels.attention.spec import check_attention_args

_KV_TAG, _GRAD_TAG = 1, 2  # gloo matches p2p messages by tag; nccl by issue order


def zigzag_shard(x: torch.Tensor, rank: int, world: int, dim: int = 1) -> torch.Tensor:
    """Rank ``rank``'s zigzag shard of a full sequence: chunks rank and 2*world-1-rank of 2*world."""
    s = x.shape[dim]
    if s % (2 * world):
        raise ValueError(f"sequence length (x dim {dim}) must split into 2 * world = {2 * world} "
                         f"equal zigzag chunks for world size {world}, got {s}")
    chunks = x.chunk(2 * world, dim)
    return torch.cat([chunks[rank], chunks[2 * world - 1 - rank]], dim)


def zigzag_unshard(shards: list[torch.Tensor], dim: int = 1) -> torch.Tensor:
    """Inverse of ``zigzag_shard`` over all ranks' shards (rank order) -> the full sequence."""
    firsts, seconds = zip(*(s.chunk(2, dim) for s in shards))
    return torch.cat([*firsts, *reversed(seconds)], dim)


def _check(q, k, v, *, causal, window, softcap, scale, segment_ids):
    problem, _, _ = check_attention_args(q, k, v, causal=causal, window=window, softcap=softcap,
                                         scale=scale, segment_ids=segment_ids,
                                         dtypes=torch_ops.TORCH_DTYPES, device_of=lambda t: t.device)
    if window is not None:
        raise ValueError(f"ring attention does not support window (got window={window}); use None")
    if segment_ids is not None:
        raise ValueError("ring attention does not support segment_ids (got a tensor); use None")
    if problem.q_len != problem.kv_len or problem.q_len % 2:
        raise ValueError(f"local q and k/v lengths must be equal and even (two zigzag chunks of "
                         f"the global sequence), got q_len {problem.q_len}, kv_len {problem.kv_len}")
    return problem


# --- lse adapters: kernel layout ([B * KVH, S * G] fp32 log2, +inf = no key) <-> [B, S, H] ----

def _lse_unfold(lse_k, q_shape):
    b, s, h, _ = q_shape
    kvh = lse_k.shape[0] // b
    lse = lse_k.view(b, kvh, s, h // kvh).permute(0, 2, 1, 3).reshape(b, s, h)
    return lse.masked_fill(lse == float("inf"), float("-inf"))  # weight 0 in the merge


def _lse_fold(lse, kvh):
    b, s, h = lse.shape
    lse = lse.masked_fill(lse == float("-inf"), float("inf"))  # kernel: p = exp2(s - inf) = 0
    return lse.view(b, s, kvh, h // kvh).permute(0, 2, 1, 3).reshape(b * kvh, s * (h // kvh)).contiguous()


def _merge_into(o, lse, o_t, lse_t):
    """In place: (o, lse) <- the softmax-weighted union of two partial results (base 2)."""
    new = torch.logaddexp2(lse, lse_t)
    safe = torch.where(torch.isfinite(new), new, torch.zeros_like(new))
    o.mul_(torch.exp2(lse - safe)[..., None]).add_(o_t.float() * torch.exp2(lse_t - safe)[..., None])
    lse.copy_(new)


def _start_pass(tensors, group, tag):
    """Send ``tensors`` to rank + 1, receive the same shapes from rank - 1: (handle, buffers).

    The handle keeps the sent tensors alive until ``_finish`` waits on it.
    """
    rank, n = dist.get_rank(group), dist.get_world_size(group)
    if n == 1:
        return ([], ()), tensors
    nxt = dist.get_global_rank(group, (rank + 1) % n) if group is not None else (rank + 1) % n
    prv = dist.get_global_rank(group, (rank - 1) % n) if group is not None else (rank - 1) % n
    bufs = [torch.empty_like(t) for t in tensors]
    ops = [dist.P2POp(dist.isend, t, nxt, group, tag) for t in tensors]
    ops += [dist.P2POp(dist.irecv, b, prv, group, tag) for b in bufs]
    return (dist.batch_isend_irecv(ops), tuple(tensors)), bufs


def _finish(handle):
    for r in handle[0]:
        r.wait()


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, causal, softcap, scale, fwd_blocks, bwd_blocks):
        rank, n, c = dist.get_rank(group), dist.get_world_size(group), q.shape[1] // 2
        kw = dict(window=None, softcap=softcap, scale=scale, blocks=fwd_blocks)
        o = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        lse = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
        kv = (k, v)
        for t in range(n):
            reqs, nxt = _start_pass(kv, group, _KV_TAG) if t < n - 1 else (([], ()), kv)
            kt, vt = kv
            j = (rank - t) % n
            if t == 0 or not causal:  # own block (causal diagonal), or everything visible
                qs, rows, ks, vs, diag = q, slice(None), kt, vt, causal and t == 0
            elif j < rank:  # only the visiting first chunk is at or before local queries
                qs, rows, ks, vs, diag = q, slice(None), kt[:, :c], vt[:, :c], False
            else:  # only the local second chunk comes after the visiting block
                qs, rows, ks, vs, diag = q[:, c:], slice(c, None), kt, vt, False
            o_t, lse_t = ta._flash_fwd(qs, ks, vs, None, None, causal=diag, **kw)
            _merge_into(o[:, rows], lse[:, rows], o_t, _lse_unfold(lse_t, qs.shape))
            _finish(reqs)
            kv = nxt
        o = o.to(q.dtype)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.args = (group, causal, dict(window=None, softcap=softcap, scale=scale, blocks=bwd_blocks))
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        group, causal, kw = ctx.args
        rank, n, c, kvh = dist.get_rank(group), dist.get_world_size(group), q.shape[1] // 2, k.shape[2]
        do = do.contiguous()
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        acc = [torch.zeros(k.shape, dtype=torch.float32, device=k.device) for _ in range(2)]
        kv, acc_reqs = (k, v), ([], ())
        for t in range(n):
            reqs, nxt = _start_pass(kv, group, _KV_TAG) if t < n - 1 else (([], ()), kv)
            kt, vt = kv
            j = (rank - t) % n
            rows, kvrows, diag = slice(None), slice(None), causal and t == 0
            if causal and t > 0:
                rows, kvrows = (slice(None), slice(None, c)) if j < rank else (slice(c, None), slice(None))
            dq_t, dk_t, dv_t = ta._flash_bwd(
                do[:, rows], q[:, rows], kt[:, kvrows], vt[:, kvrows], o[:, rows],
                _lse_fold(lse[:, rows], kvh), None, None, causal=diag, **kw)
            dq[:, rows] += dq_t
            _finish(acc_reqs)  # the accumulators of block j, from rank - 1
            acc[0][:, kvrows] += dk_t
            acc[1][:, kvrows] += dv_t
            acc_reqs, acc = _start_pass(acc, group, _GRAD_TAG)  # the n-th hop brings them home
            _finish(reqs)
            kv = nxt
        _finish(acc_reqs)
        dk, dv = acc
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None


def ring_attention(q, k, v, *, causal=False, softcap=None, scale=None, window=None,
                   segment_ids=None, group=None, blocks=None):
    """attention over the whole sequence, from this rank's zigzag shard.

    q [B, 2c, H, D], k, v [B, 2c, KVH, D]: this rank's ``zigzag_shard`` of the global tensors
    (same shapes on every rank of ``group``, None = the default group); returns this rank's
    shard of o. ``blocks``: one TritonAttentionBlocks for both passes, None = defaults.
    Differentiable in q, k, v.
    """
    p = _check(q, k, v, causal=causal, window=window, softcap=softcap, scale=scale,
               segment_ids=segment_ids)
    if blocks is None:
        cap = ta._capability(q)
        fwd = ta.default_blocks(p.head_dim, q.dtype, capability=cap)
        bwd = ta.default_blocks(p.head_dim, q.dtype, backward=True, capability=cap)
    else:
        fwd = bwd = blocks
    return _RingAttention.apply(q, k, v, group, causal, p.softcap, p.scale, fwd, bwd)
