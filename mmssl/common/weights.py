"""Weights files: reading a state dict from safetensors or torch files, and comparing a
file's tensors with a model's (which names differ in shape, which are missing on either
side, said in one line), for checkpoints and pretrained weights alike."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
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
        return (t.untyped_storage().data_ptr(), str(t.device)) if t.numel() else None

    saved_memory = {memory(state[n]) for n in saved if n in state} - {None}
    missing = sorted(n for n, t in state.items() if n not in saved and memory(t) not in saved_memory)
    unexpected = sorted(n for n in saved if n not in state)
    return shapes, missing, unexpected


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
