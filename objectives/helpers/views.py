"""Two random views of each item in the data pipeline, for the view objectives
(``view_contrastive``, ``graph_contrastive``, ``cluster``): the processor's ``augment``
(the ``ViewAugmenter`` capability) drawn from each sample's own generator, and the
views batched as the modality batches its samples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from modalities.base import Processor, ViewAugmenter, require_capability
from objectives.base import SamplePrep

VIEW_KEYS = ("view_a", "view_b")
VIEWS = "views"  # the extras key of the collated 2B views (views batched together)


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
