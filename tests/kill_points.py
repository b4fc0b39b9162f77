"""Run ``mmssl-pretrain`` and SIGKILL it at a named point of its work, as a crash would.

``python -m tests.kill_points POINT HIT -- PRETRAIN_ARGS...`` (from the repository root) patches one function of
the trainer, the data pipeline, the checkpoint writer or the run log so that its
``HIT``-th call in a process SIGKILLs its whole process group (its DataLoader workers
with it), then runs ``mmssl.cli.pretrain.main``. The kill harness
(``tests/test_kill_resume.py``) starts it in a session of its own, so the group is the
run and nothing else. Under torchrun every rank patches the same point; torchrun gives
each rank a process group of its own, so the first rank to get there dies, and torchrun
stops the others and fails, as when a node of a job is lost.

The points, in the order a step meets them:

| point | dies |
| --- | --- |
| ``worker_batch`` | in a DataLoader worker, halfway through building a batch |
| ``forward`` | after the joint forward of a step, before its backward |
| ``backward`` | after the backward, before gradients are unscaled and checked |
| ``optimizer`` | after the optimizer update, before the scaler and the lr scheduler step |
| ``metrics_line`` | after a line is appended to metrics.jsonl, before the step's checkpoint |
| ``checkpoint_file`` | with every file of a checkpoint written into its temporary directory, before the HIT-th is fsynced |
| ``checkpoint_rename`` | with every file and the temporary directory fsynced, before the rename |
| ``checkpoint_dir_fsync`` | at a directory fsync of a save or a prune (after the rename, after moving an old checkpoint to the trash) |

Runs under ``train.parallel=fsdp`` (sharded checkpoints) have one more, not in
``POINTS`` (a run that writes no shards never meets it):

| point | dies |
| --- | --- |
| ``shard_write`` | before DCP writes the HIT-th tensor of a rank's shard file: a shard half written, no metadata; under ``train.async_checkpoint`` in the background thread while training goes on |
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from typing import Any, Callable

import torch
import torch.distributed.checkpoint.filesystem

import mmssl.train.checkpoint
import mmssl.data.stream
import mmssl.train.run_log
import mmssl.train.trainer
from mmssl.cli import pretrain


def die() -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)


def _counted(fn: Callable[..., Any], hit: int, before: bool, only: Callable[[], bool] = lambda: True) -> Callable[..., Any]:
    calls = 0

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        if only():
            calls += 1
        if before and calls == hit and only():
            die()
        result = fn(*args, **kwargs)
        if not before and calls == hit and only():
            die()
        return result

    return wrapper


def _in_worker() -> bool:
    return torch.utils.data.get_worker_info() is not None


# point -> (owner, attribute, die before the call (else after it), which calls count)
PATCHES: dict[str, tuple[Any, str, bool, Callable[[], bool]]] = {
    "worker_batch": (mmssl.data.stream.StreamBatches, "_build", True, _in_worker),
    "forward": (mmssl.train.trainer.JointForward, "forward", False, lambda: True),
    "backward": (torch.amp.GradScaler, "unscale_", True, lambda: True),
    "optimizer": (torch.amp.GradScaler, "update", True, lambda: True),
    "metrics_line": (mmssl.train.run_log.RunLog, "log", False, lambda: True),
    "checkpoint_file": (mmssl.train.checkpoint, "fsync_file", True, lambda: True),
    "checkpoint_rename": (mmssl.train.checkpoint, "_put_in_place", True, lambda: True),
    "checkpoint_dir_fsync": (mmssl.train.checkpoint, "fsync_dir", True, lambda: True),
}
POINTS = tuple(PATCHES)
SHARDED_PATCHES: dict[str, tuple[Any, str, bool, Callable[[], bool]]] = {
    "shard_write": (torch.distributed.checkpoint.filesystem, "_write_item", True, lambda: True),
}


def arm(point: str, hit: int) -> None:
    """Patch ``point`` so that its ``hit``-th counted call in this process kills the run."""
    patches = {**PATCHES, **SHARDED_PATCHES}
    if point not in patches:
        raise SystemExit(f"unknown kill point {point!r}; known: {', '.join(patches)}")
    owner, name, before, only = patches[point]
    setattr(owner, name, _counted(getattr(owner, name), hit, before, only))


if __name__ == "__main__":
    point, hit, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: python -m tests.kill_points POINT HIT -- PRETRAIN_ARGS..."
    arm(point, int(hit))
    sys.exit(pretrain.main(args))
