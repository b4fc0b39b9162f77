"""Zero-shot evaluation: class names x prompt templates -> text embeddings -> cosine.

Works for any modality that an objective embeds into a space shared with a caption
modality (image-, audio- and graph-text). Data comes from the embedded world's
evaluation split (fresh samples of every class, plus the held-out compositions) or
from a labelled dataset on disk (an image folder, an ESC-50 style CSV, a graph file):
``mmssl.data.eval_sets`` reads them.
A linear probe on frozen encoder features lives in ``mmssl.eval.probes``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from tqdm.auto import tqdm

from mmssl.data.bad_input import SkipLog
from mmssl.data.eval_sets import EvaluationError, LabelledSet
from mmssl.eval.metrics import Relevance, caption_relevance, classification_metrics, retrieval_metrics
from mmssl.model import MultimodalModel
from modalities.base import InvalidSample, prompt_templates
from objectives.base import match_matrix

@dataclass
class ZeroShotResult:
    modality: str
    top1: float
    top5: float
    mean_per_class_recall: float
    num_samples: int
    num_classes: int
    per_class_recall: dict[str, float]
    confusion: list[list[int]]
    class_names: list[str]
    skipped: int = 0
    composition_top1: float | None = None
    seen_top1: float | None = None
    heldout_classes: list[str] = field(default_factory=list)
    data: str = ""

    def to_json(self) -> dict[str, Any]:
        """The JSON report (the confusion matrix goes to the PNG, not here)."""
        out = asdict(self)
        out.pop("confusion")
        if self.composition_top1 is None:
            out.pop("composition_top1")
            out.pop("seen_top1")
            out.pop("heldout_classes")
        return out


# --------------------------------------------------------------------------------------
# Zero-shot classification
# --------------------------------------------------------------------------------------


def caption_partner(model: MultimodalModel, modality: str, objective: str | None = None) -> tuple[str, str]:
    """(objective, caption modality) that give ``modality`` a space shared with text."""
    name = model.shared_space(modality, objective)
    partners = [m for m in model.roles(model.objectives[name].modalities).captioners if m != modality]
    if not partners:
        raise EvaluationError(f"objective '{name}' pairs '{modality}' with no caption modality: no zero-shot prompts")
    return name, partners[0]


def class_embeddings(
    model: MultimodalModel, text_modality: str, class_names: Sequence[str], templates: Sequence[str], objective: str
) -> torch.Tensor:
    """[C, E]: per class, the mean of its normalised prompt embeddings, renormalised."""
    prompts = [t.format(c) for c in class_names for t in templates]
    emb = model.encode(text_modality, prompts, objective=objective)
    emb = emb.view(len(class_names), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(emb, dim=-1)


def embed_items(
    model: MultimodalModel,
    modality: str,
    data: LabelledSet,
    objective: str | None,
    batch_size: int,
    on_error: str,
    progress: bool = False,
) -> tuple[torch.Tensor, list[int], int]:
    """Embeddings of the items that load, their indices in ``data``, and how many were
    skipped. ``objective`` None gives the encoder's own pooled features (frozen, for
    linear probes) instead of the objective's shared space."""
    processor = model.processors[modality]
    kept_samples, kept = [], []
    skips = SkipLog(f"evaluation {data.source}", on_error, EvaluationError)
    embeddings = []
    bar = tqdm(total=len(data.where), desc=f"embed {modality}", unit="item", disable=not progress, leave=False)

    def encode(samples: list[Any]) -> torch.Tensor:
        batch = processor.collate(samples)
        if objective is not None:
            return model.encode(modality, batch, objective=objective)
        return pooled_features(model, modality, batch)

    for index, where in enumerate(data.where):
        try:  # items may be read when indexed (shards): reading fails like transforming
            kept_samples.append(processor.transform(data.items[index], None))
            kept.append(index)
        except InvalidSample as exc:
            # named as training names it: the row, then the file the modality could not read
            skips.add(where if exc.source is None or exc.source in where else f"{where} ({exc.source})", exc.reason)
        if len(kept_samples) == batch_size:
            embeddings.append(encode(kept_samples))
            kept_samples = []
        bar.update()
    if kept_samples:
        embeddings.append(encode(kept_samples))
    bar.close()
    if not embeddings:
        raise EvaluationError(f"no usable samples in {data.source} ({skips.count} skipped)")
    return torch.cat(embeddings), kept, skips.count


@torch.no_grad()
def pooled_features(model: MultimodalModel, modality: str, batch: Any) -> torch.Tensor:
    """The encoder's pooled output [B, D] for a collated batch, in eval mode."""
    encoder = model.encoders[modality]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return encoder(model.processors[modality].move_batch(batch, device)).pooled.float().cpu()
    finally:
        model.train(was_training)


def caption_pairs(data: LabelledSet, kept: Sequence[int]) -> tuple[list[int], Relevance, Relevance]:
    """For retrieval between the ``kept`` items and their captions: the captions to
    embed, and item-to-caption and caption-to-item relevance. The world matches by
    attribute codes (a caption matches every item of the concept it names); other
    sets by the caption's item, or an identical text of one of the item's captions."""
    if data.item_codes:
        item_codes = torch.tensor([data.item_codes[i] for i in kept])
        caption_codes = torch.tensor(data.caption_codes)
        return (
            list(range(len(data.captions))),
            lambda rows: match_matrix(item_codes[rows], caption_codes),
            lambda rows: match_matrix(caption_codes[rows], item_codes),
        )
    position = {item: j for j, item in enumerate(kept)}
    captions = [c for c, owner in enumerate(data.caption_owners) if owner in position]
    relevant = caption_relevance(
        [position[data.caption_owners[c]] for c in captions], [data.captions[c] for c in captions], len(kept)
    )
    return captions, relevant, relevant.T


def caption_retrieval(
    model: MultimodalModel, modality: str, text_modality: str, data: LabelledSet, emb: torch.Tensor, kept: Sequence[int],
    objective: str, batch_size: int = 256,
) -> dict[str, dict[str, float]]:
    """Item-to-caption and caption-to-item R@1/5/10, mean and median rank."""
    captions, item_to_caption, caption_to_item = caption_pairs(data, kept)
    if not captions:
        raise EvaluationError(f"{data.source}: no captions of usable items to retrieve")
    text = model.encode(text_modality, [data.captions[c] for c in captions], objective=objective, batch_size=batch_size)
    return {
        f"{modality}_to_{text_modality}": retrieval_metrics(emb, text, item_to_caption),
        f"{text_modality}_to_{modality}": retrieval_metrics(text, emb, caption_to_item),
    }


def classify_embeddings(
    model: MultimodalModel,
    modality: str,
    data: LabelledSet,
    emb: torch.Tensor,
    kept: Sequence[int],
    skipped: int,
    templates: Sequence[str] | None,
    objective: str,
) -> ZeroShotResult:
    """Zero-shot classification of ``data``'s ``kept`` items from their embeddings [N, E]
    in ``objective``'s space."""
    if not data.class_names or not data.labels:
        raise EvaluationError(f"{data.source} has no labels: classification needs a labelled set")
    objective, text_modality = caption_partner(model, modality, objective)
    templates = list(templates or prompt_templates(model.renderers[modality]))
    classes = class_embeddings(model, text_modality, data.class_names, templates, objective)
    labels = [data.labels[i] for i in kept]
    y = torch.tensor(labels)
    num_classes = len(data.class_names)
    figures = classification_metrics(emb @ classes.T, y, num_classes)
    correct1 = figures["correct"]
    result = ZeroShotResult(
        modality=modality,
        top1=figures["top1"],
        top5=figures["top5"],
        mean_per_class_recall=figures["mean_per_class_recall"],
        num_samples=len(labels),
        num_classes=num_classes,
        per_class_recall={data.class_names[c]: r for c, r in figures["per_class_recall"].items()},
        confusion=figures["confusion"].tolist(),
        class_names=list(data.class_names),
        skipped=data.skipped + skipped,
        data=data.source,
    )
    if data.heldout_classes:
        heldout = torch.isin(y, torch.tensor(data.heldout_classes))
        result.composition_top1 = float(correct1[heldout].float().mean())
        result.seen_top1 = float(correct1[~heldout].float().mean())
        result.heldout_classes = [data.class_names[c] for c in data.heldout_classes]
    return result
