"""Projection and prediction heads shared by objectives.

One builder for the two head shapes every objective here uses: ``linear`` (one
``nn.Linear``) and ``mlp`` (``Linear(in, in) -> activation -> Linear(in, out)``, as
SimCLR's projection head; BYOL's heads add a BatchNorm before the activation).
Objectives differ only in the activation, the hidden layer's norm and whether the
output layer has a bias, so those are arguments; state-dict names (``weight`` for
``linear``; ``0.*`` and ``2.*`` for ``mlp``, ``0.*``, ``1.*`` and ``3.*`` with a norm)
and the order in which layers are created (and so initialised from the seeded RNG) are
the same for every caller.
"""

from __future__ import annotations

from typing import Callable, Literal

from torch import nn

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
