"""Optimiser and learning-rate schedule (docs/model.md §7): Adam, linear warm-up over the first 1% of
steps to the peak, then linear decay to 0."""

from __future__ import annotations

import torch


def lr_factor(step: int, total_steps: int, warmup_fraction: float = 0.01) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based)."""
    if total_steps < 1:
        raise ValueError(f"total_steps: expected a positive int, got {total_steps}")
    warmup = max(1, round(warmup_fraction * total_steps))
    if step < warmup:
        return step / warmup
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup))


def build_optimizer(params, total_steps: int, lr: float = 1e-4, warmup_fraction: float = 0.01,
                    **adam_kwargs) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Adam with the schedule; call ``scheduler.step()`` after every ``optimizer.step()``."""
    opt = torch.optim.Adam(params, lr=lr, **adam_kwargs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, warmup_fraction))
    return opt, sched
