"""Durable and safe checkpoints: no moment without a loadable checkpoint, fsyncs in the
right order, faults injected at save (a full disk, no permission), corrupt checkpoints
skipped on resume, crafted pickles refused. Faults are injected by patching: the tests
run as root, where chmod does not make a directory unwritable."""

import errno
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import mmssl
from mmssl.train import checkpoint as ckpt
from mmssl.train import run_log
from mmssl.common.atomic import OutputError
from mmssl.train.checkpoint import (
    STATE,
    WEIGHTS,
    CheckpointError,
    CorruptCheckpointError,
    list_checkpoints,
    load_trainer_state,
    prune_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
)
from mmssl.train.checkpoints import CheckpointManager, rng_state, set_rng_state
from mmssl.train.run_lock import RunDirectoryInUse
from mmssl.train.run_log import read_metrics
from mmssl.train.trainer import Pretrainer
from tests.test_atomic import spy_on_fsync_and_replace

STEPS = ["train.steps=2", "train.checkpoint_every=1", "train.log_every=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run of 2 steps with checkpoints step_1 and step_2 (copy it before changing it)."""
    run = tmp_path_factory.mktemp("trained")
    torch.set_num_threads(1)
    Pretrainer(mmssl.load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", STEPS), run).fit()
    assert [p.name for p in list_checkpoints(run)] == ["step_00000001", "step_00000002"]
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A fresh copy of the trained run, to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def weights_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    return mmssl.load_pretrained(checkpoint).state_dict()


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def resave(run: Path, step: int, scale: float) -> dict[str, torch.Tensor]:
    """Save ``step`` again with the weights of ``run``'s last checkpoint times ``scale``;
    returns the new weights."""
    loaded = mmssl.load_checkpoint(run)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.mul_(scale)
    save_checkpoint(run, step, loaded.model, load_trainer_state(loaded.checkpoint), loaded.config)
    return loaded.model.state_dict()


def test_save_fsyncs_every_file_and_the_directory_before_the_rename_and_the_parent_after(run, monkeypatch):
    events = spy_on_fsync_and_replace(monkeypatch)
    resave(run, 3, 1.0)
    root = os.path.realpath(run / "checkpoints")
    rename = next(i for i, e in enumerate(events) if e[0] == "replace" and Path(e[2]).name == "step_00000003")
    tmp = os.path.realpath(events[rename][1])
    before = {e for e in events[:rename] if e[0].startswith("fsync")}
    assert before == {("fsync file", os.path.join(tmp, name)) for name in ckpt.FILES} | {("fsync dir", tmp)}
    assert ("fsync dir", root) in events[rename + 1 :]


class Killed(BaseException):
    """The process dies here: nothing after this point runs, no clean-up either."""


@pytest.mark.parametrize(
    "kill_point",
    ["before moving the old aside", "between the two renames", "before removing the old", "half way through removing the old"],
)
def test_resave_of_a_step_leaves_a_loadable_checkpoint_at_every_kill_point(run, monkeypatch, kill_point):
    """``rename`` cannot replace a non-empty directory; the old code removed step_2 before
    renaming the new one in: a kill in between left no step_2 at all."""
    root = run / "checkpoints"
    old = weights_of(root / "step_00000002")
    snapshot = run.parent / "disk at the kill"

    def die() -> None:  # the disk as a SIGKILL at this point leaves it
        if not snapshot.exists():
            shutil.copytree(root, snapshot / "checkpoints", symlinks=True)
        raise Killed

    real_replace, real_rmtree = os.replace, shutil.rmtree
    renames = []

    def replace(src, dst) -> None:
        if Path(src).parent == root:
            renames.append(Path(dst).name)
            if kill_point == "before moving the old aside" and len(renames) == 1:
                die()
        real_replace(src, dst)
        if kill_point == "between the two renames" and len(renames) == 1:
            die()

    def rmtree(path, *args, **kwargs) -> None:
        if Path(path).name.startswith(".replaced-"):
            if kill_point == "half way through removing the old":
                (Path(path) / WEIGHTS).unlink()
            die()
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(ckpt.shutil, "rmtree", rmtree)
    with pytest.raises(Killed):
        resave(run, 2, 0.5)
    monkeypatch.undo()

    # the next start clears the debris (or puts the old step_2 back), then resume looks
    remove_stale_temporaries(snapshot / "checkpoints")
    assert sorted(p.name for p in (snapshot / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]
    weights = weights_of(snapshot / "checkpoints" / "step_00000002")
    new_in_place = kill_point in ("before removing the old", "half way through removing the old")
    assert same(weights, old) != new_in_place  # the old one until the new one is in place, then the new


def test_kill_during_prune_never_leaves_a_half_deleted_step(run, monkeypatch):
    def rmtree(path, *args, **kwargs) -> None:
        (Path(path) / WEIGHTS).unlink()  # half removed, then killed
        raise Killed

    monkeypatch.setattr(ckpt.shutil, "rmtree", rmtree)
    with pytest.raises(Killed):
        prune_checkpoints(run, keep=1)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002"]  # the half-removed one is not step_*
    remove_stale_temporaries(run / "checkpoints")
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002"]


@pytest.mark.parametrize("fault", ["ENOSPC writing the trainer state", "EACCES renaming it into place"])
def test_failed_resave_keeps_the_previous_checkpoint(run, monkeypatch, fault):
    old = weights_of(run / "checkpoints" / "step_00000002")
    if fault.startswith("ENOSPC"):
        def save(obj, f, *args, **kwargs) -> None:
            f.write(b"PK\x03\x04 half a zip")  # the disk filled mid-write
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(ckpt.torch, "save", save)
    else:
        real_replace = os.replace

        def replace(src, dst) -> None:
            if Path(src).name.startswith(".tmp-"):  # after the old one was moved aside
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError) as info:
        resave(run, 2, 0.5)
    monkeypatch.undo()
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"cannot save checkpoint {run / 'checkpoints' / 'step_00000002'}: ")
    assert os.strerror(errno.ENOSPC if fault.startswith("ENOSPC") else errno.EACCES) in message
    assert "the checkpoints saved before are intact (step_00000001, step_00000002)" in message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]  # no debris
    assert same(weights_of(run / "checkpoints" / "step_00000002"), old)


def test_a_real_write_failure_is_reported_with_its_reason(run):
    """No patching: a file-size limit (RLIMIT_FSIZE) makes the kernel fail the write of the
    trainer state after the weights were written, as a full disk would. torch.save alone
    would say "unexpected pos 704 vs 598"; the error says why, and step 2 is kept."""
    loaded = mmssl.load_checkpoint(run)
    state = load_trainer_state(loaded.checkpoint)
    old = weights_of(loaded.checkpoint)
    limit = (loaded.checkpoint / WEIGHTS).stat().st_size + 4096
    assert (loaded.checkpoint / STATE).stat().st_size > limit
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(OutputError) as info:
            save_checkpoint(run, 2, loaded.model, state, loaded.config)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert str(info.value) == (
        f"cannot save checkpoint {loaded.checkpoint}: File too large; "
        "the checkpoints saved before are intact (step_00000001, step_00000002)"
    )
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000001", "step_00000002"]
    assert same(weights_of(loaded.checkpoint), old)


def test_full_disk_at_save_stops_training_in_one_line_and_resume_continues(trained, tmp_path, monkeypatch, caplog):
    """ENOSPC at the second save: the run stops with one line, the first checkpoint is
    intact; a kill had also cut metrics.jsonl mid-line; the resumed run repairs it and
    finishes where an uninterrupted one does."""
    config = mmssl.load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", STEPS)
    run = tmp_path / "run"
    real_save, saves = torch.save, []

    def save(obj, path, *args, **kwargs) -> None:
        saves.append(path)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", save)
    with pytest.raises(OutputError, match=r"^cannot save checkpoint .*step_00000002: No space left on device; "
                                         r"the checkpoints saved before are intact \(step_00000001\)$"):
        Pretrainer(config, run).fit()
    monkeypatch.undo()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000001"]
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.2')  # a write cut off by a kill or a full disk

    with caplog.at_level(logging.WARNING):
        resumed = Pretrainer(config, run)
        resumed.fit()
    assert resumed.step == 2
    assert "dropped a partial last line" in caplog.text
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert same(resumed.model.state_dict(), weights_of(trained))


def test_unwritable_output_directory_fails_at_start(tmp_path, monkeypatch):
    from mmssl.common import atomic

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(atomic, "open", denied, raising=False)
    config = mmssl.load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", STEPS)
    trainer = Pretrainer(config, tmp_path / "run")
    with pytest.raises(OutputError) as info:
        trainer.fit()
    assert str(info.value) == f"output directory {tmp_path / 'run'} is not writable: Permission denied"
    assert trainer.step == 0  # before the first step


def _damage(checkpoint: Path, how: str) -> str:
    """Damage ``checkpoint``; returns what the warning must say."""
    if how == "truncated weights":
        data = (checkpoint / WEIGHTS).read_bytes()
        (checkpoint / WEIGHTS).write_bytes(data[: len(data) // 2])
        return f"{checkpoint / WEIGHTS} is unreadable"
    if how == "garbled trainer state":
        (checkpoint / STATE).write_bytes(b"\x00" * 64)
        return f"{checkpoint / STATE} is unreadable"
    if how == "missing trainer state":
        (checkpoint / STATE).unlink()
        return f"{checkpoint} is incomplete: {STATE} missing"
    assert how == "empty meta.json"
    (checkpoint / ckpt.META).write_text("")
    return f"{checkpoint / ckpt.META} is unreadable"


@pytest.mark.parametrize("how", ["truncated weights", "garbled trainer state", "missing trainer state", "empty meta.json"])
def test_resume_skips_a_corrupt_latest_checkpoint_for_the_previous_one(run, how, caplog):
    latest = run / "checkpoints" / "step_00000002"
    says = _damage(latest, how)
    config = mmssl.load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", STEPS)
    trainer = Pretrainer(config, run)
    with caplog.at_level(logging.WARNING, logger="mmssl.train.checkpoints"):
        assert trainer.maybe_resume() == run / "checkpoints" / "step_00000001"
    assert trainer.step == 1
    assert f"skipping checkpoint {latest}: {says}" in caplog.text
    assert same(trainer.model.state_dict(), weights_of(run / "checkpoints" / "step_00000001"))


def test_resume_fails_clearly_when_no_checkpoint_is_readable(run):
    for checkpoint in list_checkpoints(run):
        _damage(checkpoint, "garbled trainer state")
    config = mmssl.load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", STEPS)
    with pytest.raises(CheckpointError, match=r"no readable checkpoint in .*checkpoints: all 2 are corrupt or incomplete"):
        Pretrainer(config, run).maybe_resume()


class _Payload:
    """Unpickling this would create a file: the side effect a crafted checkpoint would run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_pickle_is_refused_without_running_it(run, tmp_path, caplog):
    latest = run / "checkpoints" / "step_00000002"
    side_effect = tmp_path / "pwned"
    torch.save({"step": 2, "rng": _Payload(side_effect)}, latest / STATE)

    with pytest.raises(CorruptCheckpointError) as info:
        load_trainer_state(latest)
    message = str(info.value)
    assert message.startswith(f"{latest / STATE} refused: not plain tensors and containers") and "\n" not in message
    config = mmssl.load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", [*STEPS, f"train.resume={latest}"])
    with pytest.raises(CorruptCheckpointError, match="refused"):
        Pretrainer(config, run).maybe_resume()  # named explicitly: an error
    with caplog.at_level(logging.WARNING, logger="mmssl.train.checkpoints"):
        config = mmssl.load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", STEPS)
        assert Pretrainer(config, run).maybe_resume().name == "step_00000001"  # auto: skipped, with a warning
    assert f"skipping checkpoint {latest}: {latest / STATE} refused" in caplog.text
    assert not side_effect.exists()

    torch.load(latest / STATE, weights_only=False)  # the payload is live: an unsafe load runs it
    assert side_effect.exists()


# --- a checkpoint of another config ---------------------------------------------------


def tiny(*overrides: str) -> mmssl.RunConfig:
    return mmssl.load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", [*STEPS, *overrides])


def test_resuming_weights_of_another_config_is_one_error_listing_the_tensors(run):
    with pytest.raises(CheckpointError) as info:
        Pretrainer(tiny("modalities.text.width=48"), run).fit()
    message = str(info.value)
    assert not isinstance(info.value, CorruptCheckpointError)  # not skipped for step 1: that would not fit either
    assert message.startswith(
        f"checkpoint {run / 'checkpoints' / 'step_00000002'} does not fit the model built from this run's config "
        "(saved with another config?): tensors differ: "
    )
    assert "encoders.text.tower.positional_embedding: checkpoint [24, 32], model [24, 48]; " in message
    reshaped = int(re.search(r"tensors differ: (\d+) of another shape; ", message).group(1))
    assert reshaped > 8 and message.endswith(f"; and {reshaped - 8} more")  # the first 8 listed
    assert message.count("checkpoint [") == 8 and "\n" not in message


def test_loading_weights_that_do_not_fit_names_missing_unexpected_and_reshaped_tensors(run):
    checkpoint = run / "checkpoints" / "step_00000002"
    tensors = load_file(checkpoint / WEIGHTS)
    dropped, reshaped = sorted(tensors)[:2]
    model_shape = list(tensors[reshaped].shape)
    del tensors[dropped]
    tensors[reshaped] = torch.zeros(3, 5)
    tensors["encoders.smell.weight"] = torch.zeros(2)
    save_file(tensors, checkpoint / WEIGHTS)
    with pytest.raises(CheckpointError) as info:
        mmssl.load_pretrained(run)
    assert str(info.value) == (
        f"checkpoint {checkpoint} does not fit the model built from its config.yaml (saved with another config?): "
        f"tensors differ: 1 of another shape, 1 missing, 1 unexpected; {reshaped}: checkpoint [3, 5], model "
        f"{model_shape}; missing {dropped}; unexpected encoders.smell.weight"
    )


def test_resuming_an_optimizer_of_another_weighting_says_how_the_groups_differ(run):
    with pytest.raises(CheckpointError) as info:
        Pretrainer(tiny("train.weighting=uncertainty"), run).fit()  # one more parameter: the objective's log-variance
    message = str(info.value)
    assert message.startswith(f"{run / 'checkpoints' / 'step_00000002'}: the optimizer state does not fit this run's optimizer: ")
    sizes = re.search(r"parameters per group \[(\d+), (\d+)\] in the checkpoint, \[(\d+), (\d+)\] here ", message)
    decay, no_decay, here_decay, here_no_decay = map(int, sizes.groups())
    assert here_decay == decay and here_no_decay == no_decay + 1
    assert message.endswith("(train.weighting, train.lr_scale or the trainable parameters differ)")


def test_resuming_with_the_modalities_in_another_order_names_the_parameters_out_of_place(run, tmp_path):
    """The weights load by name, but the optimizer's moments are by position: resumed as
    they are, the image encoder's moments would go to the text encoder."""
    raw = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text())
    raw["modalities"] = {"text": raw["modalities"]["text"], "image": raw["modalities"]["image"]}
    swapped = tmp_path / "swapped.yaml"
    swapped.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = mmssl.load_config(swapped, STEPS)
    with pytest.raises(CheckpointError, match=(
        r"step_00000002: the optimizer state does not fit this run's optimizer: \d+ parameters in another place "
        r"\(another config, or its modalities or objectives in another order\): checkpoint "
        r"encoders.image.backbone.conv1.0.weight, here encoders.text.tower.transformer.resblocks.0.attn.in_proj_weight; "
    )):
        Pretrainer(config, run).fit()

    # A checkpoint saved before the names were: the moments' shapes tell
    state_file = run / "checkpoints" / "step_00000002" / STATE
    state = load_trainer_state(state_file.parent)
    del state["optimizer_param_names"]
    torch.save(state, state_file)
    with pytest.raises(CheckpointError, match=(
        r"step_00000002: the optimizer state does not fit this run's parameters: tensors differ: \d+ of another shape; "
        r"encoders.text.tower.transformer.resblocks.0.attn.in_proj_weight \(exp_avg\): checkpoint \[16, 3, 3, 3\], "
        r"model \[96, 32\]; .*; and \d+ more$"
    )):
        Pretrainer(config, run).fit()


# --- metrics.jsonl: durable before a checkpoint, a full disk while writing it ----------


def test_metrics_are_fsynced_before_the_checkpoint_and_dead_temporaries_cleared(run, monkeypatch):
    stale = run / f".train_summary.json.tmp-{dead_pid()}"
    stale.write_text('{"steps"')  # a write killed before its rename, an hour ago
    os.utime(stale, (time.time() - 3600,) * 2)
    events = spy_on_fsync_and_replace(monkeypatch)
    Pretrainer(tiny("train.steps=3"), run).fit()
    metrics = ("fsync file", os.path.realpath(run / "metrics.jsonl"))
    rename = next(i for i, e in enumerate(events) if e[0] == "replace" and Path(e[2]).name == "step_00000003")
    assert metrics in events[:rename]
    assert not stale.exists()


class _DiskFillsAtLine:
    """metrics.jsonl on a disk that fills in the middle of line ``n``."""

    def __init__(self, file, n: int) -> None:
        self.file, self.n, self.lines = file, n, 0

    def write(self, text: str) -> int:
        self.lines += 1
        if self.lines == self.n:
            self.file.write(text[: len(text) // 2])
            self.file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.file.write(text)

    def __getattr__(self, name: str):
        return getattr(self.file, name)


def test_full_disk_writing_metrics_stops_in_one_line_and_resume_continues(trained, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(run_log, "open", lambda *a, **k: _DiskFillsAtLine(open(*a, **k), 2), raising=False)
    with pytest.raises(OutputError) as info:
        Pretrainer(tiny(), run).fit()
    monkeypatch.undo()
    assert str(info.value) == f"cannot write {run / 'metrics.jsonl'}: No space left on device"
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000001"]
    resumed = Pretrainer(tiny(), run)
    resumed.fit()  # drops the half line, logs step 2 again
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]
    assert same(resumed.model.state_dict(), weights_of(trained))


def dead_pid() -> int:
    """The pid of a process that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --- the checkpoint manager ------------------------------------------------------------


def test_the_manager_holds_its_run_directory_until_released(tmp_path):
    first = CheckpointManager(tmp_path / "run", keep=2)
    first.hold()
    with pytest.raises(RunDirectoryInUse, match="is in use by another run"):
        CheckpointManager(tmp_path / "run", keep=2).hold()
    first.release()
    first.release()  # a second release is nothing
    second = CheckpointManager(tmp_path / "run", keep=2)
    second.hold()
    second.release()


def test_every_generator_is_captured_and_restored_through_a_checkpoint_file(tmp_path):
    import random

    import numpy as np

    def draws() -> tuple:
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(), [random.random() for _ in range(3)]

    np.random.randn()  # numpy's state holds a cached Gaussian now
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = draws()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert draws() == expected
    set_rng_state({"torch": torch.load(tmp_path / "rng.pt", weights_only=True)["torch"]})  # only what a state holds
    assert torch.rand(3).tolist() == expected[0]
