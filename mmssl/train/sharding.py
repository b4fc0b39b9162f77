"""Fully sharded data parallel (``train.parallel: fsdp``) on PyTorch's FSDP2.

``shard`` applies ``torch.distributed.fsdp.fully_shard`` bottom-up: every block of
every encoder in the model (``mmssl.model.block_modules``: the built-in encoders'
transformer blocks, residual stages, graph convolutions; the encoder copies objectives
keep, such as BYOL's target, alike) but embedding tables, then the root, the module the trainer calls once
a micro-step (model and loss weighting together). Each block's parameters are gathered
just before it runs and freed after it, in forward and backward; what lies outside
every block (projection heads, learned temperatures, uncertainty weights, BYOL's
predictor, cluster prototypes, an encoder's embeddings) is sharded in the root's
group, gathered for the whole step. Embedding tables stay there too: objectives read
them outside the embedding's own call (MLM's decoder tied to the token embedding),
where a block's parameters would be shards. Buffers (BatchNorm statistics, memory banks,
centroids) are not sharded: every rank keeps them, as under DDP.

Outside a forward every parameter is a ``DTensor`` holding this rank's shard; its
gradient too. The helpers here read norms and finiteness of such gradients.
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from mmssl.model import block_modules
from modalities.base import Encoder

log = logging.getLogger(__name__)


def mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """FSDP2's policy for ``train.precision``: bf16 gathers bf16 parameters for compute
    and reduce-scatters gradients in float32 (stated: the reduce dtype defaults to the
    parameter dtype); fp32 and fp64 compute and reduce in the parameters' own dtype."""
    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if precision in ("fp32", "fp64"):
        return MixedPrecisionPolicy()
    raise ValueError(f"train.precision={precision} is not supported under train.parallel=fsdp (use bf16)")


def shard(root: nn.Module, precision: str) -> int:
    """Shard ``root`` over the default process group: each encoder block, then ``root``.
    Returns the number of block groups. Parameters keep their names and state dict keys."""
    policy = mixed_precision(precision)
    blocks = [
        block for encoder in root.modules() if isinstance(encoder, Encoder)
        for block in block_modules(encoder) if not isinstance(block, nn.Embedding)
    ]
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(root, mp_policy=policy)
    log.info("train.parallel=fsdp: %d encoder blocks sharded one by one, the rest in the root", len(blocks))
    return len(blocks)


def is_sharded(module: nn.Module) -> bool:
    return isinstance(module, FSDPModule)


def set_gradient_sync(root: nn.Module, sync: bool) -> None:
    """Gradient accumulation: off on the micro-steps before the last, gradients add up
    unsharded on each rank and parameters stay gathered between micro-steps; on for the
    last, whose backward reduce-scatters the sum once."""
    for module in root.modules():
        if isinstance(module, FSDPModule):
            module.set_requires_gradient_sync(sync, recurse=False)
            module.set_reshard_after_backward(sync, recurse=False)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor`` (the tensor itself when it is not a DTensor)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def total_norm(grads: Iterable[torch.Tensor]) -> torch.Tensor:
    """The 2-norm over all of ``grads``, sharded or not, as a plain tensor (the same on
    every rank: a sharded norm is reduced over ranks)."""
    norm = torch.nn.utils.get_total_norm(list(grads))
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def all_finite(grads: Iterable[torch.Tensor]) -> bool:
    """Whether this rank's part of every gradient is finite (reduce the answer over
    ranks for the whole). A host sync per gradient: see ``any_nonfinite``."""
    return all(bool(torch.isfinite(local(g)).all()) for g in grads)


def any_nonfinite(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Whether any element of this rank's part of ``tensors`` is not finite, as a 0-d
    bool tensor on their device: nothing is read to the host here (reduce it over ranks
    for the whole)."""
    bad = torch.zeros((), dtype=torch.bool)
    for t in tensors:
        bad = bad | ~torch.isfinite(local(t)).all()
    return bad
