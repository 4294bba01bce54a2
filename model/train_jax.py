"""The JAX half of ``model/train.py``: one optimizer step over micro-batches.

AdamW written out (the same update as torch.optim.AdamW: decoupled decay on matrices,
bias-corrected moments, eps outside the sqrt), global-norm clipping, bf16 compute when
``precision=bf16`` (fp32 master weights cast inside the loss; logits and losses in fp32).
``remat``: ``jax.checkpoint`` over the forward with the ``dots_with_no_batch_dims_saveable``
policy (weight matmul outputs are kept, everything else is recomputed in the backward pass;
the model has no per-layer hook yet). Gradients of micro-batches are summed on the host side
of the loop; each jitted function compiles once per shape.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from model import losses
from model.config import KernelConfig, ModelConfig


def _adamw(params, grads, m, v, step, lr, *, b1, b2, eps, wd, decay):
    """One AdamW step (``step`` counts from 1) as torch.optim.AdamW computes it."""
    bc1, bc2 = 1.0 - b1 ** step, 1.0 - b2 ** step
    new_p, new_m, new_v = {}, {}, {}
    for n, p in params.items():
        g = grads[n]
        p = p * (1.0 - lr * wd) if decay[n] else p
        new_m[n] = b1 * m[n] + (1.0 - b1) * g
        new_v[n] = b2 * v[n] + (1.0 - b2) * g * g
        denom = jnp.sqrt(new_v[n]) / jnp.sqrt(bc2) + eps
        new_p[n] = p - (lr / bc1) * new_m[n] / denom
    return new_p, new_m, new_v


def _clip(grads, clip):
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in grads.values()))
    if clip <= 0:
        return grads, norm
    scale = jnp.minimum(1.0, clip / (norm + 1e-6))  # torch's clip_grad_norm_ rule
    return {n: g * scale for n, g in grads.items()}, norm


class JaxTrainer:
    def __init__(self, tcfg, cfg: ModelConfig, kernels: KernelConfig, teacher_path: str | None):
        from model import jax_model

        self.tcfg, self.cfg = tcfg, cfg
        dev = jax.devices()[0]
        self.device_name = f"{dev.platform}:{getattr(dev, 'device_kind', '')}"
        self.params = jax_model.init_params(cfg, jax.random.key(tcfg.seed))
        self.m = jax.tree_util.tree_map(jnp.zeros_like, self.params)
        self.v = jax.tree_util.tree_map(jnp.zeros_like, self.params)
        self.step = 0
        bf16 = tcfg.precision == "bf16"

        def cast(params):
            return {n: p.astype(jnp.bfloat16) for n, p in params.items()} if bf16 else params

        def fwd(params, tokens, hidden=False):
            return jax_model.forward(cast(params), tokens, cfg=cfg, kernels=kernels, hidden=hidden)

        hidden = functools.partial(fwd, hidden=True)
        if tcfg.remat:  # the decoder only: the loss kernel keeps its own gradients, nothing to recompute
            policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
            fwd, hidden = jax.checkpoint(fwd, policy=policy), jax.checkpoint(hidden, policy=policy)
        self.teacher = None
        if teacher_path is not None:
            from model import checkpoint

            t_params, t_cfg = checkpoint.load_checkpoint(teacher_path, framework="jax")
            if (t_cfg.vocab_size, t_cfg.image_vocab) != (cfg.vocab_size, cfg.image_vocab):
                raise ValueError(f"teacher vocab_size/image_vocab {t_cfg.vocab_size}/{t_cfg.image_vocab} != "
                                 f"student {cfg.vocab_size}/{cfg.image_vocab} (the logits must line up)")
            self.teacher = jax.jit(functools.partial(
                lambda p, x: jax_model.forward(p, x, cfg=t_cfg, kernels=kernels), t_params))
        d = tcfg.distill

        def loss_fn(params, inputs, targets, mask, normalizer, t_logits):
            if t_logits is None:  # the loss kernel: "pallas" / "xla" never build the full logits
                table = jax_model.head_table(cast(params), cfg)  # text (+ image-token) rows
                return jax_model.head_loss(hidden(params, inputs), table, targets, mask, cfg=cfg,
                                           kernels=kernels, normalizer=normalizer), None
            logits = fwd(params, inputs)
            loss = losses.jax_masked_cross_entropy(logits, targets, mask, normalizer=normalizer)
            if t_logits is not None:
                kl = losses.jax_distill_kl(logits, t_logits, mask, temperature=d.temperature,
                                           normalizer=normalizer)
                loss = losses.mix(loss, kl, d.weight)
            return loss, logits

        self._grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
        self._eval = jax.jit(lambda p, x, y, msk: (lambda lg: (
            losses.jax_masked_cross_entropy(lg, y, msk, normalizer=1.0), jnp.argmax(lg, -1)))(fwd(p, x)))
        o = tcfg.optim
        decay = {n: p.ndim >= 2 for n, p in self.params.items()}

        def update(params, grads, m, v, step, lr):
            grads, norm = _clip(grads, o.clip_norm)
            p, m, v = _adamw(params, grads, m, v, step, lr, b1=o.beta1, b2=o.beta2, eps=o.eps,
                             wd=o.weight_decay, decay=decay)
            return p, m, v, norm

        self._update = jax.jit(update)
        self._add = jax.jit(lambda a, b: jax.tree_util.tree_map(jnp.add, a, b))

    def train_step(self, micro, lr: float) -> dict:
        normalizer = jnp.float32(max(sum(int(b.mask.sum()) for b in micro), 1))
        grads, total = None, 0.0
        for b in micro:
            t_logits = None if self.teacher is None else self.teacher(jnp.asarray(b.inputs))
            (loss, _), g = self._grad(self.params, jnp.asarray(b.inputs), jnp.asarray(b.targets),
                                      jnp.asarray(b.mask), normalizer, t_logits)
            grads = g if grads is None else self._add(grads, g)
            total += float(loss)
        self.step += 1
        self.params, self.m, self.v, norm = self._update(
            self.params, grads, self.m, self.v, jnp.float32(self.step), jnp.float32(lr))
        return {"loss": total, "grad_norm": float(norm)}

    def eval_batch(self, b) -> tuple[float, np.ndarray]:
        nll, pred = self._eval(self.params, jnp.asarray(b.inputs), jnp.asarray(b.targets),
                               jnp.asarray(b.mask))
        return float(nll), np.asarray(pred)

    def params_numpy(self) -> dict[str, np.ndarray]:
        return {n: np.asarray(p) for n, p in self.params.items()}

    def optim_state_numpy(self) -> tuple[dict[str, np.ndarray], int]:
        if not self.step:
            return {}, 0
        out = {"m/" + n: np.asarray(x) for n, x in self.m.items()}
        out.update({"v/" + n: np.asarray(x) for n, x in self.v.items()})
        return out, self.step

    def load_state(self, params: dict, moments: dict, step: int) -> None:
        self.params = {n: jnp.asarray(params[n]) for n in self.params}
        if step:
            self.m = {n: jnp.asarray(moments["m/" + n]) for n in self.params}
            self.v = {n: jnp.asarray(moments["v/" + n]) for n in self.params}
        self.step = step
