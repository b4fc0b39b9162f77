"""Weights files: reading a state dict from safetensors or torch files, and comparing a
file's tensors with a model's (which names differ in shape, which are missing on either
side, said in one line), for checkpoints and pretrained weights alike.

A parameter of one value (a logit scale or bias, an audio mask value) has shape [1]:
FSDP2 (``fully_shard``) shards no 0-d parameter. Files written before, and open_clip's,
hold such values 0-d; ``fit_scalar_shapes`` and ``fit_optimizer_state_shapes`` reshape
them on load."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch.distributed.tensor import DTensor
from safetensors import SafetensorError
from safetensors.torch import load_file

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pth.tar")  # .pth.tar: timm's trainer
_shared: dict[tuple[str, int, int], dict[str, torch.Tensor]] | None = None  # reads of one shared_reads() block


@contextlib.contextmanager
def shared_reads() -> Iterator[None]:
    """Within the block, a weights file is read once however many callers ask for it
    (an open_clip file holds both the image and the text tower); the tensors are
    released when it ends. Callers must not change the dict they get."""
    global _shared
    outer, _shared = _shared, {} if _shared is None else _shared
    try:
        yield
    finally:
        _shared = outer


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file, or of a torch file read with
    ``torch.load(weights_only=True)``: a trainer's ``{"state_dict": ...}`` is opened and
    DDP's ``module.`` prefixes are taken off. Inside ``shared_reads()`` a file is read once.

    Raises:
        ValueError: the file is unreadable, refused, or no weights file, saying why.
    """
    if _shared is None:
        return _read_weights(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _shared:
        _shared[key] = _read_weights(path)
    return _shared[key]


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        if path.name.endswith(TORCH_SUFFIXES):
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, Mapping):
                raise ValueError(f"holds a {type(state).__name__}, not a state dict")
            return unwrap_state(state)
    except (SafetensorError, OSError, ValueError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{path} is unreadable: {' '.join(str(exc).split())[:300]}") from None
    except Exception as exc:  # torch's weights-only unpickler refuses objects with its own error types
        raise ValueError(f"{path} is unreadable: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
    raise ValueError(f"{path} is no weights file (.safetensors, {', '.join(TORCH_SUFFIXES)})")


def unwrap_state(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a trainer's checkpoint dict: its ``state_dict`` entry if it has one,
    with DDP's ``module.`` prefixes taken off."""
    if isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    tensors = {n: t for n, t in state.items() if torch.is_tensor(t)}
    if tensors and all(n.startswith("module.") for n in tensors):
        tensors = {n[len("module."):]: t for n, t in tensors.items()}
    return tensors


Shape = tuple[int, ...]


def tensor_differences(
    saved: Mapping[str, Shape], state: Mapping[str, torch.Tensor]
) -> tuple[list[tuple[str, Shape, Shape]], list[str], list[str]]:
    """(shape mismatches as (name, saved shape, model shape), names the model has and
    the file lacks, names the file has and the model lacks), each sorted; all empty when
    ``saved`` fits ``state``. safetensors stores one name of tensors sharing memory (tied
    weights): a model name is not missing when a name sharing its memory is saved."""
    shapes = [(n, tuple(s), tuple(state[n].shape)) for n, s in sorted(saved.items()) if n in state and tuple(state[n].shape) != tuple(s)]

    def memory(t: torch.Tensor) -> tuple[int, str] | None:
        t = t.to_local() if isinstance(t, DTensor) else t  # a sharded parameter: its shard's memory
        return (t.untyped_storage().data_ptr(), str(t.device)) if t.numel() else None

    saved_memory = {memory(state[n]) for n in saved if n in state} - {None}
    missing = sorted(n for n, t in state.items() if n not in saved and memory(t) not in saved_memory)
    unexpected = sorted(n for n in saved if n not in state)
    return shapes, missing, unexpected


def fits_as_scalar(saved: Sequence[int], wanted: Sequence[int]) -> bool:
    """Whether a tensor of shape ``saved`` is one value the model holds in the other of
    the shapes ``()`` and ``(1,)`` (``wanted``): reshaping it loses nothing."""
    saved, wanted = tuple(saved), tuple(wanted)
    return saved != wanted and {saved, wanted} <= {(), (1,)}


def fit_scalar_shapes(state: Mapping[str, torch.Tensor], shapes: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """``state`` with each tensor saved 0-d where ``shapes`` (the model's, by name) wants
    ``(1,)``, or ``(1,)`` where it wants ``()``, reshaped to that shape; every other
    tensor as it is, so a real mismatch still shows in ``tensor_differences``."""
    return {n: t.reshape(shapes[n]) if n in shapes and fits_as_scalar(t.shape, shapes[n]) else t for n, t in state.items()}


def fit_optimizer_state_shapes(state: Mapping[str, Any], params: Sequence[Sequence[torch.Tensor]]) -> dict[str, Any]:
    """A torch optimizer's ``state_dict()`` whose per-parameter state tensors (Adam's
    ``exp_avg``, ``exp_avg_sq``) of one value saved 0-d for a ``(1,)`` parameter, or the
    other way round, are reshaped to their parameter's shape, so an optimizer state saved
    before those parameters became [1] loads and steps. ``step`` (a 0-d count) and every
    other entry stay as they are; ``state`` itself is not changed.

    Args:
        params: the parameters of each of the optimizer's ``param_groups``, in order
            (``[g["params"] for g in optimizer.param_groups]``); the saved groups' ``params``
            name them by position.
    """
    shapes = {
        index: tuple(p.shape)
        for group, saved in zip(params, state["param_groups"])
        for index, p in zip(saved["params"], group)
    }

    def fit(index: Any, key: str, value: Any) -> Any:
        if key == "step" or not torch.is_tensor(value) or index not in shapes or not fits_as_scalar(value.shape, shapes[index]):
            return value
        return value.reshape(shapes[index])

    fitted = {index: {key: fit(index, key, value) for key, value in entries.items()} for index, entries in state["state"].items()}
    return {**state, "state": fitted}


def describe_differences(
    shapes: Sequence[tuple[str, Shape, Shape]], missing: Sequence[str], unexpected: Sequence[str], limit: int = 8,
    saved: str = "checkpoint",
) -> str:
    """One line: the counts, then the first ``limit`` differences and how many more
    (``tensors differ: 2 of another shape, 1 missing; a.weight: checkpoint [4, 8], model
    [4, 16]; ...; missing b.bias``)."""
    counts = [f"{len(items)} {what}" for items, what in ((shapes, "of another shape"), (missing, "missing"), (unexpected, "unexpected")) if items]
    items = [f"{n}: {saved} {list(a)}, model {list(b)}" for n, a, b in shapes]
    items += [f"missing {n}" for n in missing] + [f"unexpected {n}" for n in unexpected]
    more = f"; and {len(items) - limit} more" if len(items) > limit else ""
    return f"tensors differ: {', '.join(counts)}; " + "; ".join(items[:limit]) + more
