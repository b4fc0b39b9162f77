"""Data streams from a run config: one stream per objective, its source built by the
source kind that ``data.source`` names in the registry (built-ins and plugins alike)."""

from __future__ import annotations

from typing import Any, Mapping, Protocol

from mmssl.config import RunConfig
from mmssl.data.stream import BuildContext, ModalityData, Stream
from mmssl.registry import SOURCES


class ModelParts(ModalityData, Protocol):
    """What streams take of a model: processors, renderers and the objectives' data work
    (``sample_prep``; ``mmssl.MultimodalModel`` is one). Streams and their loader workers
    hold no encoder."""

    objectives: Mapping[str, Any]


def build_streams(
    config: RunConfig, model: ModelParts, rank: int = 0, world_size: int = 1, pin_memory: bool = False
) -> dict[str, Stream]:
    """One data stream per objective, as its ``data`` section says; under data
    parallelism this process's share (``rank`` of ``world_size``) of every global batch.
    ``pin_memory``: batches in pinned host memory (bound for a GPU)."""
    streams = {}
    # shared by every objective's source: render pools
    context = BuildContext(config, model.processors, model.renderers)
    for name, spec in config.objectives.items():
        objective = model.objectives[name]
        modalities = {key: model.processors[key] for key in objective.modalities}
        prep = objective.sample_prep()
        data = spec.data
        source = SOURCES.get(data.source).build(data.options, name, modalities, context)
        streams[name] = Stream(
            name,
            source,
            modalities,
            batch_size=data.batch_size,
            seed=config.seed,
            num_workers=data.num_workers,
            on_error=data.on_error,
            max_skip_fraction=data.max_skip_fraction,
            prepare=prep.prepare_sample,
            collate_extras=prep.collate_extras,
            rank=rank,
            world_size=world_size,
            pin_memory=pin_memory,
        )
    return streams
