"""The optimizer and its lr schedule: AdamW with open_clip's weight-decay exclusions,
per-encoder/objective lr multipliers, and linear warmup then cosine decay."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from mmssl.config import TrainConfig


def build_optimizer(
    model: torch.nn.Module, train: TrainConfig, extra: Sequence[torch.nn.Parameter] = ()
) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, temperatures and other 0/1-d parameters
    (as open_clip), nor on embedding tables, nor on ``extra`` (loss-weighting parameters).
    ``train.lr_scale`` gives an encoder's or objective's parameters groups of their own
    at ``lr * scale``."""
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {(1.0, True): [], (1.0, False): list(extra)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")
        owner = parts[1] if len(parts) > 2 and parts[0] in ("encoders", "objectives") else None
        scale = train.lr_scale.get(owner, 1.0)
        decay = not (p.ndim < 2 or "embedding" in name)
        groups.setdefault((scale, decay), []).append(p)
    param_groups = [
        {"params": params, "lr": train.lr * scale, "weight_decay": train.weight_decay if decay else 0.0}
        for (scale, decay), params in groups.items()
        if params or scale == 1.0
    ]
    return torch.optim.AdamW(
        param_groups, lr=train.lr, betas=train.betas, eps=train.eps, fused=train.fused_optimizer or None
    )


def lr_factor(step: int, train: TrainConfig) -> float:
    """Multiplier on each group's lr at ``step``: a linear ramp from ``1 / (warmup + 1)``
    over the warmup steps, then cosine decay to ``min_lr_ratio`` at ``steps``."""
    warmup = min(train.warmup_steps, max(train.steps - 1, 0))
    if step < warmup:
        start = 1.0 / (warmup + 1)
        return start + (1.0 - start) * step / warmup
    progress = min((step - warmup) / max(train.steps - warmup, 1), 1.0)
    return train.min_lr_ratio + (1.0 - train.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Warmup then cosine (``lr_factor``), applied to every parameter group alike, so a
    group at ``lr_scale`` times the lr stays at that share of it."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, train))
