"""The PyTorch half of ``model/train.py``: one optimizer step over micro-batches.

torch.optim.AdamW (decay on matrices only; the fused kernel on CUDA), lr set per step by
the caller, global-norm clipping, bf16 autocast when ``precision=bf16`` (fp32 master
weights; logits and losses in fp32), activation checkpointing of each decoder layer
(``remat``) with ``torch.utils.checkpoint`` (non-reentrant) through the checkpoint wrapper,
which keeps the ``state_dict`` names unchanged.
"""
from __future__ import annotations

import numpy as np
import torch

from model import losses
from model.config import KernelConfig, ModelConfig


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def _apply_remat(model) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl, apply_activation_checkpointing, checkpoint_wrapper)

    layers = set(model.model.layers)
    apply_activation_checkpointing(
        model, checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
        check_fn=lambda m: m in layers)


def load_teacher(path: str, kernels: KernelConfig, device) -> torch.nn.Module:
    from model import checkpoint
    from model.torch_model import GeminiModel

    params, tcfg = checkpoint.load_checkpoint(path, framework="torch")
    teacher = GeminiModel(tcfg, kernels)
    teacher.load_state_dict(params, strict=True)
    return teacher.to(device).eval().requires_grad_(False)


class TorchTrainer:
    def __init__(self, tcfg, cfg: ModelConfig, kernels: KernelConfig, teacher_path: str | None):
        from model.torch_model import GeminiModel

        self.tcfg, self.cfg = tcfg, cfg
        self.device = _device(tcfg.device)
        self.device_name = (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                            else "cpu")
        torch.manual_seed(tcfg.seed)
        self.model = GeminiModel(cfg, kernels)
        self.model.init_weights(tcfg.seed)
        self.model.to(self.device)
        if tcfg.remat:
            _apply_remat(self.model)
        by_name = {n.replace("_checkpoint_wrapped_module.", ""): p  # the remat wrapper's prefix
                   for n, p in self.model.named_parameters()}
        self.params = by_name
        self.names = list(by_name)
        o = tcfg.optim
        decay = [p for p in by_name.values() if p.ndim >= 2]
        no_decay = [p for p in by_name.values() if p.ndim < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=self.device.type == "cuda")
        self.order = [n for n in self.names if by_name[n].ndim >= 2] + [n for n in self.names
                                                                       if by_name[n].ndim < 2]
        self.teacher = None
        if teacher_path is not None:
            self.teacher = load_teacher(teacher_path, kernels, self.device)
            t = self.teacher.cfg
            if (t.vocab_size, t.image_vocab) != (cfg.vocab_size, cfg.image_vocab):
                raise ValueError(f"teacher vocab_size/image_vocab {t.vocab_size}/{t.image_vocab} != student "
                                 f"{cfg.vocab_size}/{cfg.image_vocab} (the logits must line up)")

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.tcfg.precision == "bf16")

    def _tensors(self, b):
        return (torch.as_tensor(b.inputs, dtype=torch.long, device=self.device),
                torch.as_tensor(b.targets, dtype=torch.long, device=self.device),
                torch.as_tensor(b.mask, device=self.device))

    def train_step(self, micro, lr: float) -> dict:
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        normalizer = float(max(sum(int(b.mask.sum()) for b in micro), 1))
        w = self.tcfg.distill.weight if self.teacher is not None else 0.0
        total = torch.zeros((), device=self.device)
        for b in micro:
            inputs, targets, mask = self._tensors(b)
            if self.teacher is None:  # the loss kernel: "triton" never builds the full logits
                with self._autocast():
                    loss = self.model.loss(inputs, targets, mask, normalizer=normalizer)
            else:  # distillation compares full logits
                with self._autocast():
                    logits = self.model(inputs)
                loss = losses.torch_masked_cross_entropy(logits, targets, mask, normalizer=normalizer)
                with torch.no_grad(), self._autocast():
                    t_logits = self.teacher(inputs)
                kl = losses.torch_distill_kl(logits, t_logits, mask, normalizer=normalizer,
                                             temperature=self.tcfg.distill.temperature)
                loss = losses.mix(loss, kl, w)
            loss.backward()
            total += loss.detach()
        clip = self.tcfg.optim.clip_norm
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        if clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        return {"loss": float(total), "grad_norm": float(norm)}

    @torch.no_grad()
    def eval_batch(self, b) -> tuple[float, np.ndarray]:
        self.model.eval()
        inputs, targets, mask = self._tensors(b)
        with self._autocast():
            logits = self.model(inputs)
        nll = losses.torch_masked_cross_entropy(logits, targets, mask, normalizer=1.0)
        return float(nll), logits.argmax(-1).cpu().numpy()

    def params_numpy(self) -> dict[str, np.ndarray]:
        return {n: p.detach().cpu().numpy() for n, p in self.params.items()}

    def optim_state_numpy(self) -> tuple[dict[str, np.ndarray], int]:
        moments, step = {}, 0
        for n in self.order:
            st = self.opt.state.get(self.params[n], {})
            if st:
                moments["m/" + n] = st["exp_avg"].cpu().numpy()
                moments["v/" + n] = st["exp_avg_sq"].cpu().numpy()
                step = int(st["step"])
        return moments, step

    def load_state(self, params: dict, moments: dict, step: int) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(torch.as_tensor(np.asarray(params[n])))
        sd = self.opt.state_dict()
        sd["state"] = {}
        if step:
            for i, n in enumerate(self.order):
                sd["state"][i] = {"step": torch.tensor(float(step)),
                                  "exp_avg": torch.as_tensor(moments["m/" + n]).to(self.device),
                                  "exp_avg_sq": torch.as_tensor(moments["v/" + n]).to(self.device)}
        self.opt.load_state_dict(sd)
