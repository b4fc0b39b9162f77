"""``train.ema``: an exponential moving average of the whole model's weights, kept beside
training as timm's ``ModelEmaV3`` and open_clip's model EMA keep one, saved with every
checkpoint (``ema.safetensors``) and read by evaluation and export with ``--ema``.

What is averaged: every floating tensor of the model's state dict, the parameters and the
floating buffers (BatchNorm running statistics are averaged, as timm does: statistics
along the averaged weights' path), in float32 (float64 under ``precision: fp64``) on the
model's device; the other tensors (BatchNorm's batch counts) are copied. Tied weights
are held once, under the name ``model.safetensors`` keeps.

When and how much: after optimizer step s + 1 (s = 0, 1, ...) whose number is a multiple
of ``every`` (a step skipped as non-finite updates nothing),

    decay_s = decay * min(1, s / warmup_steps)        (warmup_steps 0: decay)
    ema <- decay_s * ema + (1 - decay_s) * weights    (``mmssl.common.ema.ema_update``)

so the average starts as the initial weights, the first update makes it the weights,
and from step ``warmup_steps`` on it averages over about every / (1 - decay) steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from mmssl.common.ema import ema_update
from mmssl.common.weights import describe_differences, tensor_differences
from mmssl.config import EmaConfig
from mmssl.train.checkpoint import CheckpointError, CorruptCheckpointError, read_ema_weights


class ModelEma:
    """The moving average of ``model``'s state dict (see the module docstring), starting
    as a copy of its weights now.

    Args:
        model: the model whose state dict is averaged (the trainer's ``MultimodalModel``).
        config: ``train.ema``.
    """

    def __init__(self, model: nn.Module, config: EmaConfig) -> None:
        self.config = config
        live = model.state_dict()
        self.weights: dict[str, torch.Tensor] = {name: _ema_copy(live[name]) for name in _one_name_each(live)}
        self._averaged = [n for n, t in self.weights.items() if t.is_floating_point()]
        self._copied = [n for n, t in self.weights.items() if not t.is_floating_point()]

    def decay_at(self, step: int) -> float:
        """The effective decay of the update after optimizer step ``step + 1``."""
        warmup = self.config.warmup_steps
        return self.config.decay * (min(1.0, step / warmup) if warmup else 1.0)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> bool:
        """Move the average towards ``model``'s weights after optimizer step ``step + 1``
        (``step``: the optimizer steps before it), if ``every`` says so; returns whether it did."""
        if (step + 1) % self.config.every:
            return False
        live = model.state_dict()
        ema_update(
            [self.weights[n] for n in self._averaged],
            [live[n].to(self.weights[n].dtype) for n in self._averaged],
            self.decay_at(step),
        )
        for name in self._copied:
            self.weights[name].copy_(live[name])
        return True

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged tensors by state dict name, for ``ema.safetensors``."""
        return dict(self.weights)

    @torch.no_grad()
    def load_state_dict(self, saved: Mapping[str, torch.Tensor], source: str) -> None:
        """Take the average ``saved`` (of ``source``, named in the error).

        Raises:
            CheckpointError: its names or shapes are not this model's, saying what differs.
        """
        differences = tensor_differences({n: tuple(t.shape) for n, t in saved.items()}, self.weights)
        if any(differences):
            raise CheckpointError(f"{source} does not fit this run's model: {describe_differences(*differences)}")
        for name, tensor in self.weights.items():
            tensor.copy_(saved[name])

    def load(self, checkpoint: Path) -> None:
        """Take the average a checkpoint saved, to continue it.

        Raises:
            CheckpointError: the checkpoint was saved without ``train.ema``, or its average
                does not fit this model.
            CorruptCheckpointError: its ``ema.safetensors`` is unreadable.
        """
        try:
            saved = read_ema_weights(checkpoint)
        except CorruptCheckpointError:  # unreadable: resume may skip it for the checkpoint before
            raise
        except CheckpointError as exc:
            raise CheckpointError(
                f"{exc}, so its average cannot continue: resume it with train.ema=null, or start over with train.resume=none"
            ) from None
        self.load_state_dict(saved, f"the EMA weights of {checkpoint}")


def _ema_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 (or wider) copy of a floating tensor, a plain copy of any other."""
    if tensor.is_floating_point():
        return tensor.detach().to(dtype=torch.promote_types(tensor.dtype, torch.float32), copy=True)
    return tensor.detach().clone()


def _one_name_each(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of ``state`` with tensors shared under several names (tied weights) named
    once, by the alphabetically first name, as ``safetensors.torch.save_model`` keeps them."""
    by_tensor: dict[tuple, list[str]] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype, t.device) if t.numel() else (name,)
        by_tensor.setdefault(key, []).append(name)
    keep = {min(names) for names in by_tensor.values()}
    return [name for name in state if name in keep]
