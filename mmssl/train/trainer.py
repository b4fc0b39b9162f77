"""The training loop: every objective's weighted loss, one optimizer, exact resume.

Read ``Pretrainer.fit`` top to bottom: resume, then per step fetch each objective's
batch, sum the weighted losses, backward (accumulating micro-batches), clip, step
optimizer and scheduler, log, checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import sys
import time
from concurrent.futures import Future
from dataclasses import dataclass
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from mmssl.train import distributed, sharded_checkpoint, sharding
from mmssl.train.device import (
    configure_backends,
    move_to,
    pins_memory,
    read_to_host,
    resolve_device,
    resolve_precision,
    to_channels_last,
    uses_channels_last,
)
from mmssl.common.sharded_files import SHARDED, is_sharded
from mmssl.common.atomic import OutputError, write_text_atomic
from mmssl.common.plots import plot_losses
from mmssl.common.weights import fit_optimizer_state_shapes
from mmssl.train.checkpoint import (
    CheckpointError,
    begin_checkpoint_dir,
    checkpoint_writer,
    discard_checkpoint_dir,
    finish_checkpoint_dir,
    prune_checkpoints,
    describe_differences,
    check_extra_state,
    check_weights_fit,
    list_checkpoints,
    load_trainer_state,
    load_weights,
    read_checkpoint_weights,
)
from mmssl.train.checkpoints import CheckpointManager, rng_state, set_rng_state
from mmssl.train.ema import ModelEma
from mmssl.config import RunConfig
from mmssl.train.encoder_sharing import share_encoder_calls
from mmssl.train.flops import Throughput
from mmssl.model import MultimodalModel, build_model, compile_encoders, enable_grad_checkpointing
from mmssl.train.optim import build_optimizer, build_scheduler
from mmssl.train.run_log import RunLog, read_metrics
from mmssl.train.trackers import RunInfo, environment, git_revision
from mmssl.train.schedule import ObjectiveSchedule
from mmssl.data import Stream, build_streams
from mmssl.train.weighting import LossWeighting, build_weighting

log = logging.getLogger(__name__)

Callback = Callable[["Pretrainer", dict[str, Any]], None]
SUMMARY = "train_summary.json"
LOSS_PLOT = "losses.png"


class JointForward(torch.nn.Module):
    """One micro-step's active objectives and their weighted sum, as one module call.

    This is the call DistributedDataParallel wraps: DDP allows one forward per
    backward, and the loss weighting's own parameters (uncertainty log-variances) must
    be inside it to have their gradients averaged over ranks too.
    """

    def __init__(self, model: MultimodalModel, weighting: LossWeighting) -> None:
        super().__init__()
        self.model = model
        self.weighting = weighting

    def forward(self, batches: Mapping[str, Any], share_calls: bool) -> tuple[Any, ...]:
        """Returns (weighted total, losses, this rank's loss values as one float64 tensor,
        metrics by objective, effective weights), all on the device: the trainer reads the
        values with the step's others, after the backward pass (``Pretrainer.train_step``
        sums them over ranks there: a loss that is not finite on any rank makes its mean
        non-finite on every rank, so every rank skips the step alike)."""
        if share_calls and len(batches) > 1:
            share_encoder_calls(self.model.objectives, self.model.encoders, batches)
        losses: dict[str, torch.Tensor] = {}
        metrics: dict[str, dict[str, torch.Tensor | float]] = {}
        for name, batch in batches.items():
            out = self.model(name, batch)
            losses[name] = out.loss
            metrics[name] = out.metrics
        values = torch.stack([loss.detach().double() for loss in losses.values()])
        observed = None
        if self.weighting.observes_losses:  # it learns from each loss's mean over ranks, as Python floats: read now
            ranks = distributed.context().world_size
            observed = {n: v / ranks for n, v in zip(losses, distributed.all_reduce_sum(values).tolist())}
        total, weights = self.weighting.combine(losses, observed)
        return total, losses, values, metrics, weights


@dataclass
class PendingSave:
    """A sharded save whose shards are written (or being written, ``future``) into
    ``tmp``; ``state`` is the trainer state of ``step`` that rank 0 adds."""

    step: int
    path: Path
    tmp: Path
    future: Future | None
    state: dict[str, Any]


class NonFiniteStepsError(FloatingPointError):
    """More than ``train.max_bad_steps`` steps in a row were skipped as non-finite; the
    run saved a checkpoint (of the weights before them) and stopped."""


def batch_size_of(batch: Mapping[str, Any], modality: str) -> int:
    first = batch[modality]
    if hasattr(first, "num_graphs"):
        return int(first.num_graphs)
    tensor = next(v for v in first.values() if torch.is_tensor(v)) if isinstance(first, Mapping) else first
    return int(tensor.shape[0])


class Pretrainer:
    """Joint pretraining of all configured objectives.

    Args:
        config: the validated run config.
        output_dir: where checkpoints, metrics.jsonl, TensorBoard events, losses.png and
            train_summary.json go.
        model: a prebuilt model (default: built from ``config``).
        streams: prebuilt data streams by objective name (default: from ``config``).
        callbacks: called after every optimizer step with the step's metrics.

    Example:
        cfg = mmssl.load_config("configs/tiny.yaml", ["train.steps=20"])
        mmssl.Pretrainer(cfg, "runs/tiny").fit()
    """

    def __init__(
        self,
        config: RunConfig,
        output_dir: str | Path,
        model: MultimodalModel | None = None,
        streams: Mapping[str, Stream] | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.config = config
        self.train_cfg = config.train
        self.output_dir = Path(output_dir)
        self.device = resolve_device(self.train_cfg.device)
        self.precision = resolve_precision(self.train_cfg.precision, self.device)  # auto: bf16 on a GPU, fp32 here
        configure_backends(self.device, self.train_cfg.tf32, self.train_cfg.cudnn_benchmark)
        if self.train_cfg.threads:
            torch.set_num_threads(self.train_cfg.threads)
        self.dist = distributed.context()
        # fp64 keeps every parameter and buffer in float64 (batches follow in move_to)
        self.dtype = torch.float64 if self.precision == "fp64" else None
        # a run that resumes takes its weights from the checkpoint: pretrained files are not
        # read again (they may be gone); a resume that fails says so before any training
        if model is None:
            model = build_model(config, self.dist, pretrained=not self._has_checkpoint_to_resume())
        self.model = model.to(self.device, self.dtype)
        self.channels_last = uses_channels_last(self.train_cfg.channels_last, self.device)
        if self.channels_last:
            log.info("channels-last memory format: %s", to_channels_last(self.model) or "no convolutional encoder")
        if self.dist.world_size > 1 and self.train_cfg.sync_batchnorm:
            self.model = distributed.convert_sync_batchnorm(self.model, self.device)
        # after the BatchNorm conversion, which replaces layers; before DDP wraps the model
        self.checkpointed = enable_grad_checkpointing(self.model, self.train_cfg.grad_checkpointing)
        self.compiled = compile_encoders(self.model, self.train_cfg.compile)
        if self.checkpointed or self.compiled:
            log.info("activation checkpointing: %s; torch.compile: %s", self.checkpointed or "none", self.compiled or "none")
        self.streams = (
            dict(streams) if streams is not None
            else build_streams(config, self.model, self.dist.rank, self.dist.world_size, pin_memory=pins_memory(self.device))
        )
        missing = [n for n in self.model.objectives if n not in self.streams]
        if missing:
            raise ValueError(f"no data stream for objectives {missing}")
        weights = {name: config.objectives[name].weight if name in config.objectives else 1.0 for name in self.model.objectives}
        self.weighting: LossWeighting = build_weighting(
            self.train_cfg.weighting, weights, self.train_cfg.initial_loss_steps
        ).to(self.device, self.dtype)
        probabilities = {n: config.objectives[n].probability for n in self.model.objectives if n in config.objectives}
        every = {n: config.objectives[n].every for n in self.model.objectives if n in config.objectives}
        self.schedule = ObjectiveSchedule(self.train_cfg.schedule, list(self.model.objectives), probabilities, config.seed, every)
        # step FLOPs (counted once per active objectives and batch shapes), tflops and mfu;
        # per objective where the schedule runs objectives apart
        self.throughput = Throughput(
            self.train_cfg.count_flops, self.compiled, self.device, self.precision, self.train_cfg.peak_tflops,
            per_objective=self.train_cfg.schedule != "all" or any(e > 1 for e in every.values()), main=distributed.is_main(),
        )
        joint = self.joint = JointForward(self.model, self.weighting)
        self.forward_module: torch.nn.Module = joint
        # restored when a step is skipped: BatchNorm statistics, the weighting's loss means
        self._buffers = list(joint.buffers())
        # fsdp shards over the process group, whatever its size; a plain run has none
        self.sharded = self.train_cfg.parallel == "fsdp" and torch.distributed.is_initialized()
        if self.sharded:
            sharding.shard(joint, self.precision)
        elif self.dist.world_size > 1:
            # objectives that sit a step out leave parameters without gradients
            self.forward_module = torch.nn.parallel.DistributedDataParallel(
                joint,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        self.optimizer = build_optimizer(self.model, self.train_cfg, extra=list(self.weighting.parameters()))
        self.scheduler = build_scheduler(self.optimizer, self.train_cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        # train.ema: a moving average of the weights, in every checkpoint (mmssl.train.ema)
        self.ema = ModelEma(self.model, self.train_cfg.ema) if self.train_cfg.ema is not None else None
        # background saves (train.async_checkpoint) run their collectives in a group of their own
        self._checkpoint_group = sharded_checkpoint.new_checkpoint_group() if self.sharded and self.train_cfg.async_checkpoint else None
        self._pending_save: PendingSave | None = None
        self.callbacks = list(callbacks)
        self.checkpoints = CheckpointManager(
            self.output_dir, self.train_cfg.keep_checkpoints, start_over="move them away, or start over with train.resume=none"
        )
        self.step = 0
        self._saved_step: int | None = None  # the step of the checkpoint last saved or loaded here
        self.run_log: RunLog | None = None  # metrics.jsonl, while fit() runs
        self.summary: dict[str, Any] = {}  # train_summary.json, once fit() has run
        self.history: list[dict[str, Any]] = []
        # per-objective metric sums and counts since the last log line (saved with checkpoints)
        self._pending: dict[str, list[float]] = {}
        self.nonfinite_steps = 0  # steps skipped for a non-finite loss or gradient, in all
        self.bad_steps_in_a_row = 0  # ... and in a row up to this step (train.max_bad_steps)
        self.last_bad_reason = ""  # what made the last skipped step non-finite, for the stop message

    # --- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The trainer's state for a checkpoint. A sharded run's optimizer and weighting
        state go into the DCP shards instead (``sharded_checkpoint.training_state``); the
        optimizer's parameter names and initial learning rates stay here, to check a
        resume against."""
        sharded = {
            "optimizer_initial_lrs": [g["initial_lr"] for g in self.optimizer.param_groups],
        } if self.sharded else {"optimizer": self.optimizer.state_dict(), "weighting": self.weighting.state_dict()}
        return {
            "step": self.step,
            **sharded,
            "optimizer_param_names": self._optimizer_param_names(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "streams": {name: self._global_stream_state(s) for name, s in self.streams.items()},
            "pending_metrics": {k: list(v) for k, v in self._pending.items()},
            "nonfinite_steps": {"total": self.nonfinite_steps, "in_a_row": self.bad_steps_in_a_row},
            "rng": rng_state(),
        }

    def _global_stream_state(self, stream: Stream) -> dict[str, int]:
        """A stream's position (the same on every rank) with its counts summed over ranks."""
        state = stream.state_dict()
        counts = distributed.all_reduce_sum(torch.tensor([state["samples"], state["skipped"]], dtype=torch.long))
        return {**state, "samples": int(counts[0]), "skipped": int(counts[1])}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "lr_lambdas" not in state["scheduler"]:
            raise ValueError(
                "the checkpoint's lr scheduler state is from an older mmssl (before the schedule became one "
                "LambdaLR); its weights load for evaluation, but training cannot resume from it (train.resume=none "
                "starts over)"
            )
        self._check_optimizer_groups(state)
        if "optimizer" in state:  # else loaded with the weights (a sharded checkpoint, or a sharded run)
            self._check_optimizer_fits(state["optimizer"], state.get("optimizer_param_names"))
            self.optimizer.load_state_dict(self._fit_optimizer_state(state["optimizer"]))
        self.step = int(state["step"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        for name, stream_state in state["streams"].items():
            if name not in self.streams:
                raise ValueError(f"checkpoint has a stream '{name}' that this run does not configure")
            if self.dist.rank > 0:  # rank 0 carries the saved global counts, so sums over ranks stay global
                stream_state = {**stream_state, "samples": 0, "skipped": 0}
            self.streams[name].load_state_dict(stream_state)
        if "weighting" in state:
            try:
                self.weighting.load_state_dict(state["weighting"])
            except RuntimeError as exc:  # torch lists the keys over several lines
                raise ValueError(f"the loss weighting state does not fit train.weighting={self.train_cfg.weighting}: "
                                 + " ".join(str(exc).split())) from None
        self._pending = {k: [float(v[0]), int(v[1])] for k, v in state.get("pending_metrics", {}).items()}
        nonfinite = state.get("nonfinite_steps", {})
        self.nonfinite_steps = int(nonfinite.get("total", 0))
        self.bad_steps_in_a_row = int(nonfinite.get("in_a_row", 0))
        set_rng_state(state["rng"])

    def _fit_optimizer_state(self, saved: Mapping[str, Any]) -> dict[str, Any]:
        """A saved optimizer state with moments of parameters saved 0-d (before those
        became [1]) reshaped to this run's parameters."""
        return fit_optimizer_state_shapes(saved, [g["params"] for g in self.optimizer.param_groups])

    def _check_optimizer_groups(self, state: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` when a checkpoint's optimizer groups start at other learning
        rates than this run's."""
        if "optimizer" in state:
            saved_lrs = [g.get("initial_lr") for g in state["optimizer"]["param_groups"]]
        else:
            saved_lrs = list(state.get("optimizer_initial_lrs", []))
        run_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
        if saved_lrs != run_lrs:
            raise ValueError(
                f"the checkpoint's optimizer groups start at lr {saved_lrs}, this run's at {run_lrs}: "
                "resume with the train.lr and train.lr_scale it was saved with"
            )

    def _optimizer_param_names(self) -> list[list[str]]:
        """The name of each parameter of each optimizer group, in the optimizer's order
        (its state refers to parameters by position only)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        names |= {id(p): f"weighting.{n}" for n, p in self.weighting.named_parameters()}
        return [[names.get(id(p), "?") for p in group["params"]] for group in self.optimizer.param_groups]

    def _check_optimizer_names(self, saved_names: list[list[str]] | None) -> None:
        """Raise ``ValueError`` when a checkpoint's optimizer held other parameters, or in
        another order, than this run's."""
        names = self._optimizer_param_names()
        if saved_names is None or saved_names == names:
            return
        sizes, saved_sizes = [len(g) for g in names], [len(g) for g in saved_names]
        if sizes != saved_sizes:
            raise ValueError(
                f"the optimizer state does not fit this run's optimizer: parameters per group {saved_sizes} in the "
                f"checkpoint, {sizes} here (train.weighting, train.lr_scale or the trainable parameters differ)"
            )
        moved = [(a, b) for group, saved_group in zip(names, saved_names) for a, b in zip(saved_group, group) if a != b]
        raise ValueError(
            f"the optimizer state does not fit this run's optimizer: {len(moved)} parameters in another place "
            f"(another config, or its modalities or objectives in another order): "
            + "; ".join(f"checkpoint {a}, here {b}" for a, b in moved[:4]) + (f"; and {len(moved) - 4} more" if len(moved) > 4 else "")
        )

    def _check_optimizer_fits(self, saved: Mapping[str, Any], saved_names: list[list[str]] | None) -> None:
        """Raise ``ValueError`` saying how a saved optimizer state differs from this run's
        optimizer: parameters per group, parameter names by position (saved since they
        were added to checkpoints) or moment shapes. torch would load it regardless, or
        reject it without saying where."""
        names = self._optimizer_param_names()
        sizes, saved_sizes = [len(g) for g in names], [len(g["params"]) for g in saved["param_groups"]]
        if sizes != saved_sizes:
            raise ValueError(
                f"the optimizer state does not fit this run's optimizer: parameters per group {saved_sizes} in the "
                f"checkpoint, {sizes} here (train.weighting, train.lr_scale or the trainable parameters differ)"
            )
        self._check_optimizer_names(saved_names)
        shapes = [
            (f"{name} ({key})", tuple(value.shape), tuple(param.shape))
            for group, group_names, saved_group in zip(self.optimizer.param_groups, names, saved["param_groups"])
            for param, name, index in zip(group["params"], group_names, saved_group["params"])
            for key, value in saved["state"].get(index, {}).items()
            if torch.is_tensor(value) and value.ndim > 0 and value.shape != param.shape
        ]
        if shapes:
            raise ValueError(f"the optimizer state does not fit this run's parameters: {describe_differences(shapes, [], [])}")

    def save(self, background: bool = False) -> Path:
        """Save a checkpoint of this step (called on every rank: rank 0 writes, the others
        wait for it, so no rank reads or resumes from a half-written directory). A sharded
        run's ranks each write their shards; ``background`` (sharded runs) writes them
        while training goes on, and the checkpoint is put in place at the next save or
        the end of the run (``finish_pending_save``).

        Raises:
            OutputError: on every rank, when it could not be written (disk full, no
                permission); the checkpoints saved before are intact.
        """
        if self.sharded:
            return self._save_sharded(background)
        state = self.state_dict()
        path = self.checkpoints.path(self.step)

        def write() -> None:
            if self.run_log is not None:  # the log lines of the steps it holds are durable before it
                self.run_log.sync()
            ema = self.ema.state_dict() if self.ema is not None else None
            self.checkpoints.save(self.step, checkpoint_writer(self.step, self.model, state, self.config, ema=ema))

        self._write_on_main(write, f"rank 0 could not save {path}")
        self._saved_step = self.step
        return path

    def _save_sharded(self, background: bool) -> Path:
        """Every rank writes its shards into a temporary directory rank 0 names; then rank
        0 adds the trainer state, config and meta, fsyncs and renames it into place
        (``checkpoint.finish_checkpoint_dir``) and prunes."""
        self.finish_pending_save()  # one save at a time: its temporary is not debris
        state = self.state_dict()
        step, path = self.step, self.checkpoints.path(self.step)
        box: list[Any] = [None]

        def begin() -> None:
            box[0] = str(begin_checkpoint_dir(self.output_dir, step))

        self._write_on_main(begin, f"rank 0 could not save {path}")
        torch.distributed.broadcast_object_list(box, src=0)
        tmp = Path(box[0])
        shards = sharded_checkpoint.training_state(self.model, self.weighting, self.joint, self.optimizer)
        try:
            future = sharded_checkpoint.save_shards(
                shards, tmp / SHARDED, self._checkpoint_group, background=background
            )
        except OSError as exc:
            self._write_on_main(functools.partial(discard_checkpoint_dir, tmp), f"rank 0 could not remove {tmp}")
            raise OutputError(f"cannot save checkpoint {path}: {exc}") from exc
        pending = PendingSave(step, path, tmp, future, state)
        if background:
            self._pending_save = pending
        else:
            self._finish(pending)
        self._saved_step = step
        return path

    def finish_pending_save(self) -> None:
        """Wait for a background save to end on every rank, then put it in place (every
        rank: a collective). Nothing when none is pending."""
        pending, self._pending_save = self._pending_save, None
        if pending is not None:
            self._finish(pending)

    def _finish(self, pending: PendingSave) -> None:
        error: BaseException | None = None
        if pending.future is not None:
            try:
                pending.future.result()
            except Exception as exc:  # noqa: BLE001 - every rank must learn of any rank's failure
                error = exc
        failed = int(distributed.all_reduce_sum(torch.tensor([int(error is not None)])))
        if failed:
            self._write_on_main(functools.partial(discard_checkpoint_dir, pending.tmp), f"rank 0 could not remove {pending.tmp}")
            raise OutputError(f"cannot save checkpoint {pending.path}: " + (str(error) if error else "a rank failed; see its error"))
        write = checkpoint_writer(pending.step, self.model, pending.state, self.config, sharded_by=self.dist.world_size)

        def put_in_place() -> None:
            if self.run_log is not None:  # the log lines of the steps it holds are durable before it
                self.run_log.sync()
            finish_checkpoint_dir(self.output_dir, pending.step, pending.tmp, write)
            prune_checkpoints(self.output_dir, self.checkpoints.keep)

        self._write_on_main(put_in_place, f"rank 0 could not save {pending.path}")

    def _write_on_main(self, write: Callable[[], None], failed_elsewhere: str) -> None:
        """Run ``write`` on rank 0; if it raises (an ``OutputError``, or anything else) every
        rank raises, rather than waiting in the next collective. A collective, so the other
        ranks also wait for the write to end."""
        error: Exception | None = None
        if distributed.is_main():
            try:
                write()
            except Exception as exc:
                error = exc
        failed = distributed.all_reduce_sum(torch.tensor([int(error is not None)]))
        if error is not None:
            raise error
        if int(failed):
            raise OutputError(f"{failed_elsewhere}; see its error")

    def _has_checkpoint_to_resume(self) -> bool:
        """Whether ``train.resume`` will load a checkpoint: one named, or (auto) one here."""
        resume = self.train_cfg.resume
        if resume == "none":
            return False
        return resume != "auto" or bool(list_checkpoints(self.output_dir))

    def maybe_resume(self) -> Path | None:
        """Load the checkpoint that ``train.resume`` names ("auto": latest here, if any).

        With "auto" a corrupt or incomplete checkpoint (a file missing, truncated,
        unreadable or refused) is skipped for the one before it, with a warning naming it
        and why; if none is readable, a ``CheckpointError`` says so. A checkpoint that does
        not fit this run's model or optimizer is an error, never skipped.
        """
        resume = self.train_cfg.resume
        if resume == "none":
            return None
        found = self.checkpoints.latest(self._load_checkpoint, named=None if resume == "auto" else resume)
        if found is None:
            return None
        checkpoint, state = found
        try:
            self.load_state_dict(state)
        except ValueError as exc:  # the optimizer, schedule, streams or weighting of another config
            raise CheckpointError(f"{checkpoint}: {exc}") from None
        if checkpoint.parent == self.checkpoints.root:
            self._saved_step = self.step
        log.info("resumed from %s at step %d", checkpoint, self.step)
        return checkpoint

    def _load_checkpoint(self, checkpoint: Path) -> dict[str, Any]:
        """A checkpoint's trainer state, its weights loaded into the model. Sharded and
        unsharded checkpoints load under either strategy; what is loaded with the weights
        here (the optimizer and weighting state, where a strategy changes) is left out of
        the state returned."""
        state = load_trainer_state(checkpoint)
        if self.ema is not None:
            self.ema.load(checkpoint)
        if not self.sharded and not is_sharded(checkpoint):
            load_weights(self.model, checkpoint, built_from="this run's config")
            return state
        check_weights_fit(self.model, checkpoint, built_from="this run's config")
        try:
            self._check_optimizer_groups(state)
            if "optimizer" in state:
                self._check_optimizer_fits(state["optimizer"], state.get("optimizer_param_names"))
            else:
                self._check_optimizer_names(state.get("optimizer_param_names"))
        except ValueError as exc:
            raise CheckpointError(f"{checkpoint}: {exc}") from None
        if is_sharded(checkpoint):
            sharded_checkpoint.load_shards(checkpoint, self.model, self.weighting, self.joint, self.optimizer)
        else:  # an unsharded checkpoint into a sharded run: whole tensors, sharded as they load
            sharded_checkpoint.load_full_into_sharded(
                self.joint, self.model, self.optimizer, read_checkpoint_weights(checkpoint, self.model),
                self._fit_optimizer_state(state["optimizer"]), state.get("optimizer_param_names") or self._optimizer_param_names(), prefix="model.",
            )
            if state.get("weighting"):
                sharded_checkpoint.set_full_state(self.weighting, state["weighting"])
        check_extra_state(self.model, checkpoint)
        state = {k: v for k, v in state.items() if k not in ("optimizer", "weighting")}
        return {**state, "optimizer_initial_lrs": [g["initial_lr"] for g in self.optimizer.param_groups]}

    # --- loop -------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        precision = self.precision
        if precision in ("fp32", "fp64"):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def active_objectives(self, step: int) -> list[str]:
        """Objectives that run at ``step``, as ``train.schedule`` says."""
        return self.schedule(step)

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``accum_steps`` micro-batches of every active objective.

        A step whose loss (any objective's) or gradient is not finite on any rank is
        skipped on every rank: no optimizer update, buffers put back, gradients dropped;
        the scheduler, the step counter and the streams advance as for any step. Under
        fp16 a non-finite gradient with finite losses is the GradScaler's to skip (it
        lowers its scale), not a skipped step here. The returned metrics say
        ``skipped``.

        What the step logs and decides on (losses, metrics, weights, the gradient norm and
        finiteness) stays on the device until the backward passes are done, then comes
        to the host in one transfer (``read_to_host``; over ranks, one all-reduce of the
        losses and flags): the host waits for the device once a step, not at each value.
        """
        cfg = self.train_cfg
        self.model.train()
        self.throughput.prepare()  # the peak FLOP/s, once, before the clock starts
        start = time.perf_counter()
        waited = {n: s.wait_seconds for n, s in self.streams.items()}
        active = self.active_objectives(self.step)
        diagnose = bool(cfg.grad_diagnostics_every) and self.step % cfg.grad_diagnostics_every == 0
        buffers = [b.clone() for b in self._buffers]
        # each micro-step's metrics by objective, this rank's loss values and weighted total:
        # tensors on the device, read after the backward passes
        micro_metrics: list[dict[str, dict[str, Any]]] = []
        micro_losses: list[torch.Tensor] = []
        micro_totals: list[torch.Tensor] = []
        weights: dict[str, torch.Tensor] = {}
        diagnostics: dict[str, torch.Tensor] = {}
        samples = 0
        for micro in range(cfg.accum_steps):
            batches = {name: move_to(next(self.streams[name]), self.device, self.dtype, self.channels_last) for name in active}
            samples += sum(batch_size_of(b, self.model.objectives[n].modalities[0]) for n, b in batches.items())
            last_micro = micro == cfg.accum_steps - 1
            # gradients are averaged over ranks once, on the last micro-step
            if self.sharded:
                if cfg.accum_steps > 1:
                    sharding.set_gradient_sync(self.joint, last_micro)
                sync = contextlib.nullcontext()
            else:
                sync = contextlib.nullcontext() if last_micro or self.dist.world_size == 1 else self.forward_module.no_sync()
            # the step's FLOPs: under torch's counter the first time its key is seen (same values)
            counting = self.throughput.count(active, batches, ("diagnostics",) if diagnose and micro == 0 else ())
            with sync, counting:
                with self._autocast():
                    total, losses, loss_values, metrics, weights = self.forward_module(batches, cfg.share_encoder_calls)
                micro_metrics.append(metrics)
                micro_losses.append(loss_values)
                if diagnose and micro == 0:
                    diagnostics = self.gradient_diagnostics(losses, weights)
                # backward even with a non-finite loss: DDP expects one after each forward
                self.scaler.scale(total / cfg.accum_steps).backward()
            micro_totals.append(total.detach().double())
        for objective in self.model.objectives.values():  # parameters an objective resets in its forward
            objective.before_optimizer_step(self.model)
        self.scaler.unscale_(self.optimizer)
        # the norm before clipping, non-finite if any element is (the weighting's few
        # parameters are checked beside it, as they are not clipped)
        grad_norm = sharding.total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        grad_nonfinite = sharding.any_nonfinite([grad_norm, *(p.grad for p in self.weighting.parameters() if p.grad is not None)])
        # the step's one read: losses, totals and the flag summed over ranks, so every rank
        # decides alike (DDP averaged the gradients; a loss's mean over ranks is its
        # one-process loss, DistContext)
        local, summed = read_to_host(
            {"metrics": micro_metrics, "weights": weights, "grad_norm": grad_norm, "diagnostics": diagnostics},
            {"losses": micro_losses, "totals": micro_totals, "grad_nonfinite": grad_nonfinite},
        )
        sums: dict[str, float] = defaultdict(float)
        nonfinite_losses: dict[str, float] = {}  # objective -> its loss (mean over ranks)
        total_value = 0.0
        ranks = self.dist.world_size
        for by_objective, loss_sums, total_sum in zip(local["metrics"], summed["losses"], summed["totals"]):
            observed = {name: value / ranks for name, value in zip(by_objective, loss_sums)}
            for name, values in by_objective.items():
                for key, value in {**values, "loss": observed[name]}.items():
                    sums[f"{name}/{key}"] += value / cfg.accum_steps
            nonfinite_losses.update({n: v for n, v in observed.items() if not math.isfinite(v)})
            total_value += total_sum / ranks / cfg.accum_steps
        weights, grad_norm_value, diagnostics = local["weights"], local["grad_norm"], local["diagnostics"]
        loss_bad, grad_bad = bool(nonfinite_losses), bool(summed["grad_nonfinite"])
        fp16_overflow = grad_bad and not loss_bad and self.scaler.is_enabled()
        skipped = loss_bad or (grad_bad and not fp16_overflow)
        if skipped:
            with torch.no_grad():
                for buffer, saved in zip(self._buffers, buffers):
                    buffer.copy_(saved)
            self._count_bad_step(nonfinite_losses)
        else:
            self.bad_steps_in_a_row = 0
            if not fp16_overflow:  # the scaler skips that step itself
                max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
                torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), max_norm, grad_norm)
            self.scaler.step(self.optimizer)
            if not fp16_overflow:  # the weights moved: so does state that follows them (BYOL's target)
                for objective in self.model.objectives.values():
                    objective.after_optimizer_step(self.model, self.step + 1, cfg.steps)
                if self.ema is not None:
                    self.ema.update(self.model, self.step)
        self.scaler.update()  # fp16: a non-finite gradient lowers the scale, skipped or not
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step += 1
        if cfg.distributed.check_every and self.step % cfg.distributed.check_every == 0 and not self.sharded:
            distributed.check_consistency(self.model, self.step)
        seconds = time.perf_counter() - start
        metrics = {
            "loss": total_value,
            "lr": lr,
            "grad_norm": grad_norm_value,
            "samples_per_s": samples / seconds,
            "step_s": seconds,
            **self.throughput.step_metrics(active, seconds),
            **sums,
            **{f"weight/{name}": w for name, w in weights.items()},
            **diagnostics,
        }
        if self.scaler.is_enabled():
            metrics["grad_scale"] = float(self.scaler.get_scale())
        for name, stream in self.streams.items():
            metrics[f"data/{name}/wait_s"] = stream.wait_seconds - waited[name]
        reduced = distributed.reduce_metrics(metrics, weight=samples, sums=("samples_per_s", *self.throughput.reduce_sums(metrics)))
        return {**self.throughput.finish(reduced), "skipped": skipped}

    def _count_bad_step(self, nonfinite_losses: Mapping[str, float]) -> None:
        """Count a skipped step and say why: the objectives whose loss was not finite, or
        the first parameter whose gradient was not."""
        self.nonfinite_steps += 1
        self.bad_steps_in_a_row += 1
        if nonfinite_losses:
            self.last_bad_reason = ", ".join(f"objective '{n}' loss {v}" for n, v in nonfinite_losses.items())
        else:
            name = self._first_nonfinite_gradient()
            where = f"'{name}'" if name is not None else "a parameter on another rank"
            self.last_bad_reason = f"gradient of {where} not finite"
        if distributed.is_main():
            log.warning(
                "step %d skipped (%s): %s; %d skipped in a row, %d in all",
                self.step + 1, "non-finite loss" if nonfinite_losses else "non-finite gradient",
                self.last_bad_reason, self.bad_steps_in_a_row, self.nonfinite_steps,
            )

    def _first_nonfinite_gradient(self) -> str | None:
        named = [*self.model.named_parameters(), *(("weighting." + n, p) for n, p in self.weighting.named_parameters())]
        for name, param in named:
            if param.grad is not None and not sharding.all_finite([param.grad]):
                return name
        return None

    def gradient_diagnostics(
        self, losses: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor | float]
    ) -> dict[str, torch.Tensor]:
        """Each objective's (weighted) gradient norm on the shared encoder named by
        ``train.grad_diagnostics_modality``, and the cosine between every two objectives'
        gradients there: negative cosines are objectives pulling the encoder apart. 0-d
        tensors, read with the step's other values."""
        key = self.train_cfg.grad_diagnostics_modality
        params = [p for p in self.model.encoders[key].parameters() if p.requires_grad]
        grads: dict[str, torch.Tensor] = {}
        for name, loss in losses.items():
            parts = torch.autograd.grad(weights[name] * loss, params, retain_graph=True, allow_unused=True)
            if all(g is None for g in parts):
                continue  # this objective does not use the encoder
            grads[name] = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten().float() for g, p in zip(parts, params)])
        out = {f"grad/{name}/{key}_norm": g.norm() for name, g in grads.items()}
        names = list(grads)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                out[f"grad_cos/{a}~{b}"] = torch.nn.functional.cosine_similarity(grads[a], grads[b], dim=0)
        return out

    def _accumulate(self, metrics: Mapping[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                entry = self._pending.setdefault(key, [0.0, 0])
                entry[0] += float(value)
                entry[1] += 1

    def _flush(self) -> dict[str, float]:
        """Means over the steps since the last log line (an objective's metrics over the
        steps it ran), so sparse schedules still log every objective."""
        record = {key: total / count for key, (total, count) in self._pending.items() if count}
        self._pending = {}
        return record

    def _stop_on_bad_steps(self) -> None:
        """Save this step's checkpoint (skipped steps left the weights and the optimizer as
        the last good step did) and raise ``NonFiniteStepsError`` on every rank."""
        path = self.save()
        raise NonFiniteStepsError(
            f"stopped at step {self.step}: {self.bad_steps_in_a_row} steps in a row were non-finite, more than "
            f"train.max_bad_steps={self.train_cfg.max_bad_steps} (the last: {self.last_bad_reason}); {path} holds "
            f"the weights of step {self.step - self.bad_steps_in_a_row}, the last good one. Lower train.lr, set "
            "train.grad_clip or check the data, then resume"
        )

    def fit(self) -> dict[str, Any]:
        """Train to ``train.steps`` (resuming first, as configured); returns the last logged
        record (metric means over the last logging interval, plus data stats). At the end
        rank 0 writes ``train_summary.json`` (``self.summary``) and ``losses.png``.

        The output directory is held for the run (``mmssl.train.run_lock``): a second run on it
        is refused before it trains, naming this one.

        Raises:
            RunDirectoryInUse: another live run holds the output directory.
            NonFiniteStepsError: after more than ``train.max_bad_steps`` skipped steps in a
                row, once the checkpoint of this step is saved.
        """
        start = time.perf_counter()
        # one run per output directory, held by rank 0
        self._write_on_main(self.checkpoints.hold, f"rank 0 could not take {self.output_dir}")
        try:
            last = self._fit()
            self.summary = {
                "steps": self.step,
                "seconds": round(time.perf_counter() - start, 1),
                **{k: v for k, v in last.items() if "/" in k or k == "loss"},
                "nonfinite_steps": self.nonfinite_steps,
                "world_size": self.dist.world_size,
                "per_rank_batch": {name: s.local_batch_size for name, s in self.streams.items()},
                # run means of samples_per_s, tflops, mfu (<objective>/tflops), the peak and its source
                **self.throughput.summary(),
            }
            self._write_on_main(self._write_summary, f"rank 0 could not write {self.output_dir / SUMMARY}")
            return last
        finally:
            self.checkpoints.release()

    def _write_summary(self) -> None:
        """``train_summary.json`` and, from ``metrics.jsonl``, ``losses.png``."""
        metrics = self.output_dir / "metrics.jsonl"
        if metrics.is_file():
            plot_losses(read_metrics(metrics), self.output_dir / LOSS_PLOT)
        write_text_atomic(self.output_dir / SUMMARY, json.dumps(self.summary, indent=2))

    def _fit(self) -> dict[str, Any]:
        cfg = self.train_cfg
        main = distributed.is_main()
        self._write_on_main(self.checkpoints.prepare, f"rank 0 could not write {self.output_dir}")
        resumed = self.maybe_resume()
        run_log = self.run_log = RunLog(self.output_dir, enabled=False)

        def open_log() -> None:
            nonlocal run_log
            # resume=auto with no checkpoint: lines already in the log are of a run killed
            # before its first save; this run logs those steps again, so they go
            fresh = 0 if self.train_cfg.resume == "auto" else None  # resume=none keeps them
            info = RunInfo(  # what the trackers of train.loggers record when they start
                self.output_dir, self.config.name, self.config.to_dict(), self.config.to_yaml(), git_revision(),
                environment(self.device, self.dist.world_size), start_step=self.step,
            )
            run_log = self.run_log = RunLog(
                self.output_dir, resume_step=self.step if resumed else fresh, loggers=cfg.loggers, run_info=info
            )

        self._write_on_main(open_log, f"rank 0 could not open {run_log.path}")
        interactive = sys.stderr.isatty()
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not cfg.progress or not main,
            dynamic_ncols=True,
            desc=self.config.name,
            mininterval=0.5 if interactive else 30.0,  # a log file gets a line every 30 s, not every step
        )
        last: dict[str, Any] = {}
        finished = False
        try:
            while self.step < cfg.steps:
                metrics = self.train_step()
                if not metrics["skipped"]:  # a skipped step's losses are in its warning, not the means
                    self._accumulate(metrics)
                bar.update(1)
                mfu = {"mfu": f"{metrics['mfu']:.3f}"} if "mfu" in metrics else {}
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", samples_s=f"{metrics['samples_per_s']:.0f}", **mfu, refresh=False)
                stop = self.bad_steps_in_a_row > cfg.max_bad_steps
                if self.step % cfg.log_every == 0 or self.step == cfg.steps or stop:
                    record = {**self._flush(), "lr": metrics["lr"], "nonfinite_steps": self.nonfinite_steps}
                    for name, stream in self.streams.items():
                        stats = distributed.reduce_metrics(stream.stats(), weight=1.0, sums=("samples", "skipped"))
                        for key, value in stats.items():
                            record[f"data/{name}/{key}"] = value
                    self._write_on_main(functools.partial(run_log.log, self.step, record), f"rank 0 could not write {run_log.path}")
                    self.history.append({"step": self.step, **record})
                    last = record
                if stop:
                    self._stop_on_bad_steps()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                    self.save(background=cfg.async_checkpoint)
                for callback in self.callbacks:
                    callback(self, metrics)
            if self._saved_step != self.step:
                self.save()
            self.finish_pending_save()
            finished = True
        finally:
            bar.close()
            self.run_log = None
            run_log.close(ok=finished)  # the trackers record a run stopped by an error as failed
            for stream in self.streams.values():
                stream.close()
        return last
