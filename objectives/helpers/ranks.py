"""Rows of every rank for losses over the global batch: gathered with their gradient
(each rank's own rows get it back) or without, and the check that the ranks' batches are
equal, which the losses exchanging equal-sized blocks need."""

from __future__ import annotations

import torch
import torch.distributed as torch_dist


def gather_no_grad(t: torch.Tensor, world_size: int) -> torch.Tensor:
    """Every rank's ``t`` in rank order, concatenated on dim 0; no gradient flows back."""
    out = [torch.empty_like(t) for _ in range(world_size)]
    torch_dist.all_gather(out, t.contiguous())
    return torch.cat(out)


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` in rank order, concatenated on dim 0; the gradient of each
    rank's rows goes back to that rank's ``t``."""
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t))


def check_equal_batches(features: torch.Tensor, world_size: int, what: str) -> None:
    """Fail clearly, on every rank at once, where the ranks' batches differ (a rank that
    skipped bad samples); ``what`` names the loss in the message."""
    if world_size == 1:
        return
    sizes = gather_no_grad(torch.tensor([features.shape[0]], device=features.device), world_size).tolist()
    if len(set(sizes)) > 1:
        raise ValueError(
            f"{what} across ranks needs equal per-rank batches, got {sizes}: a rank dropped bad samples; "
            "clean the data or use on_error: fail to find them"
        )
