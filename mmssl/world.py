"""The embedded default world: concepts, captions and splits, rendered by the modalities.

A concept is one value per attribute of a modality's ``ConceptSpace``; its class is
its combination of class attributes (colour x shape). A fixed, seeded set of class
combinations is held out of training: evaluating on them measures generalisation
to compositions never seen, since each held-out combination's values were all seen
in other combinations. Nothing is downloaded; every item is drawn from a generator
seeded by (world seed, stream, epoch, index), so any process reproduces any sample.
"""

from __future__ import annotations

import itertools
import string
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from mmssl.config import ConfigError
from mmssl.common.seeding import sample_rng
from modalities.base import ConceptSpace, Renderer


@dataclass(frozen=True)
class WorldClass:
    index: int
    attributes: Mapping[str, str]
    name: str
    heldout: bool


class World:
    """Classes, splits and captions over one concept space.

    Args:
        space: the rendering modality's concept space.
        seed: world seed; fixes the held-out combinations.
        num_heldout: how many class combinations to hold out of training.
        single_attribute_prob: share of training captions that name one attribute only
            ("a red shape", "a triangle"), which teaches attributes separately.
        shared_attribute_prob: share of training captions that name a shared attribute
            (the count); ``None`` leaves it to the templates (about 0.3 of them name it).
            The count is what cross-modal retrieval matches on, and a caption that names
            it is the only signal that teaches it.
    """

    def __init__(
        self,
        space: ConceptSpace,
        seed: int = 0,
        num_heldout: int = 6,
        single_attribute_prob: float = 0.3,
        shared_attribute_prob: float | None = None,
    ) -> None:
        if shared_attribute_prob is not None and not 0.0 <= shared_attribute_prob <= 1.0:
            raise ValueError(f"world.shared_attribute_prob must be in [0, 1] or null, got {shared_attribute_prob}")
        self.space = space
        self.seed = seed
        self.single_attribute_prob = single_attribute_prob
        self.shared_attribute_prob = shared_attribute_prob
        names = list(space.class_attributes)
        combos = list(itertools.product(*(space.class_attributes[a] for a in names)))
        heldout = self._choose_heldout(combos, names, num_heldout, seed)
        self.classes = [
            WorldClass(i, dict(zip(names, combo)), space.class_name(dict(zip(names, combo))), i in heldout)
            for i, combo in enumerate(combos)
        ]
        self.train_classes = [c.index for c in self.classes if not c.heldout]
        self.heldout_classes = [c.index for c in self.classes if c.heldout]

    @staticmethod
    def _choose_heldout(combos: list[tuple[str, ...]], names: Sequence[str], n: int, seed: int) -> set[int]:
        """Pick ``n`` combinations so that every attribute value stays seen in training
        and no value is held out much more often than another."""
        if n < 0 or n >= len(combos):
            raise ValueError(f"world.heldout must be in [0, {len(combos) - 1}], got {n}")
        rng = sample_rng(seed, "heldout")
        sizes = [len({c[i] for c in combos}) for i in range(len(names))]
        cap = [max(1, -(-n // s)) for s in sizes]  # ceil(n / values per attribute)
        chosen: set[int] = set()
        count: list[dict[str, int]] = [dict() for _ in names]
        for idx in rng.permutation(len(combos)):
            if len(chosen) == n:
                break
            combo = combos[idx]
            if any(count[i].get(v, 0) >= cap[i] for i, v in enumerate(combo)):
                continue
            remaining = [c for j, c in enumerate(combos) if j not in chosen and j != idx]
            if all(any(c[i] == v for c in remaining) for i, v in enumerate(combo)):
                chosen.add(int(idx))
                for i, v in enumerate(combo):
                    count[i][v] = count[i].get(v, 0) + 1
        if len(chosen) < n:
            raise ValueError(f"cannot hold out {n} combinations and keep every attribute value seen")
        return chosen

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def concept(self, class_index: int, rng: np.random.Generator) -> dict[str, str]:
        """A full concept of a class: its class attributes plus random nuisance values."""
        concept = dict(self.classes[class_index].attributes)
        for attr, values in {**self.space.nuisance_attributes, **self.space.shared_attributes}.items():
            concept[attr] = values[int(rng.integers(len(values)))]
        return concept

    def _word(self, value: str, rng: np.random.Generator) -> str:
        words = self.space.synonyms.get(value, (value,))
        return words[int(rng.integers(len(words)))]

    def caption(
        self, concept: Mapping[str, str], rng: np.random.Generator, single_attribute_prob: float | None = None
    ) -> tuple[str, list[int]]:
        """A training caption of ``concept`` (random template, random synonyms) and its
        match codes (``match_codes``): -1 where the caption does not name the attribute.
        Items and captions match where codes agree or either is -1; the contrastive
        objective uses that for same-concept positives."""
        single = self.space.single_attribute_templates
        prob = self.single_attribute_prob if single_attribute_prob is None else single_attribute_prob
        if single and rng.random() < prob:
            attr = list(single)[int(rng.integers(len(single)))]
            templates = single[attr]
        else:
            templates = self.space.caption_templates
        if self.shared_attribute_prob is not None:
            templates = self._with_or_without_shared(templates, rng.random() < self.shared_attribute_prob)
        template = templates[int(rng.integers(len(templates)))]
        text = template.format(**{k: self._word(v, rng) for k, v in concept.items()})
        return text, self.match_codes(concept, self._fields(template))

    @staticmethod
    def _fields(template: str) -> set[str]:
        return {field for _, field, _, _ in string.Formatter().parse(template) if field}

    def _with_or_without_shared(self, templates: Sequence[str], name_shared: bool) -> Sequence[str]:
        """The templates that name a shared attribute (or those that name none); all of
        them where the family has none of the asked kind."""
        chosen = [t for t in templates if bool(self._fields(t) & set(self.space.shared_attributes)) == name_shared]
        return chosen or templates

    def attribute_codes(self, concept: Mapping[str, str], named: set[str] | None = None) -> list[int]:
        """Class-attribute value indices of ``concept``; -1 for attributes not in ``named``."""
        return self._codes(self.space.class_attributes, concept, named)

    def match_codes(self, concept: Mapping[str, str], named: set[str] | None = None) -> list[int]:
        """Value indices of the class and shared attributes (what decides whether an item
        and a caption show the same thing); -1 for attributes not in ``named``."""
        return self._codes({**self.space.class_attributes, **self.space.shared_attributes}, concept, named)

    @staticmethod
    def _codes(attributes: Mapping[str, Sequence[str]], concept: Mapping[str, str], named: set[str] | None) -> list[int]:
        return [
            list(values).index(concept[attr]) if named is None or attr in named else -1
            for attr, values in attributes.items()
        ]

    def prompts(self, class_index: int) -> list[str]:
        """Zero-shot prompts of a class: every prompt template with the canonical class name."""
        return [t.format(self.classes[class_index].name) for t in self.space.prompt_templates]

    def describe(self) -> dict[str, Any]:
        return {
            "num_classes": len(self.classes),
            "heldout": [self.classes[i].name for i in self.heldout_classes],
        }


def world_for(renderer: Renderer | None, config: Any) -> World:
    """The world over a modality's concept space (its ``renderer``'s), as ``config`` (a
    WorldConfig) sets it.

    Raises:
        ConfigError: a ``world`` option out of its range, or a per-modality ``heldout``
            without this modality (the message names the key).
    """
    if renderer is None:
        raise ValueError("this modality renders no concepts: it has no renderer")
    space = renderer.concept_space()
    heldout = config.heldout
    if isinstance(heldout, dict):
        if renderer.key not in heldout:
            raise ConfigError(f"world.heldout has no count for modality '{renderer.key}' (it has {sorted(heldout)})")
        heldout = heldout[renderer.key]
    try:
        return World(
            space,
            seed=config.seed,
            num_heldout=heldout,
            single_attribute_prob=config.single_attribute_prob,
            shared_attribute_prob=config.shared_attribute_prob,
        )
    except ValueError as exc:  # World names the key in its messages
        raise ConfigError(str(exc)) from exc
