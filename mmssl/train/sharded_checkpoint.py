"""Sharded checkpoints: the weights and optimizer state of a ``train.parallel: fsdp``
run, each rank writing its own shards with ``torch.distributed.checkpoint`` (DCP).

A sharded checkpoint is a checkpoint directory (``mmssl.train.checkpoint``: written
under a temporary name, fsynced, renamed into place) whose weights and optimizer state
are a DCP directory instead of ``model.safetensors`` and the optimizer entry of
``trainer_state.pt``:

    step_00000100/
        sharded/            DCP: .metadata and one __<rank>_0.distcp file a rank
            model.*             the model's tensors, by their state dict names
            weighting.*         the loss weighting's (uncertainty weights, loss means)
            optimizer.*         AdamW's state by parameter name (torch.distributed.checkpoint.state_dict)
        trainer_state.pt    step, schedule, RNG, stream positions, as an unsharded checkpoint's
        config.yaml  tokenizer.json  meta.json ("layout": "sharded")

Tensors are saved by name with their global shapes, so DCP reshards on load: a checkpoint
resumes on another number of processes, under ``ddp`` (every rank reads whole tensors),
and in one process (``full_weights``: evaluation, export, ``mmssl.load_checkpoint``).
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as torch_dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from mmssl.common.sharded_files import SHARDED, metadata

_MODEL, _WEIGHTING, _OPTIMIZER = "model", "weighting", "optimizer"


def training_state(model: nn.Module, weighting: nn.Module, root: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What DCP saves and loads: the model's and the weighting's state dicts (DTensors
    under FSDP) and the optimizer's state by parameter name under ``root`` (the module
    holding both)."""
    return {
        _MODEL: model.state_dict(),
        _WEIGHTING: weighting.state_dict(),
        _OPTIMIZER: get_optimizer_state_dict(root, optimizer),
    }


def save_shards(state: Mapping[str, Any], directory: Path, group: Any = None, background: bool = False) -> Future | None:
    """Write ``state`` (``training_state``) as DCP shards into ``directory``, every file
    fsynced; collective over ``group`` (the default group when None). ``background``:
    copy the state now and write it in a thread (``dcp.async_save``), returning the future
    that ends when every rank's files and the metadata are written.

    Raises:
        OSError: the shards could not be written (from any rank), naming why.
    """
    writer = FileSystemWriter(str(directory), sync_files=True)
    if background:
        return dcp.async_save(dict(state), storage_writer=writer, process_group=group)
    try:
        dcp.save(dict(state), storage_writer=writer, process_group=group)
    except dcp.api.CheckpointException as exc:  # a rank's OSError, wrapped: say it in one line
        raise OSError(_first_failure(exc)) from exc
    return None


def _first_failure(exc: Exception) -> str:
    failures = getattr(exc, "failures", {}) or {}
    for rank, failure in sorted(failures.items()):
        return f"rank {rank}: {getattr(failure, 'strerror', None) or failure}"
    return str(exc).splitlines()[0]


def load_shards(
    checkpoint: Path, model: nn.Module, weighting: nn.Module, root: nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Load a sharded checkpoint's model, weighting and optimizer state. Sharded modules
    (FSDP) read their own shards, collectively; plain ones (DDP, one process) read whole
    tensors in each process. Parameters that had no optimizer state when it was saved
    (no objective had given them a gradient yet) get none, as in the run that saved it.

    The caller checks first that the model's names and shapes fit (``saved_shapes``)."""
    state = training_state(model, weighting, root, optimizer)  # initialises AdamW's state to be overwritten
    saved = set(metadata(checkpoint))
    sharded = any(isinstance(v, torch.distributed.tensor.DTensor) for v in state[_MODEL].values())
    dcp.load(
        state, checkpoint_id=str(checkpoint / SHARDED),
        planner=DefaultLoadPlanner(allow_partial_load=True), no_dist=not sharded,
    )
    model.load_state_dict(state[_MODEL])
    weighting.load_state_dict(state[_WEIGHTING])
    optimizer_state = state[_OPTIMIZER]
    optimizer_state["state"] = {
        name: entry for name, entry in optimizer_state["state"].items()
        if any(f"{_OPTIMIZER}.state.{name}.{key}" in saved for key in entry)
    }
    set_optimizer_state_dict(root, optimizer, optimizer_state, options=StateDictOptions(strict=False))


def load_full_into_sharded(
    root: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, Any],
    names: list[list[str]],
    prefix: str,
) -> None:
    """An unsharded checkpoint's whole weights and positional optimizer state loaded into
    a sharded model and its optimizer (each rank keeps its shards of the whole).

    Args:
        names: each optimizer group's parameter names, in the optimizer's order, as the
            saved state refers to parameters by position.
        prefix: what turns a name in ``names`` into its name under ``root`` (a model
            parameter's; the others are already named under ``root``).
    """
    set_full_state(model, weights)
    under_root = {n for n, _ in root.named_parameters()}

    def fqn(name: str) -> str:
        return name if name in under_root else prefix + name

    by_position = [fqn(name) for group in names for name in group]
    positions = [i for group in optimizer_state["param_groups"] for i in group["params"]]
    index = dict(zip(positions, by_position))
    named = {
        "state": {index[i]: dict(entry) for i, entry in optimizer_state["state"].items()},
        "param_groups": [
            {**group, "params": [index[i] for i in group["params"]]} for group in optimizer_state["param_groups"]
        ],
    }
    set_optimizer_state_dict(
        root, optimizer, named, options=StateDictOptions(full_state_dict=True, strict=False)
    )


def set_full_state(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Whole tensors loaded into ``module``, whose sharded parameters keep their shards."""
    set_model_state_dict(module, dict(state), options=StateDictOptions(full_state_dict=True))


def new_checkpoint_group() -> Any:
    """A process group of its own for background saves (gloo: DCP's collectives on host
    tensors), so they never queue behind the training step's collectives."""
    return torch_dist.new_group(backend="gloo")
