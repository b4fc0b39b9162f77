"""Pseudo-labels from clustering (DeepCluster-style), for any modality.

Each item's pooled feature goes through a projection head onto the unit sphere. A
memory bank keeps the last ``bank_size`` projections (of every rank). Every
``recluster_every`` calls the bank is clustered with spherical k-means, and the
centroids become the targets: each item is labelled with its nearest centroid and a
cosine classifier, started at the centroids each time they are renewed, is trained on
those labels. The loss is weighted by the inverse size of each cluster in the bank,
DeepCluster's guard against every item falling into one cluster.

With ``views: true`` (the default; the modality must make views, ``ViewAugmenter``)
each item comes as two augmented views and each view is classified into the cluster
of the other (DeepCluster-v2, Caron et al. 2020, as in SwAV's swapped prediction): the
label must survive the augmentation, so the encoder learns what the views share.
Without views the label of an item is its own projection's cluster, which the encoder
can satisfy by tightening whatever clusters it starts with; that variant exists for
modalities that make no views and learns far less on its own.

The classifier is reset to the new centroids at each clustering (cluster ids mean
nothing across clusterings); the optimizer's moments for it are kept, which only damps
its first updates after a reset.

The bank, the centroids, the call counter and the last clustering's figures are
buffers: checkpoints carry them and a resumed run continues exactly. Under data
parallelism each rank adds the whole global batch to its bank (gathered), so banks and
centroids are the same on every rank.

Metrics: loss, ``cluster_entropy`` (the bank's cluster sizes, 1 = even, 0 = one
cluster) and, when the batches come from the embedded world (their items carry class
codes), ``ami``, the adjusted mutual information between the bank's clusters and its
true classes, beside ``ami_random``, that of a random assignment with the same cluster
sizes. Frozen features are scored the same way by the evaluation's ``clustering`` task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modalities.base import Encoder, Processor, Renderer, upcast
from objectives.base import (
    EXTRAS_KEY,
    MATCH_KEY,
    DistContext,
    EncoderCall,
    EncoderHost,
    Objective,
    ObjectiveOutput,
    mean_over_global_count,
)
from mmssl.common.clustering import adjusted_mutual_info, cluster_entropy, kmeans
from mmssl.common.tensors import assign, replaced
from objectives.helpers.heads import HeadKind, projection_head
from objectives.helpers.views import VIEWS, view_prep

_CLASS_BASE = 1000  # class id = sum of attribute value index * base**attribute


@dataclass(frozen=True)
class ClusterConfig:
    modalities: tuple[str] = ("image",)
    num_clusters: int = 32
    bank_size: int = 512  # the most recent projections clustered (global, over ranks)
    recluster_every: int = 20  # calls of this objective between clusterings
    kmeans_iters: int = 30
    embed_dim: int = 64
    head: HeadKind = "mlp"
    temperature: float = 0.1  # of the cosine classifier
    balance: bool = True  # weight each item by the inverse size of its cluster in the bank
    views: bool = True  # classify each of two augmented views into the other's cluster


class ClusterObjective(Objective):
    """Classify items into the clusters of recent embeddings, renewed every few calls."""

    Config = ClusterConfig

    def __init__(self, config: ClusterConfig, encoders: Mapping[str, Encoder], dist: DistContext,
                 processors: Mapping[str, Processor] | None = None,
                 renderers: Mapping[str, Renderer | None] | None = None) -> None:
        super().__init__(config, encoders, dist)
        self.require_one_modality("cluster")
        if config.num_clusters < 2 or config.bank_size < config.num_clusters:
            raise ValueError(
                f"cluster needs num_clusters >= 2 and bank_size >= num_clusters, got {config.num_clusters} and {config.bank_size}"
            )
        if config.recluster_every < 1:
            raise ValueError(f"recluster_every must be at least 1, got {config.recluster_every}")
        self.key = self.modalities[0]
        encoder = encoders[self.key]
        if config.views:
            self.prep = view_prep(processors, self.key, "cluster with views",
                                  hint="or set views: false to cluster single items (learns far less on its own)")
        renderer = (renderers or {}).get(self.key)
        space = renderer.concept_space() if renderer is not None else None
        self.class_attributes = len(space.class_attributes) if space is not None else 0
        k, e = config.num_clusters, config.embed_dim
        self.head = projection_head(encoder.embed_dim, e, config.head, out_bias=False)
        self.classifier = nn.Parameter(F.normalize(torch.randn(k, e), dim=-1))
        self.register_buffer("bank", torch.zeros(config.bank_size, e))
        self.register_buffer("bank_classes", torch.full((config.bank_size,), -1, dtype=torch.long))
        self.register_buffer("bank_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("bank_next", torch.zeros((), dtype=torch.long))
        self.register_buffer("centroids", torch.zeros(k, e))
        self.register_buffer("cluster_weights", torch.ones(k))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        # the last clustering's figures, logged at every call until the next:
        # ami, ami_random, cluster_entropy, and 1 if the bank had true classes (else 0)
        self.register_buffer("figures", torch.zeros(4))
        # k-means' seed, drawn from the model's seeded initialisation
        self.register_buffer("seed", torch.randint(2**31 - 1, (), dtype=torch.long))
        self._new_classifier: torch.Tensor | None = None  # centroids the prototypes become at this step's update

    # --- model ----------------------------------------------------------------------
    def encoder_calls(self, batch: Mapping[str, Any]) -> dict[str, EncoderCall]:
        if self.config.views:
            return {VIEWS: EncoderCall(self.key, batch[EXTRAS_KEY][VIEWS])}
        return {"items": EncoderCall(self.key, batch[self.key])}

    def forward(self, model: EncoderHost, batch: Mapping[str, Any]) -> ObjectiveOutput:
        slot = VIEWS if self.config.views else "items"
        z = F.normalize(self.head(upcast(self.encode(model, batch, slot).pooled)), dim=-1)
        first = z[: z.shape[0] // 2] if self.config.views else z
        with torch.no_grad():
            if self.training:  # in eval mode the loss is taken against the current clusters, changing nothing
                self._remember(self._gather(first.detach()), self._gather(self._classes(batch, first.shape[0]).to(z.device)))
                if int(self.calls) % self.config.recluster_every == 0:
                    self._recluster()
                self.calls += 1
            targets = (z.detach() @ self.centroids.T).argmax(dim=1)
            if self.config.views:  # each view learns the other's cluster
                targets = torch.cat(targets.chunk(2)[::-1])
        # after a clustering the prototypes are the new centroids: this step computes with
        # them, and they become the parameter's value before the update (before_optimizer_step)
        classifier = self.classifier if self._new_classifier is None else replaced(self.classifier, self._new_classifier)
        logits = z @ F.normalize(classifier, dim=-1).T / self.config.temperature
        # the weighted mean over the global batch: per-item weights summed over ranks
        weights = self.cluster_weights[targets] if self.config.balance else torch.ones_like(targets, dtype=z.dtype)
        per_item = F.cross_entropy(logits, targets, reduction="none")
        loss = mean_over_global_count((per_item * weights).sum(), weights.sum().detach(), self.dist)
        ami, ami_random, entropy, has_classes = self.figures.clone()  # a copy: the next clustering overwrites them
        metrics = {"loss": loss.detach(), "cluster_entropy": entropy,
                   "agreement": (logits.detach().argmax(1) == targets).float().mean()}
        if bool(has_classes):  # the host decides which keys are logged: this one is read now
            metrics.update(ami=ami, ami_random=ami_random)
        return ObjectiveOutput(loss, metrics)

    def before_optimizer_step(self, model: EncoderHost) -> None:
        """A clustering in this step's forward set new prototypes: they become the
        parameter's value now, which the update then moves."""
        if self._new_classifier is not None:
            assign(self.classifier, self._new_classifier)
            self._new_classifier = None

    # --- the bank ------------------------------------------------------------------
    def _classes(self, batch: Mapping[str, Any], n: int) -> torch.Tensor:
        """Each item's true class from the world's match codes, -1 where unknown."""
        codes = batch.get(MATCH_KEY, {}).get(self.key)
        if codes is None or not self.class_attributes:
            return torch.full((n,), -1, dtype=torch.long)
        codes = codes[:, : self.class_attributes].long()
        known = (codes >= 0).all(dim=1)
        ids = (codes.clamp_min(0) * _CLASS_BASE ** torch.arange(codes.shape[1], device=codes.device)).sum(1)
        return torch.where(known, ids, torch.full_like(ids, -1))

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's rows, in rank order (ranks may hold different numbers)."""
        if self.dist.world_size == 1 or not torch.distributed.is_initialized():
            return t
        size = torch.tensor([t.shape[0]], device=t.device)
        sizes = [torch.zeros_like(size) for _ in range(self.dist.world_size)]
        torch.distributed.all_gather(sizes, size)
        most = int(max(s.item() for s in sizes))
        padded = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[: t.shape[0]] = t
        out = [torch.zeros_like(padded) for _ in sizes]
        torch.distributed.all_gather(out, padded)
        return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes)])

    def _remember(self, z: torch.Tensor, classes: torch.Tensor) -> None:
        size = self.bank.shape[0]
        z, classes = z[-size:], classes[-size:]
        # the positions stay on the device: no host read
        slots = (self.bank_next + torch.arange(z.shape[0], device=z.device)) % size
        self.bank[slots] = z.to(self.bank.dtype)
        self.bank_classes[slots] = classes
        self.bank_next.copy_((self.bank_next + z.shape[0]) % size)
        self.bank_filled.copy_((self.bank_filled + z.shape[0]).clamp_max(size))

    def _recluster(self) -> None:
        k = self.config.num_clusters
        filled = int(self.bank_filled)
        if filled < k:
            return
        bank = self.bank[:filled]
        generator = torch.Generator().manual_seed(int(self.seed) + int(self.calls))
        centroids, assign = kmeans(bank, k, generator, self.config.kmeans_iters)
        self.centroids.copy_(centroids)
        self._new_classifier = centroids.to(self.classifier.dtype)  # cluster ids change at every clustering
        counts = torch.bincount(assign, minlength=k).to(self.cluster_weights.dtype)
        self.cluster_weights.copy_(counts.sum() / (k * counts.clamp_min(1)))
        entropy = cluster_entropy(assign, k)
        classes = self.bank_classes[:filled]
        known = classes >= 0
        if int(known.sum()) > 1:
            labels, found = classes[known].cpu().numpy(), assign[known].cpu().numpy()
            shuffled = np.random.default_rng(int(self.seed) + int(self.calls)).permutation(found)
            self.figures.copy_(torch.tensor([adjusted_mutual_info(found, labels), adjusted_mutual_info(shuffled, labels), entropy, 1.0]))
        else:
            self.figures.copy_(torch.tensor([0.0, 0.0, entropy, 0.0]))
