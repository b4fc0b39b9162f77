"""The kill-and-resume harness: a tiny joint run is SIGKILLed again and again at seeded
random points (inside steps, in a loader worker, while writing a checkpoint, at random
times), resumed after each kill, and must end with the weights, logged losses and
sample counts of a run that was never killed, bit for bit.

The kills run as a chain in one output directory: each run resumes from what the
killed one before it left, debris included, so ten kill points cost twelve process
starts. ``MMSSL_KILL_SEED=N pytest tests/test_kill_resume.py`` draws another set of
points; the plan in force is printed on failure.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mmssl.train.checkpoint import (
    check_complete,
    list_checkpoints,
    load_trainer_state,
    read_checkpoint_weights,
    resolve_checkpoint,
)
from mmssl.train.distributed import free_port
from tests.kill_points import POINTS
from tests.killing import metric_lines, run_and_kill

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("MMSSL_KILL_SEED", "0"))
RUN_TIMEOUT = 600  # seconds for one run: a hang fails, a machine shared with other work does not

# tiny_joint (all six objectives), a checkpoint every step, two kept (so prunes happen),
# and two streams built by a DataLoader worker each.
TINY_JOINT = str(REPO / "configs" / "tiny_joint.yaml")
TINY_SSL = str(REPO / "configs" / "tiny_ssl.yaml")  # the six and the rest of the family
RUN = [
    "train.threads=1", "train.progress=false", "train.checkpoint_every=1", "train.keep_checkpoints=2",
    "objectives.image_text.data.num_workers=1", "objectives.audio_text.data.num_workers=1",
]

# How many calls of each point a resumed run may make before its kill, kept small so a
# kill costs at most about one step of progress and ten of them fit in the run.
HITS = {
    "worker_batch": 3,  # a worker builds ahead of the steps (prefetch)
    "forward": 2, "backward": 2, "optimizer": 2, "metrics_line": 2,
    "checkpoint_file": 5,  # the five files of one checkpoint
    "checkpoint_rename": 2,
    "checkpoint_dir_fsync": 4,  # a save fsyncs its temporary and the parent; a prune the parent
}
TIMER = "timer"  # killed from outside at a random moment within a step or two


@dataclass(frozen=True)
class Kill:
    point: str
    hit: int = 0  # the point's hit-th call; for the timer, seconds after the first new line
    delay: float = 0.0
    overrides: tuple[str, ...] = ()  # config overrides of this run only (how it saves, not what it trains)

    def __str__(self) -> str:
        return f"{self.point}@{self.delay:.2f}s" if self.point == TIMER else f"{self.point}#{self.hit}"


def kill_plan(seed: int, n: int) -> list[Kill]:
    """``n`` kill points drawn from ``seed``: every kind once (when n allows), the rest at random."""
    rng = random.Random(seed)
    kinds = [*POINTS, TIMER]
    chosen = rng.sample(kinds, n) if n < len(kinds) else kinds + [rng.choice(kinds) for _ in range(n - len(kinds))]
    rng.shuffle(chosen)
    return [Kill(TIMER, delay=rng.uniform(0.0, 0.6)) if k == TIMER else Kill(k, rng.randint(1, HITS[k])) for k in chosen]


def command(
    kill: Kill | None, output: Path, steps: int, nproc: int, config: str = TINY_JOINT, extra: tuple[str, ...] = ()
) -> list[str]:
    args = [config, *RUN, f"train.steps={steps}", *extra, *(kill.overrides if kill else ()), "--output-dir", str(output)]
    # the runner runs as a module: as a script, tests/ would come first on sys.path and its
    # test packages tests/modalities and tests/objectives would shadow the real ones
    killer = kill is not None and kill.point != TIMER
    if killer:
        script = ["-m", "tests.kill_points", kill.point, str(kill.hit), "--", *args]
    else:
        script = [str(REPO / "tools" / "pretrain.py"), *args]
    if nproc == 1:
        return [sys.executable, *script]
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", *script,
    ]


def run_killed(kill: Kill, output: Path, steps: int, nproc: int, log: Path, config: str, extra: tuple[str, ...] = ()) -> None:
    """Run until ``kill`` strikes; fail if the run finishes first."""
    cmd = command(kill, output, steps, nproc, config, extra)
    if kill.point == TIMER:
        before, since = metric_lines(output), None

        def ready() -> bool:
            nonlocal since
            if since is None and metric_lines(output) > before:
                since = time.monotonic()
            return since is not None and time.monotonic() - since >= kill.delay

        run_and_kill(cmd, log, ready, REPO, timeout=RUN_TIMEOUT)
        return
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=RUN_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
    # one process: the kill ends it (-9). Under torchrun each rank has a process group of
    # its own: the killed rank dies, and torchrun stops the others and fails (1).
    killed = rc == -9 if nproc == 1 else rc != 0 and "Signal 9 (SIGKILL)" in log.read_text()
    assert killed, f"{kill}: the run ended with {rc} before its kill point:\n{log.read_text()[-3000:]}"


def latest_step(output: Path) -> int:
    found = list_checkpoints(output)
    return int(found[-1].name.split("_")[1]) if found else 0


def assert_checkpoints_sound(output: Path, kill: Kill) -> None:
    """Every checkpoint a kill left under a ``step_*`` name is complete, and the latest loads."""
    found = list_checkpoints(output)
    for checkpoint in found:
        check_complete(checkpoint)
    if found:
        load_trainer_state(found[-1])
        read_checkpoint_weights(found[-1])
    names = {p.name for p in (output / "checkpoints").iterdir()} if (output / "checkpoints").is_dir() else set()
    debris = {n for n in names if not n.startswith("step_")}
    assert all(n.startswith((".tmp-", ".trash-", ".replaced-")) for n in debris), (kill, debris)


def comparable(output: Path) -> list[dict[str, float]]:
    """Every logged step's losses and data counters (not its timings)."""
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    keep = ("loss", "/loss", "/samples", "/skipped", "/epoch", "lr", "nonfinite_steps")
    return [{k: v for k, v in r.items() if k == "step" or k.endswith(keep)} for r in records]


def kill_chain(
    tmp_path: Path, kills: list[Kill], steps: int, nproc: int, config: str = TINY_JOINT, extra: tuple[str, ...] = ()
) -> list[str]:
    """Run ``kills`` one after another in one output directory, then to the end; compare
    with an uninterrupted run (each with the overrides ``extra``). Returns what happened
    at each kill, for the failure message."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # A one-process run (one thread) leaves a core free: the uninterrupted run uses it
    # beside the chain. Two processes take both cores, so theirs runs first.
    log = tmp_path / "whole.log"
    with open(log, "w") as sink:
        reference = subprocess.Popen(
            command(None, whole, steps, nproc, config, extra), cwd=REPO, stdout=sink, stderr=subprocess.STDOUT
        )
        try:
            if nproc > 1:
                _assert_finished(reference, log)
            story = _kill_one_by_one(kills, killed, steps, nproc, tmp_path, config, extra)
            _assert_finished(reference, log)
        finally:
            if reference.poll() is None:
                reference.kill()
    done = subprocess.run(
        command(None, killed, steps, nproc, config, extra), cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert latest_step(killed) == steps, f"the resumed run did not reach step {steps}: {story}"
    a = read_checkpoint_weights(resolve_checkpoint(whole))
    b = read_checkpoint_weights(resolve_checkpoint(killed))
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"seed {SEED}, {story}: {len(differ)} tensors differ, e.g. {differ[:3]}"
    assert comparable(killed) == comparable(whole), f"seed {SEED}, {story}: the logs differ"
    return story


def _assert_finished(run: subprocess.Popen, log: Path) -> None:
    assert run.wait(timeout=RUN_TIMEOUT) == 0, log.read_text()[-3000:]


def _kill_one_by_one(
    kills: list[Kill], killed: Path, steps: int, nproc: int, tmp_path: Path, config: str, extra: tuple[str, ...]
) -> list[str]:
    story = []
    for i, kill in enumerate(kills):
        start = latest_step(killed)
        assert start < steps, f"the plan outran the run: {story}"
        run_killed(kill, killed, steps, nproc, tmp_path / f"kill_{i}.log", config, extra)
        assert_checkpoints_sound(killed, kill)
        assert latest_step(killed) >= start, f"{kill} lost checkpoint step {start}"
        story.append(f"{kill}: step {start} -> {latest_step(killed)}")
    return story


def test_kill_plan_is_seeded_and_covers_every_point():
    plan = kill_plan(3, 10)
    assert plan == kill_plan(3, 10) and plan != kill_plan(4, 10)
    assert {k.point for k in plan} == {*POINTS, TIMER}
    assert all(1 <= k.hit <= HITS[k.point] for k in plan if k.point != TIMER)


@pytest.mark.slow
def test_ten_kills_resume_to_the_uninterrupted_run(tmp_path):
    story = kill_chain(tmp_path, kill_plan(SEED, 10), steps=14, nproc=1)
    print("\n".join(story))


@pytest.mark.slow
def test_kills_of_two_processes_resume_to_the_uninterrupted_run(tmp_path):
    plan = [Kill("optimizer", 2), Kill("checkpoint_file", random.Random(SEED).randint(1, 5)), Kill("worker_batch", 2)]
    story = kill_chain(tmp_path, plan, steps=6, nproc=2)
    print("\n".join(story))


@pytest.mark.slow
def test_kills_of_the_whole_self_supervised_family_resume_exactly(tmp_path):
    """tiny_ssl: the six objectives with masked_image, view_contrastive (SimCLR, and BYOL
    with its EMA target) and cluster (memory bank, centroids), killed twice."""
    plan = [Kill("optimizer", 2), Kill("checkpoint_rename", 1)]
    story = kill_chain(tmp_path, plan, steps=5, nproc=1, config=TINY_SSL)
    print("\n".join(story))
