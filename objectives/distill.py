"""Knowledge distillation from a frozen teacher: the student's embeddings of its batch
follow those a trained model gives the same batch, for every modality the teacher has.

The teacher is a whole model read from files (``load_model``: an mmssl run or checkpoint
directory, or an open_clip folder), frozen: no gradient, always in eval mode, kept
outside the module tree, so it is in no ``parameters()`` (optimizer, DDP, FSDP), no
``state_dict()`` (checkpoints, EMA) and no ``train()`` switch; ``.to()`` and ``.double()``
reach it through ``_apply``. Its embeddings are those of one of its shared spaces (its
contrastive objectives' heads), the one its zero-shot evaluation uses by default.

Two losses, after CLIP-KD (Yang et al., CVPR 2024) and open_clip's ``DistillClipLoss``:

- ``cosine`` (CLIP-KD's feature distillation, FD; between unit vectors its squared
  distance is ``2 (1 - cos)``): ``1 - cos(P s, t)`` per item and modality, ``s`` the
  student's embedding (its pooled encoder output, or its head in the named ``space``),
  ``t`` the teacher's, ``P`` a learnt linear map where their widths differ;
- ``kl`` (CLIP-KD's contrastive relational distillation, CRD; open_clip's distillation
  term, whose cross-entropy differs from the KL by the teacher's entropy, a constant):
  ``KL(teacher || student)`` of the in-batch similarity distributions of one modality's
  items over the other's, in both directions, each side at its own temperature. The
  contrastive loss beside it in ``DistillClipLoss`` is the student's own objectives'.

The teacher reads the student's batch, so its processing must be the student's; that is
checked when the objective is built, on one item transformed by both sides.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from modalities.base import Encoder, ModalityOutput, Processor, Renderer, upcast
from objectives.base import DistContext, EncoderCall, EncoderHost, Objective, ObjectiveOutput, mean_over_global_count
from objectives.helpers.heads import HeadKind, projection_head
from objectives.helpers.ranks import check_equal_batches, gather_no_grad, gather_with_grad

log = logging.getLogger(__name__)

PROBE_CAPTION = "two small red circles on the left"  # an item for caption modalities' processing check


@dataclass(frozen=True)
class DistillConfig:
    modalities: tuple[str, ...] = ()  # the student modalities to distil; the teacher has each under the same key
    # A run directory (its latest checkpoint), a checkpoint directory or an open_clip local-dir folder
    teacher: str = ""
    # weights: what the teacher's checkpoint trained; ema: the moving average of its weights
    # (a run trained with train.ema)
    teacher_weights: Literal["weights", "ema"] = "weights"
    loss: Literal["cosine", "kl"] = "cosine"
    # Which of the teacher's spaces gives its embeddings: a named space of its objectives,
    # or one objective; neither: the one its zero-shot uses for the first modality (and
    # that objective for the others wherever it embeds them)
    teacher_space: str | None = None
    teacher_objective: str | None = None
    # The student's side: None, its pooled encoder outputs; a named space of its own
    # objectives (e.g. hub), their shared heads (embed_dim and head as theirs)
    space: str | None = None
    embed_dim: int = 128
    head: HeadKind = "linear"
    # kl: the teacher's temperature (None: its objective's learnt logit scale); the
    # student's logit scale starts at the teacher's and is learnt unless told otherwise
    temperature: float | None = None
    learn_temperature: bool = True
    max_logit_scale: float = 100.0


class FrozenModel:
    """Holds the teacher out of the module tree. A deep copy of the objective (a model
    average) shares it: it never changes."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenModel:
        return self


class DistillObjective(Objective):
    """The student's ``modalities`` follow a frozen teacher's embeddings of the same batch.

    Metrics: loss; cosine: ``{m}_cos``, the mean cosine of student and teacher per
    modality; kl: ``logit_scale`` (the student's), ``teacher_logit_scale`` and
    ``{a}_to_{b}_agree``, how often the student's best in-batch partner is the teacher's.
    """

    Config = DistillConfig

    def __init__(self, config: DistillConfig, encoders: Mapping[str, Encoder], dist: DistContext,
                 processors: Mapping[str, Processor] | None = None,
                 renderers: Mapping[str, Renderer | None] | None = None,
                 load_model: Callable[..., Any] | None = None) -> None:
        super().__init__(config, encoders, dist)
        if not self.modalities:
            raise ValueError("'modalities': name the student modalities to distil")
        if config.loss == "kl" and len(self.modalities) != 2:
            raise ValueError(f"loss: kl compares two modalities' in-batch similarities, got modalities {list(self.modalities)}")
        if load_model is None or processors is None:
            raise ValueError("distill reads its teacher through the model builder: build it with mmssl.build_model")
        try:
            teacher = load_model(config.teacher, "'teacher'", weights=config.teacher_weights)
        except ValueError as exc:  # the builder prefixes the objective's key
            raise ValueError(str(exc)) from None
        missing = [m for m in self.modalities if m not in teacher.encoders]
        if missing:
            raise ValueError(f"the teacher {config.teacher} has no modality '{missing[0]}' to distil; "
                             f"its modalities: {list(teacher.encoders)}")
        self.teacher_objectives = self._teacher_objectives(teacher)
        probes = {m: probe_item(processors[m], (renderers or {}).get(m)) for m in self.modalities}
        for m in self.modalities:
            check_same_processing(m, processors[m], teacher.processors[m], probes[m])
        widths = {m: teacher_width(teacher, m, self.teacher_objectives[m], probes[m]) for m in self.modalities}
        if config.space:
            self.heads = nn.ModuleDict({m: projection_head(encoders[m].embed_dim, config.embed_dim, config.head, out_bias=False)
                                        for m in self.modalities})
        own = {m: config.embed_dim if config.space else encoders[m].embed_dim for m in self.modalities}
        if config.loss == "cosine":
            self.adapters = nn.ModuleDict({m: nn.Linear(own[m], widths[m], bias=False) for m in self.modalities
                                           if own[m] != widths[m]})
        else:
            self._check_kl_pair(teacher, own)
            self.teacher_logit_scale = teacher_scale(teacher, self.teacher_objectives[self.modalities[0]], config)
            # [1], not 0-d: FSDP2 shards no 0-d parameter
            self.logit_scale = nn.Parameter(torch.tensor([math.log(self.teacher_logit_scale)]),
                                            requires_grad=config.learn_temperature)
        self.teacher = FrozenModel(teacher)

    def _teacher_objectives(self, teacher: Any) -> dict[str, str]:
        """The teacher objective whose head embeds each modality."""
        cfg, found = self.config, {}
        for m in self.modalities:
            first = found.get(self.modalities[0])
            try:
                if cfg.teacher_objective is None and cfg.teacher_space is None and first is not None \
                        and m in teacher.objectives[first].modalities:
                    found[m] = first
                else:
                    found[m] = teacher.shared_space(m, cfg.teacher_objective, cfg.teacher_space)
            except (KeyError, ValueError) as exc:
                raise ValueError(f"the teacher {cfg.teacher}: {exc.args[0]}") from None
            if m not in teacher.objectives[found[m]].modalities:
                raise ValueError(f"the teacher's objective '{found[m]}' does not embed '{m}' "
                                 f"(its modalities: {list(teacher.objectives[found[m]].modalities)})")
        return found

    def _check_kl_pair(self, teacher: Any, own: Mapping[str, int]) -> None:
        a, b = self.modalities
        if own[a] != own[b]:
            raise ValueError(f"loss: kl compares the student's '{a}' and '{b}' embeddings ({own[a]} and {own[b]} wide): "
                             "name a space of the student that embeds both (space: NAME)")
        ta, tb = (teacher.objectives[self.teacher_objectives[m]] for m in (a, b))
        if ta is not tb and (ta.space is None or ta.space != tb.space):
            raise ValueError(f"loss: kl compares the teacher's '{a}' and '{b}' embeddings, but they come from objectives "
                             f"'{self.teacher_objectives[a]}' and '{self.teacher_objectives[b]}' of different spaces: "
                             "name teacher_objective or teacher_space")

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> DistillObjective:
        """``.to()``, ``.double()``, ... move the teacher with the student."""
        super()._apply(fn, recurse)
        if hasattr(self, "teacher"):
            self.teacher.model._apply(fn, recurse)
        return self

    def encoder_calls(self, batch: Mapping[str, Any]) -> dict[str, EncoderCall]:
        return {m: EncoderCall(m, batch[m]) for m in self.modalities}

    @torch.no_grad()
    def teacher_embedding(self, modality: str, inputs: Any) -> torch.Tensor:
        """The teacher's L2-normalised embedding [B, E_t] of a collated batch."""
        teacher = self.teacher.model
        output = teacher.encoders[modality](inputs)
        return F.normalize(upcast(teacher.objectives[self.teacher_objectives[modality]].embed(modality, output)), dim=-1)

    def student_embedding(self, modality: str, output: ModalityOutput) -> torch.Tensor:
        """The student's embedding [B, E] (unnormalised): its pooled output or its space's
        head, then the map to the teacher's width (cosine, where the widths differ)."""
        x = self.heads[modality](output.pooled) if self.config.space else output.pooled
        adapters = getattr(self, "adapters", {})
        return adapters[modality](x) if modality in adapters else x

    def forward(self, model: EncoderHost, batch: Mapping[str, Any]) -> ObjectiveOutput:
        targets = {m: self.teacher_embedding(m, batch[m]) for m in self.modalities}
        students = {m: F.normalize(upcast(self.student_embedding(m, self.encode(model, batch, m))), dim=-1)
                    for m in self.modalities}
        if self.config.loss == "kl":
            return self._kl(students, targets)
        losses, metrics = [], {}  # metrics stay on the device: the trainer reads them all at once
        for m in self.modalities:
            cos = (students[m] * targets[m]).sum(-1)
            losses.append(mean_over_global_count((1 - cos).sum(), cos.shape[0], self.dist))
            metrics[f"{m}_cos"] = cos.detach().mean()
        loss = torch.stack(losses).mean()
        return ObjectiveOutput(loss=loss, metrics={"loss": loss.detach(), **metrics})

    def _kl(self, students: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> ObjectiveOutput:
        """Each rank's rows against every rank's columns (as open_clip's local loss with
        gathered features): the mean over ranks is the one-process loss of the global batch."""
        a, b = self.modalities
        sa, sb, ta, tb = students[a], students[b], targets[a], targets[b]
        if self.dist.world_size > 1 and torch_dist.is_initialized():
            check_equal_batches(sa, self.dist.world_size, "distill's kl loss")
            all_sa, all_sb = gather_with_grad(sa), gather_with_grad(sb)
            all_ta, all_tb = gather_no_grad(ta, self.dist.world_size), gather_no_grad(tb, self.dist.world_size)
        else:
            all_sa, all_sb, all_ta, all_tb = sa, sb, ta, tb
        scale = self.logit_scale.reshape(()).exp().clamp(max=self.config.max_logit_scale)
        student_ab, student_ba = scale * sa @ all_sb.T, scale * sb @ all_sa.T
        teacher_ab, teacher_ba = self.teacher_logit_scale * ta @ all_tb.T, self.teacher_logit_scale * tb @ all_ta.T
        loss = (kl_divergence(teacher_ab, student_ab) + kl_divergence(teacher_ba, student_ba)) / 2
        agree = (student_ab.argmax(1) == teacher_ab.argmax(1)).float().mean()
        metrics = {"loss": loss.detach(), "logit_scale": scale.detach(), "teacher_logit_scale": self.teacher_logit_scale,
                   f"{a}_to_{b}_agree": agree}
        return ObjectiveOutput(loss=loss, metrics=metrics)


def kl_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(softmax(teacher) || softmax(student)). Shapes: [N, M] each."""
    return F.kl_div(F.log_softmax(student_logits, dim=1), F.log_softmax(teacher_logits, dim=1),
                    log_target=True, reduction="batchmean")


def teacher_scale(teacher: Any, objective: str, config: DistillConfig) -> float:
    """The teacher's logit scale for kl: 1 / ``temperature``, else its objective's own."""
    if config.temperature is not None:
        if not config.temperature > 0:
            raise ValueError(f"'temperature': must be > 0, got {config.temperature}")
        return 1.0 / config.temperature
    found = getattr(teacher.objectives[objective], "logit_scale", None)
    if not isinstance(found, torch.Tensor):
        raise ValueError(f"the teacher's objective '{objective}' has no logit_scale: set temperature")
    limit = getattr(teacher.objectives[objective].config, "max_logit_scale", math.inf)
    return float(min(found.detach().float().reshape(-1)[0].exp().item(), limit))


def probe_item(processor: Processor, renderer: Renderer | None) -> Any | None:
    """One raw item of a modality for the processing check: a caption, a render of the
    first value of every attribute, or None where the modality has neither."""
    if processor.consumes_captions:
        return PROBE_CAPTION
    if renderer is None:
        return None
    space = renderer.concept_space()
    attributes = {**space.class_attributes, **space.nuisance_attributes, **space.shared_attributes}
    return renderer.render({name: values[0] for name, values in attributes.items()}, np.random.default_rng(0))


def check_same_processing(modality: str, student: Processor, teacher: Processor, raw: Any | None) -> None:
    """Raise a ValueError unless the teacher's processor turns ``raw`` into the student's
    batch, both deterministically and from one seed: the teacher reads the student's batch."""
    if type(student) is not type(teacher) or student.extra_state_dict() != teacher.extra_state_dict():
        same = False
    elif raw is None:
        log.warning("distill: modality '%s' has no renderer or captions to compare the teacher's processing on; "
                    "the teacher reads the student's batches as they are", modality)
        return
    else:
        same = all(same_values(student.collate([student.transform(raw, None if seed is None else np.random.default_rng(seed))]),
                               teacher.collate([teacher.transform(raw, None if seed is None else np.random.default_rng(seed))]))
                   for seed in (None, 0))
    if not same:
        differ = option_differences(student.config, teacher.config)
        raise ValueError(
            f"the teacher processes '{modality}' otherwise than the student (one item becomes different inputs), and it "
            f"reads the student's batches: give modalities.{modality} the teacher's processing options"
            + (f" (options that differ: {differ})" if differ else "")
        )


def option_differences(mine: Any, theirs: Any) -> str:
    """``name: student value vs teacher value`` for the options two configs set otherwise."""
    if not (dataclasses.is_dataclass(mine) and dataclasses.is_dataclass(theirs)):
        return ""
    a, b = dataclasses.asdict(mine), dataclasses.asdict(theirs)
    return ", ".join(f"{k}: {a[k]!r} vs the teacher's {b[k]!r}" for k in a if k in b and a[k] != b[k])


def same_values(a: Any, b: Any) -> bool:
    """Whether two collated batches hold equal values (tensors, mappings, sequences, PyG data)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if callable(getattr(a, "to_dict", None)) and callable(getattr(b, "to_dict", None)):  # a PyG Batch
        a, b = a.to_dict(), b.to_dict()
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and a.keys() == b.keys() and all(same_values(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same_values(x, y) for x, y in zip(a, b))
    return bool(a == b)


@torch.no_grad()
def teacher_width(teacher: Any, modality: str, objective: str, raw: Any | None) -> int:
    """The width of the teacher's embedding of ``modality``: from one probe item through
    it, or the last linear layer of its head where there is no item."""
    head = teacher.objectives[objective]
    if raw is not None:
        processor = teacher.processors[modality]
        embedded = head.embed(modality, teacher.encoders[modality](processor.collate([processor.transform(raw, None)])))
        if embedded is None:
            raise ValueError(f"the teacher's objective '{objective}' gives '{modality}' no embedding")
        return int(embedded.shape[-1])
    heads = getattr(head, "heads", None)
    own = heads[modality] if isinstance(heads, nn.ModuleDict) and modality in heads else nn.Identity()
    layers = [m for m in own.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError(f"cannot tell the width of the teacher's '{modality}' embedding (objective '{objective}')")
    return layers[-1].out_features
