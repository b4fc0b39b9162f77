"""Sources of the embedded world: rendered items with captions, captions alone, and a
seeded pool of renders shared by the streams of one modality."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from mmssl.config import ConfigError, WorldConfig
from mmssl.data.labelled import EvalSetContext, EvaluationError, LabelledSet
from mmssl.data.stream import BuildContext, DataError, Source, SourceKind
from mmssl.common.seeding import sample_rng
from mmssl.world import World, world_for
from modalities.base import Processor, Renderer, modality_roles
from objectives.base import MATCH_KEY


class RenderPool:
    """A finite set of renders of one world's training classes, each made on first use
    and then kept.

    Rendering is a large share of a world sample's cost, and a run draws many more
    samples than it needs distinct renders. Sources that share a pool draw a slot per
    sample and add a fresh caption and fresh augmentation to it, so a run pays for at
    most ``size`` renders. Slot ``i``'s concept and render depend only on (world seed,
    modality, ``i``), so every stream, worker, rank and resumed run sees the same pool.
    Transforms must not modify the raw render (the built-in modalities never do).
    """

    def __init__(self, world: World, renderer: Renderer, size: int) -> None:
        if size < 1:
            raise ValueError(f"a render pool needs at least one slot, got {size}")
        self.world = world
        self.renderer = renderer
        self.size = size
        self._slots: dict[int, tuple[dict[str, str], Any]] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def get(self, slot: int) -> tuple[dict[str, str], Any]:
        """(concept, raw render) of ``slot``, rendered on first use."""
        if slot not in self._slots:
            rng = sample_rng(self.world.seed, self.renderer.key, "render_pool", slot)
            classes = self.world.train_classes
            concept = self.world.concept(classes[int(rng.integers(len(classes)))], rng)
            self._slots[slot] = (concept, self.renderer.render(concept, rng))
        return self._slots[slot]


class WorldSource:
    """Pairs from the embedded world: one modality renders a concept, a caption
    modality receives its caption. ``split='train'`` draws only training classes;
    with a ``pool`` (training classes only) the render comes from the pool's slots."""

    def __init__(
        self,
        world: World,
        renderer: Renderer,
        captioner: Processor | None,
        size: int,
        split: Literal["train", "all"] = "train",
        pool: RenderPool | None = None,
    ) -> None:
        if pool is not None and (split != "train" or pool.world is not world):
            raise ValueError("a render pool serves the training split of its own world")
        self.world = world
        self.renderer = renderer
        self.captioner = captioner
        self.size = size
        self.pool = pool
        self.classes = world.train_classes if split == "train" else [c.index for c in world.classes]

    def __len__(self) -> int:
        return self.size

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        if self.pool is not None:
            concept, render = self.pool.get(int(rng.integers(self.pool.size)))
        else:
            cls = self.classes[int(rng.integers(len(self.classes)))]
            concept = self.world.concept(cls, rng)
            render = self.renderer.render(concept, rng)
        item: dict[str, Any] = {self.renderer.key: render}
        codes = {self.renderer.key: self.world.match_codes(concept)}
        if self.captioner is not None:
            text, caption_codes = self.world.caption(concept, rng)
            item[self.captioner.key] = text
            codes[self.captioner.key] = caption_codes
        item[MATCH_KEY] = codes
        return item

    def where(self, index: int) -> str:
        return f"world sample {index}"


class CaptionSource:
    """Captions of the embedded world, alone: the default corpus of text-only objectives
    (masked language modeling). Each item is a training-class caption of one of the
    worlds, chosen at random; held-out combinations never appear, not even as text."""

    def __init__(self, worlds: Sequence[World], captioner: Processor, size: int) -> None:
        if not worlds:
            raise DataError("the embedded world has no rendering modality to caption; use data.source: text")
        self.worlds = list(worlds)
        self.captioner = captioner
        self.size = size

    def __len__(self) -> int:
        return self.size

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        world = self.worlds[int(rng.integers(len(self.worlds)))]
        cls = world.train_classes[int(rng.integers(len(world.train_classes)))]
        text, _ = world.caption(world.concept(cls, rng), rng)
        return {self.captioner.key: text}

    def where(self, index: int) -> str:
        return f"world caption {index}"


@dataclass(frozen=True)
class WorldOptions:
    epoch_size: int = 100_000  # samples per epoch
    # draw renders from a pool of this many, shared by the streams of one modality, each
    # reused with fresh captions and augmentation (0: render every sample)
    render_pool: int = 0


class WorldKind(SourceKind):
    """``data.source: world``: the embedded world. One rendering modality with at most
    one caption modality gets rendered items and their captions; a caption modality
    alone gets the captions of every world in the model (training classes only)."""

    Config = WorldOptions

    @classmethod
    def check(cls, options: WorldOptions, key: str, modalities: Sequence[str]) -> None:
        if options.render_pool < 0:
            raise ConfigError(f"'{key}.render_pool': must be >= 0 (0 renders every sample), got {options.render_pool}")
        if options.epoch_size < 1:
            raise ConfigError(f"'{key}.epoch_size': must be >= 1, got {options.epoch_size}")

    @classmethod
    def build(
        cls, options: WorldOptions, objective: str, modalities: Mapping[str, Processor], context: BuildContext
    ) -> Source:
        roles = modality_roles(modalities, context.renderers)
        renderers = [context.renderers[k] for k in roles.renderers]
        captioners = [modalities[k] for k in roles.captioners]
        world_config = context.config.world
        if not renderers and len(captioners) == 1 == len(modalities):
            every = modality_roles(context.processors, context.renderers).renderers
            worlds = [world_for(context.renderers[k], world_config) for k in every]
            return CaptionSource(worlds, captioners[0], size=options.epoch_size)
        if len(renderers) != 1 or len(captioners) > 1 or len(renderers) + len(captioners) != len(modalities):
            raise DataError(
                f"objective '{objective}': the embedded world pairs one rendering modality with at most one "
                f"caption modality; got {list(modalities)}. Use data.source: csv for other pairs."
            )
        renderer = renderers[0]
        key = ("render_pool", renderer.key, options.render_pool)  # one pool per modality and size
        if options.render_pool and key not in context.shared:
            context.shared[key] = RenderPool(world_for(renderer, world_config), renderer, options.render_pool)
        pool = context.shared.get(key)
        world = pool.world if pool is not None else world_for(renderer, world_config)
        return WorldSource(world, renderer, captioners[0] if captioners else None, size=options.epoch_size, pool=pool)

    @classmethod
    def labelled_set(cls, path: str, context: EvalSetContext) -> LabelledSet:
        """The world's fresh evaluation samples (``world``, no path)."""
        if path:
            raise EvaluationError(f"data 'world' takes no path, got 'world:{path}'")
        if context.renderer is None:
            raise EvaluationError(f"modality '{context.modality}' has no embedded world; name a data set")
        return world_eval_set(context.renderer, context.world)


def world_eval_set(renderer: Renderer, world_config: WorldConfig) -> LabelledSet:
    """Fresh samples of every world class (none drawn by any training stream)."""
    world: World = world_for(renderer, world_config)
    data = LabelledSet([], [], world.class_names, [], list(world.heldout_classes), source="world")
    space = world.space
    attributes = {**space.class_attributes, **space.nuisance_attributes, **space.shared_attributes}
    data.attribute_values = {a: tuple(v) for a, v in attributes.items()}
    for cls in world.classes:
        for i in range(world_config.eval_samples_per_class):
            # An "eval" key in the seed: training streams never draw these generators.
            rng = sample_rng(world_config.seed, "eval", cls.index, i)
            concept = world.concept(cls.index, rng)
            data.items.append(renderer.render(concept, rng))
            data.labels.append(cls.index)
            data.where.append(f"world eval sample {cls.name} #{i}")
            caption, codes = world.caption(concept, rng, single_attribute_prob=0.0)
            data.captions.append(caption)
            data.caption_codes.append(codes)
            data.item_codes.append(world.match_codes(concept))
            data.item_attributes.append(dict(concept))
    return data
