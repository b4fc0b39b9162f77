"""DINO: self-distillation with no labels (Caron et al., 2021), for any modality that makes
views (the ``ViewAugmenter`` capability: images, sounds, graphs, a plugin's); DINOv2's
KoLeo regulariser (Oquab et al., 2023) as an option.

Multi-crop: each item gives ``global_crops`` views (the modality's ``augment``) and
``local_crops`` smaller ones (``local_augment``, the ``LocalViewAugmenter`` capability: a
crop of a smaller area at half the size, half of a clip, half of a graph), drawn in the
data pipeline from the sample's own generator (``MultiCropPrep``). The global views go
through the encoder as one call of G*B items, the local views as one call of L*B.

A student (the encoder and a ``DinoHead``: MLP, L2-normalised bottleneck, weight-normalised
layer onto ``prototypes``) sees every view; a teacher, a copy of encoder and head that
gets no gradient, sees the global views alone. The loss is the cross-entropy between the
teacher's centred, sharpened softmax on global view i, softmax((t - center) /
teacher_temp), and the student's softmax(s / student_temp) on every view j != i,
averaged over the pairs and the items. After each optimizer step the teacher moves
towards the student by an exponential moving average (``after_optimizer_step``; momentum
``momentum`` rising to 1 over ``train.steps`` on a cosine, as BYOL's target). The centre
is a buffer, an exponential moving average (``center_momentum``) of the teacher outputs'
mean over the global batch (all-reduced over ranks, so every rank holds the same),
updated in a training-mode forward after the loss is computed, as DINO's; a forward may
write buffers (not parameters: ``Objective.before_optimizer_step``), and a step skipped
as non-finite puts it back with the model's other buffers. The teacher temperature warms up linearly from
``warmup_teacher_temp`` to ``teacher_temp`` over ``warmup_teacher_temp_steps`` optimizer
steps, counted in a buffer so a resumed run goes on alike.

Why an objective of its own and not a method of ``view_contrastive``: it shares that
objective's pieces (the views' pipeline, the EMA, the teacher's handling as BYOL's target)
but nothing of its loss or state: prototypes instead of a projection, a centre, a
temperature schedule, more than two views of two sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from mmssl.common.ema import cosine_momentum, ema_copy, ema_update
from modalities.base import Encoder, ModalityOutput, Processor, upcast
from objectives.base import (EXTRAS_KEY, DistContext, EncoderCall, EncoderHost, Objective, ObjectiveOutput,
                             mean_over_global_count)
from objectives.helpers.heads import DinoHead
from objectives.helpers.ranks import gather_with_grad
from objectives.helpers.views import GLOBAL_VIEWS, LOCAL_VIEWS, multi_crop_prep

KOLEO_EPS = 1e-8  # DINOv2's, inside the log of a distance


@dataclass(frozen=True)
class DinoConfig:
    modalities: tuple[str] = ("image",)
    global_crops: int = 2  # views the teacher sees (and the student)
    local_crops: int = 4  # smaller views the student alone sees (0: none)
    prototypes: int = 65536  # K, the head's outputs
    hidden_dim: int = 2048  # the head's MLP width
    bottleneck_dim: int = 256
    head_layers: int = 3  # linear layers of the head's MLP
    norm_last_layer: bool = True  # prototypes of norm 1 (the weight norm's g frozen)
    head_batch_norm: bool = False  # BatchNorm in the head's hidden layers (DINO's use_bn_in_head)
    student_temp: float = 0.1
    teacher_temp: float = 0.04  # after the warmup; DINO's advice: 0.04 to 0.07
    warmup_teacher_temp: float = 0.04  # at step 0
    warmup_teacher_temp_steps: int = 0  # optimizer steps of the linear warmup
    center_momentum: float = 0.9
    momentum: float = 0.996  # the teacher's EMA momentum at step 0, rising to 1 at train.steps (cosine)
    koleo_weight: float = 0.0  # DINOv2's KoLeo on the student's pooled features of the global views (0: off)


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, student_temp: float,
              teacher_temp: float, global_crops: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DINO's cross-entropy of each item, and the teacher's probabilities.

    For each global view i and each view j != i: H(softmax((t_i - center) / teacher_temp),
    softmax(s_j / student_temp)), averaged over the pairs.

    Shapes:
        student: [V*B, K] logits of V views, view-major (view 0 of every item, then view
            1, ...), the ``global_crops`` global views first; teacher: [G*B, K] logits of
            the global views, alike; center: [K]. Returns the loss of each item [B] and
            the teacher's probabilities [G, B, K].
    """
    g = global_crops
    b, k = teacher.shape[0] // g, teacher.shape[-1]
    v = student.shape[0] // b
    probs = F.softmax((teacher - center) / teacher_temp, dim=-1).view(g, b, k)
    log_student = F.log_softmax(student / student_temp, dim=-1).view(v, b, k)
    cross = -torch.einsum("gbk,vbk->gvb", probs, log_student)  # [G, V, B]
    pairs = ~torch.eye(g, v, dtype=torch.bool, device=cross.device)  # (i, i): the same view
    return (cross * pairs.unsqueeze(-1)).sum((0, 1)) / pairs.sum(), probs


def koleo_terms(features: torch.Tensor, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """DINOv2's Kozachenko-Leonenko term of each item: -log of the distance from its
    L2-normalised features to the nearest other item's.

    Under data parallelism the features of every rank are gathered with their gradient,
    so each rank's items find their neighbours in the global batch, and the mean over
    ranks of the ranks' means is the one-process mean.

    Shapes:
        features: [B, D] this rank's; returns [B].
    """
    x = F.normalize(upcast(features), dim=-1, eps=KOLEO_EPS)
    every = gather_with_grad(x) if world_size > 1 else x
    n = x.shape[0]
    dots = x @ every.T
    own = rank * n + torch.arange(n, device=x.device)
    dots = dots.index_put((torch.arange(n, device=x.device), own), dots.new_full((), -torch.inf))
    nearest = every[dots.argmax(1)]
    return -torch.log(torch.linalg.vector_norm(x - nearest, dim=-1) + KOLEO_EPS)


def teacher_temperature(config: DinoConfig, step: torch.Tensor | int) -> torch.Tensor | float:
    """The teacher temperature after ``step`` optimizer steps (a number, or a 0-d tensor:
    then a tensor, computed on its device): linear from ``warmup_teacher_temp`` to
    ``teacher_temp`` over ``warmup_teacher_temp_steps``."""
    warmup = config.warmup_teacher_temp_steps
    if not warmup:
        return config.teacher_temp
    progress = (step / warmup).clamp(max=1.0) if torch.is_tensor(step) else min(step / warmup, 1.0)
    return config.warmup_teacher_temp + (config.teacher_temp - config.warmup_teacher_temp) * progress


class DinoObjective(Objective):
    """DINO's self-distillation over multi-crop views of one modality.

    Metrics: loss; teacher_entropy (mean entropy of the teacher's centred, sharpened
    distributions, nats: near 0 when each is one-hot); teacher_batch_entropy (entropy of
    their mean over the batch: near 0 when every item goes to one prototype, the collapse
    centring prevents; at most log K); agreement (share of the loss's pairs whose student
    argmax is the teacher's); center_norm; teacher_temp; momentum (of the last teacher
    update); koleo (the KoLeo term, when ``koleo_weight`` > 0).
    """

    Config = DinoConfig
    purpose = "dino"

    def __init__(self, config: DinoConfig, encoders: Mapping[str, Encoder], dist: DistContext,
                 processors: Mapping[str, Processor] | None = None) -> None:
        super().__init__(config, encoders, dist)
        self.require_one_modality(self.purpose)
        _check(config)
        self.key = self.modalities[0]
        encoder = encoders[self.key]
        self.prep = multi_crop_prep(processors, self.key, self.purpose, config.global_crops, config.local_crops)
        self.head = DinoHead(encoder.embed_dim, config.prototypes, config.hidden_dim, config.bottleneck_dim,
                             config.head_layers, config.norm_last_layer, config.head_batch_norm)
        # the teacher: parameters without requires_grad (checkpoints carry them; FSDP shards
        # the encoder copy's blocks as every encoder's), moved by EMA alone
        self.teacher_encoder = ema_copy(encoder)
        self.teacher_head = ema_copy(self.head)
        self.register_buffer("center", torch.zeros(config.prototypes))
        # the momentum of the last teacher update, for the log; the optimizer steps so far,
        # for the temperature schedule (both in checkpoints, so a resumed run goes on alike)
        self.register_buffer("momentum", torch.tensor(float(config.momentum)))
        self.register_buffer("optimizer_steps", torch.tensor(0, dtype=torch.long))
        self._local_checked = False

    # --- model ----------------------------------------------------------------------
    def encoder_calls(self, batch: Mapping[str, Any]) -> dict[str, EncoderCall]:
        slots = (GLOBAL_VIEWS, LOCAL_VIEWS) if self.config.local_crops else (GLOBAL_VIEWS,)
        return {slot: EncoderCall(self.key, batch[EXTRAS_KEY][slot]) for slot in slots}

    def _encode_local(self, model: EncoderHost, batch: Mapping[str, Any]) -> ModalityOutput:
        """The local views' encoder output; the first call says so when the encoder
        cannot take them (a ViT built for one image size)."""
        if self._local_checked:
            return self.encode(model, batch, LOCAL_VIEWS)
        try:
            out = self.encode(model, batch, LOCAL_VIEWS)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise ValueError(
                f"dino: the encoder of modality '{self.key}' cannot encode its local views ({exc}); make them a "
                f"size it takes (modalities.{self.key}.views: an image's local_size equal to image_size, or a timm ViT "
                "with backbone_args dynamic_img_size: true) or set local_crops: 0"
            ) from exc
        self._local_checked = True
        return out

    def forward(self, model: EncoderHost, batch: Mapping[str, Any]) -> ObjectiveOutput:
        cfg = self.config
        student_global = self.encode(model, batch, GLOBAL_VIEWS).pooled
        pooled = [student_global, *([self._encode_local(model, batch).pooled] if cfg.local_crops else [])]
        student_logits = upcast(self.head(torch.cat(pooled)))  # one head call over every view, as DINO's
        with torch.no_grad():
            teacher_logits = upcast(self.teacher_head(self.teacher_encoder(batch[EXTRAS_KEY][GLOBAL_VIEWS]).pooled))
        temp = teacher_temperature(cfg, self.optimizer_steps.to(teacher_logits.dtype))
        center = self.center.to(teacher_logits.dtype)
        per_item, probs = dino_loss(student_logits, teacher_logits, center, cfg.student_temp, temp, cfg.global_crops)
        items = per_item.shape[0]
        loss = mean_over_global_count(per_item.sum(), items, self.dist)
        metrics = _metrics(student_logits.detach(), probs, cfg.global_crops)
        if cfg.koleo_weight:
            koleo = sum(koleo_terms(view, self.dist.rank, self.dist.world_size).sum()
                        for view in student_global.chunk(cfg.global_crops))
            koleo = mean_over_global_count(koleo, items, self.dist)
            loss = loss + cfg.koleo_weight * koleo
            metrics["koleo"] = koleo.detach()
        if self.training:  # as BatchNorm's running statistics: an eval-mode forward changes no state
            self._update_center(teacher_logits)
        # 0-d tensors, read by the trainer with the step's other metrics (no host sync here)
        metrics.update(loss=loss.detach(), center_norm=self.center.norm(), teacher_temp=temp,
                       momentum=self.momentum.clone())  # this step's: after_optimizer_step sets the next
        return ObjectiveOutput(loss=loss, metrics=metrics)

    @torch.no_grad()
    def _update_center(self, teacher_logits: torch.Tensor) -> None:
        """center <- m center + (1 - m) mean of the teacher's logits over the global
        batch (every rank's global views: the sums and counts all-reduced)."""
        totals = torch.cat([teacher_logits.sum(0), teacher_logits.new_full((1,), teacher_logits.shape[0])])
        if self.dist.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)
        batch_center = totals[:-1] / totals[-1]
        self.center.mul_(self.config.center_momentum).add_(batch_center.to(self.center.dtype),
                                                           alpha=1.0 - self.config.center_momentum)

    def after_optimizer_step(self, model: EncoderHost, step: int, total_steps: int) -> None:
        """Move the teacher towards the student encoder and head (momentum from the cosine
        schedule at ``step``), and count the step for the temperature schedule."""
        momentum = cosine_momentum(self.config.momentum, step, total_steps)
        ema_update(self.teacher_encoder, model.encoders[self.key], momentum)
        ema_update(self.teacher_head, self.head, momentum)
        self.momentum.fill_(momentum)
        self.optimizer_steps.fill_(step)


def _check(config: DinoConfig) -> None:
    """Raise a ValueError naming the key that is out of range."""
    if config.global_crops < 1 or config.local_crops < 0:
        raise ValueError(f"dino needs global_crops >= 1 and local_crops >= 0, got {config.global_crops} and {config.local_crops}")
    if config.global_crops + config.local_crops < 2:
        raise ValueError("dino needs two views at least (global_crops + local_crops >= 2): the loss pairs a teacher's "
                         f"view with the student's other views, got global_crops {config.global_crops}, local_crops 0")
    for key in ("prototypes", "hidden_dim", "bottleneck_dim"):
        if getattr(config, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(config, key)}")
    for key in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
        if getattr(config, key) <= 0:
            raise ValueError(f"{key} must be > 0, got {getattr(config, key)}")
    if config.warmup_teacher_temp_steps < 0:
        raise ValueError(f"warmup_teacher_temp_steps must be >= 0, got {config.warmup_teacher_temp_steps}")
    for key in ("center_momentum", "momentum"):
        if not 0.0 <= getattr(config, key) < 1.0:
            raise ValueError(f"{key} must be in [0, 1), got {getattr(config, key)}")
    if config.koleo_weight < 0:
        raise ValueError(f"koleo_weight must be >= 0, got {config.koleo_weight}")


@torch.no_grad()
def _metrics(student_logits: torch.Tensor, probs: torch.Tensor, global_crops: int) -> dict[str, torch.Tensor]:
    """This rank's teacher_entropy, teacher_batch_entropy and agreement (``DinoObjective``).
    Shapes: student_logits [V*B, K]; probs [G, B, K]."""
    g, b, k = probs.shape
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean()
    mean = probs.mean((0, 1))
    batch_entropy = -(mean * mean.clamp_min(1e-30).log()).sum()
    student = student_logits.argmax(-1).view(-1, b)  # [V, B]
    teacher = probs.argmax(-1)  # [G, B]
    same = teacher.unsqueeze(1) == student.unsqueeze(0)  # [G, V, B]
    pairs = ~torch.eye(g, student.shape[0], dtype=torch.bool, device=same.device)
    agreement = (same & pairs.unsqueeze(-1)).sum() / (pairs.sum() * b)  # no boolean indexing: no host sync
    return {"teacher_entropy": entropy, "teacher_batch_entropy": batch_entropy, "agreement": agreement}
