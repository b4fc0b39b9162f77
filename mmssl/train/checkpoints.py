"""One run directory's checkpoints, for pretraining and fine-tuning alike.

``CheckpointManager`` holds the directory (the run lock), prepares it at start,
saves a checkpoint atomically and prunes the old ones, and finds the latest usable
checkpoint to resume from. ``rng_state`` / ``set_rng_state`` capture and restore every
random generator a run draws from (torch CPU, CUDA, numpy's global, Python's
``random``), which a checkpoint saves for an exact resume.

What a checkpoint holds is its user's: ``mmssl.train.checkpoint`` writes and reads the
pretraining files, ``mmssl.transfer.finetune`` the fine-tuning ones; both go through
``write_checkpoint_dir``. The manager is one process's: under torchrun the trainer calls
its writing methods on rank 0 only.
"""

from __future__ import annotations

import contextlib
import logging
import random
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import torch

from mmssl.common.atomic import check_writable, remove_dead_temporaries
from mmssl.train.checkpoint import (
    FILES,
    CheckpointError,
    CorruptCheckpointError,
    check_complete,
    checkpoint_dir,
    checkpoints_root,
    list_checkpoints,
    prune_checkpoints,
    remove_stale_temporaries,
    resolve_checkpoint,
    write_checkpoint_dir,
)
from mmssl.train.run_lock import RunLock, hold_run_directory

log = logging.getLogger(__name__)

T = TypeVar("T")


class CheckpointManager:
    """The checkpoints (``checkpoints/step_*``) of one run directory.

    Args:
        output_dir: the run directory.
        keep: how many of the newest checkpoints a save keeps (0 keeps all).
        files: the files every checkpoint of this format holds (``check_complete``).
        start_over: how to start over, for the error when no checkpoint is readable.
    """

    def __init__(
        self,
        output_dir: str | Path,
        keep: int,
        files: Sequence[str] = FILES,
        start_over: str = "move them away to start over",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.root = checkpoints_root(self.output_dir)
        self.keep = keep
        self.files = tuple(files)
        self.start_over = start_over
        self._lock: RunLock | None = None

    def hold(self) -> None:
        """Take the run lock (``mmssl.train.run_lock``), creating the directory.

        Raises:
            RunDirectoryInUse: another live run holds it; the message names that run.
        """
        self._lock = hold_run_directory(self.output_dir)

    def release(self) -> None:
        """Give the run lock back (nothing if not held)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @contextlib.contextmanager
    def holding(self) -> Iterator["CheckpointManager"]:
        """``with manager.holding():`` the run lock for the block (``hold``, ``release``)."""
        self.hold()
        try:
            yield self
        finally:
            self.release()

    def prepare(self) -> None:
        """Fail now, not at the first save, if the directory cannot be written; clear what
        killed writers left: small files' temporaries, then checkpoint debris (before
        resume looks).

        Raises:
            OutputError: the directory is not writable, naming it and why.
        """
        check_writable(self.output_dir)
        remove_dead_temporaries(self.output_dir)
        remove_stale_temporaries(self.root)

    def path(self, step: int) -> Path:
        """The directory of ``step``'s checkpoint."""
        return checkpoint_dir(self.output_dir, step)

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """``step``'s checkpoint, whole or not at all (``write(tmp)`` writes its files;
        ``write_checkpoint_dir``), then the old ones beyond ``keep`` pruned.

        Raises:
            OutputError: it could not be written; the checkpoints saved before are intact.
        """
        final = write_checkpoint_dir(self.output_dir, step, write)
        prune_checkpoints(self.output_dir, self.keep)
        return final

    def latest(self, load: Callable[[Path], T], named: str | Path | None = None) -> tuple[Path, T] | None:
        """The newest checkpoint here that is complete and that ``load`` reads, with what
        ``load`` returned; None when there is no checkpoint.

        A corrupt or incomplete checkpoint (``CorruptCheckpointError`` from
        ``check_complete`` or ``load``: a file missing, truncated, unreadable or refused)
        is skipped for the one before it, with a warning naming it and why; if none is
        readable, a ``CheckpointError`` says so. Any other error of ``load`` (a checkpoint
        of another config) is raised, never skipped. ``named`` (a checkpoint directory, or
        a run directory's latest) is the only one tried: a problem with it is an error.
        """
        candidates = [resolve_checkpoint(named)] if named is not None else list_checkpoints(self.output_dir)[::-1]
        for checkpoint in candidates:
            try:
                check_complete(checkpoint, self.files)
                return checkpoint, load(checkpoint)
            except CorruptCheckpointError as exc:
                if named is not None:
                    raise
                log.warning("skipping checkpoint %s: %s", checkpoint, exc)
        if not candidates:
            return None
        raise CheckpointError(
            f"no readable checkpoint in {self.root}: all {len(candidates)} are corrupt or incomplete "
            f"(see the warnings); {self.start_over}"
        )


def rng_state() -> dict[str, Any]:
    """Every random generator's state: torch's CPU generator, numpy's global one and
    Python's ``random``, and each GPU's where CUDA is available; plain tensors and
    containers (a checkpoint loads it with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators ``state`` (of ``rng_state``) holds; one it lacks (a
    checkpoint saved before it was captured) is left as it is."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "python" in state:
        random.setstate(_tuplify(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x: Any) -> Any:
    """Python's ``random`` state with its lists (as a checkpoint loads them) as tuples."""
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x
