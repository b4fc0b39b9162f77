"""Where a run computes and how: the device, the precision ``auto`` resolves to, the
CUDA backend switches (TF32, cuDNN autotuning), channels-last memory for convolutional
encoders, and moving batches (from pinned host memory, asynchronously) onto the device.

On the CPU every switch here leaves training as it was: ``auto`` is fp32, TF32 and
cuDNN do not apply, channels-last is off unless asked for.

Host syncs. A *host sync* is a point where the host must wait for the device to finish
the work queued so far before it can go on: reading a tensor's value into Python
(``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``, ``torch.equal``), a copy from the
device to host memory, a blocking copy from the host to the device, and ops whose output
size depends on the data (boolean-mask indexing, ``nonzero``, ``unique``), which read a
count back. Each stalls the GPU's queue: the host stops enqueueing kernels until the
device catches up. Two tools count them: ``host_syncs`` asks CUDA itself (its sync debug
mode, every real wait, also those inside torch's kernels) and needs a GPU;
``count_host_syncs`` watches torch's dispatcher for the ops above on any device, so a
CPU run counts the syncs that the same code would make on a GPU (it cannot see waits
inside a kernel, nor a ``.tolist()`` of a CPU tensor: ``read_to_host`` reports its own).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

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
    """Count the host's waits on the GPU inside the block (host syncs, as the module
    docstring defines them): torch's sync debug mode warns at each, and the list yielded
    fills with their messages. On a machine without CUDA the list stays empty: the CPU
    has nothing to wait for (``count_host_syncs`` counts, on any device, where a GPU
    would wait)."""
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


SyncKind = Literal["scalar", "to_host", "to_device", "data_shape"]
aten = torch.ops.aten
_SCALAR_READS = {aten._local_scalar_dense.default, aten.equal.default}  # .item(), float(t), bool(t); torch.equal
# ops whose output size is a count the host reads back before it can allocate the output
_DATA_SHAPED = {
    aten.nonzero.default, aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
    aten.unique_consecutive.default, aten.bincount.default,
}
_COPIES = {aten._to_copy.default, aten.copy_.default}
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
# torch's frames between an op's caller and a dispatch mode's handler (besides other
# modes' ``__torch_dispatch__``: the FLOP counter)
_MACHINERY = tuple(os.path.join("torch", *p.split("/")) for p in (
    "_ops.py", "utils/_python_dispatch.py", "_compile.py", "_dynamo/eval_frame.py",
))


@dataclass(frozen=True)
class HostSync:
    """One host sync seen by ``count_host_syncs``: its kind (a scalar read, a copy to the
    host or a blocking one to the device, a data-dependent output size), the aten op,
    the device of the tensor read, and where: ``site`` is the innermost line outside
    torch that led to it, ``in_torch`` whether torch's own Python code made the call
    (an optimizer reading its host-side step count, say) rather than that line."""

    kind: SyncKind
    op: str
    device: str
    site: str
    in_torch: bool


class HostSyncCounter(TorchDispatchMode):
    """The dispatch mode behind ``count_host_syncs``: it records and then runs each op."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[HostSync] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        found = _sync_of(func, args, kwargs)
        if found is not None:
            kind, device = found
            site, in_torch = _call_site()
            self.syncs.append(HostSync(kind, str(func), str(device), site, in_torch))
        return func(*args, **kwargs)

    def note(self, kind: SyncKind, op: str, device: torch.device) -> None:
        """Record a sync the dispatcher does not show (``read_to_host``'s transfer)."""
        site, in_torch = _call_site()
        self.syncs.append(HostSync(kind, op, str(device), site, in_torch))

    def count(self, *kinds: SyncKind, outside_torch: bool = True) -> int:
        """How many syncs of ``kinds`` (all kinds if none given) were seen; by default only
        those the code outside torch made."""
        return sum(1 for s in self.syncs if (not kinds or s.kind in kinds) and not (outside_torch and s.in_torch))


def _sync_of(func: Any, args: tuple, kwargs: dict) -> tuple[SyncKind, torch.device] | None:
    if func in _SCALAR_READS:
        return "scalar", args[0].device
    masked = func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default) and any(
        i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1]
    )
    unsized = func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None
    if func in _DATA_SHAPED or masked or unsized:
        return "data_shape", args[0].device
    if func in _COPIES:
        if func is aten.copy_.default:
            dst, src, non_blocking = args[0].device, args[1].device, bool(args[2] if len(args) > 2 else kwargs.get("non_blocking"))
        else:
            src, non_blocking = args[0].device, bool(kwargs.get("non_blocking"))
            dst = torch.device(kwargs["device"]) if kwargs.get("device") is not None else src
        if src.type != "cpu" and dst.type == "cpu":
            return "to_host", src
        if src.type == "cpu" and dst.type != "cpu" and not non_blocking:
            return "to_device", dst
    return None


def _call_site() -> tuple[str, bool]:
    """The innermost line outside torch and this module, and whether the innermost frame
    outside the dispatch machinery is torch's own code."""
    frame = sys._getframe(1)
    in_torch = None
    while frame is not None:
        path = frame.f_code.co_filename
        machinery = path == __file__ or path.endswith(_MACHINERY) or frame.f_code.co_name == "__torch_dispatch__"
        if not machinery:
            if in_torch is None:
                in_torch = path.startswith(_TORCH_DIR)
            if not path.startswith(_TORCH_DIR):
                return f"{os.path.relpath(path)}:{frame.f_lineno}", bool(in_torch)
        frame = frame.f_back
    return "?", bool(in_torch)


_ACTIVE_COUNTERS: list[HostSyncCounter] = []


@contextlib.contextmanager
def count_host_syncs() -> Iterator[HostSyncCounter]:
    """Record the host syncs (module docstring) the code inside the block makes, on any
    device: scalar reads, copies between host and device (on a GPU), data-dependent
    output sizes, and ``read_to_host``'s transfers. The ops run as they would without it
    (same values, same random draws).

    Example:
        with count_host_syncs() as syncs:
            trainer.train_step()
        print(syncs.count("scalar"), [s.site for s in syncs.syncs])
    """
    counter = HostSyncCounter()
    _ACTIVE_COUNTERS.append(counter)
    try:
        with counter:
            yield counter
    finally:
        _ACTIVE_COUNTERS.remove(counter)


def read_to_host(local: Any, summed: Any = None) -> tuple[Any, Any]:
    """``local`` and ``summed`` with every tensor leaf read into Python floats (a 0-d
    tensor becomes a float, others a flat list of floats), the leaves of ``summed``
    first summed over ranks: one all-reduce and one device->host transfer for all of
    them, the one host sync a training step makes to log and decide (module docstring;
    active ``count_host_syncs`` counters record it, on the CPU too). Leaves that are not
    tensors are kept; dicts, lists and tuples keep their shape. Values are exact: every
    tensor is widened to float64, which holds every float16, bfloat16 and float32 value
    and every integer below 2**53."""
    leaves, spec = pytree.tree_flatten((local, summed))
    first_summed = len(pytree.tree_leaves(local))
    at = [i for i, leaf in enumerate(leaves) if torch.is_tensor(leaf)]
    if not at:
        return local, summed
    order = [i for i in at if i >= first_summed] + [i for i in at if i < first_summed]  # summed ones first
    device = leaves[order[0]].device
    if device.type == "mps":  # no float64 there
        device = torch.device("cpu")
    joined = torch.cat([leaves[i].detach().reshape(-1).to(device, torch.float64) for i in order])
    n_summed = sum(leaves[i].numel() for i in order if i >= first_summed)
    if n_summed and distributed.context().world_size > 1:
        joined = torch.cat([distributed.all_reduce_sum(joined[:n_summed]), joined[n_summed:]])
    for counter in _ACTIVE_COUNTERS:
        counter.note("to_host", "read_to_host", joined.device)
    values = iter(joined.tolist())
    for i in order:
        part = [next(values) for _ in range(leaves[i].numel())]
        leaves[i] = part[0] if leaves[i].dim() == 0 else part
    return pytree.tree_unflatten(leaves, spec)
