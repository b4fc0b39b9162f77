"""Reading sharded checkpoints (``torch.distributed.checkpoint``'s file layout) in one
process, without a process group: which tensors one holds and their whole shapes, the
whole tensors put together from every rank's shards, and which of its files are
missing. ``mmssl.train.sharded_checkpoint`` writes them; the readers of checkpoints
(resume, evaluation, export, pretrained weights) read them through here.

A sharded checkpoint directory holds ``sharded/`` (DCP: ``.metadata`` and one
``__<rank>_0.distcp`` file a rank) whose entries are named ``<part>.<state dict name>``,
``part`` being ``model``, ``weighting`` or ``optimizer``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

SHARDED = "sharded"  # the DCP directory of a sharded checkpoint


def is_sharded(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` holds its weights as DCP shards."""
    return (Path(checkpoint) / SHARDED / ".metadata").is_file()


def metadata(checkpoint: str | Path) -> dict[str, Any]:
    """DCP's metadata of a sharded checkpoint: each entry's storage metadata by name."""
    return FileSystemReader(str(Path(checkpoint) / SHARDED)).read_metadata().state_dict_metadata


def saved_shapes(checkpoint: str | Path, part: str = "model") -> dict[str, tuple[int, ...]]:
    """The global shape of every tensor of ``part`` (``model`` or ``weighting``) in a
    sharded checkpoint, by state dict name."""
    prefix = part + "."
    return {
        name[len(prefix):]: tuple(entry.size)
        for name, entry in metadata(Path(checkpoint)).items()
        if name.startswith(prefix) and isinstance(entry, TensorStorageMetadata)
    }


def full_weights(checkpoint: str | Path, part: str = "model") -> dict[str, torch.Tensor]:
    """Every tensor of ``part`` of a sharded checkpoint, whole, read in this process alone
    (no process group needed; the shards of any number of ranks are put together)."""
    checkpoint = Path(checkpoint)
    prefix = part + "."
    template = {
        name: torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
        for name, entry in metadata(checkpoint).items()
        if name.startswith(prefix) and isinstance(entry, TensorStorageMetadata)
    }
    with warnings.catch_warnings():  # DCP warns that no process group means one process: meant here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(template, checkpoint_id=str(checkpoint / SHARDED), no_dist=True)
    return {name[len(prefix):]: tensor for name, tensor in template.items()}


def missing_shard_files(checkpoint: str | Path) -> list[str]:
    """The files of a sharded checkpoint that are not there: its metadata, or a shard
    file the metadata names (relative to the checkpoint)."""
    directory = Path(checkpoint) / SHARDED
    if not (directory / ".metadata").is_file():
        return [f"{SHARDED}/.metadata"]
    try:
        storage = FileSystemReader(str(directory)).read_metadata().storage_data
    except Exception:  # noqa: BLE001 - truncated metadata: every shard is unaccounted for
        return [f"{SHARDED}/.metadata (unreadable)"]
    names = sorted({item.relative_path for item in storage.values()})
    return [f"{SHARDED}/{name}" for name in names if not (directory / name).is_file()]
