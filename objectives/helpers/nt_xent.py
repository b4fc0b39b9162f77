"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., 2020),
the one implementation every view-contrastive objective uses (``view_contrastive``'s
SimCLR, ``graph_contrastive``'s GraphCL), and the in-batch metrics that go with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modalities.base import upcast
from objectives.helpers.ranks import gather_with_grad


def nt_xent(
    z_a: torch.Tensor, z_b: torch.Tensor, temperature: float, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """NT-Xent over 2B views: each view's positive is the other view of its item, the
    remaining 2B - 2 views (of every rank) are negatives.

    Under data parallelism the projections of every rank are gathered with their
    gradient, so each rank scores its own 2B/W anchors against all 2B keys and the mean
    over ranks of the loss (and of its gradients, as DDP averages them) is the
    one-process loss of the global batch.

    Shapes:
        z_a, z_b: [B, E] projections of the two views (normalised here); returns a scalar.
    """
    z_a, z_b = F.normalize(upcast(z_a), dim=-1), F.normalize(upcast(z_b), dim=-1)
    n = z_a.shape[0]
    all_a, all_b = (gather_with_grad(z_a), gather_with_grad(z_b)) if world_size > 1 else (z_a, z_b)
    m = all_a.shape[0]
    anchors = torch.cat([z_a, z_b])  # [2B, E]
    keys = torch.cat([all_a, all_b])  # [2M, E]
    logits = anchors @ keys.T / temperature
    own = rank * n + torch.arange(n, device=z_a.device)
    itself = torch.cat([own, own + m])
    partner = torch.cat([own + m, own])
    rows = torch.arange(2 * n, device=z_a.device)
    logits = logits.index_put((rows, itself), logits.new_full((), float("-inf")))  # filled on the device, no copy
    return F.cross_entropy(logits, partner)


@torch.no_grad()
def view_metrics(z_a: torch.Tensor, z_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """This rank's in-batch figures of two views' projections: ``view_acc``, the share
    of the 2B views whose most similar other view is their partner (chance about
    1 / (2B - 1)), and ``positive_cosine``, the mean cosine of an item's two views, as
    0-d tensors (read with the step's other metrics, no host sync here).

    Shapes:
        z_a, z_b: [B, E].
    """
    a, b = F.normalize(upcast(z_a), dim=-1), F.normalize(upcast(z_b), dim=-1)
    z = torch.cat([a, b])
    sim = z @ z.T
    sim.fill_diagonal_(float("-inf"))
    n = a.shape[0]
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(sim.device)
    return {
        "view_acc": (sim.argmax(1) == partner).float().mean(),
        "positive_cosine": (a * b).sum(-1).mean(),
    }
