"""Exponential moving averages of weights: the one update every moving average in
mmssl uses (BYOL's target, DINO's teacher, the model EMA of ``train.ema``), and the
cosine momentum schedule and the frozen copy (``ema_copy``) BYOL and DINO share."""

from __future__ import annotations

import copy
import math
from typing import Iterable

import torch
from torch import nn


def cosine_momentum(base: float, step: int, total_steps: int, final: float = 1.0) -> float:
    """The momentum after ``step`` of ``total_steps`` optimizer steps, rising from ``base``
    to ``final`` on a half cosine: final - (final - base) (cos(pi step / total) + 1) / 2
    (BYOL's and DINO's teacher schedule)."""
    progress = min(step, total_steps) / max(total_steps, 1)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` for ``ema_update`` to move (BYOL's target, DINO's teacher): its
    parameters stay parameters, so checkpoints carry them, but get no gradient and so no
    optimizer update."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


def ema_update(target: nn.Module | Iterable[torch.Tensor], online: nn.Module | Iterable[torch.Tensor],
               momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, tensor by tensor (modules:
    their parameters; the two must have the same structure). Sharded (DTensor) weights
    update shard by shard."""
    targets = target.parameters() if isinstance(target, nn.Module) else target
    onlines = online.parameters() if isinstance(online, nn.Module) else online
    for t, o in zip(targets, onlines, strict=True):
        t.lerp_(o, 1.0 - momentum)
