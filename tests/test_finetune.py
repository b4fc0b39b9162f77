"""Fine-tuning and self-training (mmssl.transfer.finetune, mmssl.transfer.self_training, mmssl-finetune)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import mmssl
from mmssl.cli.finetune import main
from mmssl.transfer.finetune import (
    FinetuneError,
    FinetuneOptions,
    build_classifier,
    encoder_blocks,
    finetune,
    parameter_groups,
    select_labelled,
    world_labelled_set,
)
from mmssl.train.run_log import read_metrics
from mmssl.transfer.self_training import (
    SelfTrainingOptions,
    pseudo_label_metrics,
    select_pseudo_labels,
    self_train,
)
from mmssl.train.trainer import Pretrainer
from tests.killing import run_and_kill

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
QUICK = {"per_class": 1, "world_eval_per_class": 1, "batch_size": 8, "progress": False, "checkpoint_every": 2, "eval_every": 2,
             "log_every": 1}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A tiny image-text run, 2 steps."""
    run = tmp_path_factory.mktemp("pretrained")
    torch.set_num_threads(1)
    Pretrainer(mmssl.load_config(CONFIGS / "tiny.yaml", ["train.steps=2", "train.checkpoint_every=2"]), run).fit()
    return run


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory) -> Path:
    """An easy image folder: noisy reddish vs bluish squares, 12 of each."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, channel in (("red", 0), ("blue", 2)):
        (root / name).mkdir()
        for i in range(12):
            pixels = rng.integers(0, 90, (32, 32, 3))
            pixels[..., channel] += 160
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def test_linear_and_partial_leave_frozen_weights_bit_equal(pretrained: Path, tmp_path: Path) -> None:
    encoder = mmssl.load_checkpoint(pretrained).model.encoders["image"]
    before = snapshot(encoder)
    trained = {}
    finetune(pretrained, "image", tmp_path / "linear", FinetuneOptions(mode="linear", steps=3, **QUICK),
             after_step=lambda step, model: trained.update(linear=model))
    assert changed(before, trained["linear"].encoder) == set()  # parameters and BatchNorm statistics

    finetune(pretrained, "image", tmp_path / "partial", FinetuneOptions(mode="partial", unfreeze_blocks=1, steps=3, **QUICK),
             after_step=lambda step, model: trained.update(partial=model))
    model = trained["partial"]
    loaded = mmssl.load_checkpoint(pretrained)
    world = world_labelled_set(loaded.model, "image", loaded.config, "x", 1)
    blocks = encoder_blocks(model.encoder, model.processor.collate([model.processor.transform(world.items[0], None)]))
    last = {f"{name}." for name, m in model.encoder.named_modules() if m is blocks[-1]}.pop()
    moved = changed(before, model.encoder)
    assert moved and all(k.startswith(last) for k in moved), (last, sorted(moved)[:5])
    assert not any(torch.equal(a, b) for a, b in zip(trained["linear"].head.parameters(), model.head.parameters()))


def test_staged_unfreezes_the_encoder_at_head_steps(pretrained: Path, tmp_path: Path) -> None:
    encoder_before = snapshot(mmssl.load_checkpoint(pretrained).model.encoders["image"])
    moved: dict[int, bool] = {}
    finetune(pretrained, "image", tmp_path / "staged", FinetuneOptions(mode="staged", head_steps=2, steps=4, **QUICK),
             after_step=lambda step, model: moved.__setitem__(step, bool(changed(encoder_before, model.encoder))))
    assert moved == {1: False, 2: False, 3: True, 4: True}


class Killed(Exception):
    pass


def test_killed_finetune_resumes_to_the_same_weights(pretrained: Path, tmp_path: Path) -> None:
    options = FinetuneOptions(mode="staged", head_steps=1, steps=5, **QUICK)
    final = {}
    finetune(pretrained, "image", tmp_path / "whole", options, after_step=lambda step, model: final.update(whole=model))

    def kill_at_step_4(step: int, model: torch.nn.Module) -> None:
        if step == 4:  # after the update of step 4, before its metrics line; the last checkpoint is step 2
            raise Killed

    with pytest.raises(Killed):
        finetune(pretrained, "image", tmp_path / "killed", options, after_step=kill_at_step_4)
    finetune(pretrained, "image", tmp_path / "killed", options, after_step=lambda step, model: final.update(resumed=model))
    whole, resumed = final["whole"].state_dict(), final["resumed"].state_dict()
    assert [k for k in whole if not torch.equal(whole[k], resumed[k])] == []
    lines = [(tmp_path / run / "metrics.jsonl").read_text().splitlines() for run in ("whole", "killed")]
    strip = [[{k: v for k, v in json.loads(line).items() if k != "samples_per_s"} for line in run] for run in lines]
    assert strip[0] == strip[1]
    with pytest.raises(FinetuneError, match=r"other options \(lr: 0.001 there, 0.002 now\)"):
        finetune(pretrained, "image", tmp_path / "killed", dataclasses.replace(options, lr=0.002))


def test_expected_errors_are_one_line(pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = [str(pretrained), "--output-dir", str(tmp_path / "out"), "--no-progress"]
    assert main([base[0], "audio", *base[1:]]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "mmssl-finetune: error: checkpoint has no modality 'audio'; it has ['image', 'text']"
    ]
    assert main([base[0], "image", *base[1:], "--class-names", "a,b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'class_names' (--class-names) has 2 names but world has 36 classes" in err[0]
    assert main([base[0], "image", *base[1:], "--mode", "partial", "--unfreeze-blocks", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "mmssl-finetune: error: 'unfreeze_blocks' (--unfreeze-blocks): must be at least 1 in partial mode, got 0 "
        "(mode linear freezes all)"
    ]


def test_a_recipe_file_sets_the_keys_and_a_misspelled_key_names_the_closest(
    pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """mmssl-finetune --config reads a YAML recipe with the run config's loader: a
    misspelled key fails before any work, naming the key and the closest valid one; flags
    and KEY=VALUE override the file (library errors name the key, the CLI its flag)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("mode: linear\nstesp: 5\n", encoding="utf-8")
    out = tmp_path / "out"
    base = [str(pretrained), "image", "--output-dir", str(out), "--no-progress", "--config", str(recipe)]
    assert main(base) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"mmssl-finetune: error: {recipe}: 'stesp': unknown key. Did you mean 'steps' (--steps)?")
    assert not out.exists()  # refused before any work
    recipe.write_text("mode: linear\nsteps: 0\nself_training: {rounds: 1}\n", encoding="utf-8")
    assert main([*base, "steps=3"]) == 2  # the override fixes steps; rounds without a pool is refused
    assert "'self_training.unlabeled' (--unlabeled): required" in capsys.readouterr().err
    assert main([*base, "--steps", "2"]) == 2  # a flag over the file, the override (none) over both
    assert "'self_training.unlabeled' (--unlabeled): required" in capsys.readouterr().err
    recipe.write_text("mode: staged\nsteps: 4\nhead_steps: 9\n", encoding="utf-8")
    assert main(base) == 2
    assert "'head_steps' (--head-steps): must be in [0, steps) in staged mode, got 9 with 4 steps" in capsys.readouterr().err


def test_label_count_mismatch_between_train_and_eval_sets(pretrained: Path, tmp_path: Path, colour_folder: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = main([str(pretrained), "image", "--output-dir", str(tmp_path / "out"), "--data", f"folder:{colour_folder}",
                 "--eval-data", "world", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"training set folder:{colour_folder} has 2 classes but the eval set world has 36" in err[0]


def test_linear_head_learns_an_easy_folder_well_above_chance(pretrained: Path, tmp_path: Path, colour_folder: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "easy"
    assert main([str(pretrained), "image", "--output-dir", str(out), "--mode", "linear", "--data", f"folder:{colour_folder}",
                 "--steps", "30", "--lr", "0.05", "--batch-size", "8", "--eval-every", "10", "--checkpoint-every", "30",
                 "--test-fraction", "0.5", "--no-progress"]) == 0
    report = json.loads((out / "finetune_report.json").read_text())
    assert report["num_train"] == 12 and report["num_eval"] == 12 and report["num_classes"] == 2
    assert report["top1"] >= 0.9, report
    assert f"eval top-1 {report['top1']:.4f}" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "eval/top1" in r] == [10, 20, 30]
    assert (out / "learning_curve.png").stat().st_size > 0


def test_label_efficiency_selection_is_seeded_and_per_class() -> None:
    labels = [0] * 10 + [1] * 6 + [2] * 2
    chosen = select_labelled(labels, per_class=3, fraction=None, seed=0)
    assert np.bincount(np.array(labels)[chosen]).tolist() == [3, 3, 2]  # a class with fewer gives all it has
    assert chosen == select_labelled(labels, 3, None, seed=0) != select_labelled(labels, 3, None, seed=1)
    half = select_labelled(labels, per_class=None, fraction=0.5, seed=0)
    assert np.bincount(np.array(labels)[half]).tolist() == [5, 3, 1]
    with pytest.raises(FinetuneError, match="not both"):
        select_labelled(labels, 3, 0.5, seed=0)


def test_pseudo_label_selection_and_metrics_on_a_fixed_case() -> None:
    probabilities = torch.tensor([
        [0.90, 0.05, 0.05],  # 0 -> class 0
        [0.60, 0.30, 0.10],  # 1 -> 0
        [0.10, 0.85, 0.05],  # 2 -> 1
        [0.20, 0.70, 0.10],  # 3 -> 1
        [0.05, 0.15, 0.80],  # 4 -> 2
        [0.95, 0.03, 0.02],  # 5 -> 0
    ])
    taken, pseudo = select_pseudo_labels(probabilities, threshold=0.7)
    assert taken.tolist() == [0, 2, 3, 4, 5] and pseudo.tolist() == [0, 1, 1, 2, 0]
    taken_k, pseudo_k = select_pseudo_labels(probabilities, top_k=1)
    assert taken_k.tolist() == [2, 4, 5] and pseudo_k.tolist() == [1, 2, 0]
    # 0.55 takes all six; balanced caps each class at ceil(6 / 3) = 2: class 0 keeps items 5 and 0, not 1
    taken_b, _ = select_pseudo_labels(probabilities, threshold=0.55, balanced=True)
    assert taken_b.tolist() == [0, 2, 3, 4, 5]

    true = np.array([0, 1, 1, 0, 2, 2])  # items 3 and 5 get wrong pseudo-labels
    metrics = pseudo_label_metrics(taken, pseudo, true, num_classes=3)
    # direct computation: confusion of the taken items, recall over the whole pool
    confusion = np.zeros((3, 3))
    for t, p in zip(true[taken], pseudo):
        confusion[t, p] += 1
    precision = np.diag(confusion) / confusion.sum(0)
    recall = np.diag(confusion) / np.bincount(true, minlength=3)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    assert metrics["pseudo_labels"] == 5
    assert metrics["accuracy"] == pytest.approx(np.trace(confusion) / 5) == 0.6
    assert [metrics["precision"][c] for c in range(3)] == pytest.approx(precision.tolist())  # 1/2, 1/2, 1
    assert [metrics["recall"][c] for c in range(3)] == pytest.approx(recall.tolist())  # 1/2, 1/2, 1/2
    assert [metrics["f1"][c] for c in range(3)] == pytest.approx(f1.tolist())
    assert metrics["mean_f1"] == pytest.approx(f1.mean())


def test_self_training_scores_each_rounds_pseudo_labels(pretrained: Path, tmp_path: Path, colour_folder: Path) -> None:
    options = FinetuneOptions(mode="linear", data=f"folder:{colour_folder}", steps=10, lr=0.05, batch_size=8,
                              progress=False, eval_every=10, checkpoint_every=10, test_fraction=0.5, per_class=2)
    report = self_train(pretrained, "image", tmp_path / "st", options,
                        SelfTrainingOptions(unlabeled=f"folder:{colour_folder}", rounds=1, top_k=4, pseudo_weight=0.5))
    first, second = report["rounds"]
    assert first["pseudo_labels"] == 0 and report["num_labelled"] == 4
    assert second["pseudo_labels"] == 8 and second["pseudo_per_class"] == [4, 4]
    assert 0 <= second["pseudo/accuracy"] <= 1 and set(second["pseudo/recall"]) == {0, 1}
    assert report["top1"] == second["eval/top1"]
    assert (tmp_path / "st" / "self_training.png").stat().st_size > 0
    with pytest.raises(FinetuneError, match=r"other options \(top_k: 4 there, 3 now\)"):
        self_train(pretrained, "image", tmp_path / "st", options,
                   SelfTrainingOptions(unlabeled=f"folder:{colour_folder}", rounds=1, top_k=3, pseudo_weight=0.5))


def test_layer_decay_scales_each_block_and_every_parameter_has_one_group(pretrained: Path) -> None:
    loaded = mmssl.load_checkpoint(pretrained)
    model = build_classifier(loaded.model, loaded.config, "image", 36, from_scratch=False, seed=0)
    world = world_labelled_set(loaded.model, "image", loaded.config, "x", 1)
    blocks = encoder_blocks(model.encoder, model.processor.collate([model.processor.transform(world.items[0], None)]))
    groups = parameter_groups(model, blocks, FinetuneOptions(mode="staged", encoder_lr_scale=0.1, layer_decay=0.5))
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each parameter once
    assert groups[0]["name"] == "head" and groups[0]["lr_scale"] == 1.0
    scales = [g["lr_scale"] for g in groups[1:]]  # the unblocked mask_value first, then the blocks
    assert scales == pytest.approx([0.1 * 0.5 ** (len(scales) - 1 - i) for i in range(len(scales))])


@pytest.mark.slow
def test_a_sigkilled_command_resumes_to_the_same_weights(pretrained: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The mmssl-finetune process is SIGKILLed at an arbitrary point once its third
    checkpoint is in place (often mid-step, sometimes mid-save); the same command again
    finishes with the uninterrupted run's weights and metrics lines."""
    args = ["--mode", "staged", "--head-steps", "4", "--steps", "30", "--per-class", "1", "--world-eval-per-class", "1",
            "--batch-size", "8", "--checkpoint-every", "1", "--eval-every", "5", "--log-every", "1", "--no-progress"]
    killed = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "tools" / "finetune.py"), str(pretrained), "image", "--output-dir", str(killed), *args]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread, as this process (conftest): the same arithmetic
    run_and_kill(cmd, tmp_path / "killed.log", lambda: (killed / "checkpoints" / "step_00000003").is_dir(), REPO)
    assert not (killed / "checkpoints" / "step_00000030").exists()
    assert main([str(pretrained), "image", "--output-dir", str(killed), *args]) == 0
    assert main([str(pretrained), "image", "--output-dir", str(tmp_path / "whole"), *args]) == 0
    final = [load_file(run / "checkpoints" / "step_00000030" / "classifier.safetensors") for run in (killed, tmp_path / "whole")]
    assert [k for k in final[0] if not torch.equal(final[0][k], final[1][k])] == []
    lines = [[{k: v for k, v in r.items() if k != "samples_per_s"} for r in read_metrics(run / "metrics.jsonl")]
             for run in (killed, tmp_path / "whole")]
    assert lines[0] == lines[1]


def test_a_stopped_finetune_resumes_every_generator(pretrained: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A fine-tune that draws from numpy's and Python's global generators as well as torch's
    (a plugin's forward might) resumes exactly: its checkpoints hold every generator's
    state and resume restores each."""
    import random

    from mmssl.transfer import finetune as finetune_module

    forward = finetune_module.Classifier.forward

    def noisy(self: finetune_module.Classifier, batch: object) -> torch.Tensor:
        return forward(self, batch) * (1 + 0.5 * random.random() + 0.5 * float(np.random.rand()))

    monkeypatch.setattr(finetune_module.Classifier, "forward", noisy)
    options = FinetuneOptions(mode="linear", steps=5, **QUICK)
    final = {}

    def run(name: str, seed: int, after_step) -> None:
        random.seed(seed)
        np.random.seed(seed)
        finetune(pretrained, "image", tmp_path / name, options, after_step=after_step)

    def stop_at_step_4(step: int, model: torch.nn.Module) -> None:
        if step == 4:  # the last checkpoint is step 2
            raise Killed

    run("whole", 0, lambda step, model: final.update(whole=model))
    with pytest.raises(Killed):
        run("stopped", 0, stop_at_step_4)
    state = torch.load(tmp_path / "stopped" / "checkpoints" / "step_00000002" / "finetune_state.pt", weights_only=True)
    assert {"torch", "numpy", "python"} <= set(state["rng"])
    run("stopped", 1, lambda step, model: final.update(resumed=model))  # seeded otherwise: the checkpoint's state wins
    whole, resumed = final["whole"].state_dict(), final["resumed"].state_dict()
    assert [k for k in whole if not torch.equal(whole[k], resumed[k])] == []
    lines = [[{k: v for k, v in r.items() if k != "samples_per_s"} for r in read_metrics(tmp_path / run / "metrics.jsonl")]
             for run in ("whole", "stopped")]
    assert lines[0] == lines[1]


def test_a_finetune_checkpoint_of_torch_rng_alone_still_resumes(pretrained: Path, tmp_path: Path) -> None:
    """A checkpoint written before every generator was saved (its state holds
    ``torch_rng``) resumes, restoring torch's generator, to the uninterrupted weights."""
    options = FinetuneOptions(mode="staged", head_steps=1, steps=4, **QUICK)
    final = {}
    finetune(pretrained, "image", tmp_path / "whole", options, after_step=lambda step, model: final.update(whole=model))

    def stop_at_step_3(step: int, model: torch.nn.Module) -> None:
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        finetune(pretrained, "image", tmp_path / "old", options, after_step=stop_at_step_3)
    path = tmp_path / "old" / "checkpoints" / "step_00000002" / "finetune_state.pt"
    state = torch.load(path, weights_only=True)
    state["torch_rng"] = state.pop("rng")["torch"]
    torch.save(state, path)
    finetune(pretrained, "image", tmp_path / "old", options, after_step=lambda step, model: final.update(resumed=model))
    whole, resumed = final["whole"].state_dict(), final["resumed"].state_dict()
    assert [k for k in whole if not torch.equal(whole[k], resumed[k])] == []


def test_a_corrupt_finetune_checkpoint_is_skipped_with_a_warning(pretrained: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    options = FinetuneOptions(mode="linear", steps=4, **QUICK)
    finetune(pretrained, "image", tmp_path / "run", options)
    latest = tmp_path / "run" / "checkpoints" / "step_00000004"
    (latest / "finetune_state.pt").write_bytes(b"\x00" * 64)
    steps = []
    with caplog.at_level("WARNING", logger="mmssl.train.checkpoints"):
        finetune(pretrained, "image", tmp_path / "run", options, after_step=lambda step, model: steps.append(step))
    assert f"skipping checkpoint {latest}: {latest / 'finetune_state.pt'} is unreadable" in caplog.text
    assert steps == [3, 4]  # resumed from step 2
