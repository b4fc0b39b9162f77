"""tools/ scripts end to end on the tiny config."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_image

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = _run("tools/pretrain.py", "configs/tiny.yaml", "--output-dir", str(out), "train.steps=4")
    assert proc.returncode == 0, proc.stderr
    return out


def test_pretrain_writes_checkpoints_metrics_and_plot(tiny_run):
    assert (tiny_run / "checkpoints" / "step_00000004" / "model.safetensors").is_file()
    assert (tiny_run / "losses.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tiny_run / "train_summary.json").read_text())["steps"] == 4


def test_zero_shot_on_world_reports_both_accuracies(tiny_run, tmp_path):
    output = tmp_path / "zs.json"
    proc = _run("tools/zero_shot.py", "--checkpoint", str(tiny_run), "--modality", "image", "--output", str(output))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(output.read_text())
    for key in ("modality", "top1", "top5", "mean_per_class_recall", "num_samples", "num_classes", "composition_top1"):
        assert key in report
    assert report["num_classes"] == 36 and report["num_samples"] == 72
    assert 0 <= report["composition_top1"] <= 1 and len(report["heldout_classes"]) == 6
    assert (tmp_path / "zs_confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert "composition_top1" in proc.stdout

    # More fresh samples per class than the run config's 2, for a tighter figure.
    proc = _run("tools/zero_shot.py", "--checkpoint", str(tiny_run), "--modality", "image", "--output", str(output),
                "--samples-per-class", "5")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(output.read_text())["num_samples"] == 36 * 5


def test_zero_shot_on_image_folder_skips_bad_files(tiny_run, tmp_path):
    data = tmp_path / "folder"
    for i, name in enumerate(["red_circle", "blue_star"]):
        (data / name).mkdir(parents=True)
        write_image(data / name / "a.png", i)
        write_image(data / name / "b.png", i + 10)
    (data / "blue_star" / "broken.png").write_bytes(b"nope")
    output = tmp_path / "folder.json"
    proc = _run(
        "tools/zero_shot.py", "--checkpoint", str(tiny_run / "checkpoints" / "step_00000004"),
        "--modality", "image", "--data", f"folder:{data}", "--output", str(output),
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(output.read_text())
    assert report["num_samples"] == 4 and report["skipped"] == 1 and report["num_classes"] == 2
    assert "broken.png" in proc.stderr

    failing = _run(
        "tools/zero_shot.py", "--checkpoint", str(tiny_run), "--modality", "image",
        "--data", f"folder:{data}", "--output", str(output), "--on-error", "fail",
    )
    assert failing.returncode == 2 and "broken.png" in failing.stderr


def test_clear_errors_for_bad_arguments(tiny_run, tmp_path, capsys):
    """In-process (each command's main): one line on stderr and exit code 2 for each."""
    from mmssl.cli.pretrain import main as pretrain
    from mmssl.cli.zero_shot import main as zero_shot

    def run(main, *args: str) -> tuple[int, str]:
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        return code, capsys.readouterr().err

    code, err = run(zero_shot, "--checkpoint", str(tmp_path), "--modality", "image")
    assert code == 2 and "no checkpoint at" in err
    code, err = run(zero_shot, "--checkpoint", str(tiny_run), "--modality", "audio")
    assert code == 2 and "has no modality 'audio'" in err
    code, err = run(zero_shot, "--checkpoint", str(tiny_run), "--samples-per-class", "0")
    assert code == 2 and "'world_eval_per_class' (--world-eval-per-class): must be at least 1" in err
    code, err = run(zero_shot, "--checkpoint", str(tiny_run), "--modality", "image",
                    "--data", f"folder:{tmp_path}", "--samples-per-class", "3")
    assert code == 2 and f"data folder:{tmp_path} has its own" in err
    code, err = run(pretrain, "configs/tiny.yaml", "--output-dir", str(tmp_path), "train.stpes=3")
    assert code == 2 and "'train.stpes'" in err and "steps" in err


def test_console_scripts_start_without_library_warnings():
    """A command's start-up prints no warning a library raises on import (PyTorch
    Geometric's torch.jit.script FutureWarning was one, on every command)."""
    modules = ("pretrain", "zero_shot", "finetune", "seed_sweep", "make_shards")
    code = ("import sys; " + "; ".join(f"import mmssl.cli.{m}" for m in modules)
            + "; sys.argv = ['mmssl-pretrain', '--help']; mmssl.cli.pretrain.main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0 and "usage: mmssl-pretrain" in proc.stdout, proc.stderr[-2000:]
    assert "Warning" not in proc.stderr, proc.stderr[-2000:]


def test_every_flag_sets_its_recipe_key(tmp_path):
    """The commands' flags are ways of setting option keys: each flag of mmssl-finetune
    and mmssl-zero-shot lands on the key its table names, over a --config file."""
    import dataclasses

    from mmssl.cli import finetune as ft
    from mmssl.cli import zero_shot as zs
    from mmssl.eval.tasks import EvalOptions
    from mmssl.transfer.finetune import FinetuneOptions
    from mmssl.transfer.self_training import SelfTrainingOptions

    fields = {f.name for f in dataclasses.fields(FinetuneOptions)} | {
        f"self_training.{f.name}" for f in dataclasses.fields(SelfTrainingOptions)}
    assert set(ft.FLAGS) <= fields and set(zs.FLAGS) <= {f.name for f in dataclasses.fields(EvalOptions)}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("steps: 7\nlr: 0.5\nself_training: {unlabeled: world, rounds: 4}\n", encoding="utf-8")
    args = ft.parse_args(["ckpt", "image", "--output-dir", "out", "--config", str(recipe), "--lr", "0.25",
                          "--class-names", "a,b", "--mode", "staged", "--head-steps", "3", "--augment",
                          "--top-k", "2", "--samples-per-class", "9", "self_training.rounds=5"])
    options, st = ft.recipe_from(args)
    assert (options.steps, options.lr, options.class_names, options.mode, options.head_steps, options.augment) == (
        7, 0.25, ("a", "b"), "staged", 3, True)
    assert options.world_eval_per_class == 9  # the old spelling of --world-eval-per-class
    assert (st.unlabeled, st.rounds, st.top_k) == ("world", 5, 2)
    args = zs.parse_args(["--checkpoint", "ck", "--task", "fewshot", "--fewshot-k", "2", "3", "--probe-test-fraction",
                          "0.4", "--class-names", "x,y,z", "--no-progress", "fewshot_trials=9"])
    options = zs.options_from(args)
    assert (options.task, options.fewshot_k, options.test_fraction, options.class_names, options.progress,
            options.fewshot_trials) == ("fewshot", (2, 3), 0.4, ["x", "y", "z"], False, 9)
