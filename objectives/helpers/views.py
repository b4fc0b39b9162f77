"""Random views of each item in the data pipeline, for the view objectives
(``view_contrastive``, ``graph_contrastive``, ``cluster``: two views; ``dino``: global
and local views, multi-crop): the processor's ``augment`` (the ``ViewAugmenter``
capability) and ``local_augment`` (``LocalViewAugmenter``) drawn from each sample's own
generator, and the views batched as the modality batches its samples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from modalities.base import LocalViewAugmenter, Processor, ViewAugmenter, require_capability
from objectives.base import SamplePrep

VIEW_KEYS = ("view_a", "view_b")
VIEWS = "views"  # the extras key of the collated 2B views (views batched together)
GLOBAL_VIEWS = "global_views"  # multi-crop: the extras key of the collated G*B global views
LOCAL_VIEWS = "local_views"  # and of the L*B local views


@dataclass(frozen=True)
class ViewPrep(SamplePrep):
    """Two random views of each item (the processor's ``augment``), batched as one call
    of 2B (view a of every item, then view b) or one batch per view (``apart``)."""

    key: str
    augment: Callable[[Any, np.random.Generator], Any]
    collate: Callable[[Sequence[Any]], Any]
    apart: bool = False

    def prepare_sample(self, sample: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        item = sample[self.key]
        return {key: self.augment(item, rng) for key in VIEW_KEYS}

    def collate_extras(self, extras: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        if self.apart:
            return {key: self.collate(list(extras[key])) for key in VIEW_KEYS}
        return {VIEWS: self.collate([*extras["view_a"], *extras["view_b"]])}


def view_prep(processors: Mapping[str, Processor] | None, key: str, purpose: str, hint: str,
              view_options: Mapping[str, Any] | None = None, apart: bool = False) -> ViewPrep:
    """The ``ViewPrep`` of modality ``key``, checked: its processor must make views."""
    processor = (processors or {}).get(key)
    if processor is None:
        raise ValueError(f"{purpose} needs the processor of modality '{key}' (build it with mmssl.build_model)")
    require_capability(processor, ViewAugmenter, purpose, hint=hint)
    augment = processor.view_maker(**view_options) if view_options else processor.augment
    return ViewPrep(key, augment, processor.collate, apart)


@dataclass(frozen=True)
class MultiCropPrep(SamplePrep):
    """Multi-crop (DINO's): ``global_crops`` views of each item (the processor's
    ``augment``) and ``local_crops`` smaller ones (``local_augment``), drawn in that
    order, each kind batched as one call: global view 0 of every item, then view 1, ...
    (G*B items), and the local views alike (L*B)."""

    key: str
    augment: Callable[[Any, np.random.Generator], Any]
    local_augment: Callable[[Any, np.random.Generator], Any] | None
    collate: Callable[[Sequence[Any]], Any]
    global_crops: int = 2
    local_crops: int = 0

    def prepare_sample(self, sample: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        item = sample[self.key]
        views = {f"global_{i}": self.augment(item, rng) for i in range(self.global_crops)}
        views.update({f"local_{i}": self.local_augment(item, rng) for i in range(self.local_crops)})
        return views

    def collate_extras(self, extras: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        batched = {GLOBAL_VIEWS: self.collate([v for i in range(self.global_crops) for v in extras[f"global_{i}"]])}
        if self.local_crops:
            batched[LOCAL_VIEWS] = self.collate([v for i in range(self.local_crops) for v in extras[f"local_{i}"]])
        return batched


def multi_crop_prep(processors: Mapping[str, Processor] | None, key: str, purpose: str, global_crops: int,
                    local_crops: int) -> MultiCropPrep:
    """The ``MultiCropPrep`` of modality ``key``, checked: its processor must make views,
    and local views if ``local_crops`` asks for them."""
    processor = (processors or {}).get(key)
    if processor is None:
        raise ValueError(f"{purpose} needs the processor of modality '{key}' (build it with mmssl.build_model)")
    require_capability(processor, ViewAugmenter, purpose,
                       hint="the image, audio and graph processors make views; a plugin's processor implements augment(sample, rng)")
    if local_crops:
        require_capability(processor, LocalViewAugmenter, f"{purpose} with local_crops: {local_crops}",
                           hint="the image, audio and graph processors make local views; a plugin's processor implements "
                                "local_augment(sample, rng), or set local_crops: 0")
    local = processor.local_augment if local_crops else None
    return MultiCropPrep(key, processor.augment, local, processor.collate, global_crops, local_crops)

