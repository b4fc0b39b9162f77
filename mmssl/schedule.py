"""Which objectives run at a step.

``all``: every objective, every step. ``round_robin``: one objective per step, in
config order (as FLAVA alternates its tasks). ``weighted``: one objective per step,
drawn with the configured probabilities. The choice is a function of (seed, step)
only, so every rank and a resumed run make the same choice.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mmssl.world import sample_rng

SCHEDULES = ("all", "round_robin", "weighted")


class ObjectiveSchedule:
    """``schedule(step)`` -> names of the objectives that run at ``step``.

    Args:
        kind: one of SCHEDULES.
        names: objective names in config order.
        probabilities: relative sampling weights by name (``weighted`` only).
        seed: run seed.
    """

    def __init__(self, kind: str, names: Sequence[str], probabilities: Mapping[str, float] | None = None, seed: int = 0) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule '{kind}': use one of {list(SCHEDULES)}")
        if not names:
            raise ValueError("a schedule needs at least one objective")
        self.kind = kind
        self.names = list(names)
        self.seed = seed
        p = np.array([float((probabilities or {}).get(n, 1.0)) for n in self.names])
        if (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"schedule probabilities must be >= 0 and not all 0, got {dict(zip(self.names, p))}")
        self.probabilities = p / p.sum()

    def __call__(self, step: int) -> list[str]:
        if self.kind == "all":
            return list(self.names)
        if self.kind == "round_robin":
            return [self.names[step % len(self.names)]]
        choice = sample_rng(self.seed, "schedule", step).choice(len(self.names), p=self.probabilities)
        return [self.names[int(choice)]]
