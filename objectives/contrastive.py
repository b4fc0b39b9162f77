"""Contrastive alignment of any two modalities (CLIP / SigLIP), reusing open_clip's losses.

Each modality's pooled embedding goes through a projection head into a shared space
(the objective's own, or a named space whose heads several objectives share); open_clip's ``ClipLoss`` (softmax, with cross-rank gathering) or ``SigLipLoss``
(sigmoid) aligns the pairs. When a batch carries attribute codes (the embedded world
repeats concepts within a batch), every pair whose codes agree counts as a positive
rather than a negative: the targets become soft over all matching entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss
from torch import nn

from modalities.base import Encoder, ModalityOutput
from objectives.base import MATCH_KEY, DistContext, EncoderCall, EncoderHost, Objective, ObjectiveOutput, match_matrix
from objectives.helpers.heads import HeadKind, projection_head
from objectives.helpers.ranks import check_equal_batches, gather_no_grad, gather_with_grad


@dataclass(frozen=True)
class ContrastiveConfig:
    modalities: tuple[str, str]
    embed_dim: int = 128
    loss: Literal["clip", "siglip"] = "clip"
    head: HeadKind = "linear"
    # A named space shared with other objectives (e.g. "hub"): objectives in one space
    # share one projection head per modality, so every modality paired with text lands
    # in one space anchored on the text encoder. None: this objective's own heads.
    space: str | None = None
    init_temperature: float = 0.07  # clip: logits scale = 1 / temperature
    max_logit_scale: float = 100.0
    learn_temperature: bool = True
    # Count same-concept pairs as positives when the batch carries attribute codes.
    same_concept_positives: bool = True
    # Across ranks (DDP). clip: gather embeddings with their gradient (exact one-process
    # gradients; without it only the local embeddings get gradient, as open_clip's
    # default) and compute only the local rows of the logit matrix ([B/W, B] per rank
    # instead of [B, B]). siglip: how the other ranks' text embeddings travel; every
    # option gives the same loss and gradients, they differ in communication and memory.
    gather_with_grad: bool = True
    local_loss: bool = True
    dist_impl: Literal["bidir", "shift", "reduce", "gather"] = "bidir"


class MultiPositiveClipLoss(ClipLoss):
    """open_clip's ClipLoss (same gathering and local-loss logic) with soft targets
    spread over all matching pairs when match codes are given; plain labels otherwise."""

    def forward(  # type: ignore[override]
        self,
        features_a: torch.Tensor,
        features_b: torch.Tensor,
        logit_scale: torch.Tensor,
        codes_a: torch.Tensor | None = None,
        codes_b: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if codes_a is None or codes_b is None:
            return super().forward(features_a, features_b, logit_scale)
        logits_ab, logits_ba = self.get_logits(features_a, features_b, logit_scale)
        if self.world_size > 1:
            all_a = gather_no_grad(codes_a, self.world_size)
            all_b = gather_no_grad(codes_b, self.world_size)
            rows_a, rows_b = (codes_a, codes_b) if self.local_loss else (all_a, all_b)
        else:
            all_a, all_b, rows_a, rows_b = codes_a, codes_b, codes_a, codes_b
        target_ab = match_matrix(rows_a, all_b).to(logits_ab.dtype)
        target_ba = match_matrix(rows_b, all_a).to(logits_ba.dtype)
        return (
            F.cross_entropy(logits_ab, target_ab / target_ab.sum(1, keepdim=True))
            + F.cross_entropy(logits_ba, target_ba / target_ba.sum(1, keepdim=True))
        ) / 2


class MultiPositiveSigLipLoss(SigLipLoss):
    """open_clip's SigLipLoss with same-concept pairs labelled positive in the local block.

    Blocks exchanged with other ranks stay negative-only, as in open_clip.
    """

    positives: torch.Tensor | None = None

    def get_ground_truth(self, device, dtype, num_logits, negative_only=False) -> torch.Tensor:
        if self.positives is None or negative_only:
            return super().get_ground_truth(device, dtype, num_logits, negative_only)
        return self.positives.to(device=device, dtype=dtype) * 2 - 1

    def forward(  # type: ignore[override]
        self,
        features_a: torch.Tensor,
        features_b: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
        codes_a: torch.Tensor | None = None,
        codes_b: torch.Tensor | None = None,
    ) -> torch.Tensor:
        with_codes = codes_a is not None and codes_b is not None
        self.positives = match_matrix(codes_a, codes_b) if with_codes else None
        try:
            loss = super().forward(features_a, features_b, logit_scale, logit_bias)
        finally:
            self.positives = None
        if with_codes and self.world_size > 1:
            loss = loss + self._remote_positive_correction(features_a, features_b, logit_scale, logit_bias, codes_a, codes_b)
        return loss

    def _remote_positive_correction(
        self,
        features_a: torch.Tensor,
        features_b: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor,
        codes_a: torch.Tensor,
        codes_b: torch.Tensor,
    ) -> torch.Tensor:
        """open_clip scores other ranks' blocks as negatives only. For a pair there that
        shows the same concept, the positive term -log sigmoid(l) replaces the negative
        -log sigmoid(-l); their difference is -l. Only those pairs' logits are computed
        (from embeddings gathered with gradient), so no [B/W, B] matrix is built."""
        all_b = gather_with_grad(features_b)
        all_codes = gather_no_grad(codes_b, self.world_size)
        n = features_a.shape[0]
        remote = torch.ones(all_b.shape[0], dtype=torch.bool, device=all_b.device)
        remote[self.rank * n : (self.rank + 1) * n] = False
        rows, cols = (match_matrix(codes_a, all_codes) & remote).nonzero(as_tuple=True)
        logits = logit_scale * (features_a[rows] * all_b[cols]).sum(-1) + logit_bias
        return -logits.sum() / n


class ContrastiveObjective(Objective):
    """Aligns ``modalities[0]`` with ``modalities[1]`` in a shared space.

    Metrics: loss, logit_scale, and in-batch retrieval accuracy in both directions
    ("{a}_to_{b}_acc": the top-scoring partner is a positive).
    """

    Config = ContrastiveConfig

    def __init__(self, config: ContrastiveConfig, encoders: Mapping[str, Encoder], dist: DistContext) -> None:
        super().__init__(config, encoders, dist)
        a, b = config.modalities
        if a == b:
            raise ValueError(f"contrastive objective needs two different modalities, got {a!r} twice")
        self.heads = nn.ModuleDict(
            {m: projection_head(encoders[m].embed_dim, config.embed_dim, config.head, out_bias=False) for m in (a, b)}
        )
        if config.loss == "clip":
            init_scale, init_bias = math.log(1 / config.init_temperature), None
            self.loss_fn: nn.Module = MultiPositiveClipLoss(
                local_loss=config.local_loss, gather_with_grad=config.gather_with_grad,
                rank=dist.rank, world_size=dist.world_size,
            )
        else:
            init_scale, init_bias = math.log(10.0), -10.0  # SigLIP paper's initialisation
            self.loss_fn = MultiPositiveSigLipLoss(rank=dist.rank, world_size=dist.world_size, dist_impl=config.dist_impl)
        # [1], not 0-d: FSDP2 shards no 0-d parameter (as open_clip's nonscalar_logit_scale)
        self.logit_scale = nn.Parameter(torch.tensor([init_scale]), requires_grad=config.learn_temperature)
        self.logit_bias = (
            nn.Parameter(torch.tensor([init_bias]), requires_grad=config.learn_temperature) if init_bias is not None else None
        )

    def embed(self, modality: str, output: ModalityOutput) -> torch.Tensor | None:
        if modality not in self.heads:
            return None
        return self.heads[modality](output.pooled)

    def encoder_calls(self, batch: Mapping[str, Any]) -> dict[str, EncoderCall]:
        return {m: EncoderCall(m, batch[m]) for m in self.modalities}

    def forward(self, model: EncoderHost, batch: Mapping[str, Any]) -> ObjectiveOutput:
        a, b = self.modalities
        fa = F.normalize(self.embed(a, self.encode(model, batch, a)), dim=-1)
        fb = F.normalize(self.embed(b, self.encode(model, batch, b)), dim=-1)
        # 0-d views of the [1] parameters: a 0-d tensor promotes as a scalar (a float32 scale
        # times bf16 features stays bf16 under autocast), so the losses compute as 0-d ones did
        scale = self.logit_scale.reshape(()).exp().clamp(max=self.config.max_logit_scale)
        codes = batch.get(MATCH_KEY) if self.config.same_concept_positives else None
        codes_a = codes.get(a) if codes else None
        codes_b = codes.get(b) if codes else None
        check_equal_batches(fa, self.dist.world_size, "contrastive loss")  # open_clip's losses exchange equal blocks
        if self.logit_bias is None:
            loss = self.loss_fn(fa, fb, scale, codes_a, codes_b)
        else:
            loss = self.loss_fn(fa, fb, scale, self.logit_bias.reshape(()), codes_a, codes_b)
        with torch.no_grad():
            sim = fa.float() @ fb.float().T
            n = sim.shape[0]
            positives = (
                match_matrix(codes_a, codes_b)
                if codes_a is not None and codes_b is not None
                else torch.eye(n, dtype=torch.bool, device=sim.device)
            )
            rows = torch.arange(n, device=sim.device)
            acc_ab = positives[rows, sim.argmax(1)].float().mean()
            acc_ba = positives.T[rows, sim.argmax(0)].float().mean()
        metrics = {"loss": loss.detach(), "logit_scale": scale.detach(), f"{a}_to_{b}_acc": acc_ab, f"{b}_to_{a}_acc": acc_ba}
        if self.logit_bias is not None:  # a copy: the parameter moves (and FSDP frees its gathered value) before the read
            metrics["logit_bias"] = self.logit_bias.detach().reshape(()).clone()
        return ObjectiveOutput(loss=loss, metrics=metrics)
