"""Several sources for one objective, mixed with weights (as open_clip's ``::`` lists of
training data with ``--train-data-upsampling-factors``).

    data:
      source: mix
      epoch_size: 200000            # samples an epoch (default: the sources' sizes added up)
      sources:
        - {source: shards, path: "/data/laion/{00000..00999}.tar", weight: 3}
        - {source: csv, path: /data/cc3m.csv, columns: {image: filepath, text: title}, weight: 1}

Sample i draws its source with the weights, then an item of that source uniformly (with
replacement, as resampled webdataset pipelines do), both from the sample's own
generator: the mix is a function of (seed, stream, epoch, index), so it is the same in
every run, with any number of workers or ranks, and after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from mmssl.config import ConfigError, convert, source_options
from mmssl.data.stream import BuildContext, Source, SourceKind
from modalities.base import Processor

WEIGHT = "weight"


class MixSource:
    """Items drawn from ``sources`` with probabilities proportional to ``weights``."""

    def __init__(self, sources: Sequence[Source], weights: Sequence[float], size: int, names: Sequence[str]) -> None:
        self.sources = list(sources)
        total = float(sum(weights))
        self.probabilities = np.array([w / total for w in weights])
        self.size = size
        self.names = list(names)

    def __len__(self) -> int:
        return self.size

    def choose(self, rng: np.random.Generator) -> tuple[int, int]:
        """(source, index in it) for one sample, from its generator."""
        source = int(rng.choice(len(self.sources), p=self.probabilities))
        return source, int(rng.integers(len(self.sources[source])))

    def get(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        source, inner = self.choose(rng)
        return self.sources[source].get(inner, rng)

    def where(self, index: int) -> str:
        return f"mixed sample {index} (of {', '.join(self.names)})"


@dataclass(frozen=True)
class MixOptions:
    sources: list[dict[str, Any]] = field(default_factory=list)  # each a source section plus its weight
    epoch_size: int = 0  # 0: the sources' sizes added up


def _component(section: Any, key: str, modalities: Sequence[str]) -> tuple[str, type, Any, float]:
    if not isinstance(section, dict):
        raise ConfigError(f"'{key}': expected a source section (a mapping with 'source'), got {section!r}")
    section = dict(section)
    weight = convert(section.pop(WEIGHT, 1.0), float, f"{key}.{WEIGHT}")
    if not weight > 0:
        raise ConfigError(f"'{key}.{WEIGHT}': must be > 0, got {weight}")
    name, kind, options = source_options(section, key, modalities, extra_valid=(WEIGHT,))
    return name, kind, options, weight


class MixKind(SourceKind):
    """``data.source: mix``: several source sections with weights."""

    Config = MixOptions

    @classmethod
    def check(cls, options: MixOptions, key: str, modalities: Sequence[str]) -> None:
        if len(options.sources) < 2:
            raise ConfigError(f"'{key}.sources': a mix needs at least two sources, got {len(options.sources)}")
        for i, section in enumerate(options.sources):
            _component(section, f"{key}.sources[{i}]", modalities)
        if options.epoch_size < 0:
            raise ConfigError(f"'{key}.epoch_size': must be >= 0 (0: the sources' sizes added up), got {options.epoch_size}")

    @classmethod
    def build(cls, options: MixOptions, objective: str, modalities: Mapping[str, Processor], context: BuildContext) -> Source:
        sources, weights, names = [], [], []
        for i, section in enumerate(options.sources):
            name, kind, kind_options, weight = _component(section, f"objectives.{objective}.data.sources[{i}]", list(modalities))
            sources.append(kind.build(kind_options, objective, modalities, context))
            weights.append(weight)
            names.append(name)
        size = options.epoch_size or sum(len(s) for s in sources)
        return MixSource(sources, weights, size, names)
