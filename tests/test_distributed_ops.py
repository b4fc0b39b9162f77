"""Cross-rank pieces against one process: contrastive losses, BatchNorm, agreement, checks.

Each test runs a function in two gloo processes (CPU) and compares with the same
computation on the concatenated batch in one process.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmssl.train import distributed
from mmssl.train.checkpoint import resolve_checkpoint
from objectives.contrastive import MultiPositiveClipLoss, MultiPositiveSigLipLoss

WORLD = 2
N, D = 8, 6  # global batch, embedding width


def _entry(rank: int, port: int, fn, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def in_two_processes(fn, *args) -> None:
    """Run ``fn(rank, *args)`` in two gloo processes; an assertion in either fails the test."""
    mp.spawn(_entry, args=(distributed.free_port(), fn, args), nprocs=WORLD)


def _embeddings():
    gen = torch.Generator().manual_seed(0)
    fa = torch.nn.functional.normalize(torch.randn(N, D, generator=gen), dim=-1)
    fb = torch.nn.functional.normalize(torch.randn(N, D, generator=gen), dim=-1)
    # attribute codes repeating across the two ranks' halves, with an unnamed attribute (-1)
    codes_a = torch.tensor([[0, 1], [1, 0], [0, 1], [2, 2], [0, 1], [1, 0], [3, 3], [2, 2]])
    codes_b = torch.tensor([[0, -1], [1, 0], [0, 1], [2, 2], [0, 1], [-1, 0], [3, 3], [2, 2]])
    return fa, fb, codes_a, codes_b


def _compare_loss(rank: int, loss: str, options: dict, exact_gradients: bool) -> None:
    fa, fb, codes_a, codes_b = _embeddings()
    scale = torch.tensor(7.0)
    bias = torch.tensor(-3.0)

    def run(make, a, b, ca, cb):
        a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
        s, bi = scale.clone().requires_grad_(), bias.clone().requires_grad_()
        fn = make()
        value = fn(a, b, s, ca, cb) if loss == "clip" else fn(a, b, s, bi, ca, cb)
        value.backward()
        return value.detach(), a.grad, b.grad, s.grad, bi.grad

    if loss == "clip":
        single = lambda: MultiPositiveClipLoss()  # noqa: E731
        multi = lambda: MultiPositiveClipLoss(rank=rank, world_size=WORLD, **options)  # noqa: E731
    else:
        single = lambda: MultiPositiveSigLipLoss()  # noqa: E731
        multi = lambda: MultiPositiveSigLipLoss(rank=rank, world_size=WORLD, **options)  # noqa: E731
    ref_loss, ref_ga, ref_gb, ref_gs, ref_gbias = run(single, fa, fb, codes_a, codes_b)
    part = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    my_loss, ga, gb, gs, gbias = run(multi, fa[part], fb[part], codes_a[part], codes_b[part])
    # the mean over ranks of the ranks' losses is the one-process loss
    mean_loss = distributed.all_reduce_sum(my_loss) / WORLD
    torch.testing.assert_close(mean_loss, ref_loss, rtol=1e-5, atol=1e-6)
    if not exact_gradients:
        return
    # DDP averages over ranks: a rank's local gradient, divided by the world size, is the
    # one-process gradient of its slice; shared scalars average to theirs
    torch.testing.assert_close(ga / WORLD, ref_ga[part], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gb / WORLD, ref_gb[part], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(distributed.all_reduce_sum(gs) / WORLD, ref_gs, rtol=1e-4, atol=1e-6)
    if loss == "siglip":
        torch.testing.assert_close(distributed.all_reduce_sum(gbias) / WORLD, ref_gbias, rtol=1e-4, atol=1e-6)


CASES = [
    ("clip", {"gather_with_grad": True, "local_loss": True}, True),
    ("clip", {"gather_with_grad": True, "local_loss": False}, True),
    # without gradient through the gather a rank's embeddings get only their own share of
    # the gradient (open_clip's default): the loss is the same, the gradient is not
    ("clip", {"gather_with_grad": False, "local_loss": False}, False),
    ("clip", {"gather_with_grad": False, "local_loss": True}, False),
    ("siglip", {"dist_impl": "bidir"}, True),
    ("siglip", {"dist_impl": "shift"}, True),
    ("siglip", {"dist_impl": "reduce"}, True),
    ("siglip", {"dist_impl": "gather"}, True),
]


def _compare_every_case(rank: int) -> None:
    for loss, options, exact in CASES:  # one pair of processes for all cases: start-up is the cost
        try:
            _compare_loss(rank, loss, options, exact)
        except AssertionError as exc:
            raise AssertionError(f"{loss} {options}: {exc}") from None


@pytest.mark.slow
def test_cross_rank_contrastive_loss_equals_one_process():
    in_two_processes(_compare_every_case)


def _clip_without_gathered_gradient(rank: int) -> None:
    """gather_with_grad false, local_loss false: each rank computes the whole loss, and
    its embeddings get their exact one-process gradient (not the world size times it)."""
    fa, fb, codes_a, codes_b = _embeddings()
    a = fa.clone().requires_grad_()
    MultiPositiveClipLoss()(a, fb, torch.tensor(7.0), codes_a, codes_b).backward()
    part = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    mine = fa[part].clone().requires_grad_()
    MultiPositiveClipLoss(rank=rank, world_size=WORLD)(mine, fb[part], torch.tensor(7.0), codes_a[part], codes_b[part]).backward()
    torch.testing.assert_close(mine.grad, a.grad[part], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_clip_without_gathered_gradient_gives_each_rank_its_slice_of_the_gradient():
    in_two_processes(_clip_without_gathered_gradient)


def _batchnorm(rank: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 4, 5, 5) * 3 + 1
    w = torch.randn(8, 4, 5, 5)
    ref = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        ref.weight.uniform_()
        ref.bias.uniform_()
    mine = distributed.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(4)), torch.device("cpu"))[0]
    mine.load_state_dict(ref.state_dict())
    assert isinstance(mine, distributed.DistributedBatchNorm)
    xr = x.clone().requires_grad_()
    ref_out = ref(xr)
    (ref_out * w).mean().backward()
    part = slice(rank * 4, rank * 4 + 4)
    xl = x[part].clone().requires_grad_()
    out = mine(xl)
    (out * w[part]).mean().backward()  # the mean of the ranks' local means is the global mean
    torch.testing.assert_close(out, ref_out.detach()[part], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xl.grad / WORLD, xr.grad[part], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(distributed.all_reduce_sum(mine.weight.grad) / WORLD, ref.weight.grad, rtol=1e-4, atol=1e-6)
    # running statistics: one update over the global batch (unbiased variance), on every rank
    torch.testing.assert_close(mine.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mine.running_var, ref.running_var, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_distributed_batchnorm_equals_batchnorm_over_the_global_batch():
    in_two_processes(_batchnorm)


def _agreement(rank: int) -> None:
    # a non-finite loss on rank 1 makes the all-reduced mean non-finite on every rank, so
    # every rank skips the same step (mmssl.train.trainer.JointForward, Pretrainer.train_step)
    means = distributed.all_reduce_sum(torch.tensor([1.0, float("nan") if rank == 1 else 2.0, 3.0], dtype=torch.float64))
    assert [math.isfinite(v) for v in means.tolist()] == [True, False, True]
    reduced = distributed.reduce_metrics({"acc": float(rank), "samples_per_s": 10.0}, weight=1 + rank, sums=("samples_per_s",))
    assert reduced == {"acc": pytest.approx(2 / 3), "samples_per_s": 20.0}
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(float(rank))  # diverged
    with pytest.raises(RuntimeError, match="diverged at step 7"):
        distributed.check_consistency(model, 7)
    with torch.no_grad():
        model.bias.fill_(0.0)
    distributed.check_consistency(model, 8)


@pytest.mark.slow
def test_ranks_agree_on_stops_metrics_and_divergence():
    in_two_processes(_agreement)


def _pretrain_in_callers_group(rank: int, output: str) -> None:
    import mmssl

    config = mmssl.load_config(
        os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml"), ["train.steps=2", "train.progress=false"]
    )
    trainer = mmssl.Pretrainer(config, output)  # the process group is the caller's
    trainer.fit()
    assert trainer.dist.world_size == 2 and trainer.dist.rank == rank
    assert trainer.streams["image_text"].local_batch_size == config.objectives["image_text"].data.batch_size // 2
    distributed.barrier()
    assert resolve_checkpoint(output).name == "step_00000002"
    records = [line for line in open(os.path.join(output, "metrics.jsonl")) if line.strip()]
    assert len(records) == 2  # rank 0 alone logs


@pytest.mark.slow
def test_pretrainer_runs_in_a_process_group_the_caller_initialised(tmp_path):
    in_two_processes(_pretrain_in_callers_group, str(tmp_path))


def _nan_on_one_rank(rank: int, output: str) -> None:
    import mmssl
    from objectives.base import ObjectiveOutput

    config = mmssl.load_config(
        os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml"),
        ["train.steps=3", "train.checkpoint_every=0", "train.distributed.check_every=1"],
    )
    trainer = mmssl.Pretrainer(config, output)

    def nan_on_rank_1(module, args, out):  # step 2 (0-based 1), on rank 1 only
        return ObjectiveOutput(out.loss * float("nan"), out.metrics) if rank == 1 and trainer.step == 1 else None

    trainer.model.objectives["image_text"].register_forward_hook(nan_on_rank_1)
    skipped: list[int] = []
    trainer.callbacks.append(lambda t, m: skipped.append(t.step) if m["skipped"] else None)
    trainer.fit()  # check_every=1: the ranks' parameters are compared after every step
    assert skipped == [2] and trainer.nonfinite_steps == 1


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    in_two_processes(_nan_on_one_rank, str(tmp_path))
