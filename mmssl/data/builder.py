"""Data streams from a run config: one stream per objective, its source built by the
source kind that ``data.source`` names in the registry (built-ins and plugins alike)."""

from __future__ import annotations

from mmssl.config import RunConfig
from mmssl.data.stream import BuildContext, Stream
from mmssl.model import MultimodalModel
from mmssl.registry import SOURCES


def build_streams(config: RunConfig, model: MultimodalModel, rank: int = 0, world_size: int = 1) -> dict[str, Stream]:
    """One data stream per objective, as its ``data`` section says; under data
    parallelism this process's share (``rank`` of ``world_size``) of every global batch."""
    streams = {}
    context = BuildContext(config, model)  # shared by every objective's source: render pools
    for name, spec in config.objectives.items():
        modalities = model.modalities_of(name)
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
            prepare=model.objectives[name].prepare_sample,
            collate_extras=model.objectives[name].collate_extras,
            rank=rank,
            world_size=world_size,
        )
    return streams
