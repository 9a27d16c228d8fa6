"""The authors' optimisation (docs/method.md#optimisation): "BertAdam" with a warmup-linear schedule.

It differs from ``torch.optim.AdamW`` in three ways that change the numbers, which is why
it is re-implemented rather than approximated:

* no bias correction of the moments (early updates are smaller than Adam's);
* each parameter tensor's gradient is clipped to norm ``max_grad_norm`` on its own, BEFORE the
  moments are updated (``clip_grad_norm_`` on one tensor: factor ``max / (norm + 1e-6)``, capped at 1);
* the learning rate of a tensor's k-th update (k from 0) is ``lr * warmup_linear(k / t_total)``,
  so the very first update uses a learning rate of 0.

Decoupled weight decay is added to the update. Parameter groups follow the authors' name rule:
no decay for parameters whose name contains "bias", "LayerNorm.bias" or "LayerNorm.weight".
ralbook names its modules differently (see ``ralbook.checkpoint.REFERENCE_KEY_RULES``), so the
rule is applied to the name the authors' code gives the same tensor (``authors_style_name``).
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import Tensor, nn

from ralbook.model import AttentionBlock, LinearLayer, PositionalEncoding


NO_DECAY_MARKERS: tuple[str, ...] = ("bias", "LayerNorm.bias", "LayerNorm.weight")
CLIP_EPS = 1e-6  # the constant torch.nn.utils.clip_grad_norm_ adds to the norm


def warmup_linear(progress: float, warmup: float) -> float:
    """Learning-rate multiplier: linear rise to 1 over ``warmup``, then linear decay to 0 at progress 1.

    After the warmup the value is ``(progress - 1) / (warmup - 1)``, clamped at 0 (the authors' form).
    """
    if progress < warmup:
        return progress / warmup
    return max((progress - 1.0) / (warmup - 1.0), 0.0)


def _layernorm_owner_types() -> tuple[type, ...]:
    """Modules whose LayerNorm the authors' code calls ``LayerNorm`` (input projections, positional encodings,
    and MS-SL's / GMMFormer's attention blocks)."""

    return (LinearLayer, PositionalEncoding, AttentionBlock)


def authors_style_name(model: nn.Module) -> dict[str, str]:
    """Map each parameter name of ``model`` to the name the authors' no-decay rule would see.

    In the authors' model, the LayerNorms of the input projections and positional encodings are
    attributes named ``LayerNorm`` (so their weights get no decay), while the transformer
    layers' ``norm1``/``norm2`` and MSRA's ``layer_norm`` weights DO get weight decay. ralbook
    calls all of these ``norm``; this puts ``LayerNorm`` back where the authors had it.
    """
    owners = _layernorm_owner_types()
    renamed: dict[str, str] = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, owners):
            continue
        for child_name, child in module.named_children():
            if isinstance(child, nn.LayerNorm):
                prefix = f"{module_name}.{child_name}." if module_name else f"{child_name}."
                authors_prefix = f"{module_name}.LayerNorm." if module_name else "LayerNorm."
                for pname, _ in child.named_parameters():
                    renamed[prefix + pname] = authors_prefix + pname
    return {name: renamed.get(name, name) for name, _ in model.named_parameters()}


def is_no_decay(name: str, markers: Iterable[str] = NO_DECAY_MARKERS) -> bool:
    return any(marker in name for marker in markers)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups as in the authors' code: decayed parameters, then no-decay ones (names kept for inspection)."""
    names = authors_style_name(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if is_no_decay(names[name]) else decay).append((name, param))
    return [
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]


class BertAdam(torch.optim.Optimizer):
    """Adam without bias correction, per-tensor gradient clipping and decoupled weight decay.

    The schedule position is each tensor's own update count (``state[p]["step"]``), as in the
    authors' code, so a tensor that received no gradient does not advance its schedule.
    """

    def __init__(self, params: Any, lr: float, warmup: float = 0.01, t_total: int = -1,
                 b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6, weight_decay: float = 0.01,
                 max_grad_norm: float = 1.0):
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup}")
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {b1}, {b2}")
        defaults = dict(lr=lr, warmup=warmup, t_total=t_total, b1=b1, b2=b2, eps=eps,
                        weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    @staticmethod
    def schedule(group: dict[str, Any], step: int) -> float:
        """Learning rate of update number ``step`` (from 0) for a parameter group."""
        if group["t_total"] <= 0:
            return group["lr"]
        return group["lr"] * warmup_linear(step / group["t_total"], group["warmup"])

    def current_lr(self) -> float:
        """Learning rate the most recent update of the first parameter used (0 before any step)."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state:
                    return self.schedule(group, int(state["step"]) - 1)
        return 0.0

    @torch.no_grad()
    def step(self, closure: Optional[Any] = None) -> Optional[Tensor]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._update_group(group)
        return loss

    def _update_group(self, group: dict[str, Any]) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError("BertAdam does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["next_m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["next_v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        grads = [p.grad for p in params]
        if group["max_grad_norm"] > 0:
            norms = torch._foreach_norm(grads)
            factors = [torch.clamp(group["max_grad_norm"] / (n + CLIP_EPS), max=1.0) for n in norms]
            torch._foreach_mul_(grads, factors)
        ms = [self.state[p]["next_m"] for p in params]
        vs = [self.state[p]["next_v"] for p in params]
        b1, b2 = group["b1"], group["b2"]
        torch._foreach_mul_(ms, b1)
        torch._foreach_add_(ms, grads, alpha=1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
        denom = torch._foreach_sqrt(vs)
        torch._foreach_add_(denom, group["eps"])
        updates = torch._foreach_div(ms, denom)
        if group["weight_decay"] > 0:
            torch._foreach_add_(updates, params, alpha=group["weight_decay"])
        lrs = [self.schedule(group, self.state[p]["step"]) for p in params]
        torch._foreach_mul_(updates, lrs)
        torch._foreach_sub_(params, updates)
        for p in params:
            self.state[p]["step"] += 1


def build_optimizer(model: nn.Module, lr: float, warmup: float, weight_decay: float, t_total: int,
                    max_grad_norm: float = 1.0) -> BertAdam:
    """BertAdam over the authors' two parameter groups, scheduled over ``t_total`` updates."""
    return BertAdam(parameter_groups(model, weight_decay), lr=lr, warmup=warmup, t_total=t_total,
                    weight_decay=weight_decay, max_grad_norm=max_grad_norm)
