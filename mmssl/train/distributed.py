"""Distributed data parallel on PyTorch's own stack: torchrun, process groups, DDP.

A run under ``torchrun --nproc_per_node=N`` gets its process group from torchrun's
environment (``init_from_env``): gloo on CPU, NCCL on CUDA, each rank on its
``LOCAL_RANK`` device. A plain run has no process group and every helper here is then
a no-op, so the trainer has one code path. In Python, ``Pretrainer`` also works inside
a process group the caller initialised.

What is global and what is per rank: the configured batch size is the global batch of
one micro-step, cut by rank (``Stream``); losses are normalised so that DDP's mean of
the ranks' gradients is the one-process gradient (contrastive objectives gather
embeddings, count-normalised losses divide by global counts); logged metrics are
reduced over ranks here; rank 0 alone writes files.
"""

from __future__ import annotations

import datetime
import os
import socket
from typing import Mapping, Sequence

import torch
import torch.distributed as torch_dist
from torch import nn

from modalities.base import upcast
from objectives.base import DistContext


def init_from_env(timeout_s: float = 600.0) -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1 in the environment),
    unless one is already initialised. Returns whether this process is in a group."""
    if torch_dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = datetime.timedelta(seconds=timeout_s)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # After a restart (torchrun --max-restarts) the agent's store still holds the
        # previous group's keys, and gloo would connect to the dead workers' addresses:
        # give every restart a key space of its own.
        agent_store = torch_dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]),
            is_master=False, timeout=timeout,
        )
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        torch_dist.init_process_group(
            backend=backend, store=torch_dist.PrefixStore(f"mmssl/restart_{restart}", agent_store),
            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout,
        )
    else:
        torch_dist.init_process_group(backend=backend, timeout=timeout)
    return True


def context() -> DistContext:
    """Rank and world size of the current process group (0 of 1 without one)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return DistContext(rank=torch_dist.get_rank(), world_size=torch_dist.get_world_size())
    return DistContext()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0 of the current process group (or no group): the process that writes files."""
    return context().rank == 0


def is_main_process_of_env() -> bool:
    """Rank 0 by torchrun's environment (``RANK``), also after the group is torn down."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    if context().world_size > 1:
        torch_dist.barrier()


def _collective_device(tensor: torch.Tensor) -> torch.device:
    """Where ``tensor`` must be for a collective: NCCL reduces CUDA tensors only, so host
    tensors (metrics, counts, checksums) travel through this rank's GPU."""
    if torch_dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy on the input's device; the input is left alone). Identity
    on one process."""
    if context().world_size == 1:
        return values.clone()
    out = values.to(_collective_device(values), copy=True)
    torch_dist.all_reduce(out)
    return out.to(values.device)


def reduce_metrics(metrics: Mapping[str, float], weight: float, sums: Sequence[str] = ()) -> dict[str, float]:
    """Metrics of every rank in one: each key's mean over ranks weighted by ``weight``
    (a rank's sample count), except the keys in ``sums``, which add up. Every rank must
    pass the same keys (they run the same objectives) and gets the same result."""
    if context().world_size == 1:
        return dict(metrics)
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    weighted = torch.where(
        torch.tensor([k in sums for k in keys]), values, values * weight
    )
    totals = all_reduce_sum(torch.cat([weighted, torch.tensor([float(weight)], dtype=torch.float64)]))
    total_weight = float(totals[-1]) or 1.0
    return {k: float(v) if k in sums else float(v) / total_weight for k, v in zip(keys, totals[:-1])}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now: a rendezvous endpoint for local runs (tests,
    benchmarks, a single-machine ``torchrun --rdzv-endpoint``)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def parameter_checksums(module: nn.Module) -> torch.Tensor:
    """A cheap fingerprint of the parameters: the float64 sum and the sum of squares."""
    total = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for p in module.parameters():
            data = p.detach().to("cpu", torch.float64)
            total += torch.stack([data.sum(), data.square().sum()])
    return total


def check_consistency(module: nn.Module, step: int) -> None:
    """Raise on every rank when the ranks' parameters have diverged (a bug, a desynchronised
    rank), naming the step and each rank's checksum."""
    ctx = context()
    if ctx.world_size == 1:
        return
    mine = parameter_checksums(module)
    mine = mine.to(_collective_device(mine))
    gathered = [torch.zeros_like(mine) for _ in range(ctx.world_size)]
    torch_dist.all_gather(gathered, mine)
    reference = gathered[0]
    if any(not torch.equal(g, reference) for g in gathered[1:]):
        sums = ", ".join(f"rank {r}: {float(g[0]):.10g}" for r, g in enumerate(gathered))
        raise RuntimeError(f"ranks' parameters diverged at step {step} (parameter sums {sums})")


# --------------------------------------------------------------------------------------
# Synchronised BatchNorm
# --------------------------------------------------------------------------------------


class DistributedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics are over the global batch, on any device.

    torch's ``SyncBatchNorm`` runs on GPU/XPU tensors only; this is its CPU (gloo)
    counterpart. Per-channel sums, sums of squares and counts are all-reduced with
    ``torch.distributed.nn.functional.all_reduce``, which is autograd-aware, so the
    gradient flows through the global statistics as in a one-process BatchNorm over the
    whole batch. Running statistics are updated from the global statistics, identically
    on every rank (the unbiased variance, as ``nn.BatchNorm2d``).

    Shapes:
        input [B, C, ...] -> output [B, C, ...].
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not self.training or context().world_size == 1:
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce  # sums gradients over ranks in backward

        dims = [0, *range(2, input.dim())]
        x = upcast(input)
        channels = x.shape[1]
        count = torch.tensor([float(x.numel() // channels)], dtype=x.dtype, device=x.device)
        # two passes (mean, then squared deviations), as accurate as one process's BatchNorm
        sums = all_reduce(torch.cat([x.sum(dims), count]))
        total = sums[-1]
        mean = sums[:channels] / total
        shape = [1, channels] + [1] * (input.dim() - 2)
        centred = x - mean.reshape(shape)
        var = all_reduce(centred.square().sum(dims)) / total
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * total / (total - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.to(self.running_var.dtype))
        out = centred / torch.sqrt(var.reshape(shape) + self.eps)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm layers replaced by synchronised ones: torch's ``SyncBatchNorm`` on
    CUDA, ``DistributedBatchNorm`` elsewhere. Weights, buffers, names, training mode and
    which parameters take gradients (a locked tower's) are kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, DistributedBatchNorm):
        if list(module.children()):  # timm's BatchNormAct2d and kin fuse more than the norm
            raise ValueError(
                f"cannot synchronise {type(module).__name__} on {module.weight.device}: it holds layers beyond the "
                "norm; use plain BatchNorm layers, a GPU (SyncBatchNorm), or train.sync_batchnorm: false"
            )
        like = next(iter([*module.parameters(), *module.buffers()]), None)  # keep the layer's device and dtype
        new = DistributedBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
            device=like.device if like is not None else None,
            dtype=like.dtype if like is not None and like.is_floating_point() else None,
        )
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        for name, param in new.named_parameters():  # a locked tower's norms stay locked
            param.requires_grad_(getattr(module, name).requires_grad)
        return new
    for name, child in module.named_children():
        converted = _convert(child)
        if converted is not child:
            setattr(module, name, converted)
    return module
