"""What masked patch modeling shares across modalities (masked audio, masked image):
patch masks drawn from a sample's generator, MAE's per-patch normalised targets, and
the loss over masked patches only."""

from __future__ import annotations

import math

import numpy as np
import torch

from modalities.base import upcast
from objectives.base import DistContext, mean_over_global_count


def check_mask_ratio(ratio: float) -> None:
    """Raise a ValueError unless ``ratio`` leaves some patches masked and some visible."""
    if not 0 < ratio < 1:
        raise ValueError(f"mask_ratio must be in (0, 1), got {ratio}")


def patch_mask(grid: tuple[int, int], ratio: float, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """A [R * C] bool mask over a row-major patch grid (R, C) (True = masked).

    ``random`` masks round(ratio * N) patches; ``block`` masks exactly as many, in
    rectangles (``block_mask``, BEiT's block-wise masking); ``time`` masks whole columns
    (round(ratio * C) of them: all frequency patches of a time step on an audio grid);
    ``frequency`` whole rows (bands).
    """
    f, t = grid
    mask = np.zeros((f, t), dtype=bool)
    if kind == "random":
        flat = mask.reshape(-1)
        flat[rng.permutation(f * t)[: max(1, round(ratio * f * t))]] = True
    elif kind == "block":
        mask = block_mask(grid, max(1, round(ratio * f * t)), rng)
    elif kind == "time":
        mask[:, rng.permutation(t)[: max(1, round(ratio * t))]] = True
    elif kind == "frequency":
        mask[rng.permutation(f)[: max(1, round(ratio * f))], :] = True
    else:
        raise ValueError(f"unknown mask kind '{kind}': use random, block, time or frequency")
    return torch.from_numpy(mask.reshape(-1))


def block_mask(grid: tuple[int, int], count: int, rng: np.random.Generator, max_aspect: float = 3.0) -> np.ndarray:
    """Exactly ``count`` masked cells of a grid [R, C], as rectangles (BEiT's block-wise
    masking): rectangles of random area (at least a quarter of what is still to mask,
    at most all of it) and aspect ratio (log-uniform up to ``max_aspect``) at random
    places, until ``count`` cells are covered; the last rectangle's surplus is unmasked
    at random. An exact count keeps every sample's share of masked patches equal, which
    encoding the visible patches alone (MAE) needs."""
    rows, cols = grid
    mask = np.zeros((rows, cols), dtype=bool)
    while mask.sum() < count:
        remaining = count - int(mask.sum())
        area = rng.uniform(max(1.0, remaining / 4), remaining)
        aspect = math.exp(rng.uniform(-math.log(max_aspect), math.log(max_aspect)))
        h = int(np.clip(round(math.sqrt(area * aspect)), 1, rows))
        w = int(np.clip(round(math.sqrt(area / aspect)), 1, cols))
        top, left = int(rng.integers(rows - h + 1)), int(rng.integers(cols - w + 1))
        before = mask.copy()
        mask[top : top + h, left : left + w] = True
        surplus = int(mask.sum()) - count
        if surplus > 0:
            added = np.flatnonzero(mask & ~before)
            mask.reshape(-1)[rng.choice(added, surplus, replace=False)] = False
    return mask


def normalise_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch zero mean, unit variance (MAE's normalised pixel targets). Shapes: [..., P]."""
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True, unbiased=False)
    return (patches - mean) / (var + eps).sqrt()


def masked_patch_loss(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, dist: DistContext | None = None
) -> torch.Tensor:
    """Mean squared error over masked patches only (over every rank's masked patches
    under data parallelism; see ``mean_over_global_count``).

    Shapes:
        prediction, target: [B, N, P]; mask: [B, N] bool (True = counts).
    """
    per_patch = (upcast(prediction) - upcast(target)).pow(2).mean(-1)
    weights = mask.to(per_patch.dtype)
    return mean_over_global_count((per_patch * weights).sum(), weights.sum(), dist or DistContext())


def trivial_patch_loss(
    target: torch.Tensor, mask: torch.Tensor, dist: DistContext | None = None
) -> torch.Tensor:
    """The loss of the trivial predictor, each masked patch's own mean (0 for
    normalised targets: a loss of 1), the baseline a masked model must beat.

    Shapes:
        target: [B, N, P]; mask: [B, N] bool (True = counts).
    """
    with torch.no_grad():
        trivial = target.mean(-1, keepdim=True).expand_as(target)
        return masked_patch_loss(trivial, target, mask, dist)
