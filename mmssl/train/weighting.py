"""How the objectives' losses combine into the one loss that is optimised.

``static``: the configured weights. ``uncertainty``: learned homoscedastic-uncertainty
weighting (Kendall, Gal & Cipolla, 2018): each objective gets a log-variance s and
contributes ``w * exp(-s) * loss + s``. ``initial_loss``: each loss is divided by its
own mean over the first steps it ran, so objectives whose losses live on different
scales (a 10-nat cross-entropy beside a 0.5 regression) pull with their configured
weights rather than their units.

A weighting is a module: its parameters join the optimizer, and its parameters and
buffers are saved in the trainer state, so resume stays exact.
"""

from __future__ import annotations

from typing import ClassVar, Mapping

import torch
from torch import nn


class LossWeighting(nn.Module):
    """Static weights; subclasses change ``effective``/``regulariser``/``observe``.

    ``observes_losses``: whether ``observe`` uses the losses' values. They are Python
    floats, read from the device at every micro-step, so only a weighting that sets it
    makes the trainer read them then (the others' losses are read once, with the rest
    of the step's values).
    """

    observes_losses: ClassVar[bool] = False

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__()
        self.names = list(weights)
        self.register_buffer("base", torch.tensor([float(weights[n]) for n in self.names]), persistent=True)

    def _index(self, name: str) -> int:
        return self.names.index(name)

    def effective(self, name: str) -> torch.Tensor:
        """The weight multiplying ``name``'s loss now (a tensor: it may carry gradient)."""
        return self.base[self._index(name)]

    def regulariser(self, name: str) -> torch.Tensor | None:
        """A term added to the total when ``name`` runs (the uncertainty penalty), or None."""
        return None

    def observe(self, name: str, loss: float) -> None:
        """See ``name``'s raw loss value of a step (before weighting)."""

    def combine(
        self, losses: Mapping[str, torch.Tensor], observed: Mapping[str, float] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted total of the given (active) objectives' losses and the effective
        weight of each, for the log (detached 0-d tensors). ``observed``: the loss values
        the weighting learns from, where it observes them (under data parallelism the mean
        over ranks, so every rank weighs alike); default the losses' own values."""
        total = None
        weights = {}
        for name, loss in losses.items():
            if self.observes_losses:
                self.observe(name, observed[name] if observed is not None else float(loss.detach()))
            weight = self.effective(name)
            term = weight.to(loss.dtype) * loss
            extra = self.regulariser(name)
            if extra is not None:
                term = term + extra
            total = term if total is None else total + term
            weights[name] = weight.detach()
        if total is None:
            raise ValueError("no objective losses to combine")
        return total, weights


class UncertaintyWeighting(LossWeighting):
    """Kendall et al. (2018): ``w * exp(-s) * loss + s``, with s a learned log-variance per
    objective (initialised to 0, so the first steps weigh as ``static``)."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__(weights)
        self.log_variance = nn.Parameter(torch.zeros(len(self.names)))

    def effective(self, name: str) -> torch.Tensor:
        i = self._index(name)
        return self.base[i] * torch.exp(-self.log_variance[i])

    def regulariser(self, name: str) -> torch.Tensor:
        return self.log_variance[self._index(name)]


class InitialLossWeighting(LossWeighting):
    """``w / L0 * loss``, with L0 the mean of the objective's loss over the first
    ``warmup`` steps it ran (its running mean until then)."""

    observes_losses = True

    def __init__(self, weights: Mapping[str, float], warmup: int = 10) -> None:
        super().__init__(weights)
        self.warmup = warmup
        self.register_buffer("initial_sum", torch.zeros(len(self.names), dtype=torch.float64))
        self.register_buffer("initial_count", torch.zeros(len(self.names), dtype=torch.long))

    def observe(self, name: str, loss: float) -> None:
        i = self._index(name)
        if self.initial_count[i] < self.warmup:
            self.initial_sum[i] += loss
            self.initial_count[i] += 1

    def effective(self, name: str) -> torch.Tensor:
        i = self._index(name)
        count = int(self.initial_count[i])
        initial = float(self.initial_sum[i]) / count if count else 1.0
        return self.base[i] / max(abs(initial), 1e-8)


WEIGHTINGS: dict[str, type[LossWeighting]] = {
    "static": LossWeighting,
    "uncertainty": UncertaintyWeighting,
    "initial_loss": InitialLossWeighting,
}


def build_weighting(kind: str, weights: Mapping[str, float], initial_loss_steps: int = 10) -> LossWeighting:
    """The weighting named ``kind`` over objectives with base ``weights``."""
    if kind == "initial_loss":
        return InitialLossWeighting(weights, warmup=initial_loss_steps)
    if kind not in WEIGHTINGS:
        raise ValueError(f"unknown weighting '{kind}': use one of {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[kind](weights)
