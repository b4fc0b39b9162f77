"""train.ema: the moving average of the model's weights is the one a hand computation over
the weights after each step gives; it is off by default and never changes training; it
resumes exactly from a checkpoint; evaluation and export read it with --ema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_model

import mmssl
from mmssl.cli import export as export_cli
from mmssl.cli import zero_shot
from mmssl.config import ConfigError, EmaConfig
from mmssl.train.checkpoint import (
    EMA_WEIGHTS,
    WEIGHTS,
    CheckpointError,
    CorruptCheckpointError,
    check_complete,
    list_checkpoints,
)
from mmssl.train.ema import ModelEma
from mmssl.train.trainer import Pretrainer
from tests.test_nonfinite import nan_loss_at

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
STEPS = ["train.steps=4", "train.checkpoint_every=2", "train.log_every=2"]
DECAY, WARMUP = 0.8, 2  # decay_s = 0.8 min(1, s / 2): 0, 0.4, 0.8, 0.8


def ema(every: int) -> str:
    return f"train.ema={{decay: {DECAY}, warmup_steps: {WARMUP}, every: {every}}}"


class Stop(Exception):
    """Ends a run in a callback: the process as a kill after that step leaves it."""


def train(run: Path, *overrides: str, nan_at: set[int] = frozenset(), stop_at: int | None = None) -> dict:
    """Train tiny.yaml into ``run``; returns the trainer, the state dict before training and
    after each step (by step), the EMA after each step and the skipped steps (0-based)."""
    torch.set_num_threads(1)
    trainer = Pretrainer(mmssl.load_config(TINY, [*STEPS, *overrides]), run)
    nan_loss_at(trainer, set(nan_at))
    seen = {"trainer": trainer, "weights": {0: clone(trainer.model.state_dict())}, "ema": {}, "skipped": set()}

    def record(t: Pretrainer, metrics: dict) -> None:
        seen["weights"][t.step] = clone(t.model.state_dict())
        if t.ema is not None:
            seen["ema"][t.step] = clone(t.ema.weights)
        if metrics["skipped"]:
            seen["skipped"].add(t.step - 1)
        if t.step == stop_at:
            raise Stop

    trainer.callbacks.append(record)
    if stop_at is None:
        trainer.fit()
    else:
        with pytest.raises(Stop):
            trainer.fit()
    return seen


def clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("ema")
    return {
        "plain": train(root / "plain"),
        "ema": train(root / "ema", ema(1)),
        # every other step; step 2 (s = 1), due an update, skipped as non-finite
        "every2": train(root / "every2", ema(2), nan_at={1}),
    }


def by_hand(seen: dict, every: int) -> dict[str, torch.Tensor]:
    """The average computed in float64 from the weights after each step."""
    weights = seen["weights"]
    average = {k: v.double() if v.is_floating_point() else v for k, v in weights[0].items()}
    for s in range(len(weights) - 1):
        if s in seen["skipped"] or (s + 1) % every:
            continue
        d = DECAY * min(1.0, s / WARMUP)
        average = {k: d * v + (1 - d) * weights[s + 1][k].double() if v.is_floating_point() else weights[s + 1][k]
                   for k, v in average.items()}
    return average


@pytest.mark.parametrize("name, every", [("ema", 1), ("every2", 2)])
def test_the_average_is_the_hand_computed_one_and_is_saved_with_every_checkpoint(runs, name, every):
    seen = runs[name]
    trainer = seen["trainer"]
    expected = by_hand(seen, every)
    assert trainer.ema.weights.keys() == expected.keys()
    for k, v in trainer.ema.weights.items():
        assert v.dtype == (torch.float32 if v.is_floating_point() else expected[k].dtype), k
        torch.testing.assert_close(v.double() if v.is_floating_point() else v, expected[k], rtol=1e-6, atol=1e-7, msg=k)
    if every == 1:  # the first update makes the average the weights, bit for bit
        assert all(torch.equal(seen["ema"][1][k], seen["weights"][1][k]) for k in seen["ema"][1])
    else:  # updates after steps 2 (skipped) and 4 only: after step 3 still the initial weights
        assert seen["skipped"] == {1}
        assert all(torch.equal(seen["ema"][3][k], seen["weights"][0][k]) for k in seen["ema"][3])
        assert not all(torch.equal(v, seen["weights"][0][k]) for k, v in trainer.ema.weights.items())
    for checkpoint in list_checkpoints(trainer.output_dir):  # step 2 and step 4
        step = int(checkpoint.name.split("_")[1])
        saved = load_file(str(checkpoint / EMA_WEIGHTS))
        with safe_open(str(checkpoint / WEIGHTS), framework="pt") as f:
            assert set(saved) == set(f.keys())  # named as model.safetensors names its tensors
        assert all(torch.equal(saved[k], seen["ema"].get(step, seen["weights"][0])[k]) for k in saved)
        assert json.loads((checkpoint / "meta.json").read_text())["ema"] is True


def test_off_by_default_and_training_is_the_same_with_it(runs):
    plain, averaged = runs["plain"], runs["ema"]
    assert mmssl.load_config(TINY).train.ema is None and plain["trainer"].ema is None
    checkpoint = list_checkpoints(plain["trainer"].output_dir)[-1]
    assert not (checkpoint / EMA_WEIGHTS).exists() and "ema" not in json.loads((checkpoint / "meta.json").read_text())
    final = plain["weights"][4]
    assert all(torch.equal(final[k], averaged["weights"][4][k]) for k in final)


def test_a_resumed_run_continues_the_average_exactly(runs, tmp_path):
    run = tmp_path / "stopped"
    train(run, ema(1), stop_at=3)  # the checkpoint of step 2 is on disk; step 3's average is lost
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002"]
    resumed = train(run, ema(1))["trainer"]
    assert resumed.step == 4
    full = runs["ema"]["trainer"].ema.weights
    assert all(torch.equal(resumed.ema.weights[k], full[k]) for k in full)


def test_ema_flag_evaluates_and_exports_the_average(runs, tmp_path, capsys):
    run = runs["ema"]["trainer"].output_dir
    checkpoint = list_checkpoints(run)[-1]
    # the same checkpoint with its model weights replaced by its average
    swapped = Path(shutil.copytree(checkpoint, tmp_path / "swapped"))
    shutil.copyfile(checkpoint / EMA_WEIGHTS, swapped / WEIGHTS)

    captions = ["a red circle", "a blue square"]
    with torch.no_grad():
        averaged = mmssl.load_pretrained(run, ema=True).encode("text", captions)
        assert torch.equal(averaged, mmssl.load_pretrained(swapped).encode("text", captions))
        assert not torch.allclose(averaged, mmssl.load_pretrained(run).encode("text", captions))

    reports = {}
    for name, argv in {"ema": [str(run), "--ema"], "swapped": [str(swapped)]}.items():
        output = tmp_path / f"{name}.json"
        assert zero_shot.main(["--checkpoint", *argv, "--modality", "image", "--output", str(output)]) == 0
        reports[name] = json.loads(output.read_text())
    assert reports["ema"].pop("weights") == "ema" and "weights" not in reports["swapped"]
    assert {k: v for k, v in reports["ema"].items() if k != "checkpoint"} == {
        k: v for k, v in reports["swapped"].items() if k != "checkpoint"}
    assert "the EMA weights" in capsys.readouterr().out

    out = tmp_path / "export"
    assert export_cli.main([str(run), "--ema", "--modalities", "text", "--output-dir", str(out)]) == 0
    exported = load_file(str(out / "text" / WEIGHTS))
    saved = load_file(str(checkpoint / EMA_WEIGHTS))
    assert all(torch.equal(t, saved[f"encoders.text.{k}"]) for k, t in exported.items())
    assert json.loads((out / "text" / "mmssl_encoder.json").read_text())["weights"] == "ema"


def test_a_checkpoint_without_the_average_is_a_clear_error(runs, tmp_path, capsys):
    plain = runs["plain"]["trainer"].output_dir
    assert zero_shot.main(["--checkpoint", str(plain), "--ema", "--modality", "image"]) == 2
    err = capsys.readouterr().err
    assert str(list_checkpoints(plain)[-1]) in err and "trained without train.ema" in err
    # resuming it with train.ema on: the average cannot continue
    run = Path(shutil.copytree(plain, tmp_path / "plain"))
    with pytest.raises(CheckpointError, match="trained without train.ema.*resume it with train.ema=null"):
        Pretrainer(mmssl.load_config(TINY, [*STEPS, ema(1)]), run).fit()
    # a checkpoint that says it kept one and lacks the file is incomplete (resume skips it)
    damaged = Path(shutil.copytree(list_checkpoints(runs["ema"]["trainer"].output_dir)[-1], tmp_path / "step_00000004"))
    check_complete(damaged)
    (damaged / EMA_WEIGHTS).unlink()
    with pytest.raises(CorruptCheckpointError, match=f"incomplete: {EMA_WEIGHTS} missing"):
        check_complete(damaged)


@pytest.mark.parametrize("value, says", [
    ("{decay: 1.0}", "'train.ema.decay': must be in (0, 1)"),
    ("{decay: 0}", "'train.ema.decay': must be in (0, 1)"),
    ("{every: 0}", "'train.ema.every': must be >= 1"),
    ("{warmup_steps: -1}", "'train.ema.warmup_steps': must be >= 0"),
    ("{decay: 0.99, momentum: 0.9}", "'train.ema.momentum': unknown key"),
])
def test_bad_values_name_the_key(value, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")):
        mmssl.load_config(TINY, [f"train.ema={value}"])


def test_fsdp_is_refused_at_start():
    with pytest.raises(ConfigError, match="train.ema is not supported with train.parallel: fsdp yet"):
        mmssl.load_config(TINY, [ema(1), "train.parallel=fsdp"])


def test_tied_weights_are_averaged_once_under_the_name_safetensors_keeps(tmp_path):
    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight  # a decoder tied to its embedding, as MLM's
    save_model(model, str(tmp_path / WEIGHTS))
    average = ModelEma(model, EmaConfig(decay=0.5, warmup_steps=0))
    with safe_open(str(tmp_path / WEIGHTS), framework="pt") as f:
        assert set(average.weights) == set(f.keys())
    before = average.weights[next(iter(average.weights))].clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    average.update(model, step=0)
    torch.testing.assert_close(next(iter(average.weights.values())), before + 0.5)
