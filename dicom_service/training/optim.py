"""Pieces every training loop shares: the learning-rate schedule and one optimiser step."""

from __future__ import annotations

import math

import torch
from torch import nn


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ``lr / warmup_steps`` to ``lr``, then cosine decay to 0 at ``total_steps``.

    Step it once per iteration. ``warmup_steps`` is capped at half of ``total_steps`` so
    that short runs still reach the base learning rate.
    """
    total = max(1, total_steps)
    warm = min(max(0, warmup_steps), total // 2)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimiser_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler,
                   clip: tuple[nn.Module, float] | None = None) -> float:
    """One optimisation step (backward, optional gradient-norm clipping, step, schedule).

    Returns the learning rate the step used.
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None and clip[1] > 0:
        nn.utils.clip_grad_norm_(clip[0].parameters(), clip[1])
    optimizer.step()
    lr = optimizer.param_groups[0]["lr"]
    scheduler.step()
    return lr
