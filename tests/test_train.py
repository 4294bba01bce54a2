"""Training: data, losses, the loop (torch and JAX), resume, accumulation, distillation,
kernel choices, short-budget retrieval accuracy, config errors. Micro shapes throughout."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from model import losses
from model.config import ModelConfig
from model.data import RetrievalTask, TextWindows
from model.tokenizer import EOS_ID, PAD_ID
from model.train import learning_rate, train
from model.train_config import register

CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
register()
# A micro model: 2 layers, width 32, MQA with 2 query heads of 16.
MICRO = ["model.width=32", "model.layers=2", "model.heads=2", "model.head_dim=16", "model.mlp_dim=64",
         "model.vocab_size=272"]
SMALL_TASK = ["data.retrieval.pairs=4", "data.retrieval.key_len=1", "data.retrieval.value_len=1",
              "data.retrieval.seq_len=18", "data.retrieval.queries=4"]


def cfg(*overrides, tmp=None):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        c = compose(config_name="train/tiny_retrieval",
                    overrides=[*MICRO, *SMALL_TASK, "log_every=0", "eval.batches=1", "results_dir=null",
                               "optim.warmup_steps=2", "optim.lr=3e-3", "optim.beta2=0.95",
                               "optim.weight_decay=0.1", *overrides])
    return c


def quiet(*_):
    pass


# ---------------------------------------------------------------- data
@pytest.mark.parametrize("order", ["key_first", "value_first"])
def test_retrieval_batches_are_deterministic_and_answerable(order):
    task = RetrievalTask(pairs=6, key_len=2, value_len=3, seq_len=56, seed=3, order=order)
    a, b = task.batch("train", 5, 8), task.batch("train", 5, 8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a.inputs, task.batch("eval", 5, 8).inputs)  # held-out stream
    assert not np.array_equal(a.inputs, task.batch("train", 6, 8).inputs)
    pair = r"([a-zA-Z]{2})([0-9]{3})" if order == "key_first" else r"([0-9]{3})([a-zA-Z]{2})"
    for row in range(8):  # the masked targets are the value stored under the query key
        seq = np.concatenate([a.inputs[row], a.targets[row, -1:]])
        text = bytes(int(t) for t in seq if t < 256).decode()
        context, query = text.split("?")
        found = re.findall(pair, context)
        pairs = dict(found) if order == "key_first" else {k: v for v, k in found}
        assert len(pairs) == 6 and len(context) == 6 * 5
        key, value = query[:2], query[2:5]
        assert pairs[key] == value
        assert bytes(a.targets[row][a.mask[row]].tolist()).decode() == value
    first_pad = task.example_len - 1
    assert (a.targets[:, first_pad - 1] == EOS_ID).all() and (a.inputs[:, first_pad + 1:] == PAD_ID).all()
    with pytest.raises(ValueError, match="seq_len=15 is too short"):
        RetrievalTask(pairs=6, key_len=2, value_len=3, seq_len=15)
    with pytest.raises(ValueError, match="split must be"):
        task.batch("test", 0, 1)
    with pytest.raises(ValueError, match="order must be one of"):
        RetrievalTask(order="sideways")


def test_retrieval_mixture_of_lengths():
    """min_pairs: training rows hold between min_pairs and pairs pairs (uniform), each
    answerable from its own context; held-out rows always hold pairs (the training length)."""
    task = RetrievalTask(pairs=20, key_len=1, value_len=1, queries=3, seq_len=2 * 23 + 2, min_pairs=2, seed=1)
    counts = []
    for index in range(4):
        b = task.batch("train", index, 64)
        for row in range(64):
            text = bytes(int(t) for t in b.inputs[row] if t < 256).decode()
            context, query = text.split("?")
            pairs = dict(re.findall(r"([a-zA-Z])([0-9])", context))
            counts.append(len(pairs))
            assert len(context) == 2 * len(pairs)
            answers = bytes(b.targets[row][b.mask[row]].tolist()).decode()
            assert answers == "".join(pairs[k] for k in query[0::2][:3])
    counts = np.array(counts)
    assert counts.min() == 2 and counts.max() == 20
    assert abs(counts.mean() - 11) < 1.0  # uniform over 2..20 (256 rows)
    e = task.batch("eval", 0, 16)
    assert e.mask.sum(axis=1).tolist() == [3] * 16 and (e.inputs[:, 2 * 20 + 1] == ord("?")).all()
    with pytest.raises(ValueError, match=r"min_pairs must lie in \[1, pairs=20\], got 21"):
        RetrievalTask(pairs=20, key_len=1, value_len=1, seq_len=64, min_pairs=21)


def test_text_windows(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(bytes(range(256)) * 8)
    src = TextWindows(str(path), seq_len=16, stride=8, eval_fraction=0.25, seed=1)
    b = src.batch("train", 3, 5)
    assert np.array_equal(b.inputs[:, 1:], b.targets[:, :-1]) and b.mask.all()
    assert np.array_equal((b.inputs[:, 0:1] + np.arange(16)) % 256, b.inputs)  # contiguous bytes
    cut = int(2048 * 0.75)
    e = src.batch("eval", 0, 4)
    assert np.array_equal(src.batch("train", 3, 5).inputs, b.inputs)
    starts_train = [int(np.nonzero(np.arange(cut) % 256 == r[0])[0][0]) for r in b.inputs]
    assert all(s < cut for s in starts_train) and e.inputs.shape == (4, 16)
    with pytest.raises(FileNotFoundError, match="text data file not found"):
        TextWindows(str(tmp_path / "missing.txt"))


# ---------------------------------------------------------------- losses
def test_losses_match_float64_and_distill_is_zero_for_equal_logits():
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 5, 11)) * 3, rng.normal(size=(2, 5, 11)) * 3
    y, m = rng.integers(0, 11, size=(2, 5)), rng.random((2, 5)) < 0.6
    lsm = lambda x: x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)  # noqa: E731
    ce64 = -(np.take_along_axis(lsm(s), y[..., None], -1)[..., 0] * m).sum() / m.sum()
    T = 2.5
    pt = np.exp(lsm(t / T))
    kl64 = T * T * ((pt * (lsm(t / T) - lsm(s / T))).sum(-1) * m).sum() / m.sum()
    ts = [torch.tensor(a) for a in (s, t, y, m)]
    js = [jnp.asarray(a, dtype=jnp.float32) if a.dtype == np.float64 else jnp.asarray(a) for a in (s, t, y, m)]
    for ce, kl, (S, Tt, Y, M) in ((losses.torch_masked_cross_entropy, losses.torch_distill_kl, ts),
                                  (losses.jax_masked_cross_entropy, losses.jax_distill_kl, js)):
        assert float(ce(S, Y, M)) == pytest.approx(ce64, rel=1e-5)
        assert float(kl(S, Tt, M, temperature=T)) == pytest.approx(kl64, rel=1e-5)
        assert abs(float(kl(S, S, M, temperature=T))) < 1e-6
    with pytest.raises(ValueError, match="temperature must be > 0"):
        losses.torch_distill_kl(ts[0], ts[1], ts[3], temperature=0.0)


def test_learning_rate_schedule():
    kw = dict(lr=1.0, warmup_steps=4, total_steps=20, min_lr_ratio=0.1)
    lrs = [learning_rate(s, **kw) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0] and lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_train_flops_per_token_is_the_documented_formula():
    """MFU's numerator (README): 6 N + 12 L H D S, N the matmul parameters (the norms' weights
    left out), attention in full (torchtitan's convention), and the same number the benchmark
    suite's model rows use: one MFU convention for one train step."""
    from benchmarks.suites.model import flops_per_token as bench_flops
    from model.config import param_count
    from model.train import flops_per_token

    c = ModelConfig(name="x", vocab_size=64, width=32, layers=2, heads=2, kv_heads=1, head_dim=16, mlp_dim=64,
                    max_seq_len=64)
    n_matmul = param_count(c) - (2 * c.layers + 1) * c.width  # a pre-attention and a pre-MLP norm, a final one
    assert flops_per_token(c, 64) == 6 * n_matmul + 12 * 2 * 2 * 16 * 64 == bench_flops(c, 64, train=True)


# ---------------------------------------------------------------- the loop
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_resume_equals_uninterrupted(tmp_path, framework):
    base = [f"framework={framework}", "steps=6", "batch_size=4", "eval.batches=0",
            *(["model.layers=1"] if framework == "jax" else [])]  # fewer XLA compiles
    whole = train(cfg(*base), log=quiet).losses
    ck = [*base, f"checkpoint.dir={tmp_path}", "checkpoint.every=3"]
    first = train(cfg(*ck), stop_at=3, log=quiet)
    assert first.steps_done == 3 and os.path.isdir(tmp_path / "step_00000003")
    resumed = train(cfg(*ck), log=quiet)
    assert resumed.losses[:3] == first.losses
    if framework == "torch":  # CPU, fixed seed: bit for bit
        assert resumed.losses == whole
    else:  # XLA may fuse the restored step differently: fp32 round-off
        np.testing.assert_allclose(resumed.losses, whole, rtol=1e-6)
    assert whole[-1] < whole[0]


def test_grad_accumulation_equals_big_batch():
    big = train(cfg("steps=3", "batch_size=8", "eval.batches=0"), log=quiet).losses
    acc = train(cfg("steps=3", "batch_size=8", "grad_accum=4", "eval.batches=0"), log=quiet).losses
    np.testing.assert_allclose(acc, big, rtol=1e-5)


def test_distillation_from_a_checkpoint(tmp_path):
    from model.checkpoint import save_checkpoint
    from model.config import ModelConfig
    from model.torch_model import GeminiModel

    run = cfg("steps=2", "batch_size=4", "distill.weight=1.0", "distill.temperature=2.0",
              f"distill.teacher={tmp_path / 'teacher.safetensors'}")
    student_cfg = ModelConfig(**{k: v for k, v in dict(run.model).items()})
    teacher = GeminiModel(student_cfg)
    teacher.init_weights(run.seed)  # the student's own initialization
    save_checkpoint(tmp_path / "teacher.safetensors", teacher, student_cfg)
    out = train(run, log=quiet)
    assert out.losses[0] == 0.0  # student == teacher: the KL term is zero
    assert out.losses[1] > 0.0   # after one step they differ
    # A larger teacher (the checkpoint of another config) also works.
    big_cfg = ModelConfig(**{**student_cfg.to_dict(), "layers": 3, "width": 48})
    save_checkpoint(tmp_path / "big.safetensors", GeminiModel(big_cfg), big_cfg)
    out = train(cfg("steps=1", "batch_size=4", f"distill.teacher={tmp_path / 'big.safetensors'}"), log=quiet)
    assert np.isfinite(out.losses[0]) and out.losses[0] > 0


def _trainer_and_source(*overrides):
    from omegaconf import OmegaConf

    from model.train import build_trainer

    c = cfg(*overrides)
    src = RetrievalTask(seed=c.seed, **OmegaConf.to_container(c.data.retrieval, resolve=True))
    return build_trainer(c, ModelConfig(**dict(c.model))), src, c


@pytest.mark.parametrize("clip", [0.05, 100.0])
def test_torch_and_jax_trainers_take_the_same_adamw_steps(clip):
    """Same parameters (norm scales non-zero, so decaying them would show), same micro-batches
    (grad_accum=2), 3 steps: equal losses and parameters. A JAX optimizer slip (bias
    correction dropped, norm scales decayed, clip scaling up under clip=100, normalizer from the
    first micro-batch only) or torch's no-decay group decayed makes the two diverge."""
    run = ["batch_size=4", "grad_accum=2", f"optim.clip_norm={clip}", "optim.weight_decay=0.5",
           "optim.lr=1e-2", "eval.batches=0", "model.layers=1"]
    tt, src, c = _trainer_and_source("framework=torch", *run)
    tj, _, _ = _trainer_and_source("framework=jax", *run)
    r = np.random.default_rng(0)
    init = {n: p + 0.3 * r.standard_normal(p.shape).astype(np.float32) if p.ndim == 1 else p
            for n, p in tt.params_numpy().items()}
    tt.load_state(init, {}, 0)
    tj.load_state(init, {}, 0)
    for step in range(3):
        micro = src.batch("train", step, c.batch_size).split(c.grad_accum)
        st, sj = tt.train_step(micro, 1e-2), tj.train_step(micro, 1e-2)
        assert st["loss"] == pytest.approx(sj["loss"], rel=1e-4), step
        assert (st["grad_norm"] > clip) == (clip < 1), st  # clipping active for 0.05 only
    pt, pj = tt.params_numpy(), tj.params_numpy()
    for n in pt:
        np.testing.assert_allclose(pj[n], pt[n], rtol=1e-3, atol=1e-5, err_msg=n)


def test_torch_and_jax_distillation_steps_agree(tmp_path):
    """One distillation step (T=2, weight 0.5) from the same student and teacher: equal losses.
    A framework that dropped the temperature (T=1) or the weight would differ."""
    from model.checkpoint import save_checkpoint
    from model.torch_model import GeminiModel

    run = ["batch_size=4", "eval.batches=0", "model.layers=1", f"distill.teacher={tmp_path / 't.safetensors'}",
           "distill.weight=0.5", "distill.temperature=2.0"]
    c = cfg(*run)
    mcfg = ModelConfig(**dict(c.model))
    save_checkpoint(tmp_path / "t.safetensors", GeminiModel(mcfg, seed=5), mcfg)
    tt, src, _ = _trainer_and_source("framework=torch", *run)
    tj, _, _ = _trainer_and_source("framework=jax", *run)
    tj.load_state(tt.params_numpy(), {}, 0)
    micro = src.batch("train", 0, 4).split(1)
    assert tt.train_step(micro, 1e-3)["loss"] == pytest.approx(tj.train_step(micro, 1e-3)["loss"], rel=1e-4)


@pytest.mark.parametrize("framework,kernel", [("torch", "triton"), ("jax", "pallas")])
def test_every_kernel_choice_trains_alike(framework, kernel):
    small = ["steps=3", "batch_size=2", "data.retrieval.pairs=2", "data.retrieval.queries=1",
             "data.retrieval.seq_len=16",
             f"framework={framework}", "model.layers=1", "eval.batches=0"]
    ref = train(cfg(*small, "kernels=reference"), log=quiet)
    fast = train(cfg(*small, f"kernels={kernel}"), log=quiet)
    np.testing.assert_allclose(fast.losses, ref.losses, rtol=2e-4)
    assert len(set(ref.losses)) == 3  # the parameters moved between steps


def test_kernels_node_takes_a_preset_and_per_op_overrides():
    """``kernels`` mirrors KernelConfig: ``kernels=<preset>`` selects conf/kernels/<preset>.yaml,
    ``kernels.<op>=`` (or ``+kernels.<op>=``) overrides one op, and the trainer builds exactly
    that KernelConfig."""
    from model.config import KernelConfig
    from model.train import build_trainer
    from model.train_config import kernel_config

    def kc(*overrides):
        return kernel_config(cfg(*overrides).kernels)

    assert kc() == KernelConfig(preset="reference")
    assert kc("kernels=triton") == KernelConfig(preset="triton")
    assert kc("kernels.attention=triton") == KernelConfig(attention="triton")
    assert kc("+kernels.attention=triton") == KernelConfig(attention="triton")
    assert kc("kernels=triton", "kernels.loss=reference", "kernels.decode=sdpa") == KernelConfig(
        preset="triton", loss="reference", decode="sdpa")
    assert kc("framework=jax", "kernels=pallas", "kernels.attention=xla").impl("attention") == "xla"
    with pytest.raises(Exception, match="Could not find 'kernels/fastest'"):
        cfg("kernels=fastest")
    with pytest.raises(ConfigCompositionException, match="kernels.softmax"):
        cfg("kernels.softmax=triton")
    run = cfg("kernels.attention=triton", "steps=1")
    trainer = build_trainer(run, ModelConfig(**dict(run.model)))
    assert trainer.model.kernels == KernelConfig(attention="triton")
    # the attention_blocks check reads the per-op choice, not just the preset
    trainer = build_trainer(cfg("kernels.attention=triton", "attention_blocks=autotune"),
                            ModelConfig(**dict(run.model)))
    assert trainer.model.kernels.attention_blocks == "autotune"


def test_checkpoint_dir_of_another_run(tmp_path):
    """resume=false refuses a folder that already holds checkpoints (pruning would mix the runs);
    resume=true refuses a checkpoint of another model config, naming the differing field;
    pruning keeps the newest steps by number."""
    base = ["steps=4", "batch_size=2", "eval.batches=0", "model.layers=1", f"checkpoint.dir={tmp_path}"]
    train(cfg(*base, "checkpoint.every=1", "checkpoint.keep=2"), log=quiet)
    assert sorted(os.listdir(tmp_path)) == ["step_00000003", "step_00000004"]
    with pytest.raises(ValueError, match=r"checkpoint.dir=.* already holds checkpoints \(step_00000003 .. "
                                         r"step_00000004, 2 in all\) and checkpoint.resume=false"):
        train(cfg(*base, "checkpoint.resume=false"), log=quiet)
    assert sorted(os.listdir(tmp_path)) == ["step_00000003", "step_00000004"]  # nothing touched
    # same shapes, another rope_theta: refused by the stored config
    with pytest.raises(ValueError, match=r"another model config \(rope_theta: the file's config has "
                                         r"10000.0, the given config 500.0\)"):
        train(cfg(*base, "steps=6", "model.rope_theta=500.0"), log=quiet)
    # numeric pruning: an unpadded step_9 (older) and step_10 sort by number, not by name
    os.rename(tmp_path / "step_00000003", tmp_path / "step_3")
    from model.train import latest_checkpoint

    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "step_00000004")
    train(cfg(*base, "steps=5", "checkpoint.keep=2"), log=quiet)
    assert sorted(os.listdir(tmp_path)) == ["step_00000004", "step_00000005"]
    fresh = tmp_path / "fresh"  # resume=false into an empty folder is fine
    out = train(cfg(*base[:-1], f"checkpoint.dir={fresh}", "checkpoint.resume=false"), log=quiet)
    assert out.steps_done == 4 and os.listdir(fresh) == ["step_00000004"]


class _FakeTrainer:
    """What save_train_checkpoint reads: a micro model's zero weights and one moment."""

    def __init__(self, value: float):
        from model.config import param_specs

        self.cfg = ModelConfig(width=32, layers=1, heads=2, head_dim=16, mlp_dim=64, vocab_size=272)
        self.value = value
        self.specs = param_specs(self.cfg)

    def params_numpy(self):
        return {n: np.full(shape, self.value, np.float32) for n, (shape, _) in self.specs.items()}

    def optim_state_numpy(self):
        return {"m/x": np.full(3, self.value, np.float32)}, 7


def test_checkpoint_resave_survives_a_failed_rename(tmp_path, monkeypatch):
    """Saving a step that already has a folder (a rerun) never leaves that step without one: the
    old folder is renamed aside and restored when the new one cannot be put in place; the files
    of the new folder are fsynced before the rename."""
    from model.train import latest_checkpoint, save_train_checkpoint

    folder = str(tmp_path)
    final = save_train_checkpoint(folder, 3, _FakeTrainer(1.0), {"losses": [1.0]}, keep=2)
    real_replace, real_fsync = os.replace, os.fsync
    synced = []

    def fsync(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):  # the new folder's rename fails (e.g. interrupted)
        if os.path.basename(src).startswith(".tmp-step_"):
            raise KeyboardInterrupt("interrupted")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save_train_checkpoint(folder, 3, _FakeTrainer(2.0), {"losses": [2.0]}, keep=2)
    assert {"optim.npz", "state.json"} <= set(synced) and any(n.startswith(".tmp-step_") for n in synced)
    assert os.listdir(folder) == ["step_00000003"] and latest_checkpoint(folder) == final
    with open(os.path.join(final, "state.json")) as f:
        assert json.load(f)["losses"] == [1.0]  # the old save, whole
    monkeypatch.setattr(os, "replace", real_replace)
    save_train_checkpoint(folder, 3, _FakeTrainer(2.0), {"losses": [2.0]}, keep=2)
    assert os.listdir(folder) == ["step_00000003"]  # replaced; nothing aside left behind
    with open(os.path.join(final, "state.json")) as f:
        assert json.load(f)["losses"] == [2.0]


def test_checkpoint_killed_between_the_renames_is_found_again(tmp_path):
    """A process killed after the old step folder went aside and before the new one came in
    (no exception handler runs): the next look at the folder puts the old save back."""
    from model.train import latest_checkpoint, save_train_checkpoint

    folder = str(tmp_path)
    save_train_checkpoint(folder, 2, _FakeTrainer(0.5), {"losses": [0.5]}, keep=3)
    final = save_train_checkpoint(folder, 3, _FakeTrainer(1.0), {"losses": [1.0]}, keep=3)
    os.replace(final, os.path.join(folder, ".old-step_00000003-abc123"))  # the state a kill leaves
    os.mkdir(os.path.join(folder, ".tmp-step_xyz"))  # the new save, never renamed in
    assert latest_checkpoint(folder) == final
    with open(os.path.join(final, "state.json")) as f:
        assert json.load(f)["losses"] == [1.0]
    assert not any(n.startswith(".old-") for n in os.listdir(folder))


# ---------------------------------------------------------------- bad input
def test_kernel_impl_of_the_other_framework_is_refused_at_config_time():
    """kernels.<op> / kernels=<preset> that only the other framework has is refused, naming the
    key, before any setup (train's _validate, build_trainer), not inside the first step."""
    from model.config import KernelConfig
    from model.train import _validate

    with pytest.raises(ValueError, match=re.escape("kernels.loss='xla' is a JAX impl; framework=torch "
                                                   "takes ['reference', 'triton']")):
        _validate(cfg("kernels.loss=xla"))
    with pytest.raises(ValueError, match=re.escape("kernels.attention='sdpa' is a PyTorch impl; framework=jax")):
        _validate(cfg("framework=jax", "kernels.attention=sdpa"))
    with pytest.raises(ValueError, match=re.escape("kernels='triton' is a PyTorch preset; framework=jax takes "
                                                   "the presets ['pallas', 'reference', 'xla']")):
        _validate(cfg("framework=jax", "kernels=triton"))
    _validate(cfg("framework=jax", "kernels=pallas", "kernels.loss=xla"))
    _validate(cfg("kernels=triton", "kernels.norm=compiled"))
    assert KernelConfig("xla", attention="ring").validate("jax") == KernelConfig("xla", attention="ring")
    with pytest.raises(ValueError, match="framework must be one of"):
        KernelConfig().validate("tf")


def test_data_must_fit_the_model():
    with pytest.raises(ValueError, match=r"data.retrieval.seq_len=18 exceeds the model's context "
                                         r"model.max_seq_len=8"):
        train(cfg("steps=1", "model.max_seq_len=8"), log=quiet)
    with pytest.raises(ValueError, match=r"model.vocab_size=200 is too small for data.kind=retrieval: .* "
                                         r"needs vocab_size >= 259"):
        train(cfg("steps=1", "model.vocab_size=200"), log=quiet)
    with pytest.raises(ValueError, match=r"vocab_size >= 259"):
        train(cfg("steps=1", "model.vocab_size=258"), log=quiet)  # eos (258) would not fit


def test_unknown_config_keys_fail():
    with pytest.raises(ConfigCompositionException):
        cfg("no_such_key=1")
    with pytest.raises(ConfigCompositionException):
        cfg("model.no_such_field=1")
    with pytest.raises(ConfigCompositionException):
        cfg("steps=many")


def test_missing_teacher_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="distill.teacher: no teacher checkpoint"):
        train(cfg("steps=1", f"distill.teacher={tmp_path / 'nope.safetensors'}"), log=quiet)
    with pytest.raises(ValueError, match="divisible by grad_accum"):
        train(cfg("batch_size=6", "grad_accum=4"), log=quiet)
    with pytest.raises(ValueError, match="attention_blocks='autotune' tunes torch's Triton attention"):
        train(cfg("steps=1", "attention_blocks=autotune"), log=quiet)  # reference kernels
    with pytest.raises(ValueError, match="attention_blocks: expected None or 'autotune'"):
        train(cfg("steps=1", "kernels=triton", "attention_blocks=fastest"), log=quiet)


def test_retrieval_accuracy_short_budget(tmp_path):
    """The default recipe (conf/train/tiny_retrieval.yaml: key-first pairs, training rows of
    2..pairs pairs, tiny model with mlp 128, batch 16, lr 1e-3) on a shorter budget: 8 pairs,
    8 queries, 1500 steps (~37 s on one core) reach held-out answer accuracy >= 0.95, the
    issue's bound (chance 0.1; answering from the context's values without matching the key
    gives ~0.3). Measured with this budget: seeds 0, 1, 2 formed the circuit by step 500-1000
    and ended at 1.0; with 1000 steps (the cosine decays sooner) seed 1 stayed at 0.37. The
    documented full run (24 pairs, 83 tokens, <= 5 min) is recorded in
    benchmarks/results/train-tiny-retrieval-*.json.

    Then #8's quality claim on this trained model (model.quant_eval, int4 round-to-nearest,
    group 32): the quantized model keeps its held-out accuracy within 2 points (of 512 answers)
    and its logits' KL to the float model is small; float accuracy is the training run's own."""
    import glob

    from model.quant_eval import run as quant_eval

    with initialize_config_dir(config_dir=CONF, version_base=None):
        run = compose(config_name="train/tiny_retrieval",
                      overrides=["log_every=0", "eval.every=0", "eval.batches=4", "steps=1500",
                                 "max_seconds=0",  # a budget in steps: a loaded machine is slower, not worse
                                 "data.retrieval.pairs=8", "data.retrieval.queries=8",
                                 "data.retrieval.seq_len=34", f"results_dir={tmp_path}", "run_name=t",
                                 f"checkpoint.dir={tmp_path / 'ck'}"])
    out = train(run, log=quiet)
    assert out.final_eval["answers"] == 4 * 16 * 8 and out.final_eval["accuracy"] >= 0.95, out.final_eval
    with open(out.results_path) as f:
        rec = json.load(f)
    assert rec["held_out"]["accuracy"] == out.final_eval["accuracy"]
    assert len(rec["loss_curve"]) == 1500 and rec["commit"]["commit"] and rec["versions"]["torch"]
    ckpt, = glob.glob(str(tmp_path / "ck" / "*" / "model.safetensors"))
    res = quant_eval(out.results_path, ckpt, group_size=32, batches=4)
    assert res["float"]["accuracy"] == out.final_eval["accuracy"]  # the same held-out batches
    assert res["float"]["answers"] == res["int4"]["answers"] == 4 * 16 * 8
    assert res["accuracy_drop_points"] == pytest.approx(100 * (res["float"]["accuracy"] - res["int4"]["accuracy"]))
    assert abs(res["accuracy_drop_points"]) <= 2.0, res  # the bound
    assert 0 < res["logits_kl_nats"] < 5e-2 and res["quantization"]["group_size"] == 32, res


def test_framework_impl_tables_match_the_front_ends():
    """model.config.FRAMEWORK_IMPLS (what KernelConfig.validate accepts) lists exactly each
    front end's impls (plus JAX's context-parallel "ring" attention), and OP_IMPLS their union."""
    from kernels import jax_ops, torch_ops
    from model.config import FRAMEWORK_IMPLS, OP_IMPLS

    tables = {"attention": "ATTENTION_IMPLS", "decode": "DECODE_IMPLS", "norm": "NORM_IMPLS",
              "rope": "ROPE_IMPLS", "mlp": "ACTIVATION_IMPLS", "loss": "LOSS_IMPLS"}
    for op, table in tables.items():
        assert set(FRAMEWORK_IMPLS["torch"][op]) == set(getattr(torch_ops, table)), op
        ring = {"ring"} if op == "attention" else set()
        assert set(FRAMEWORK_IMPLS["jax"][op]) == set(getattr(jax_ops, table)) | ring, op
        assert OP_IMPLS[op] == set(FRAMEWORK_IMPLS["torch"][op]) | set(FRAMEWORK_IMPLS["jax"][op]), op
