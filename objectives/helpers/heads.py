"""Projection and prediction heads shared by objectives.

One builder for the two head shapes the contrastive objectives use: ``linear`` (one
``nn.Linear``) and ``mlp`` (``Linear(in, in) -> activation -> Linear(in, out)``, as
SimCLR's projection head; BYOL's heads add a BatchNorm before the activation).
Objectives differ only in the activation, the hidden layer's norm and whether the
output layer has a bias, so those are arguments; state-dict names (``weight`` for
``linear``; ``0.*`` and ``2.*`` for ``mlp``, ``0.*``, ``1.*`` and ``3.*`` with a norm)
and the order in which layers are created (and so initialised from the seeded RNG) are
the same for every caller. ``DinoHead`` is DINO's head onto prototypes.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

HeadKind = Literal["linear", "mlp"]


def projection_head(
    in_dim: int,
    out_dim: int,
    kind: HeadKind,
    activation: Callable[[], nn.Module] = nn.GELU,
    out_bias: bool = True,
    norm: Callable[[int], nn.Module] | None = None,
) -> nn.Module:
    """A ``linear`` or ``mlp`` head from ``in_dim`` to ``out_dim``.

    Args:
        kind: ``linear`` (one layer) or ``mlp`` (a hidden layer of width ``in_dim``).
        activation: the hidden layer's activation (``mlp`` only).
        out_bias: whether the output layer has a bias (contrastive heads have none,
            as CLIP's projections).
        norm: a normalisation of the hidden layer before its activation, built from
            its width (``nn.BatchNorm1d``, as BYOL's projector and predictor); ``mlp`` only.

    Shapes:
        input [..., in_dim] -> output [..., out_dim].
    """
    if kind == "linear":
        return nn.Linear(in_dim, out_dim, bias=out_bias)
    if kind == "mlp":
        hidden = [nn.Linear(in_dim, in_dim), *([norm(in_dim)] if norm is not None else []), activation()]
        return nn.Sequential(*hidden, nn.Linear(in_dim, out_dim, bias=out_bias))
    raise ValueError(f"Could not resolve head {kind!r} among choices ['linear', 'mlp']")


class DinoHead(nn.Module):
    """DINO's projection head (Caron et al., 2021): an MLP (``layers`` linear layers, GELU
    between them, after a BatchNorm with ``batch_norm``) to a ``bottleneck_dim`` vector,
    L2-normalised, then a weight-normalised linear layer without bias onto ``prototypes``
    outputs (the logits over prototypes).
    With ``norm_last_layer`` the weight norm's magnitude (g) is fixed at 1, so every
    prototype is a unit vector and the logits are cosines, as DINO's default. The MLP's
    linear layers start from a truncated normal (std 0.02) and zero biases, as DINO's.

    Shapes:
        input [..., in_dim] -> output [..., prototypes].
    """

    def __init__(self, in_dim: int, prototypes: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3, norm_last_layer: bool = True, batch_norm: bool = False) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"head_layers must be >= 1, got {layers}")
        widths = [in_dim, *[hidden_dim] * (layers - 1), bottleneck_dim]
        mlp: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            hidden = i < layers - 1
            # no bias before a BatchNorm: it cancels it, and Adam would turn its rounding-noise gradient into steps
            mlp += [nn.Linear(a, b, bias=not (hidden and batch_norm)), *([nn.BatchNorm1d(b)] if hidden and batch_norm else []),
                    *([nn.GELU()] if hidden else [])]
        self.mlp = nn.Sequential(*mlp)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, prototypes, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(features), dim=-1))

