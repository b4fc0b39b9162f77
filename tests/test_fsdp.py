"""Fully sharded data parallel (train.parallel=fsdp): 2 gloo processes train as 1,
sharded checkpoints resume across strategies and world sizes, kills during sharded and
background saves resume exactly, two torchrun launchers train as two nodes, and every
reader of checkpoints reads the sharded layout."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
from safetensors.torch import load_file, save_file

import mmssl
from mmssl.train.checkpoint import (
    CorruptCheckpointError,
    check_complete,
    load_checkpoint,
    read_checkpoint_weights,
    resolve_checkpoint,
)
from mmssl.train.distributed import free_port
from mmssl.common.sharded_files import SHARDED, is_sharded
from tests.test_distributed import COMMON, REPO, TINY_JOINT, TINY_SSL, assert_same_run, assert_same_tensors, final_weights, losses, pretrain
from tests.test_kill_resume import Kill, kill_chain

TINY = str(REPO / "configs" / "tiny.yaml")
FSDP = ("train.parallel=fsdp",)
FP64 = ("train.precision=fp64",)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """1-process fp64 runs, each trained once for the tests of this module that compare with it."""
    root = tmp_path_factory.mktemp("one_process")
    done: dict[tuple[str, tuple[str, ...]], Path] = {}

    def run(config: str = TINY_JOINT, *overrides: str) -> Path:
        key = (config, overrides)
        if key not in done:
            done[key] = root / f"run{len(done)}"
            pretrain(done[key], *FP64, *overrides, config=config)
        return done[key]

    return run


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """``two_nodes(strategy)``: tiny_joint in fp64 trained by two torchrun launchers as two
    nodes of one process each (c10d rendezvous on localhost), once per strategy for the
    tests of this module; returns the run directory and the two launchers' logs."""
    root = tmp_path_factory.mktemp("two_nodes")
    done: dict[str, tuple[Path, list[str]]] = {}

    def run(strategy: str) -> tuple[Path, list[str]]:
        if strategy not in done:
            out = root / strategy
            port = free_port()
            cmd = [
                sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=two-nodes-{port}",
                str(REPO / "tools" / "pretrain.py"), TINY_JOINT, "--output-dir", str(out), *COMMON, *FP64,
                f"train.parallel={strategy}",
            ]
            logs = [open(root / f"{strategy}_node{i}.log", "w") for i in range(2)]
            nodes = [subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT) for log in logs]
            try:
                codes = [node.wait(timeout=300) for node in nodes]
            finally:
                for node, log in zip(nodes, logs):
                    if node.poll() is None:
                        node.kill()
                    log.close()
            texts = [(root / f"{strategy}_node{i}.log").read_text() for i in range(2)]
            assert codes == [0, 0], "\n".join(t[-2000:] for t in texts)
            done[strategy] = (out, texts)
        return done[strategy]

    return run


def assert_trains_as_one(one: Path, two: Path) -> None:
    assert_same_run(one, two, loss_tol=1e-10, weight_tol=1e-10)
    assert_same_tensors(one, two, tol=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, overrides, two_only",
    [
        (TINY_JOINT, ("train.accum_steps=2", "modalities.image.freeze=true", "modalities.audio.freeze=all"),
         ("train.grad_checkpointing=true",)),
        (TINY_SSL, ("train.steps=4",), ()),
    ],
    ids=["joint_accum2_locked_checkpointing", "ssl_family"],
)
def test_two_sharded_processes_train_as_one(tmp_path, one_process, config, overrides, two_only):
    """tiny_joint (six objectives a step, each encoder called by several; synchronised
    BatchNorm; gradients accumulated unsynchronised over 2 micro-steps; locked towers;
    activation checkpointing on the 2 processes only) and tiny_ssl (BYOL's EMA target,
    the cluster objective's prototypes reset at clustering): the losses and every final
    tensor of 2 FSDP processes equal 1 process's within 1e-8 in float64 (measured: 4e-13).
    Plain tiny_joint, without accumulation, is compared in the resume and two-node tests."""
    one = one_process(config, *overrides)
    done = pretrain(tmp_path / "two", *FP64, *FSDP, *overrides, *two_only, nproc=2, config=config)
    assert "encoder blocks sharded one by one" in done.stderr
    checkpoint = resolve_checkpoint(tmp_path / "two")
    assert is_sharded(checkpoint) and not (checkpoint / "model.safetensors").exists()
    assert sorted(p.name for p in (checkpoint / SHARDED).iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert json.loads((checkpoint / "meta.json").read_text())["layout"] == "sharded"
    assert_trains_as_one(one, tmp_path / "two")
    if any("freeze" in o for o in overrides):  # the locked towers end as they started
        start = mmssl.build_model(mmssl.load_config(config, [*FP64, *overrides])).state_dict()
        weights = final_weights(tmp_path / "two")
        locked = [k for k in start if k.startswith(("encoders.image.", "encoders.audio."))]
        assert locked and [k for k in locked if not torch.equal(weights[k], start[k].to(weights[k].dtype))] == []


@pytest.mark.slow
def test_sharded_checkpoints_resume_across_strategies_and_world_sizes(tmp_path, one_process, two_nodes):
    """tiny_joint saves at step 3 of 6. A 2-process FSDP checkpoint resumes in a plain
    process, under 2-process DDP and on 1 FSDP process (DCP reshards the DTensors); a
    2-process DDP checkpoint resumes under 2-process FSDP. Each ends where the run that
    never changed ends (fp64, 1e-8 per tensor)."""
    one = one_process(TINY_JOINT)
    sharded = two_nodes("fsdp")[0] / "checkpoints" / "step_00000003"  # 2 processes (as two nodes)
    unsharded = two_nodes("ddp")[0] / "checkpoints" / "step_00000003"
    assert is_sharded(sharded) and not is_sharded(unsharded)
    resumes = {
        "fsdp_in_plain": (sharded, (), 1),
        "fsdp_to_ddp": (sharded, (), 2),
        "ddp_to_fsdp": (unsharded, FSDP, 2),
    }
    for name, (checkpoint, strategy, nproc) in resumes.items():
        run = tmp_path / name
        pretrain(run, *FP64, *strategy, f"train.resume={checkpoint}", nproc=nproc)
        assert [r["step"] for r in losses(run)] == [4, 5, 6], name
        assert is_sharded(resolve_checkpoint(run)) == (strategy == FSDP), name
        assert_same_run(one, run, loss_tol=1e-10, weight_tol=1e-10)
        assert_same_tensors(one, run, tol=1e-8)
    # in a process group of one (as a caller of the Python API may start): FSDP over one
    # rank, the 2 ranks' shards resharded onto it by DCP
    run = tmp_path / "fsdp_on_one"
    torch_dist.init_process_group("gloo", store=torch_dist.HashStore(), rank=0, world_size=1)
    try:
        config = mmssl.load_config(TINY_JOINT, [*COMMON, *FP64, *FSDP, f"train.resume={sharded}"])
        trainer = mmssl.Pretrainer(config, run)
        assert trainer.sharded
        trainer.fit()
    finally:
        torch_dist.destroy_process_group()
    assert [r["step"] for r in losses(run)] == [4, 5, 6] and is_sharded(resolve_checkpoint(run))
    assert_same_run(one, run, loss_tol=1e-10, weight_tol=1e-10)
    assert_same_tensors(one, run, tol=1e-8)


@pytest.mark.slow
def test_kills_inside_sharded_and_background_saves_resume_exactly(tmp_path):
    """2 FSDP processes, a checkpoint every step, killed three times: inside a DCP save
    (a shard file half written), during a background save (train.async_checkpoint: the
    writing thread dies while training goes on) and after an optimizer update; each run
    resumes from what the killed one left and the last ends bit for bit where the
    uninterrupted run ends, with the same logged losses."""
    plan = [
        Kill("shard_write", 40),
        Kill("shard_write", 250, overrides=("train.async_checkpoint=true",)),
        Kill("optimizer", 2, overrides=("train.async_checkpoint=true",)),
    ]
    story = kill_chain(tmp_path, plan, steps=6, nproc=2, extra=FSDP)
    print("\n".join(story))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_nodes_train_as_one_process(one_process, two_nodes, strategy):
    """Two torchrun launchers on this machine as two nodes (--nnodes=2, one process each,
    c10d rendezvous on localhost) train as 1 process does (fp64, 1e-8)."""
    run, texts = two_nodes(strategy)
    assert sum(t.count("trained 6 steps") for t in texts) == 1  # one node holds rank 0
    assert json.loads((run / "train_summary.json").read_text())["world_size"] == 2
    assert is_sharded(resolve_checkpoint(run)) == (strategy == "fsdp")
    assert_trains_as_one(one_process(TINY_JOINT), run)


@pytest.mark.slow
def test_bf16_sharded_run_resumes_and_every_reader_reads_it(tmp_path):
    """bf16 under fsdp (gathered bf16 parameters, float32 master weights and reductions)
    trains, saves float32 weights and resumes from step 3 bit for bit. mmssl-zero-shot on
    the run directory gives the figures it gives on the same weights saved unsharded;
    load_checkpoint, mmssl-export and a modality's ``pretrained:`` read it in one process;
    a sharded checkpoint with a shard file missing is incomplete, naming the file."""
    from mmssl.cli import export, zero_shot

    run = tmp_path / "fsdp"
    pretrain(run, *FSDP, "train.precision=bf16", nproc=2)
    pretrain(tmp_path / "resumed", *FSDP, "train.precision=bf16", f"train.resume={run / 'checkpoints' / 'step_00000003'}",
             nproc=2)
    records = losses(run)
    assert len(records) == 6 and all(torch.isfinite(torch.tensor(v)) for r in records for v in r.values())
    whole, resumed = final_weights(run), final_weights(tmp_path / "resumed")
    assert {w.dtype for w in whole.values() if w.is_floating_point()} == {torch.float32}
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    sharded = resolve_checkpoint(run)
    unsharded = tmp_path / "unsharded" / "checkpoints" / sharded.name
    unsharded.mkdir(parents=True)
    for name in ("config.yaml", "tokenizer.json", "trainer_state.pt"):
        shutil.copy(sharded / name, unsharded / name)
    (unsharded / "meta.json").write_text(json.dumps({"step": 6, "format": 1}))
    weights = read_checkpoint_weights(sharded)
    save_file(weights, str(unsharded / "model.safetensors"))
    loaded = load_checkpoint(run)
    assert loaded.checkpoint == sharded
    assert all(torch.equal(v, weights[k]) for k, v in loaded.model.state_dict().items())
    reports = []
    for source in (run, unsharded.parent.parent):
        out = tmp_path / f"{source.name}.json"
        assert zero_shot.main(["--checkpoint", str(source), "--modality", "image", "--output", str(out), "--no-progress"]) == 0
        reports.append({k: v for k, v in json.loads(out.read_text()).items() if k != "checkpoint"})
    assert reports[0] == reports[1] and reports[0]["top1"] > 0
    assert export.main([str(run), "--output-dir", str(tmp_path / "export"), "--modalities", "text"]) == 0
    exported = load_file(tmp_path / "export" / "text" / "model.safetensors")
    assert exported and all(torch.equal(v, weights[f"encoders.text.{k}"]) for k, v in exported.items())
    started = mmssl.build_model(mmssl.load_config(TINY_JOINT, [f"modalities.text.pretrained={sharded}"]))
    assert all(torch.equal(v, weights[f"encoders.text.{k}"]) for k, v in started.encoders["text"].state_dict().items())
    shard = sharded / SHARDED / "__1_0.distcp"
    shard.unlink()
    with pytest.raises(CorruptCheckpointError, match="__1_0.distcp missing"):
        check_complete(sharded)


@pytest.fixture
def group_of_one():
    """A gloo process group of one rank in this process: FSDP over one rank, in process."""
    torch_dist.init_process_group("gloo", store=torch_dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        torch_dist.destroy_process_group()


def test_nonfinite_step_is_skipped_under_fsdp(tmp_path, group_of_one, caplog):
    """A NaN loss under fsdp (DTensor gradients, a sharded norm) skips the step on every
    rank: the weights stay as they were, the step is counted and named, training goes on."""
    from torch.distributed.tensor import DTensor

    from tests.test_nonfinite import nan_loss_at

    config = mmssl.load_config(TINY, ["train.steps=4", "train.threads=1", "train.progress=false", *FSDP])
    trainer = mmssl.Pretrainer(config, tmp_path / "run")
    assert trainer.sharded and isinstance(next(trainer.model.parameters()), DTensor)
    nan_loss_at(trainer, {2})
    seen = {}
    trainer.callbacks.append(lambda t, m: seen.__setitem__(t.step, {k: v.full_tensor().clone() if isinstance(v, DTensor)
                                                                   else v.clone() for k, v in t.model.state_dict().items()}))
    with caplog.at_level(logging.WARNING, logger="mmssl.train.trainer"):
        trainer.fit()
    assert trainer.nonfinite_steps == 1 and trainer.bad_steps_in_a_row == 0
    assert all(torch.equal(seen[2][k], seen[3][k]) for k in seen[2])
    assert not all(torch.equal(seen[3][k], seen[4][k]) for k in seen[3])
    assert any("step 3 skipped" in r.getMessage() and "objective 'image_text' loss nan" in r.getMessage() for r in caplog.records)
