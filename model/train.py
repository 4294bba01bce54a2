"""Training: ``python -m model.train [model=tiny] [framework=torch|jax] [kernels=...] [steps=N] ...``

``kernels=<preset>`` picks ``conf/kernels/<preset>.yaml``; per-op overrides go on top
(``kernels.attention=triton``; the ops are ``KernelConfig``'s, see ``model/train_config.py``).

The default config (``conf/train/tiny_retrieval.yaml``) trains the ``tiny`` model on the
synthetic key-value retrieval task (``model/data.py``) and writes
``benchmarks/results/train-tiny-retrieval-<time>.json`` atomically: held-out retrieval
accuracy, loss curve, config, commit, library versions, device.

Loop: AdamW (decoupled weight decay on matrices) with linear warmup and cosine decay to
``lr * min_lr_ratio``, global-norm gradient clipping, gradient accumulation (the step's
batch ``index == step`` is split into ``grad_accum`` micro-batches; losses are normalized
by the whole batch's target count, so accumulation equals the big batch), bf16 autocast
(torch) / bf16 compute (JAX) with fp32 master weights, activation checkpointing (``remat``),
optional distillation from a teacher checkpoint (``distill.teacher=PATH``: loss =
(1 - w) CE + w T^2 KL(teacher_T || student_T)). The framework halves live in
``model/train_torch.py`` and ``model/train_jax.py``.

Throughput: tokens/s counts input positions (batch_size * seq_len per step) over the wall
time of the steps (the first step, which compiles, is excluded). MFU is

    MFU = (6 * N + 12 * L * H * D * S) * tokens / time / peak

(``model.config.flops_per_token``, the one convention of every MFU the project prints) with
N the matmul parameters (the tied embedding counted once, as the output-head matmul; the
norms' weights not), L layers, H query heads, D head_dim, S the sequence length. The
attention term 12 * L * H * D * S (QK^T and PV, forward + backward) is counted in full
under the causal mask, as PaLM and torchtitan count it, so the MFU compares with their
published figures (the kernels skip the masked half, so this overstates attention's share
of the work). ``peak`` is ``hardware_peak_tflops`` or the
detected chip's dense bf16 datasheet peak from ``conf/hardware`` (also for fp32 runs);
on a CPU there is none and MFU is omitted (null).

Checkpoints (``checkpoint.dir``, every ``checkpoint.every`` steps and at the end): a folder
``step_<N>`` holding ``model.safetensors`` (``model/checkpoint.py``), ``optim.npz`` (AdamW
moments by parameter name) and ``state.json`` (step, data position, loss history, config),
written under a temporary name and renamed, so a folder that exists is complete. With
``checkpoint.resume`` the run continues from the newest one (refused if it was saved with
another model config, naming the first differing field) and its later losses equal an
uninterrupted run's (same seed; on CPU bit for bit, see tests/test_train.py). The folder holds
one run: with ``checkpoint.resume=false`` a folder that already has ``step_<N>`` checkpoints is
refused (pruning to the newest ``checkpoint.keep`` would otherwise mix two runs' steps), so
pruning only ever deletes this run's older steps.

Checked before the first step: the data's ``seq_len`` fits the model's ``max_seq_len`` and
its ids (bytes, plus pad/bos/eos for retrieval) fit ``model.vocab_size``.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from model.config import ModelConfig, flops_per_token, param_count
from model.data import make_source

CHECKPOINT_PREFIX = "step_"


# ---------------------------------------------------------------- schedule and FLOPs
def learning_rate(step: int, *, lr: float, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine to ``lr * min_lr_ratio``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps - 1, 1)
    frac = min((step - warmup_steps) / span, 1.0)
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac)))


def peak_tflops(override: float | None) -> tuple[float | None, str]:
    """The chip's peak (TFLOP/s) for MFU and where it came from; (None, ...) on a CPU."""
    if override:
        return float(override), "hardware_peak_tflops"
    from benchmarks.hardware import detect_device

    dev = detect_device()
    if dev.datasheet_tflops:
        return float(dev.datasheet_tflops), f"conf/hardware bf16 dense peak of {dev.name}"
    return None, f"no datasheet peak for {dev.name} ({dev.kind}): MFU omitted"


# ---------------------------------------------------------------- checkpoints
def _checkpoints(folder: str | None) -> list[tuple[int, str]]:
    """(step, folder name) of every complete ``step_<N>`` folder under ``folder``, by step."""
    if not folder or not os.path.isdir(folder):
        return []
    _restore_aside(folder)
    found = [(int(n[len(CHECKPOINT_PREFIX):]), n) for n in os.listdir(folder)
             if n.startswith(CHECKPOINT_PREFIX) and n[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found)


def _restore_aside(folder: str) -> None:
    """A save killed between its two renames (``save_train_checkpoint``) leaves the older save
    of its step in ``.old-step_<N>-*`` with no ``step_<N>``: put it back; drop one whose step
    folder is in place (the new save got in)."""
    prefix = ".old-" + CHECKPOINT_PREFIX
    for n in sorted(os.listdir(folder)):
        digits = n[len(prefix):len(prefix) + 8]
        if not (n.startswith(prefix) and digits.isdigit()):
            continue
        final = os.path.join(folder, CHECKPOINT_PREFIX + digits)
        if os.path.exists(final):
            shutil.rmtree(os.path.join(folder, n), ignore_errors=True)
        elif os.path.exists(os.path.join(folder, n, "state.json")):  # a whole save (the aside is a
            os.replace(os.path.join(folder, n), final)                 # complete step folder)


def latest_checkpoint(folder: str | None) -> str | None:
    """The newest complete ``step_<N>`` folder under ``folder`` (None if there is none)."""
    found = _checkpoints(folder)
    return os.path.join(folder, found[-1][1]) if found else None


def check_fresh_checkpoint_dir(folder: str | None) -> None:
    """``checkpoint.resume=false``: refuse a ``checkpoint.dir`` that already holds checkpoints.
    Another run's step folders would mix with this run's: pruning keeps the newest steps, so it
    would delete this run's saves (or the other run's) and a later resume would continue
    whichever is newest."""
    found = _checkpoints(folder)
    if found:
        raise ValueError(f"checkpoint.dir={folder} already holds checkpoints ({found[0][1]} .. "
                         f"{found[-1][1]}, {len(found)} in all) and checkpoint.resume=false: pass "
                         f"checkpoint.resume=true to continue that run, or give this run its own "
                         f"(empty or new) checkpoint.dir, or delete those step folders")


def _fsync_dir(path: str) -> None:
    """Make the folder's entries (new files, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_train_checkpoint(folder: str, step: int, trainer, state: dict, keep: int) -> str:
    """Write ``folder/step_<step>`` atomically (temp folder, every file and the folder fsynced,
    then a rename); keep the newest ``keep`` (by step number; the folder holds only this run's
    checkpoints: ``_train`` resumes from them or refuses a non-empty folder). An older save of
    the same step is renamed aside, replaced, and only then deleted: a failure before the new
    folder is in place puts it back."""
    from model import checkpoint

    os.makedirs(folder, exist_ok=True)
    final = os.path.join(folder, f"{CHECKPOINT_PREFIX}{step:08d}")
    tmp = tempfile.mkdtemp(prefix=".tmp-" + CHECKPOINT_PREFIX, dir=folder)
    aside = None
    try:
        checkpoint.save_checkpoint(os.path.join(tmp, "model.safetensors"), trainer.params_numpy(), trainer.cfg)
        moments, opt_step = trainer.optim_state_numpy()
        with open(os.path.join(tmp, "optim.npz"), "wb") as f:
            np.savez(f, **moments)
            f.flush()
            os.fsync(f.fileno())
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump({**state, "step": step, "data_index": step, "optim_step": opt_step}, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if os.path.exists(final):  # a rerun past an older save of the same step: aside, not deleted yet
            aside = tempfile.mkdtemp(prefix=f".old-{CHECKPOINT_PREFIX}{step:08d}-", dir=folder)
            os.replace(final, aside)  # onto the empty temp folder (a POSIX directory rename)
        os.replace(tmp, final)
    except BaseException:
        if aside is not None and not os.path.exists(final):
            os.replace(aside, final)  # the old save of this step back in place
        elif aside is not None:  # the first rename failed: the aside folder is the empty temp one
            shutil.rmtree(aside, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(folder)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    old = _checkpoints(folder)[:-keep] if keep > 0 else []
    for _, name in old:
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    return final


def load_train_checkpoint(path: str, trainer) -> dict:
    """Restore weights and AdamW state from ``path`` into ``trainer``; return state.json. A
    checkpoint of another model config is refused, naming the first differing field."""
    from model import checkpoint

    stored = checkpoint.read_config(os.path.join(path, "model.safetensors"))
    diff = checkpoint.config_difference(stored, trainer.cfg)
    if diff is not None:
        raise ValueError(f"checkpoint.resume: {path} is a checkpoint of another model config ({diff}). "
                         f"Resume with the model settings it was saved with, or give this run its own "
                         f"checkpoint.dir")
    params, _ = checkpoint.load_checkpoint(os.path.join(path, "model.safetensors"), trainer.cfg,
                                          framework="numpy")
    with open(os.path.join(path, "state.json")) as f:
        state = json.load(f)
    with np.load(os.path.join(path, "optim.npz")) as z:
        moments = {k: z[k] for k in z.files}
    trainer.load_state(params, moments, state["optim_step"])
    return state


# ---------------------------------------------------------------- evaluation
def evaluate(trainer, source, batches: int, batch_size: int) -> dict:
    """Held-out loss, token accuracy and answer accuracy: an answer is a run of consecutive
    target positions (for retrieval: one queried value) and counts only if every token of it
    is right; ``row_accuracy`` asks the same of all answers of a row. Teacher-forced argmax
    equals greedy decoding when every earlier target is right, so answer accuracy here is
    greedy-decoding retrieval accuracy."""
    nll, count, tok_ok, ans_ok, ans_n, row_ok, rows = 0.0, 0, 0, 0, 0, 0, 0
    for i in range(batches):
        b = source.batch("eval", i, batch_size)
        loss_sum, pred = trainer.eval_batch(b)
        wrong = (pred != b.targets) & b.mask
        starts = b.mask & ~np.pad(b.mask, ((0, 0), (1, 0)))[:, :-1]
        run_id = np.cumsum(starts, axis=1)
        for r in range(b.mask.shape[0]):
            n_runs = int(starts[r].sum())
            bad = len(np.unique(run_id[r][wrong[r]]))
            ans_ok, ans_n = ans_ok + n_runs - bad, ans_n + n_runs
        nll += loss_sum
        count += int(b.mask.sum())
        tok_ok += int(b.mask.sum() - wrong.sum())
        row_ok += int((~wrong).all(axis=1).sum())
        rows += b.mask.shape[0]
    return {"eval_loss": nll / max(count, 1), "token_accuracy": tok_ok / max(count, 1),
            "accuracy": ans_ok / max(ans_n, 1), "answers": ans_n,
            "row_accuracy": row_ok / max(rows, 1), "rows": rows}


# ---------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    losses: list[float]                      # one per step, from step 0 (incl. restored history)
    evals: list[dict] = field(default_factory=list)
    final_eval: dict | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    steps_done: int = 0
    results_path: str | None = None
    extra: dict = field(default_factory=dict)


def build_trainer(tcfg, mcfg: ModelConfig):
    from model.train_config import kernel_config

    kernels = kernel_config(tcfg.kernels, tcfg.attention_blocks).validate(tcfg.framework)
    if tcfg.attention_blocks is not None and (tcfg.framework != "torch" or kernels.impl("attention") != "triton"):
        raise ValueError(f"attention_blocks={tcfg.attention_blocks!r} tunes torch's Triton attention: it needs "
                         f"framework=torch and triton attention, got framework={tcfg.framework!r}, "
                         f"attention={kernels.impl('attention')!r} (kernels {kernels})")
    teacher = None
    if tcfg.distill.teacher is not None:
        teacher = tcfg.distill.teacher
        if not os.path.isfile(teacher):
            raise FileNotFoundError(f"distill.teacher: no teacher checkpoint at {teacher!r} "
                                    f"(expected a model .safetensors written by model/checkpoint.py)")
    if tcfg.framework == "torch":
        from model.train_torch import TorchTrainer

        return TorchTrainer(tcfg, mcfg, kernels, teacher)
    if tcfg.framework == "jax":
        from model.train_jax import JaxTrainer

        return JaxTrainer(tcfg, mcfg, kernels, teacher)
    raise ValueError(f"framework must be 'torch' or 'jax', got {tcfg.framework!r}")


def _validate(tcfg) -> None:
    if tcfg.steps < 1 or tcfg.batch_size < 1 or tcfg.grad_accum < 1:
        raise ValueError(f"steps, batch_size, grad_accum must be >= 1, got {tcfg.steps}, "
                         f"{tcfg.batch_size}, {tcfg.grad_accum}")
    if tcfg.batch_size % tcfg.grad_accum:
        raise ValueError(f"batch_size={tcfg.batch_size} must be divisible by grad_accum={tcfg.grad_accum}")
    if tcfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {tcfg.precision!r}")
    from model.train_config import kernel_config

    kernel_config(tcfg.kernels, tcfg.attention_blocks).validate(tcfg.framework)  # before any setup


def _check_data_fits(tcfg, mcfg: ModelConfig, source) -> None:
    """The data's rows must fit the model: seq_len within its context, every id it emits
    within its vocabulary (an id past the embedding table is an IndexError deep in a step)."""
    kind = tcfg.data.kind
    if source.seq_len > mcfg.max_seq_len:
        raise ValueError(f"data.{kind}.seq_len={source.seq_len} exceeds the model's context "
                         f"model.max_seq_len={mcfg.max_seq_len}: shorten the rows or raise max_seq_len")
    if source.vocab_needed > mcfg.vocab_size:
        raise ValueError(f"model.vocab_size={mcfg.vocab_size} is too small for data.kind={kind}: its "
                         f"rows hold byte-tokenizer ids up to {source.vocab_needed - 1} (bytes 0..255"
                         f"{' and pad/bos/eos' if source.vocab_needed > 256 else ''}), so the model needs "
                         f"vocab_size >= {source.vocab_needed}")


def train(tcfg, *, stop_at: int | None = None, log=print) -> TrainResult:
    """Run the training described by ``tcfg`` (a ``TrainConfig`` or an OmegaConf node of it).

    ``stop_at``: return after that many steps as if interrupted (checkpoints as usual), for
    resume tests; the schedule still follows ``tcfg.steps``. torch's CPU thread count is
    set to ``cpu_threads`` for the run and restored afterwards."""
    import torch

    _validate(tcfg)
    threads = torch.get_num_threads()
    if tcfg.cpu_threads > 0:
        torch.set_num_threads(tcfg.cpu_threads)
    try:
        return _train(tcfg, stop_at, log)
    finally:
        torch.set_num_threads(threads)


def _train(tcfg, stop_at, log) -> TrainResult:
    from omegaconf import OmegaConf

    mcfg = ModelConfig(**(OmegaConf.to_container(tcfg.model) if OmegaConf.is_config(tcfg.model)
                          else dict(vars(tcfg.model))))
    source = make_source(tcfg.data.kind, seed=tcfg.seed,
                         retrieval=dict(_plain(tcfg.data.retrieval)), text=dict(_plain(tcfg.data.text)))
    seq_len = source.seq_len
    _check_data_fits(tcfg, mcfg, source)
    if not tcfg.checkpoint.resume:
        check_fresh_checkpoint_dir(tcfg.checkpoint.dir)
    trainer = build_trainer(tcfg, mcfg)
    losses, evals, start = [], [], 0
    ckpt = latest_checkpoint(tcfg.checkpoint.dir) if tcfg.checkpoint.resume else None
    if ckpt is not None:
        state = load_train_checkpoint(ckpt, trainer)
        start, losses, evals = state["step"], state["losses"], state["evals"]
        log(f"resumed from {ckpt} at step {start}")
    end = min(tcfg.steps, stop_at) if stop_at is not None else tcfg.steps
    tokens_step = tcfg.batch_size * seq_len
    fpt = flops_per_token(mcfg, seq_len)
    peak, peak_src = peak_tflops(tcfg.hardware_peak_tflops)
    timed_s, timed_steps, t_start, step = 0.0, 0, time.perf_counter(), start
    eval_every = tcfg.eval.every
    for step in range(start, end):
        lr = learning_rate(step, lr=tcfg.optim.lr, warmup_steps=tcfg.optim.warmup_steps,
                           total_steps=tcfg.steps, min_lr_ratio=tcfg.optim.min_lr_ratio)
        t0 = time.perf_counter()
        out = trainer.train_step(source.batch("train", step, tcfg.batch_size).split(tcfg.grad_accum), lr)
        dt = time.perf_counter() - t0
        if step > start:  # the first step of a run compiles / warms up
            timed_s, timed_steps = timed_s + dt, timed_steps + 1
        losses.append(out["loss"])
        if tcfg.log_every and (step % tcfg.log_every == 0 or step == end - 1):
            tps = tokens_step * timed_steps / timed_s if timed_s else None
            mfu = None if (peak is None or tps is None) else fpt * tps / (peak * 1e12)
            log(f"step {step:5d}  loss {out['loss']:.4f}  lr {lr:.2e}  grad_norm {out['grad_norm']:.3f}"
                + (f"  tok/s {tps:,.0f}" if tps else "") + (f"  MFU {100 * mfu:.2f}%" if mfu else ""))
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < end:
            evals.append({"step": step + 1, **evaluate(trainer, source, tcfg.eval.batches, tcfg.batch_size)})
            log(f"eval @ {step + 1}: {evals[-1]}")
        if tcfg.checkpoint.dir and tcfg.checkpoint.every and (step + 1) % tcfg.checkpoint.every == 0:
            save_train_checkpoint(tcfg.checkpoint.dir, step + 1, trainer,
                                  {"losses": losses, "evals": evals, "config": _plain(tcfg)},
                                  tcfg.checkpoint.keep)
        if tcfg.max_seconds and time.perf_counter() - t_start > tcfg.max_seconds:
            log(f"max_seconds={tcfg.max_seconds} reached after step {step}")
            break
    steps_done = len(losses)
    if tcfg.checkpoint.dir and steps_done > start and not (
            tcfg.checkpoint.every and steps_done % tcfg.checkpoint.every == 0):
        save_train_checkpoint(tcfg.checkpoint.dir, steps_done, trainer,
                              {"losses": losses, "evals": evals, "config": _plain(tcfg)},
                              tcfg.checkpoint.keep)
    tps = tokens_step * timed_steps / timed_s if timed_s else None
    result = TrainResult(losses=losses, evals=evals, steps_done=steps_done, tokens_per_s=tps,
                         mfu=None if (peak is None or tps is None) else fpt * tps / (peak * 1e12))
    if tcfg.eval.batches > 0 and (stop_at is None or steps_done >= tcfg.steps):
        result.final_eval = evaluate(trainer, source, tcfg.eval.batches, tcfg.batch_size)
        log(f"held-out: {result.final_eval}")
    result.extra = {"wall_s": time.perf_counter() - t_start, "flops_per_token": fpt,
                    "peak_tflops": peak, "peak_source": peak_src, "param_count": param_count(mcfg),
                    "device": trainer.device_name}
    if tcfg.results_dir and result.final_eval is not None:
        result.results_path = write_results(tcfg, result)
        log(f"results: {result.results_path}")
    result.extra["trainer"] = trainer
    return result


def _plain(node):
    from omegaconf import OmegaConf

    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    import dataclasses

    return dataclasses.asdict(node) if dataclasses.is_dataclass(node) else node


def write_results(tcfg, result: TrainResult) -> str:
    """``<results_dir>/<run_name>-<UTC time>.json``, written atomically with provenance."""
    from benchmarks.results import git_commit, library_versions, write_json_atomic

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    extra = {k: v for k, v in result.extra.items() if k != "trainer"}
    payload = {
        "schema": "gemini-kernels-train/1",
        "created_utc": stamp,
        "config": _plain(tcfg),
        "commit": git_commit(),
        "versions": library_versions(),
        "device": extra.pop("device"),
        "held_out": result.final_eval,
        "evals": result.evals,
        "loss_curve": result.losses,
        "steps": result.steps_done,
        "tokens_per_s": result.tokens_per_s,
        "mfu": result.mfu,
        "mfu_formula": "(6*N + 12*L*H*D*S) * tokens/s / peak; attention counted in full under the causal mask",
        **extra,
    }
    return write_json_atomic(os.path.join(tcfg.results_dir, f"{tcfg.run_name}-{stamp}.json"), payload)


def main() -> None:
    import hydra

    from model import train_config

    train_config.register()

    @hydra.main(config_path="../conf", config_name="train/tiny_retrieval", version_base=None)
    def _main(cfg) -> None:
        train(cfg)

    _main()


if __name__ == "__main__":
    main()
