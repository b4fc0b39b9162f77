"""Where a run computes and how: the device, the precision ``auto`` resolves to, the
CUDA backend switches (TF32, cuDNN autotuning), channels-last memory for convolutional
encoders, and moving batches (from pinned host memory, asynchronously) onto the device.

On the CPU every switch here leaves training as it was: ``auto`` is fp32, TF32 and
cuDNN do not apply, channels-last is off unless asked for.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from mmssl.train import distributed

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto``: this rank's GPU (``LOCAL_RANK``) if there is one, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{distributed.local_rank()}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` as the run uses it: ``auto`` is bf16 autocast on a CUDA
    device that supports bf16 (Ampere and later), fp32 elsewhere; other values as given."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def configure_backends(device: torch.device, tf32: bool, cudnn_benchmark: bool) -> None:
    """On CUDA: TF32 for float32 matmuls and convolutions (``train.tf32``) and cuDNN's
    kernel autotuning (``train.cudnn_benchmark``; shapes in mmssl's streams are fixed per
    objective, so the search pays once). Nothing elsewhere."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = cudnn_benchmark


def uses_channels_last(setting: bool | str, device: torch.device) -> bool:
    """``train.channels_last``: ``auto`` is on for CUDA (tensor-core convolutions read
    NHWC), off on the CPU."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def to_channels_last(model: nn.Module) -> list[str]:
    """Convolutional encoders (those with a ``Conv2d``) in channels-last memory format;
    returns their keys. Parameters keep their values, names and shapes."""
    converted = []
    for key, encoder in getattr(model, "encoders", {}).items():
        if any(isinstance(m, nn.Conv2d) for m in encoder.modules()):
            encoder.to(memory_format=torch.channels_last)
            converted.append(key)
    return converted


def pins_memory(device: torch.device) -> bool:
    """Whether batches bound for ``device`` are built in pinned host memory: for CUDA, so
    that the copy to the device is asynchronous (``non_blocking``)."""
    return device.type == "cuda"


def move_to(batch: Any, device: torch.device, dtype: torch.dtype | None = None, channels_last: bool = False) -> Any:
    """``batch`` on ``device`` (asynchronously from pinned memory), its floating-point
    tensors in ``dtype`` where given, its 4-D floating-point tensors channels-last where
    asked."""
    if torch.is_tensor(batch):
        if dtype is not None and batch.is_floating_point():
            batch = batch.to(device, dtype, non_blocking=True)
        else:
            batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, Mapping):
        return {k: move_to(v, device, dtype, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device, dtype, channels_last) for v in batch)
    if hasattr(batch, "apply"):  # PyG Batch and friends
        return batch.apply(lambda t: move_to(t, device, dtype, channels_last))
    if hasattr(batch, "to"):
        return batch.to(device)
    return batch


@contextlib.contextmanager
def host_syncs() -> Iterator[list[str]]:
    """Count the host's waits on the GPU inside the block (``.item()``, ``float(t)``,
    ``bool(t)``, copies to the CPU...): torch's sync debug mode warns at each, and the
    list yielded fills with their messages. On a machine without CUDA the list stays
    empty: the CPU has nothing to wait for."""
    found: list[str] = []
    if not torch.cuda.is_available():
        yield found
        return
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    found.extend(str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message))
