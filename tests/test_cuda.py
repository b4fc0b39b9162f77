"""On a GPU (pytest marker ``cuda``; skipped with the reason where torch sees none): a
step on CUDA equals one on the CPU, bf16 autocast trains and checkpoints, pinned batches
arrive on the device, an NCCL group of one rank reduces, and checkpoints move between
CUDA and the CPU. ``benchmarks/gpu_session.sh`` runs these first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist

import mmssl
from mmssl.data import build_streams
from mmssl.train import distributed
from mmssl.train.checkpoint import load_checkpoint, read_checkpoint_weights, resolve_checkpoint
from mmssl.train.device import host_syncs, move_to

pytestmark = pytest.mark.cuda

REPO = Path(__file__).resolve().parents[1]
TINY_JOINT = str(REPO / "configs" / "tiny_joint.yaml")
# fp32 without TF32 (which rounds matmul inputs to 10 bits) and with deterministic
# convolution choices, so the GPU computes what the CPU does up to float32 reordering
EXACT = ["train.threads=1", "train.progress=false", "train.precision=fp32", "train.tf32=false",
         "train.cudnn_benchmark=false", "train.channels_last=false"]


def train(output: Path, device: str, *overrides: str) -> mmssl.Pretrainer:
    trainer = mmssl.Pretrainer(mmssl.load_config(TINY_JOINT, [*EXACT, f"train.device={device}", *overrides]), output)
    trainer.fit()
    return trainer


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||a|| over every floating-point tensor."""
    keys = [k for k in a if a[k].is_floating_point()]
    diff = sum(float((a[k].double().cpu() - b[k].double().cpu()).square().sum()) for k in keys) ** 0.5
    return diff / sum(float(a[k].double().cpu().square().sum()) for k in keys) ** 0.5


def test_a_step_on_cuda_equals_the_cpu_in_fp32(tmp_path):
    """One step of tiny_joint (six objectives) in fp32: every logged loss within 1e-4
    relative and the weights within 1e-5 in the global norm (float32 sums in another
    order, as 2 CPU threads against 1; docs/distributed.md)."""
    cpu = train(tmp_path / "cpu", "cpu", "train.steps=1")
    gpu = train(tmp_path / "gpu", "cuda", "train.steps=1")
    for key, value in cpu.history[-1].items():
        if key.endswith("/loss"):
            assert gpu.history[-1][key] == pytest.approx(value, rel=1e-4), key
    assert relative_difference(cpu.model.state_dict(), gpu.model.state_dict()) < 1e-5


def test_bf16_autocast_trains_and_checkpoints(tmp_path):
    """precision auto is bf16 on a GPU with bf16: the losses fall, the weights stay float32,
    the checkpoint loads on the CPU."""
    trainer = mmssl.Pretrainer(
        mmssl.load_config(TINY_JOINT, ["train.threads=1", "train.progress=false", "train.device=cuda", "train.steps=6"]),
        tmp_path / "bf16",
    )
    assert trainer.precision == "bf16"
    trainer.fit()
    first, last = trainer.history[0], trainer.history[-1]
    assert torch.isfinite(torch.tensor(last["loss"])) and last["image_text/loss"] < first["image_text/loss"]
    loaded = load_checkpoint(tmp_path / "bf16")
    assert {t.dtype for t in loaded.model.state_dict().values() if t.is_floating_point()} == {torch.float32}


def test_pinned_batches_arrive_on_the_device():
    config = mmssl.load_config(TINY_JOINT, EXACT)
    model = mmssl.build_model(config)
    streams = build_streams(config, model, pin_memory=True)
    batch = next(streams["image_text"])
    pixels, ids = batch["image"]["pixels"], batch["text"]["ids"]
    assert pixels.is_pinned() and ids.is_pinned()
    device = torch.device("cuda", torch.cuda.current_device())
    moved = move_to(batch, device)
    torch.cuda.synchronize()
    assert moved["image"]["pixels"].device == device and torch.equal(moved["image"]["pixels"].cpu(), pixels)
    for stream in streams.values():
        stream.close()


def test_nccl_group_of_one_rank_reduces_host_and_device_tensors():
    torch_dist.init_process_group("nccl", store=torch_dist.HashStore(), rank=0, world_size=1)
    try:
        assert torch_dist.get_backend() == "nccl"
        host = torch.tensor([1.5, 2.5], dtype=torch.float64)
        assert torch.equal(distributed.all_reduce_sum(host), host)  # travels through the GPU
        on_device = torch.ones(3, device="cuda")
        torch_dist.all_reduce(on_device)
        assert on_device.sum().item() == 3.0
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.parametrize("first, then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_checkpoint_moves_between_cuda_and_the_cpu(tmp_path, first, then):
    """A checkpoint of step 2 written on one device resumes on the other and ends within
    float32 reordering of the run that never moved (the RNG states of the CPU and of the
    GPU are both in the checkpoint)."""
    whole = train(tmp_path / "whole", first, "train.steps=4", "train.checkpoint_every=2")
    moved = train(tmp_path / "moved", then, "train.steps=4",
                  f"train.resume={tmp_path / 'whole' / 'checkpoints' / 'step_00000002'}")
    assert moved.step == 4 and moved.history[-1]["step"] == 4
    a = read_checkpoint_weights(resolve_checkpoint(tmp_path / "whole"))
    b = read_checkpoint_weights(resolve_checkpoint(tmp_path / "moved"))
    assert relative_difference(a, b) < 1e-4
    assert whole.step == 4


def test_host_syncs_of_a_step_are_counted(tmp_path, capsys):
    """The counter sees a deliberate wait, and one training step of tiny_joint's waits
    are counted (printed for benchmarks/gpu_session.sh's record: each is a logged value
    read back, or a decision every rank must take alike)."""
    with host_syncs() as waits:
        torch.ones(1, device="cuda").item()
    assert len(waits) == 1
    trainer = mmssl.Pretrainer(mmssl.load_config(TINY_JOINT, [*EXACT, "train.device=cuda", "train.steps=2"]), tmp_path)
    trainer.train_step()  # the first step compiles kernels and counts FLOPs
    with host_syncs() as waits:
        trainer.train_step()
    assert waits
    print(f"host syncs in one tiny_joint step (6 objectives): {len(waits)}")
