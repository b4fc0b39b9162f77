"""Which objectives run at a step.

``all``: every objective, every step. ``round_robin``: one objective per step, in
config order (as FLAVA alternates its tasks). ``weighted``: one objective per step,
drawn with the configured probabilities. Under ``all``, an objective with ``every: N``
runs only at steps divisible by N: a cheap way to keep an auxiliary objective in the
mix at a fraction of its cost. The choice is a function of (seed, step) only, so every
rank and a resumed run make the same choice.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mmssl.common.seeding import sample_rng

SCHEDULES = ("all", "round_robin", "weighted")


class ObjectiveSchedule:
    """``schedule(step)`` -> names of the objectives that run at ``step``.

    Args:
        kind: one of SCHEDULES.
        names: objective names in config order.
        probabilities: relative sampling weights by name (``weighted`` only).
        seed: run seed.
        every: run period in steps by name (``all`` only; default 1).
    """

    def __init__(
        self,
        kind: str,
        names: Sequence[str],
        probabilities: Mapping[str, float] | None = None,
        seed: int = 0,
        every: Mapping[str, int] | None = None,
    ) -> None:
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
        self.every = {n: int((every or {}).get(n, 1)) for n in self.names}
        if any(k < 1 for k in self.every.values()):
            raise ValueError(f"every must be >= 1, got {self.every}")
        if kind != "all" and any(k > 1 for k in self.every.values()):
            raise ValueError(f"schedule '{kind}' runs one objective per step; 'every' > 1 needs schedule 'all'")
        if all(k > 1 for k in self.every.values()):
            raise ValueError("at least one objective must run every step (every: 1)")

    def __call__(self, step: int) -> list[str]:
        if self.kind == "all":
            return [n for n in self.names if step % self.every[n] == 0]
        if self.kind == "round_robin":
            return [self.names[step % len(self.names)]]
        choice = sample_rng(self.seed, "schedule", step).choice(len(self.names), p=self.probabilities)
        return [self.names[int(choice)]]
