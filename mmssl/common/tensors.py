"""Writing tensors that may be sharded (FSDP2 keeps parameters as ``DTensor`` shards)."""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor, distribute_tensor


def assign(param: torch.Tensor, value: torch.Tensor) -> None:
    """``param[...] = value`` without autograd, for a plain tensor or a sharded one (each
    rank keeps its part of ``value``, which every rank holds whole and alike)."""
    with torch.no_grad():
        if isinstance(param, DTensor):
            value = distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements, src_data_rank=None)
        param.copy_(value)


class _Replaced(torch.autograd.Function):
    """Forward: ``value``, exactly; backward: the gradient goes to ``param`` as if it had
    been ``param`` (a straight-through stand-in)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def replaced(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` in place of ``param`` in a forward, gradients flowing to ``param``: what a
    forward computes with when it means ``param`` to become ``value`` at
    ``before_optimizer_step`` (a forward must not write parameters: under FSDP it sees
    gathered copies)."""
    return _Replaced.apply(param, value)
