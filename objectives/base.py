"""The Objective contract: a loss module that owns its heads and names what it needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from modalities.base import Encoder, ModalityOutput, Processor, Renderer


# Batch key of per-modality attribute codes [B, K] (-1 = unspecified) that mark which
# items of a batch show the same concept; set by data streams that know (the world).
MATCH_KEY = "match"
# Batch key of the per-sample random choices an objective drew in the data pipeline
# (``Objective.prepare_sample``), collated: e.g. {"patch_mask": [B, N]}.
EXTRAS_KEY = "extras"
# Batch key of encoder outputs the trainer already computed for an objective's declared
# calls (``Objective.encoder_calls``), by slot, when it ran several objectives' calls
# on one encoder as one call.
ENCODED_KEY = "encoded"


def stack_extras(extras: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """The default batching of ``Objective.prepare_sample`` values: stack each key's
    per-sample tensors. Shapes: key -> B tensors [...] -> [B, ...]."""
    return {key: torch.stack(list(values)) for key, values in extras.items()}


def match_matrix(codes_a: torch.Tensor, codes_b: torch.Tensor) -> torch.Tensor:
    """Which rows of a and b describe the same concept.

    Codes are attribute value indices, -1 where an attribute is unspecified (a caption
    that names only the colour). Two entries match where every attribute agrees or is
    unspecified on either side.

    Shapes:
        codes_a: [N, K]; codes_b: [M, K]; returns bool [N, M].
    """
    a = codes_a.unsqueeze(1)
    b = codes_b.unsqueeze(0)
    return ((a == b) | (a < 0) | (b < 0)).all(dim=-1)


@dataclass(frozen=True)
class DistContext:
    """Distributed settings handed to objectives (never read from globals inside a loss).

    Under data parallelism each rank holds ``1 / world_size`` of every global batch. An
    objective's loss on a rank must be such that the mean over ranks of its value is the
    one-process loss of the global batch, and DDP's mean of the ranks' gradients the
    one-process gradient: gather across ranks with gradient where samples interact (a
    contrastive batch), divide by global counts where a loss averages a variable count.
    """

    rank: int = 0
    world_size: int = 1


def mean_over_global_count(summed: torch.Tensor, count: torch.Tensor | float, dist: DistContext) -> torch.Tensor:
    """``summed / count`` where both are totals over every rank's share of the batch.

    ``summed`` is this rank's sum of per-item losses, ``count`` this rank's number of
    items (masked tokens, masked patches). Under data parallelism the count is
    all-reduced, and the local sum scaled by the world size: DDP averages gradients
    over ranks, so the mean of the ranks' losses (and gradients) is then the
    one-process loss over the global count.
    """
    dtype = torch.promote_types(summed.dtype, torch.float32)
    # a Python count is filled in on the device (a tensor made from it would be a blocking copy there)
    count = count.to(summed.device, dtype) if torch.is_tensor(count) else torch.full((), count, dtype=dtype, device=summed.device)
    count = count.reshape(())
    if dist.world_size > 1 and torch.distributed.is_initialized():
        count = count.clone()
        torch.distributed.all_reduce(count)
        return summed * dist.world_size / count.clamp_min(1.0)
    return summed / count.clamp_min(1.0)


@dataclass(frozen=True)
class EncoderCall:
    """One encoder call of an objective: ``model.encoders[modality](inputs, **kwargs)``."""

    modality: str
    inputs: Any
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ObjectiveOutput:
    """A loss to optimise and metrics to log.

    A metric is a detached 0-d tensor, computed where the loss is, or a Python float.
    Prefer tensors: the trainer reads all of a step's metrics to the host at once, after
    the backward pass, where a ``.item()`` or ``float(t)`` in ``forward`` makes the host
    wait for the device there and then (``mmssl.train.device``: host syncs). A tensor
    that aliases a parameter or buffer the step changes is cloned first.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)


class EncoderHost(Protocol):
    """What an objective sees of the model: the encoders by modality name."""

    encoders: Mapping[str, Encoder]


class SamplePrep:
    """An objective's work in the data pipeline: per-sample random choices
    (``prepare_sample``) and their batching (``collate_extras``). It runs in data loader
    workers, so it holds no module of the model (no encoder, no objective): the numbers
    and processor methods it needs, and nothing that trains."""

    def prepare_sample(self, sample: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return {}

    def collate_extras(self, extras: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        return stack_extras(extras)


class Objective(nn.Module):
    """Base class for objectives: subclass it and declare it as an entry point.

    ``__init__(config, encoders, dist)``; an objective that needs its modalities'
    processors (to make views, collate, corrupt tokens in the data pipeline) or renderers
    (their concept spaces) takes them as the keyword arguments ``processors`` and
    ``renderers`` too, and the model builder hands them over. One that learns from another
    trained model names ``load_model``: ``load_model(path, key)`` gives that model whole
    (``encoders``, ``processors``, ``objectives``, ``shared_space``), frozen and in eval
    mode, or raises an error naming ``key`` and the path.

    Class attributes:
        name: the registry key; set by the registry.
        Config: dataclass of options. It must have a ``modalities`` field naming
            the modalities the objective uses, in order.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object

    def __init__(self, config: Any, encoders: Mapping[str, Encoder], dist: DistContext,
                 processors: Mapping[str, Processor] | None = None,
                 renderers: Mapping[str, Renderer | None] | None = None) -> None:
        super().__init__()
        self.config = config
        self.dist = dist
        self.modalities: tuple[str, ...] = tuple(config.modalities)
        self.prep: SamplePrep | None = None  # set by objectives whose data work needs no module of theirs

    def sample_prep(self) -> SamplePrep | Objective:
        """What the data pipeline calls for this objective's per-sample choices: its
        ``SamplePrep`` (``self.prep``); an empty one if it draws nothing; the objective
        itself if it overrides ``prepare_sample`` or ``collate_extras`` without a prep (a
        plugin written before SamplePrep: its loader workers then hold the objective)."""
        if self.prep is not None:
            return self.prep
        own = type(self).prepare_sample is not Objective.prepare_sample or type(self).collate_extras is not Objective.collate_extras
        return self if own else SamplePrep()

    def require_one_modality(self, purpose: str) -> None:
        """Raise a ValueError naming ``purpose`` unless the config names exactly one modality."""
        if len(self.modalities) != 1:
            raise ValueError(f"{purpose} takes one modality, got {list(self.modalities)}")

    def forward(self, model: EncoderHost, batch: Mapping[str, Any]) -> ObjectiveOutput:
        """Loss and metrics for one batch; ``batch[modality]`` is that modality's collated batch."""
        raise NotImplementedError

    def prepare_sample(self, sample: Mapping[str, Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Random choices about one sample (a mask), drawn in the data pipeline from the
        sample's own generator, so they do not depend on workers, ranks or resumption.

        ``sample`` maps modality names to transformed samples. The returned values are
        batched by ``collate_extras`` under ``batch[EXTRAS_KEY]``. The default asks
        ``self.prep``.
        """
        return self.prep.prepare_sample(sample, rng) if self.prep is not None else {}

    def encoder_calls(self, batch: Mapping[str, Any]) -> dict[str, EncoderCall]:
        """The encoder calls ``forward`` makes on ``batch``, by slot name.

        An objective that declares its calls and gets their outputs with ``encode``
        lets the trainer run calls of several objectives on one encoder as one call
        (``train.share_encoder_calls``). Declaring none is always correct.
        """
        return {}

    def encode(self, model: EncoderHost, batch: Mapping[str, Any], slot: str) -> ModalityOutput:
        """The output of the declared call ``slot``: the trainer's shared result if it
        computed one, else the call itself."""
        done = batch.get(ENCODED_KEY)
        if done is not None and slot in done:
            return done[slot]
        call = self.encoder_calls(batch)[slot]
        return model.encoders[call.modality](call.inputs, **call.kwargs)

    def collate_extras(self, extras: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """Batch the per-sample values of ``prepare_sample`` (key -> one value per kept
        sample). The default stacks tensors; an objective whose choices are not tensors
        (whole augmented graphs) collates them itself. The default asks ``self.prep``."""
        return self.prep.collate_extras(extras) if self.prep is not None else stack_extras(extras)

    def before_optimizer_step(self, model: EncoderHost) -> None:
        """Called by the trainer on every rank after the backward passes of each step
        (skipped steps too), before gradients are checked and the optimizer updates: for
        parameters an objective resets in its forward (the cluster objective's prototypes,
        set to new centroids). A forward must not write parameters itself: under
        ``train.parallel: fsdp`` what it sees are gathered copies, which are dropped after
        the step; here they are the parameters themselves (``mmssl.common.tensors.assign``
        writes sharded ones). The default does nothing."""

    def after_optimizer_step(self, model: EncoderHost, step: int, total_steps: int) -> None:
        """Called by the trainer on every rank after each optimizer update, whether this
        objective ran in the step or not, and not after a step skipped as non-finite:
        for state that follows the weights without a gradient (BYOL's moving-average
        target). ``step`` counts the optimizer steps so far, this one included;
        ``total_steps`` is ``train.steps``. The default does nothing."""

    def embed(self, modality: str, output: ModalityOutput) -> torch.Tensor | None:
        """Project an encoder output into this objective's shared space, if it defines one.

        Returns unnormalised embeddings [B, E], or None when the objective has no
        shared space for ``modality``.
        """
        return None

    @property
    def space(self) -> str | None:
        """The named space this objective embeds into (``config.space``), if any.

        Objectives in one named space share one projection head per modality: the
        model ties them, so an objective that names a space keeps its heads in
        ``self.heads`` (an ``nn.ModuleDict`` by modality)."""
        return getattr(self.config, "space", None)
