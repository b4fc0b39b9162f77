"""The Objective contract: a loss module that owns its heads and names what it needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Protocol

import torch
from torch import nn

from modalities.base import Modality, ModalityOutput


# Batch key of per-modality attribute codes [B, K] (-1 = unspecified) that mark which
# items of a batch show the same concept; set by data streams that know (the world).
MATCH_KEY = "match"


@dataclass(frozen=True)
class DistContext:
    """Distributed settings handed to objectives (never read from globals inside a loss)."""

    rank: int = 0
    world_size: int = 1
    local_loss: bool = False
    gather_with_grad: bool = False


@dataclass
class ObjectiveOutput:
    """A loss to optimise and metrics to log (floats, already detached)."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class EncoderHost(Protocol):
    """What an objective sees of the model: the encoders by modality name."""

    encoders: Mapping[str, Modality]


class Objective(nn.Module):
    """Base class for objectives: subclass it and declare it as an entry point.

    Class attributes:
        name: the registry key; set by the registry.
        Config: dataclass of options. It must have a ``modalities`` field naming
            the modalities the objective uses, in order.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object

    def __init__(self, config: Any, encoders: Mapping[str, Modality], dist: DistContext) -> None:
        super().__init__()
        self.config = config
        self.dist = dist
        self.modalities: tuple[str, ...] = tuple(config.modalities)

    def forward(self, model: EncoderHost, batch: Mapping[str, Any]) -> ObjectiveOutput:
        """Loss and metrics for one batch; ``batch[modality]`` is that modality's collated batch."""
        raise NotImplementedError

    def embed(self, modality: str, output: ModalityOutput) -> torch.Tensor | None:
        """Project an encoder output into this objective's shared space, if it defines one.

        Returns unnormalised embeddings [B, E], or None when the objective has no
        shared space for ``modality``.
        """
        return None
