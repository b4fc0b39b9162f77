"""Comparing a file's tensors with a model's: which names differ in shape, which are
missing on either side, said in one line (checkpoints and pretrained weights alike)."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

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
