"""Contrastive learning between two augmented views of one item (SimCLR, BYOL,
GraphCL), for any modality that makes views of its samples (the ``ViewAugmenter``
capability: images, sounds, graphs, a plugin's).

Both views are drawn in the data pipeline (``prepare_sample``) from the sample's own
generator by the modality's ``augment``. With ``encode_views: together`` they are
batched as one call of 2B samples (view a of every item, then view b), so a BatchNorm
encoder sees both views in its batch statistics, as SimCLR's does; ``apart`` encodes
each view's batch on its own, as GraphCL does.

``simclr`` (Chen et al., 2020): a projection head and NT-Xent with a temperature; each
view's positive is the other view of its item, the other 2B - 2 views (of every rank,
gathered with gradient) are negatives (``objectives/helpers/nt_xent.py``).
``graph_contrastive`` (GraphCL, You et al., 2020) is registered here too: SimCLR on
graph views, with the keys it had as an objective of its own (``augmentations``,
``augmentations_per_view``: the graph modality's view options) and its views apart.

``byol`` (Grill et al., 2020): no negatives. An online projection head and predictor
regress, for each view, the target network's projection of the other view (2 - 2
cosine, both directions averaged). The target encoder and projection head are copies of
the online ones that receive no gradient: after every optimizer step
(``after_optimizer_step``) they move towards the online weights by an exponential
moving average whose momentum rises from ``momentum`` to 1 over ``train.steps`` on a
cosine. They are parameters of the model without ``requires_grad``, so checkpoints
carry them and a resumed run continues exactly. The target runs in the model's mode:
in training its BatchNorm layers use the batch's statistics and keep their own running
statistics, synchronised over ranks like every other BatchNorm of the model under
``train.sync_batchnorm``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mmssl.common.ema import cosine_momentum, ema_copy, ema_update
from modalities.base import Encoder, ModalityOutput, Processor, upcast
from objectives.base import EXTRAS_KEY, DistContext, EncoderCall, EncoderHost, Objective, ObjectiveOutput
from objectives.helpers.heads import HeadKind, projection_head
from objectives.helpers.nt_xent import nt_xent, view_metrics
from objectives.helpers.views import VIEW_KEYS, VIEWS, view_prep



@dataclass(frozen=True)
class ViewContrastiveConfig:
    modalities: tuple[str] = ("image",)
    method: Literal["simclr", "byol"] = "simclr"
    embed_dim: int = 128  # projection width (and BYOL's predictor's)
    head: HeadKind = "mlp"  # projection head, and BYOL's predictor
    temperature: float = 0.2  # simclr: NT-Xent's temperature
    momentum: float = 0.99  # byol: the target's EMA momentum at step 0, rising to 1 at train.steps (cosine)
    # together: both views in one encoder call of 2B (SimCLR's BatchNorm statistics);
    # apart: one call per view (GraphCL's)
    encode_views: Literal["together", "apart"] = "together"


@dataclass(frozen=True)
class GraphContrastiveConfig:
    """``graph_contrastive``: GraphCL, SimCLR on graph views encoded apart. The view
    options, where given, go to the graph modality's processor (as its
    ``modalities.graph.views`` ``augmentations`` and ``per_view``) for this objective's
    views; left out, the modality's own views serve (GraphCL's pool, one a view, by
    default)."""

    modalities: tuple[str] = ("graph",)
    # name -> strength (the share of nodes, edges or feature rows affected; for
    # subgraph the share of nodes left out). GraphCL draws from this pool per view.
    augmentations: dict[str, float] | None = None  # None: the graph modality's views.augmentations
    augmentations_per_view: int | None = None  # drawn without replacement; None: its views.per_view
    embed_dim: int = 128
    temperature: float = 0.2
    head: HeadKind = "mlp"


def byol_momentum(base: float, step: int, total_steps: int) -> float:
    """BYOL's target momentum after ``step`` of ``total_steps`` optimizer steps:
    1 - (1 - base) (cos(pi step / total) + 1) / 2, from ``base`` to 1."""
    return cosine_momentum(base, step, total_steps)


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of 2 - 2 cos(prediction, target) over items. Shapes: [B, E], [B, E] -> scalar."""
    return (2 - 2 * F.cosine_similarity(upcast(prediction), upcast(target), dim=-1)).mean()


class ViewContrastiveObjective(Objective):
    """Two augmented views per item, SimCLR's NT-Xent or BYOL's online/target regression.

    Metrics: loss; view_acc and positive_cosine of the online projections (see
    ``view_metrics``); projection_std (the per-dimension standard deviation of the
    normalised projections, averaged: near 0 when the embeddings collapse, about
    1 / sqrt(embed_dim) when they spread); byol also prediction_cosine (mean cosine of a
    prediction and its target) and momentum.
    """

    Config = ViewContrastiveConfig
    purpose: ClassVar[str] = "view-contrastive learning"

    def __init__(self, config: Any, encoders: Mapping[str, Encoder], dist: DistContext,
                 processors: Mapping[str, Processor] | None = None) -> None:
        super().__init__(config, encoders, dist)
        self.require_one_modality(self.purpose)
        options, view_options = self.resolve(config)
        self.options = options
        if options.method not in ("simclr", "byol"):
            raise ValueError(f"Could not resolve method {options.method!r} among choices ['byol', 'simclr']")
        if options.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {options.temperature}")
        if not 0.0 <= options.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {options.momentum}")
        self.key = self.modalities[0]
        encoder = encoders[self.key]
        # views are made and batched the way the modality makes and batches its samples
        self.prep = view_prep(
            processors, self.key, self.purpose, view_options=view_options, apart=options.encode_views == "apart",
            hint="the image, audio and graph processors make views; a plugin's processor implements augment(sample, rng)",
        )
        # BYOL's projector and predictor normalise their hidden layer (BatchNorm, as the
        # paper's): without it the tiny runs here collapsed (projection_std near 0)
        norm = nn.BatchNorm1d if options.method == "byol" else None
        self.head = projection_head(encoder.embed_dim, options.embed_dim, options.head, activation=nn.ReLU, norm=norm)
        if options.method == "byol":
            self.predictor = projection_head(options.embed_dim, options.embed_dim, options.head, activation=nn.ReLU, norm=norm)
            self.target_encoder = ema_copy(encoder)
            self.target_head = ema_copy(self.head)
            # the momentum of the last update, for the log (in checkpoints, so a resumed run logs alike)
            self.register_buffer("momentum", torch.tensor(float(options.momentum)))

    def resolve(self, config: Any) -> tuple[ViewContrastiveConfig, dict[str, Any]]:
        """This name's config as the objective's options, and the view options it asks of
        the modality (none: the modality's own ``views``)."""
        return config, {}

    # --- model ----------------------------------------------------------------------
    def encoder_calls(self, batch: Mapping[str, Any]) -> dict[str, EncoderCall]:
        slots = VIEW_KEYS if self.options.encode_views == "apart" else (VIEWS,)
        return {slot: EncoderCall(self.key, batch[EXTRAS_KEY][slot]) for slot in slots}

    def embed(self, modality: str, output: ModalityOutput) -> torch.Tensor | None:
        return self.head(output.pooled) if modality == self.key else None

    def _pair(self, batch: Mapping[str, Any], embed: Callable[[Any], torch.Tensor], slot_output: Callable[[str], Any]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(view a, view b) of ``embed`` over the encoded views, however they were batched."""
        if self.options.encode_views == "apart":
            return embed(slot_output("view_a")), embed(slot_output("view_b"))
        return embed(slot_output(VIEWS)).chunk(2)

    def forward(self, model: EncoderHost, batch: Mapping[str, Any]) -> ObjectiveOutput:
        z_a, z_b = self._pair(batch, lambda out: self.head(out.pooled), lambda slot: self.encode(model, batch, slot))
        metrics = view_metrics(z_a, z_b)
        with torch.no_grad():
            metrics["projection_std"] = F.normalize(torch.cat([z_a, z_b]).float(), dim=-1).std(0).mean()
        if self.options.method == "simclr":
            loss = nt_xent(z_a, z_b, self.options.temperature, self.dist.rank, self.dist.world_size)
            return ObjectiveOutput(loss=loss, metrics={"loss": loss.detach(), **metrics})
        p_a, p_b = self.predictor(torch.cat([z_a, z_b])).chunk(2)
        with torch.no_grad():
            t_a, t_b = self._pair(batch, lambda views: self.target_head(self.target_encoder(views).pooled),
                                  lambda slot: batch[EXTRAS_KEY][slot])
        loss = (byol_loss(p_a, t_b) + byol_loss(p_b, t_a)) / 2
        metrics["prediction_cosine"] = 1.0 - loss.detach().double() / 2  # in float64, as Python's arithmetic was
        metrics["momentum"] = self.momentum.clone()  # this step's: after_optimizer_step sets the next
        return ObjectiveOutput(loss=loss, metrics={"loss": loss.detach(), **metrics})

    def after_optimizer_step(self, model: EncoderHost, step: int, total_steps: int) -> None:
        """BYOL: move the target towards the online encoder and head (momentum from the
        cosine schedule at ``step``); SimCLR keeps no state."""
        if self.options.method != "byol":
            return
        momentum = byol_momentum(self.options.momentum, step, total_steps)
        ema_update(self.target_encoder, model.encoders[self.key], momentum)
        ema_update(self.target_head, self.head, momentum)
        self.momentum.fill_(momentum)


class GraphContrastiveObjective(ViewContrastiveObjective):
    """``graph_contrastive`` (GraphCL): two graph views, a projection head, NT-Xent."""

    Config = GraphContrastiveConfig
    purpose = "graph contrastive learning"

    def resolve(self, config: GraphContrastiveConfig) -> tuple[ViewContrastiveConfig, dict[str, Any]]:
        view_options: dict[str, Any] = {}
        if config.augmentations is not None:
            if not config.augmentations:
                raise ValueError("graph contrastive learning needs at least one augmentation")
            view_options["augmentations"] = dict(config.augmentations)
        per_view = config.augmentations_per_view
        if per_view is not None:
            most = len(config.augmentations) if config.augmentations is not None else None
            if per_view < 1 or most is not None and per_view > most:
                raise ValueError(f"augmentations_per_view must be in [1, {most or 'the number of augmentations'}], got {per_view}")
            view_options["per_view"] = per_view
        options = ViewContrastiveConfig(modalities=config.modalities, method="simclr", embed_dim=config.embed_dim,
                                        head=config.head, temperature=config.temperature, encode_views="apart")
        return options, view_options
