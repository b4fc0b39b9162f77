"""Non-finite steps: a NaN loss or gradient skips the step, counted and logged; too many in a
row stop the run with a checkpoint of the last good weights; fp16 keeps its GradScaler."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from mmssl.train.checkpoint import load_pretrained, load_trainer_state, resolve_checkpoint
from mmssl.cli import pretrain
from mmssl.train.run_log import read_metrics
from mmssl.train.trainer import NonFiniteStepsError, Pretrainer
from objectives.base import ObjectiveOutput

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def nan_loss_at(trainer: Pretrainer, steps: set[int], objective: str = "image_text") -> None:
    """Make ``objective``'s loss NaN (still on the graph, so its gradients are NaN too) at
    the 0-based ``steps``."""

    def hook(module, args, out):
        if trainer.step in steps:
            return ObjectiveOutput(out.loss * float("nan"), out.metrics)
        return None

    trainer.model.objectives[objective].register_forward_hook(hook)


def nonfinite_grad_at(trainer: Pretrainer, steps: set[int], value: float = float("nan")) -> str:
    """Write ``value`` into one parameter's gradient at the 0-based ``steps`` (the loss
    stays finite); returns the parameter's name."""
    name, param = next((n, p) for n, p in trainer.model.named_parameters() if n.startswith("encoders.text"))

    def hook(grad):
        if trainer.step in steps:
            grad = grad.clone()
            grad.view(-1)[0] = value
        return grad

    param.register_hook(hook)
    return name


def weights_after_each_step(trainer: Pretrainer) -> dict[int, dict[str, torch.Tensor]]:
    seen: dict[int, dict[str, torch.Tensor]] = {0: {k: v.clone() for k, v in trainer.model.state_dict().items()}}
    trainer.callbacks.append(lambda t, m: seen.__setitem__(t.step, {k: v.clone() for k, v in t.model.state_dict().items()}))
    return seen


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_skips_the_step_and_training_goes_on(tiny_config, tmp_path, caplog):
    overrides = ("train.steps=6", "train.checkpoint_every=3")
    trainer = Pretrainer(tiny_config(*overrides), tmp_path / "a")
    nan_loss_at(trainer, {3})  # step 4 in the log's numbering
    seen = weights_after_each_step(trainer)
    with caplog.at_level(logging.WARNING, logger="mmssl.train.trainer"):
        trainer.fit()
    assert same(seen[3], seen[4]) and not same(seen[4], seen[5])  # skipped, then trained again
    assert trainer.nonfinite_steps == 1 and trainer.bad_steps_in_a_row == 0
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and "step 4 skipped" in warnings[0] and "objective 'image_text' loss nan" in warnings[0]
    records = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert [r["nonfinite_steps"] for r in records] == [0, 0, 0, 1, 1, 1]
    assert "image_text/loss" not in records[3]  # a skipped step's losses stay out of the means
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r)
    # the streams and the lr schedule moved on as for any step
    state = load_trainer_state(resolve_checkpoint(tmp_path / "a"))
    assert state["streams"]["image_text"]["position"] == 6 and state["nonfinite_steps"]["total"] == 1

    # a run resumed before the skipped step repeats it bit for bit
    resumed = Pretrainer(tiny_config(*overrides, f"train.resume={tmp_path / 'a' / 'checkpoints' / 'step_00000003'}"), tmp_path / "b")
    nan_loss_at(resumed, {3})
    resumed.fit()
    assert same(trainer.model.state_dict(), resumed.model.state_dict()) and resumed.nonfinite_steps == 1


def test_nonfinite_gradient_with_finite_loss_is_skipped_naming_the_parameter(tiny_config, tmp_path, caplog):
    trainer = Pretrainer(tiny_config("train.steps=4", "train.checkpoint_every=0"), tmp_path)
    name = nonfinite_grad_at(trainer, {1})
    seen = weights_after_each_step(trainer)
    with caplog.at_level(logging.WARNING, logger="mmssl.train.trainer"):
        last = trainer.fit()
    assert same(seen[1], seen[2]) and not same(seen[2], seen[3])
    assert trainer.nonfinite_steps == 1 and last["nonfinite_steps"] == 1
    assert any("step 2 skipped" in r.getMessage() and f"gradient of '{name}'" in r.getMessage() for r in caplog.records)
    assert torch.isfinite(torch.tensor(last["loss"]))
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_too_many_bad_steps_stop_with_one_line_and_the_last_good_weights(tiny_config, tmp_path, monkeypatch, capsys):
    built: list[Pretrainer] = []

    class Poisoned(Pretrainer):  # what mmssl-pretrain builds, with NaN losses from step 3 on
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            nan_loss_at(self, {2, 3, 4, 5})
            self.seen = weights_after_each_step(self)
            built.append(self)

    monkeypatch.setattr(pretrain, "Pretrainer", Poisoned)
    out = tmp_path / "run"
    code = pretrain.main([TINY, "--output-dir", str(out), "train.max_bad_steps=2", "train.checkpoint_every=0"])
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mmssl-pretrain: error:")]
    assert len(err) == 1 and "stopped at step 5: 3 steps in a row were non-finite" in err[0]
    assert "train.max_bad_steps=2" in err[0] and "the weights of step 2" in err[0]
    checkpoint = resolve_checkpoint(out)
    assert checkpoint.name == "step_00000005"
    assert same(built[0].seen[2], load_pretrained(out).state_dict())  # the last good step's weights
    assert load_trainer_state(checkpoint)["nonfinite_steps"] == {"total": 3, "in_a_row": 3}
    assert read_metrics(out / "metrics.jsonl")[-1]["nonfinite_steps"] == 3


def test_max_bad_steps_zero_stops_at_the_first(tiny_config, tmp_path):
    trainer = Pretrainer(tiny_config("train.max_bad_steps=0", "train.checkpoint_every=0"), tmp_path)
    nan_loss_at(trainer, {1})
    with pytest.raises(NonFiniteStepsError, match="stopped at step 2: 1 steps in a row"):
        trainer.fit()
    assert resolve_checkpoint(tmp_path).name == "step_00000002"


def test_fp16_gradient_overflow_is_the_scalers_to_skip(tiny_config, tmp_path):
    trainer = Pretrainer(tiny_config("train.precision=fp16", "train.steps=5", "train.checkpoint_every=0"), tmp_path)
    nonfinite_grad_at(trainer, {2}, value=float("inf"))
    nan_loss_at(trainer, {3})  # a non-finite loss is still a skipped step
    seen = weights_after_each_step(trainer)
    scales: dict[int, float] = {}
    trainer.callbacks.append(lambda t, m: scales.__setitem__(t.step, m["grad_scale"]))
    last = trainer.fit()
    params = [n for n, _ in trainer.model.named_parameters()]  # the scaler's skip keeps BatchNorm's update
    assert same({k: seen[2][k] for k in params}, seen[3])  # the scaler skipped step 3 ...
    assert same(seen[3], seen[4])  # ... and we skipped step 4, buffers included
    assert scales[3] == scales[2] / 2  # ... and it lowered its scale
    assert trainer.nonfinite_steps == 1  # only the NaN loss counts as a bad step
    assert torch.isfinite(torch.tensor(last["loss"]))
