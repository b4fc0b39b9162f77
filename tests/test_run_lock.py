"""One run per output directory: a second pretraining or fine-tuning run on a directory
in use is refused before it trains, naming the holder; a killed holder leaves nothing
locked, and the next run resumes at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mmssl
from mmssl.train.checkpoint import list_checkpoints
from mmssl.train.run_lock import RunDirectoryInUse, hold_run_directory

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


def test_a_held_directory_refuses_a_second_trainer_and_frees_on_release(tiny_config, tmp_path):
    run = tmp_path / "run"
    with hold_run_directory(run):
        trainer = mmssl.Pretrainer(tiny_config("train.steps=2", "train.checkpoint_every=0"), run)
        with pytest.raises(RunDirectoryInUse, match=rf"{run} is in use by another run \(pid {os.getpid()} on "):
            trainer.fit()
        assert not list_checkpoints(run) and not (run / "metrics.jsonl").exists()  # refused before any work
        with pytest.raises(RunDirectoryInUse, match="is in use"):
            mmssl.finetune(tmp_path / "no-checkpoint-needed", "image", run)  # refused before it reads one
    trainer.fit()  # released: the same trainer runs
    assert list_checkpoints(run)
    with hold_run_directory(run) as lock:  # the finished run let go
        assert lock.held


def _refuse_then_resume(run: Path, args: list[str], longer: list[str], resumed_line: str) -> None:
    """Start ``args`` (a long run saving every 2 steps); once it has saved, the same
    command exits 2 with one line naming the holder, which runs on untouched; after a
    SIGKILL of the holder, ``longer`` resumes at once from its last save (it is stopped
    once its log says so)."""
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(run):  # it holds the directory and has saved
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.2)
        second = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        errors = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and f"{run} is in use by another run (pid {first.pid} on" in errors[0], second.stderr
        assert first.poll() is None  # the holder runs on, untouched
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        saved = list_checkpoints(run)[-1]
        step = int(saved.name.split("_")[-1])
        expected = resumed_line.format(checkpoint=saved, step=step)
        log = run.parent / "resumed.log"
        with open(log, "w") as sink:
            resumed = subprocess.Popen([a.replace("{STEPS}", str(step + 2)) for a in longer], stdout=subprocess.DEVNULL,
                                       stderr=sink, cwd=REPO)
        try:
            deadline = time.monotonic() + 120
            while expected not in log.read_text() and resumed.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert expected in log.read_text(), log.read_text()[-2000:]
        finally:
            resumed.kill()
            resumed.wait()
    finally:
        if first.poll() is None:
            first.kill()


@pytest.mark.slow
def test_a_second_pretrain_on_a_busy_directory_exits_2_and_a_killed_holder_frees_it(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, str(REPO / "tools" / "pretrain.py"), TINY, "--output-dir", str(run),
            "train.checkpoint_every=2", "train.log_every=1", "train.threads=1"]
    _refuse_then_resume(run, [*args, "train.steps=400"], [*args, "train.steps={STEPS}"],
                        "resumed from {checkpoint} at step {step}")


@pytest.mark.slow
def test_a_second_finetune_on_a_busy_directory_exits_2_and_a_killed_holder_frees_it(tiny_config, tmp_path):
    pretrained = tmp_path / "pretrained"
    mmssl.Pretrainer(tiny_config("train.steps=2", "train.progress=false"), pretrained).fit()
    run = tmp_path / "run"
    args = [sys.executable, str(REPO / "tools" / "finetune.py"), str(pretrained), "image", "--output-dir", str(run),
            "--per-class", "2", "--world-eval-per-class", "1", "--checkpoint-every", "2", "--eval-every", "1000",
            "--no-progress"]
    _refuse_then_resume(run, [*args, "--steps", "2000"], [*args, "--steps", "2000"],
                        "resuming fine-tune from {checkpoint}")
