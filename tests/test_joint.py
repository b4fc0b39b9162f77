"""Joint training: loss weighting, objective schedules, gradient diagnostics and exact
resume, on configs/tiny_joint.yaml (every objective, one shared text encoder)."""

import collections

import numpy as np
import pytest
import torch

import mmssl
from mmssl.train.checkpoint import list_checkpoints, load_trainer_state, resolve_checkpoint
from mmssl.train.run_log import read_metrics
from mmssl.train.schedule import ObjectiveSchedule
from mmssl.train.trainer import Pretrainer
from mmssl.train.weighting import InitialLossWeighting, LossWeighting, UncertaintyWeighting
from tests.conftest import CONFIGS
from tests.test_trainer import _assert_same_weights, run_until_killed

TINY_JOINT = CONFIGS / "tiny_joint.yaml"


def _joint(*overrides):
    return mmssl.load_config(TINY_JOINT, list(overrides))


def test_schedules_choose_by_seed_and_step():
    names = ["a", "b", "c"]
    assert ObjectiveSchedule("all", names)(5) == names
    assert [ObjectiveSchedule("round_robin", names)(s)[0] for s in range(5)] == ["a", "b", "c", "a", "b"]
    weighted = ObjectiveSchedule("weighted", names, {"a": 2, "b": 1, "c": 1}, seed=3)
    picks = collections.Counter(weighted(s)[0] for s in range(4000))
    assert abs(picks["a"] / 4000 - 0.5) < 0.03 and abs(picks["c"] / 4000 - 0.25) < 0.03
    again = ObjectiveSchedule("weighted", names, {"a": 2, "b": 1, "c": 1}, seed=3)
    assert all(weighted(s) == again(s) for s in range(100))  # what every rank and a resumed run see
    with pytest.raises(ValueError, match="probabilities"):
        ObjectiveSchedule("weighted", names, {"a": 0, "b": 0, "c": 0})


def test_every_runs_an_objective_at_steps_divisible_by_it():
    sparse = ObjectiveSchedule("all", ["a", "b", "c"], every={"b": 2, "c": 3})
    assert [sparse(s) for s in range(4)] == [["a", "b", "c"], ["a"], ["a", "b"], ["a", "c"]]
    with pytest.raises(ValueError, match="needs schedule 'all'"):
        ObjectiveSchedule("round_robin", ["a", "b"], every={"b": 2})
    with pytest.raises(ValueError, match="every step"):
        ObjectiveSchedule("all", ["a", "b"], every={"a": 2, "b": 2})
    config = _joint("objectives.mlm.every=4", "objectives.image_text.data.render_pool=32")
    assert mmssl.config_from_dict(config.to_dict()) == config  # what a checkpoint saves
    with pytest.raises(mmssl.ConfigError, match=r"objectives\.mlm\.every': must be >= 1"):
        _joint("objectives.mlm.every=0")
    with pytest.raises(mmssl.ConfigError, match=r"objectives\.mlm\.every': only train.schedule 'all'"):
        _joint("objectives.mlm.every=2", "train.schedule=round_robin")


def test_sparse_objective_draws_batches_only_when_it_runs(tmp_path):
    config = _joint("objectives.graph_contrastive.every=3", "train.steps=7", "train.checkpoint_every=0")
    trainer = Pretrainer(config, tmp_path)
    ran = ["graph_contrastive/loss" in trainer.train_step() for _ in range(7)]
    assert ran == [True, False, False, True, False, False, True]
    assert trainer.streams["graph_contrastive"].position == 3
    assert trainer.streams["graph_text"].position == 7


def test_weightings_combine_as_documented():
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(8.0)}
    total, weights = LossWeighting({"a": 1.0, "b": 0.5}).combine(losses)
    assert total.item() == 6.0 and weights == {"a": 1.0, "b": 0.5}

    uncertainty = UncertaintyWeighting({"a": 1.0, "b": 1.0})
    with torch.no_grad():
        uncertainty.log_variance.copy_(torch.tensor([0.0, np.log(4.0)]))
    total, weights = uncertainty.combine(losses)
    assert abs(total.item() - (2.0 + 8.0 / 4 + np.log(4.0))) < 1e-5
    assert abs(weights["b"] - 0.25) < 1e-6
    total.backward()
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L: a large loss raises its variance, lowering its weight
    assert torch.allclose(uncertainty.log_variance.grad, torch.tensor([1 - 2.0, 1 - 2.0]))

    initial = InitialLossWeighting({"a": 1.0, "b": 2.0}, warmup=2)
    initial.combine({"a": torch.tensor(4.0), "b": torch.tensor(10.0)})
    initial.combine({"a": torch.tensor(2.0), "b": torch.tensor(10.0)})
    _, weights = initial.combine({"a": torch.tensor(1.0), "b": torch.tensor(1.0)})
    assert weights == pytest.approx({"a": 1 / 3.0, "b": 2 / 10.0})  # frozen after 2 observations


def _first_and_last(records, key):
    values = [r[key] for r in records if key in r]
    return values[0], values[-1]


@pytest.mark.parametrize(
    "weighting, schedule",
    [("static", "all"), ("uncertainty", "all"), ("initial_loss", "all"), ("static", "round_robin"), ("static", "weighted")],
)
def test_every_objective_learns_under_each_weighting_and_schedule(weighting, schedule, tmp_path):
    steps = 32 if schedule == "all" else 72
    config = _joint(
        f"train.weighting={weighting}", f"train.schedule={schedule}", f"train.steps={steps}",
        f"train.log_every={steps // 4}", "train.checkpoint_every=0",
    )
    Pretrainer(config, tmp_path).fit()
    records = read_metrics(tmp_path / "metrics.jsonl")
    for name in config.objectives:
        first, last = _first_and_last(records, f"{name}/loss")
        assert last < first, f"{name} loss {first:.4f} -> {last:.4f} ({weighting}, {schedule})"
        weights = [r[f"weight/{name}"] for r in records if f"weight/{name}" in r]
        # logged in every interval it ran in: under round_robin it runs 3 steps of each 18
        assert len(weights) == 4 if schedule != "weighted" else len(weights) >= 2
    if weighting == "uncertainty":
        assert len({round(w, 6) for w in weights}) > 1  # learned, not fixed


def test_gradient_diagnostics_report_norms_and_cosines(tmp_path):
    config = _joint("train.steps=2", "train.grad_diagnostics_every=1", "train.checkpoint_every=0")
    trainer = Pretrainer(config, tmp_path)
    metrics = trainer.train_step()
    text_users = ["image_text", "audio_text", "graph_text", "mlm"]
    for name in text_users:
        assert metrics[f"grad/{name}/text_norm"] > 0
    assert "grad/masked_audio/text_norm" not in metrics  # it never touches the text encoder
    cosines = {k: v for k, v in metrics.items() if k.startswith("grad_cos/")}
    assert len(cosines) == 6 and all(-1 <= v <= 1 for v in cosines.values())

    # the norm is the weighted objective's gradient on the text encoder, computed directly
    trainer = Pretrainer(_joint("objectives.mlm.weight=0.5"), tmp_path / "direct")
    batch = next(Pretrainer(_joint(), tmp_path / "probe").streams["mlm"])
    loss = trainer.model("mlm", batch).loss * 0.5
    grads = torch.autograd.grad(loss, list(trainer.model.encoders["text"].parameters()), allow_unused=True)
    direct = torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)).item()
    diag = trainer.gradient_diagnostics({"mlm": trainer.model("mlm", batch).loss}, {"mlm": 0.5})
    assert diag["grad/mlm/text_norm"] == pytest.approx(direct, rel=1e-4)


def test_joint_resume_after_kill_is_bit_exact(tmp_path):
    overrides = [
        "train.steps=8", "train.checkpoint_every=4", "train.log_every=3",
        "train.schedule=weighted", "train.weighting=uncertainty",
        "objectives.audio_text.data.render_pool=8", "objectives.masked_audio.data.render_pool=8",
    ]
    full = Pretrainer(_joint(*overrides), tmp_path / "full")
    full.fit()

    run = tmp_path / "killed"
    run_until_killed(TINY_JOINT, run, overrides, kill_at=6)
    assert [p.name for p in list_checkpoints(run)] == ["step_00000004"]

    resumed = Pretrainer(_joint(*overrides), run)
    resumed.fit()
    _assert_same_weights(full.model, resumed.model)
    assert torch.equal(full.weighting.log_variance, resumed.weighting.log_variance)
    full_records = read_metrics(tmp_path / "full" / "metrics.jsonl")
    resumed_records = read_metrics(run / "metrics.jsonl")
    keys = [k for k in full_records[-1] if k.endswith("/loss") or k.startswith("weight/") or k == "loss"]
    # step 6's record averages steps 4-6: the resumed run restored steps 4's pending sums
    assert [[r.get(k) for k in keys] for r in resumed_records] == [[r.get(k) for k in keys] for r in full_records]
    full_state = load_trainer_state(resolve_checkpoint(tmp_path / "full"))
    resumed_state = load_trainer_state(resolve_checkpoint(run))
    assert full_state["streams"] == resumed_state["streams"]  # every stream's position
    assert sum(s["position"] for s in resumed_state["streams"].values()) == 8  # one objective per step


def test_shared_encoder_calls_match_separate_calls(tmp_path):
    """One batched text call (image-, audio-, graph-text, MLM) and one audio call
    (audio-text, masked audio) give the losses and gradients of separate calls; the
    graph encoder's calls stay separate."""
    results = {}
    for share in (False, True):
        trainer = Pretrainer(_joint(f"train.share_encoder_calls={share}", "train.steps=1"), tmp_path / str(share))
        batches = {name: next(stream) for name, stream in trainer.streams.items()}
        if share:
            from mmssl.train.encoder_sharing import share_encoder_calls

            assert share_encoder_calls(trainer.model.objectives, trainer.model.encoders, batches) == 4
        losses = {name: trainer.model(name, batch).loss for name, batch in batches.items()}
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results[share] = (losses, grads)
    (separate, separate_grads), (shared, shared_grads) = results[False], results[True]
    for name in separate:
        assert torch.allclose(separate[name], shared[name], atol=1e-5), name
    assert separate_grads.keys() == shared_grads.keys()
    for name in separate_grads:
        assert torch.allclose(separate_grads[name], shared_grads[name], atol=1e-5, rtol=1e-4), name


def test_zero_shot_all_evaluates_every_world_modality(tmp_path, capsys):
    from mmssl.cli.zero_shot import main

    Pretrainer(_joint("train.steps=2", "train.checkpoint_every=0"), tmp_path).fit()
    assert main(["--checkpoint", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for modality, classes in (("image", 36), ("audio", 16), ("graph", 24)):
        report = tmp_path / f"zero_shot_{modality}.json"
        assert report.is_file() and (tmp_path / f"zero_shot_{modality}_confusion.png").is_file()
        assert __import__("json").loads(report.read_text())["num_classes"] == classes
        assert f"  {modality:10s} {classes:7d}" in out  # its summary row
    assert main(["--checkpoint", str(tmp_path), "--output", str(tmp_path / "x.json")]) == 2
