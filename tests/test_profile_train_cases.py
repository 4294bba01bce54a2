"""Scaling profile and training loop, the numbers pinned on small made-up cases.

sharding/comm_model.py: the modeled collectives of one step (kind, mesh axes, bytes, overlap)
for tensor, FSDP + data and context parallelism on both backends' conventions (the GPU's
reduce-scatters, which the 8-device CPU compile check in tests/test_sharding_jax.py never
sees), and the activation memory model, each counted by hand from the module's docstring.
sharding/profile.py: the link a collective's group spans (TPU ICI, devices_per_node, a
hardware entry without interconnect), the global batch under tensor parallelism, exposed
communication, remat reaching the model, the matmul-efficiency option's bounds.
sharding/hlo.py: nested while loops, a loop without a trip count, conditional branches, a
computation ENTRY never calls, iota / mesh replica groups (reduce-scatter bytes x group), bf16.
model/train.py, train_torch.py, train_jax.py: tokens/s and MFU from a fake clock (the warm-up
step left out, grad_accum not dividing the tokens), the distillation mix (1 - w) CE + w T^2 KL
at w != 1/2 against float64, eval sums (not averages) the NLL, clip_norm=0 disables clipping.
"""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from model.config import ModelConfig, flops_per_token
from sharding import comm_model as cm
from sharding.rules import make_plan

# the 8-device compile check's model (tests/_sharding_jax_worker.py): MQA, tied embedding
CFG = ModelConfig(vocab_size=256, width=64, layers=2, heads=8, kv_heads=1, head_dim=16, mlp_dim=256)
W, V, L, H, KV, D, M = 64, 256, 2, 8, 1, 16, 256
EMBED = V * W
PER_LAYER = 2 * W + H * D * W + 2 * KV * D * W + W * H * D + 3 * M * W  # 2 norms, q, k, v, o, gate/up/down
N = EMBED + L * PER_LAYER + W  # + the final norm


def _items(items):
    return sorted((i["kind"], i["axes"], i["bytes"], i["overlap"]) for i in items)


# ---------------------------------------------------------------- comm_model: collectives
@pytest.mark.parametrize("remat", [False, True])
def test_tensor_parallel_step_collectives_counted_by_hand(remat):
    """dp+tp (data 2 x tensor 2), batch 8 x seq 16, bf16 activations: per-device gradient
    buffers are the tensor shards (q, o, mlp, vocab halved; MQA's k/v and the norms whole),
    the tied embedding reduced twice; Megatron's 5 activation all-reduces per layer plus the
    replicated dK, dV; remat adds one activation all-reduce per step (not per layer); the
    vocab-parallel lookup / head input-gradient (2a) and 3 fp32 cross-entropy statistics."""
    plan = make_plan("dp+tp", {"data": 2, "tensor": 2}, 4)
    wl = cm.Workload(global_batch=8, seq_len=16, param_bytes=4, act_bytes=2, remat=remat)
    b, s = 4, 16
    a = b * s * W * 2
    grad_elems = (2 * EMBED // 2 + L * (2 * W + H * D * W // 2 + 2 * KV * D * W + W * H * D // 2 + 3 * M * W // 2)
                  + W)
    megatron = L * (5 * a + 2 * b * s * KV * D * 2) + (a if remat else 0)
    want = [("all-reduce", ("data",), 4 * grad_elems, True), ("all-reduce", ("data",), 4, False),
            ("all-reduce", ("tensor",), megatron, False),
            ("all-reduce", ("tensor",), 2 * a + 3 * b * s * 4, False)]
    for backend in ("gpu", "cpu"):  # no fsdp axis: both backends reduce alike
        assert _items(cm.collectives(CFG, plan, wl, backend=backend)) == sorted(want), backend


@pytest.mark.parametrize("remat", [False, True])
def test_fsdp_with_data_replicas_reduce_scatters_then_all_reduces_a_shard(remat):
    """dp+fsdp (data 2 x fsdp 2): every parameter gathered once per step (twice with remat);
    on a GPU its gradient reduce-scattered over fsdp (the tied table twice) and the fsdp shard
    then all-reduced across the data replicas; the CPU backend forms no reduce-scatter and
    all-reduces the whole gradient over both batch axes instead."""
    plan = make_plan("dp+fsdp", {"data": 2, "fsdp": 2}, 4)
    wl = cm.Workload(global_batch=8, seq_len=16, remat=remat)
    grads = 4 * (N + EMBED)  # fp32, the tied table's two reductions
    gathers = 4 * N * (2 if remat else 1)
    gpu = cm.collectives(CFG, plan, wl, backend="gpu")
    assert cm.by_kind(gpu) == {"all-gather": gathers, "reduce-scatter": grads, "all-reduce": grads // 2 + 4}
    replicas = [i for i in gpu if i["kind"] == "all-reduce" and i["overlap"]]
    assert {i["axes"] for i in replicas} == {("data",)} and sum(i["bytes"] for i in replicas) == grads // 2
    assert [i["axes"] for i in gpu if i["kind"] == "reduce-scatter"] == [("fsdp",)]
    cpu = cm.collectives(CFG, plan, wl, backend="cpu")
    assert cm.by_kind(cpu) == {"all-gather": gathers, "all-reduce": grads + 4}
    assert {i["axes"] for i in cpu if i["kind"] == "all-reduce"} == {("data", "fsdp")}


@pytest.mark.parametrize("remat", [False, True])
def test_context_parallel_ring_and_all_gather_counted_by_hand(remat):
    """dp+sp (data 2 x seq 2), batch 8 x seq 16: gradients all-reduced once per batch axis and
    once per sequence axis (XLA's two all-reduces); the ring sends the local bf16 K/V block
    2n - 1 times (+ n under remat) and the fp32 dK/dV accumulators n times, per layer; XLA's
    own partitioning all-gathers K and V (twice under remat) and reduce-scatters their
    gradients (an all-reduce on the CPU backend)."""
    plan = make_plan("dp+sp", {"data": 2, "seq": 2}, 4)
    n, b, s = 2, 4, 8
    grads = 2 * 4 * (N + EMBED)
    block = 2 * b * s * KV * D  # K and V elements of the local block
    ring = cm.collectives(CFG, plan, cm.Workload(8, 16, remat=remat))
    hops = (2 * n - 1) + (n if remat else 0)
    assert _items(ring) == sorted([
        ("all-reduce", ("data", "seq"), grads, True), ("all-reduce", ("data", "seq"), 4, False),
        ("collective-permute", ("seq",), L * block * (hops * 2 + n * 4), False)])
    kv = 2 * b * s * n * KV * D * 2  # K and V gathered over the sequence, bf16, per layer
    for backend, reduction in (("gpu", "reduce-scatter"), ("cpu", "all-reduce")):
        got = cm.collectives(CFG, plan, cm.Workload(8, 16, remat=remat, context_parallel="all-gather"),
                             backend=backend)
        cp = sorted((i["kind"], i["bytes"]) for i in got if i["axes"] == ("seq",))
        assert cp == sorted([("all-gather", L * kv * (2 if remat else 1)), (reduction, L * kv)]), backend


def test_workload_refuses_empty_steps_and_zero_byte_dtypes():
    for bad in (dict(global_batch=0, seq_len=16), dict(global_batch=8, seq_len=0),
                dict(global_batch=8, seq_len=16, act_bytes=0), dict(global_batch=8, seq_len=16, param_bytes=0)):
        with pytest.raises(ValueError, match="must be >= 1"):
            cm.Workload(**bad)


# ---------------------------------------------------------------- comm_model: memory
def test_activation_memory_of_a_tensor_parallel_plan_counted_by_hand():
    """dp+tp (data 2 x tensor 2), batch 8 x seq 16, bf16: per token and layer x, two norm outputs
    and one more width-sized value (4 w), q and the attention output (heads/2 each), k and v
    (MQA: replicated, whole), gate, up and gelu*up (mlp/2 each); fp32 logits and softmax over
    the vocab shard; remat keeps each layer's input plus one layer's worth."""
    plan = make_plan("dp+tp", {"data": 2, "tensor": 2}, 4)
    mem = cm.memory(CFG, plan, cm.Workload(global_batch=8, seq_len=16, act_bytes=2))
    tokens = 4 * 16
    per_layer = (4 * W + 2 * (H * D // 2) + 2 * (KV * D) + 3 * (M // 2)) * 2
    logits = V // 2 * 4 * 2
    assert mem["activations"] == tokens * (L * per_layer + logits)
    assert mem["activations_remat"] == tokens * (L * W * 2 + per_layer + logits)
    local = EMBED // 2 + L * (2 * W + H * D * W // 2 + 2 * KV * D * W + W * H * D // 2 + 3 * M * W // 2) + W
    assert mem["local_params"] == local and mem["params"] == 4 * local


# ---------------------------------------------------------------- profile: links, rows, options
_HW = {"name": "fake GPU", "bf16_tflops": 1000, "nvlink_gb_per_s": 900, "network_gb_per_s": 50, "devices_per_node": 8}


def test_axis_bandwidth_follows_the_span_of_the_group_and_the_node_size():
    """Axes laid out tensor innermost, then seq, fsdp, data: a group spans its own axis times
    every inner one. Within a node: half the NVLink total; across: the network rate; a TPU
    entry: half the ICI total for any axis; a node of 4 devices is honoured; an entry with no
    interconnect fields is refused."""
    from sharding.profile import axis_bandwidth

    nvlink, net = (450e9, "nvlink"), (50e9, "network")
    plan = make_plan("dp+tp", {"data": 4, "tensor": 2}, 8)
    assert axis_bandwidth(_HW, plan, ("tensor",)) == nvlink
    assert axis_bandwidth(_HW, plan, ("data",)) == nvlink  # 4 x 2 = 8: one node
    plan = make_plan("dp+tp", {"data": 16, "tensor": 2}, 32)
    assert axis_bandwidth(_HW, plan, ("tensor",)) == nvlink
    assert axis_bandwidth(_HW, plan, ("data",)) == net
    assert axis_bandwidth(_HW, plan, ("data", "tensor")) == net
    fsdp8 = make_plan("fsdp", {"fsdp": -1}, 8)
    assert axis_bandwidth({**_HW, "devices_per_node": 4}, fsdp8, ("fsdp",)) == net
    assert axis_bandwidth({**_HW, "devices_per_node": 4}, make_plan("fsdp", {"fsdp": -1}, 4), ("fsdp",)) == nvlink
    tpu = {"name": "fake TPU", "bf16_tflops": 900, "ici_gb_per_s": 1200}
    assert axis_bandwidth(tpu, make_plan("fsdp", {"fsdp": -1}, 256), ("fsdp",)) == (600e9, "ici")
    with pytest.raises(ValueError, match="no interconnect fields"):
        axis_bandwidth({"name": "bare", "bf16_tflops": 1}, fsdp8, ("fsdp",))


def _opts(**kw):
    return SimpleNamespace(**{**dict(mesh={}, batch_per_device=2, seq_len=256, act_bytes=2, remat=False), **kw})


def test_tensor_parallel_row_batch_exposed_communication_and_remat():
    """dp+tp on 8 devices (tensor 2): batch_per_device counts the data-parallel replicas'
    devices, so the global batch is 2 x 8 / 2; tensor-parallel traffic and the loss are
    exposed (ring all-reduce 2(n-1)/n over half the NVLink total, one node); remat=true reaches
    the model (one more activation all-reduce of a per step)."""
    from sharding.profile import load_strategy, profile_row

    conf = load_strategy("tp")
    row = profile_row(CFG, "tp", conf, 8, _HW, _opts())
    assert row["status"] == "ok" and row["mesh"]["tensor"] == 2 and row["mesh"]["data"] == 4
    assert row["global_batch"] == 2 * 8 // 2
    exposed = [i for i in row["collectives"] if not i["overlap"]]
    assert {i["axes"] for i in exposed} == {("tensor",), ("data",)}
    ring = {("tensor",): 2 * (2 - 1) / 2, ("data",): 2 * (4 - 1) / 4}
    assert row["comm_exposed_s"] == pytest.approx(sum(i["bytes"] * ring[i["axes"]] / 450e9 for i in exposed))
    assert row["comm_exposed_s"] > 0
    remat = profile_row(CFG, "tp", conf, 8, _HW, _opts(remat=True))
    a = (8 // 4) * 256 * W * 2  # one [batch_local, seq, width] bf16 activation
    assert remat["comm_bytes"]["all-reduce"] - row["comm_bytes"]["all-reduce"] == a


def test_matmul_efficiency_option_takes_fractions_up_to_one_and_refuses_booleans(tmp_path):
    from sharding.profile import matmul_efficiency

    opts = lambda eff: SimpleNamespace(matmul_efficiency=eff, results_dir=str(tmp_path))  # noqa: E731
    assert matmul_efficiency(opts(1), _HW) == (1.0, "matmul_efficiency option")
    assert matmul_efficiency(opts(0.25), _HW)[0] == 0.25
    for bad in (True, 0, 1.0001, -0.5, "0.5"):
        with pytest.raises(ValueError, match="matmul_efficiency: expected a fraction"):
            matmul_efficiency(opts(bad), _HW)


# ---------------------------------------------------------------- hlo counter
HLO_NESTED = """HloModule m

%inner (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %ar = f32[4]{0} all-reduce(%x), channel_id=1, replica_groups={{0,1}}, to_apply=%add
}

%outer (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %w2 = (s32[], f32[4]) while(%t), condition=%c, body=%inner, backend_config={"known_trip_count":{"n":"3"}}
}

%unknown_trips (p: (s32[], bf16[2,8])) -> (s32[], bf16[2,8]) {
  %ag = bf16[2,8]{1,0} all-gather(%y), channel_id=2, replica_groups=[2,4]<=[8], dimensions={0}
}

%branch_a (p: f32[16]) -> f32[16] {
  ROOT %cp = f32[16]{0} collective-permute(%p), channel_id=3, source_target_pairs={{0,1},{1,0}}
}

%branch_b (p: f32[16]) -> f32[16] {
  ROOT %q = f32[16]{0} negate(%p)
}

%never_called (p: f32[1000]) -> f32[1000] {
  ROOT %big = f32[1000]{0} all-to-all(%p), channel_id=9, replica_groups={{0,1}}
}

ENTRY %main (a: f32[4]) -> f32[4] {
  %w = (s32[], f32[4]) while(%t0), condition=%c, body=%outer, backend_config={"known_trip_count":{"n":"5"}}
  %w3 = (s32[], bf16[2,8]) while(%t1), condition=%c, body=%unknown_trips
  %cond = f32[16]{0} conditional(%pred, %a, %b), branch_computations={%branch_a, %branch_b}
  %rs = f32[2,8]{1,0} reduce-scatter(%r), channel_id=4, replica_groups=[2,4]<=[8], dimensions={0}, to_apply=%add
  %rs2 = f32[3]{0} reduce-scatter(%r2), channel_id=5, replica_groups=mesh['axis_0'=2,'axis_1'=4] {'axis_0','axis_1'}, dimensions={0}, to_apply=%add
  %one = f32[5]{0} all-gather(%r3), channel_id=6, replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_1'}, dimensions={0}
}
"""


def test_hlo_counter_nested_loops_branches_and_replica_group_forms():
    """Nested loop bodies multiply their trip counts (3 x 5); a loop without known_trip_count
    runs once; a conditional's branches count; a computation ENTRY never calls does not; an
    iota group [2,4]<=[8] has 4 devices and a mesh group {'axis_0','axis_1'} 2 x 4, which a
    reduce-scatter's bytes are multiplied by; a mesh group over a size-1 axis moves nothing;
    bf16 is 2 bytes."""
    from sharding.hlo import collectives

    got = collectives(HLO_NESTED)
    assert got == {"all-reduce": {"count": 15, "bytes": 15 * 4 * 4},
                   "all-gather": {"count": 1, "bytes": 2 * 8 * 2},
                   "collective-permute": {"count": 1, "bytes": 16 * 4},
                   "reduce-scatter": {"count": 2, "bytes": 2 * 8 * 4 * 4 + 3 * 4 * 8}}


# ---------------------------------------------------------------- training loop
CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
MICRO = ["model.width=32", "model.layers=2", "model.heads=2", "model.head_dim=16", "model.mlp_dim=64",
         "model.vocab_size=272"]
SMALL_TASK = ["data.retrieval.pairs=4", "data.retrieval.key_len=1", "data.retrieval.value_len=1",
              "data.retrieval.seq_len=18", "data.retrieval.queries=4"]


def _cfg(*overrides):
    from model.train_config import register

    register()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose(config_name="train/tiny_retrieval",
                       overrides=[*MICRO, *SMALL_TASK, "log_every=0", "eval.batches=1", "results_dir=null",
                                  "optim.warmup_steps=2", *overrides])


def test_tokens_per_second_and_mfu_from_a_fake_clock(monkeypatch):
    """Step times 10 s (the warm-up, left out), 0.5, 0.25, 0.25 s: 3 timed steps of 4 x 18
    input positions (grad_accum=2 splits the batch, not the tokens) in 1 s = 216 tok/s; MFU =
    (6 N_matmul + 12 L H D S) x 216 / peak, with peak = hardware_peak_tflops = 1e-3 TFLOP/s.
    The run stops at step 4 of 6 (``stop_at``, as if interrupted): the learning rate still
    follows the 6-step schedule."""
    import model.train as train_mod
    from model.train_torch import TorchTrainer

    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(train_mod, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    durations = iter([10.0, 0.5, 0.25, 0.25])
    real = TorchTrainer.train_step

    def timed(self, micro, lr):
        out = real(self, micro, lr)
        clock.now += next(durations)
        return out

    monkeypatch.setattr(TorchTrainer, "train_step", timed)
    lines = []
    out = train_mod.train(_cfg("steps=6", "batch_size=4", "grad_accum=2", "eval.batches=0", "log_every=1",
                               "optim.lr=3e-3", "optim.min_lr_ratio=0.1", "hardware_peak_tflops=0.001"),
                          stop_at=4, log=lines.append)
    assert out.steps_done == 4 and len(lines) == 4
    for step, line in enumerate(lines):
        lr = train_mod.learning_rate(step, lr=3e-3, warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
        assert f"lr {lr:.2e}" in line, (step, line)
    assert out.tokens_per_s == pytest.approx(216.0)
    w, layers, h, d, m, v, s = 32, 2, 2, 16, 64, 272, 18
    n_matmul = v * w + layers * (2 * w * h * d + 2 * w * 1 * d + 3 * w * m)
    mfu = (6 * n_matmul + 12 * layers * h * d * s) * 216.0 / 1e9
    assert out.mfu == pytest.approx(mfu)
    assert "tok/s 216" in lines[3] and f"MFU {100 * mfu:.2f}%" in lines[3], lines
    assert "tok/s" not in lines[0]  # only the warm-up step timed so far: nothing to report


def test_results_file_states_the_mfu_formula_it_used(tmp_path):
    from model.train import TrainResult, write_results

    tcfg = _cfg("steps=1", f"results_dir={tmp_path}")
    path = write_results(tcfg, TrainResult(losses=[1.0], final_eval={}, mfu=0.1, tokens_per_s=1.0,
                                           extra={"device": "cpu"}))
    with open(path) as f:
        formula = json.load(f)["mfu_formula"]
    assert "12*L*H*D*S" in formula and "6*L*H*D*S" not in formula.replace("12*L*H*D*S", ""), formula


def _lsm(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_trainers_mix_distillation_sum_eval_nll_and_take_clip_norm_zero_as_off(tmp_path):
    """Torch and JAX trainers on the same student and teacher, w = 0.8, T = 3: the step's loss
    is (1 - w) CE + w T^2 KL(teacher_T || student_T) over the batch's targets (float64 from the
    torch logits); eval_batch returns the NLL summed over targets (``evaluate`` divides by the
    count); clip_norm=0 disables clipping, so AdamW's first step moves each undecayed weight
    by lr (|g| >> eps), in both frameworks."""
    from model.checkpoint import save_checkpoint
    from model.data import RetrievalTask
    from model.torch_model import GeminiModel
    from model.train import build_trainer
    from omegaconf import OmegaConf

    w, T, lr = 0.8, 3.0, 1e-2
    run = ["batch_size=4", "eval.batches=0", "model.layers=1", "optim.clip_norm=0", "optim.weight_decay=0.1",
           f"distill.teacher={tmp_path / 't.safetensors'}", f"distill.weight={w}", f"distill.temperature={T}"]
    c = _cfg(*run)
    mcfg = ModelConfig(**dict(c.model))
    save_checkpoint(tmp_path / "t.safetensors", GeminiModel(mcfg, seed=5), mcfg)
    src = RetrievalTask(seed=c.seed, **OmegaConf.to_container(c.data.retrieval, resolve=True))
    tt = build_trainer(_cfg("framework=torch", *run), mcfg)
    tj = build_trainer(_cfg("framework=jax", *run), mcfg)
    tj.load_state(tt.params_numpy(), {}, 0)

    ev = src.batch("eval", 0, 4)
    with torch.no_grad():
        logits = tt.model.eval()(torch.as_tensor(ev.inputs, dtype=torch.long)).double().numpy()
    nll = -np.take_along_axis(_lsm(logits), ev.targets[..., None].astype(np.int64), -1)[..., 0]
    nll_sum = float((nll * ev.mask).sum())
    assert tt.eval_batch(ev)[0] == pytest.approx(nll_sum, rel=1e-5)
    assert tj.eval_batch(ev)[0] == pytest.approx(nll_sum, rel=1e-4)

    b = src.batch("train", 0, 4)
    x = torch.as_tensor(b.inputs, dtype=torch.long)
    with torch.no_grad():
        s_logits = tt.model.train()(x).double().numpy()
        t_logits = tt.teacher(x).double().numpy()
    count = b.mask.sum()
    ce = -(np.take_along_axis(_lsm(s_logits), b.targets[..., None].astype(np.int64), -1)[..., 0] * b.mask).sum()
    pt = _lsm(t_logits / T)
    kl = ((np.exp(pt) * (pt - _lsm(s_logits / T))).sum(-1) * b.mask).sum()
    want = (1 - w) * ce / count + w * T * T * kl / count
    before = {n: a.copy() for n, a in tt.params_numpy().items()}  # torch's numpy views the live weights
    for trainer, rel in ((tt, 1e-5), (tj, 1e-4)):
        out = trainer.train_step(b.split(2), lr)
        assert out["loss"] == pytest.approx(want, rel=rel), type(trainer).__name__
        assert out["grad_norm"] > 0
        after = trainer.params_numpy()
        moved = np.concatenate([np.abs(after[n] - before[n]).ravel() for n in before if before[n].ndim == 1])
        assert np.mean(np.isclose(moved, lr, rtol=1e-2)) > 0.9, (type(trainer).__name__, np.median(moved))
