"""Data streams from a run config: one stream per objective, as its ``data`` section says."""

from __future__ import annotations

from mmssl.config import RunConfig
from mmssl.data.files import CsvSource, FolderSource, TextCorpusSource
from mmssl.data.graphs import GraphSource
from mmssl.data.stream import DataError, Stream
from mmssl.data.world import CaptionSource, RenderPool, WorldSource
from mmssl.model import MultimodalModel
from mmssl.world import world_for
from modalities.base import modality_roles


def build_streams(config: RunConfig, model: MultimodalModel, rank: int = 0, world_size: int = 1) -> dict[str, Stream]:
    """One data stream per objective, as its ``data`` section says."""
    streams = {}
    pools: dict[tuple[str, int], RenderPool] = {}  # shared by the streams of one modality and pool size
    for name, spec in config.objectives.items():
        modalities = model.modalities_of(name)
        data = spec.data
        if data.source == "world":
            roles = modality_roles(modalities)
            renderers = [modalities[k] for k in roles.renderers]
            captioners = [modalities[k] for k in roles.captioners]
            if not renderers and len(captioners) == 1 == len(modalities):
                # a text-only objective: the captions of every world in the model
                worlds = [world_for(model.encoders[k], config.world) for k in modality_roles(model.encoders).renderers]
                source = CaptionSource(worlds, captioners[0], size=data.epoch_size)
            elif len(renderers) != 1 or len(captioners) > 1 or len(renderers) + len(captioners) != len(modalities):
                raise DataError(
                    f"objective '{name}': the embedded world pairs one rendering modality with at most one "
                    f"caption modality; got {list(modalities)}. Use data.source: csv for other pairs."
                )
            else:
                renderer = renderers[0]
                key = (renderer.key, data.render_pool)
                if data.render_pool and key not in pools:
                    pools[key] = RenderPool(world_for(renderer, config.world), renderer, data.render_pool)
                pool = pools.get(key)
                world = pool.world if pool is not None else world_for(renderer, config.world)
                source = WorldSource(
                    world, renderer, captioners[0] if captioners else None, size=data.epoch_size, pool=pool
                )
        elif data.source == "text":
            (modality,) = modalities.values()
            if not modality.consumes_captions:
                raise DataError(f"objective '{name}': data.source 'text' feeds text modalities; '{modality.key}' is not one")
            source = TextCorpusSource(data.path, modality, field=data.text_field)
        elif data.source == "graphs":
            source = GraphSource.from_file(data.path, modalities)
        elif data.source == "folder":
            (modality,) = modalities.values()
            source = FolderSource(data.path, modality)
        else:
            source = CsvSource(data.path, data.columns, modalities, separator=data.separator)
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
