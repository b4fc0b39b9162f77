"""Data parallel training: 2 processes (gloo, CPU) against 1, cross-rank losses, restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mmssl.train.checkpoint import read_checkpoint_weights, resolve_checkpoint
from mmssl.train.distributed import free_port

REPO = Path(__file__).resolve().parents[1]
TINY_JOINT = str(REPO / "configs" / "tiny_joint.yaml")
TINY_SSL = str(REPO / "configs" / "tiny_ssl.yaml")
COMMON = ["train.threads=1", "train.progress=false"]


def pretrain(
    output: Path, *overrides: str, nproc: int = 1, extra: tuple[str, ...] = (), timeout: int = 300, config: str = TINY_JOINT
):
    """tools/pretrain.py on 1 process, or under torchrun on ``nproc``; returns the finished process."""
    script = [str(REPO / "tools" / "pretrain.py"), config, "--output-dir", str(output), *COMMON, *overrides]
    if nproc == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", *extra, *script,
        ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """The weights of ``run``'s latest checkpoint, whole (sharded or not)."""
    return read_checkpoint_weights(resolve_checkpoint(run))


def losses(run: Path) -> list[dict[str, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k == "step" or k.endswith("/loss")} for r in records]


def assert_same_run(a: Path, b: Path, loss_tol: float = 1e-5, weight_tol: float = 1e-5) -> None:
    """Every objective's logged loss at every step within ``loss_tol`` relative; final
    weights within ``weight_tol`` relative, as ||a - b|| / ||a|| over all parameters.

    Per tensor, a few elements whose gradient is near zero (BatchNorm biases of nearly
    dead channels, the attention key bias, whose gradient is zero analytically) differ
    more: Adam divides their rounding noise by its own running size. One process at 2
    threads against 1 moves those elements just the same, and further (docs/distributed.md).
    """
    la = {r["step"]: r for r in losses(a)}
    lb = losses(b)
    assert lb and all(r["step"] in la for r in lb)
    for rb in lb:  # b may have resumed a's run from a checkpoint and logged only the steps after it
        ra = la[rb["step"]]
        for key, value in ra.items():
            assert abs(value - rb[key]) <= loss_tol * abs(value), (ra["step"], key, value, rb[key])
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    diff = sum(float(((wa[k] - wb[k]).double() ** 2).sum()) for k in wa if wa[k].is_floating_point()) ** 0.5
    norm = sum(float((wa[k].double() ** 2).sum()) for k in wa if wa[k].is_floating_point()) ** 0.5
    assert diff <= weight_tol * norm, f"final weights differ by {diff / norm:.2e} relative"


def assert_same_tensors(a: Path, b: Path, tol: float) -> None:
    """Every floating-point tensor of the final weights within ``tol`` relative, as
    max|a - b| / max|a| per tensor."""
    wa, wb = final_weights(a), final_weights(b)
    worst = {  # a tensor left at zero on both (a BatchNorm bias no active objective moved) is equal
        k: float((wa[k] - wb[k]).abs().max() / wa[k].abs().max()) if not torch.equal(wa[k], wb[k]) else 0.0
        for k in wa if wa[k].is_floating_point()
    }
    over = {k: f"{v:.1e}" for k, v in worst.items() if not v <= tol}
    assert not over, f"{len(over)} of {len(worst)} tensors differ by more than {tol:g}: {over}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, two_only",
    [((), ("train.grad_checkpointing=true",)), (("train.schedule=round_robin", "train.accum_steps=2"), ()),
     (("modalities.image.freeze=true", "modalities.audio.freeze=all"), ())],
    ids=["all_two_with_checkpointing", "round_robin_accum2", "locked_towers"],
)
def test_two_processes_train_as_one(tmp_path, overrides, two_only):
    """The same losses and final weights on 2 processes as on 1, in float64 so that what
    is left is rounding, not Adam's amplified float32 noise (assert_same_run). In the
    first case the 2 processes also checkpoint activations (under find_unused_parameters,
    with synchronised BatchNorm whose all-reduces run again in the recompute) and
    1 process does not. Measured: 6e-13 per tensor at worst, 2e-15 in the losses."""
    overrides = ("train.precision=fp64", *overrides)
    pretrain(tmp_path / "one", *overrides)
    done = pretrain(tmp_path / "two", *overrides, *two_only, nproc=2)
    if two_only:
        assert "activation checkpointing: ['image', 'audio', 'graph', 'text']" in done.stderr
    assert_same_run(tmp_path / "one", tmp_path / "two", loss_tol=1e-10, weight_tol=1e-10)
    assert_same_tensors(tmp_path / "one", tmp_path / "two", tol=1e-8)
    assert {w.dtype for w in final_weights(tmp_path / "two").values() if w.is_floating_point()} == {torch.float64}
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["per_rank_batch"]["image_text"] == 8
    assert done.stdout.count("trained 6 steps") == 1  # rank 0 alone reports and writes
    assert len(losses(tmp_path / "two")) == 6
    if any("freeze" in o for o in overrides):  # the locked towers (and audio's heads) end as they started
        import mmssl

        start = mmssl.build_model(mmssl.load_config(TINY_JOINT, list(overrides))).state_dict()
        weights = final_weights(tmp_path / "two")
        locked = [k for k in start if k.startswith(("encoders.image.", "encoders.audio.")) or ".heads.audio." in k]
        assert locked and [k for k in locked if not torch.equal(weights[k], start[k].to(weights[k].dtype))] == []
    # sample counts are summed over ranks: the same as one process's
    last = [json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[-1]) for run in ("one", "two")]
    counts = [{k: v for k, v in r.items() if k.endswith("/samples")} for r in last]
    assert counts[0] == counts[1] and counts[0]["data/image_text/samples"] > 0


@pytest.mark.slow
def test_the_whole_self_supervised_family_trains_on_two_processes_as_on_one(tmp_path):
    """tiny_ssl: masked_image, SimCLR, BYOL (the EMA target moved on every rank after each
    update), cluster (a memory bank gathered over ranks, k-means) beside the six; the same
    losses and weights on 2 processes, in float64 (measured: 6e-13 per tensor at worst)."""
    overrides = ("train.steps=4", "train.precision=fp64")
    pretrain(tmp_path / "one", *overrides, config=TINY_SSL)
    pretrain(tmp_path / "two", *overrides, nproc=2, config=TINY_SSL)
    assert_same_run(tmp_path / "one", tmp_path / "two", loss_tol=1e-10, weight_tol=1e-10)
    assert_same_tensors(tmp_path / "one", tmp_path / "two", tol=1e-8)


@pytest.mark.slow
def test_checkpoint_resumes_on_another_number_of_processes(tmp_path):
    # tiny_joint saves at step 3 of 6: resume that checkpoint on the other number of processes
    pretrain(tmp_path / "one")
    pretrain(tmp_path / "two", nproc=2)
    pretrain(tmp_path / "two_then_one", f"train.resume={tmp_path / 'two' / 'checkpoints' / 'step_00000003'}")
    pretrain(tmp_path / "one_then_two", f"train.resume={tmp_path / 'one' / 'checkpoints' / 'step_00000003'}", nproc=2)
    for resumed in ("two_then_one", "one_then_two"):
        assert [r["step"] for r in losses(tmp_path / resumed)] == [4, 5, 6]
        assert_same_run(tmp_path / "one", tmp_path / resumed)


@pytest.mark.slow
def test_killed_rank_is_restarted_and_the_run_resumes(tmp_path):
    overrides = ("train.steps=30", "train.checkpoint_every=5", "train.keep_checkpoints=0")
    pretrain(tmp_path / "whole", *overrides, nproc=2)
    output = tmp_path / "killed"
    port = free_port()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1", "--max-restarts=1",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
        str(REPO / "tools" / "pretrain.py"), TINY_JOINT, "--output-dir", str(output), *COMMON, *overrides,
    ]
    log = tmp_path / "agent.log"
    with open(log, "w") as sink:  # a file, not a pipe: a full pipe would stall the workers
        agent = subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
        try:
            metrics = output / "metrics.jsonl"
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:  # past the first checkpoint, before the end
                if metrics.is_file() and len(metrics.read_text().splitlines()) >= 7:
                    break
                assert agent.poll() is None, log.read_text()[-3000:]
                time.sleep(0.05)
            workers = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
            assert len(workers) == 2, workers
            os.kill(int(workers[-1]), signal.SIGKILL)
            agent.wait(timeout=300)
        finally:
            if agent.poll() is None:
                agent.kill()
    out = log.read_text()
    assert agent.returncode == 0, out[-3000:]
    assert "resumed from" in out
    whole, resumed = final_weights(tmp_path / "whole"), final_weights(output)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
