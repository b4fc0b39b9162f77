import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

import mmssl
from mmssl.train.checkpoint import list_checkpoints, load_trainer_state, resolve_checkpoint
from mmssl.train.run_log import read_metrics
from mmssl.train.trainer import Pretrainer

REPO = Path(__file__).resolve().parents[1]


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"weights differ at {key}"


def test_loss_falls_on_tiny_run(tiny_config, tmp_path):
    config = tiny_config("train.steps=40", "train.lr=0.003", "train.checkpoint_every=0")
    trainer = Pretrainer(config, tmp_path)
    trainer.fit()
    records = read_metrics(tmp_path / "metrics.jsonl")
    first = sum(r["image_text/loss"] for r in records[:5]) / 5
    last = sum(r["image_text/loss"] for r in records[-5:]) / 5
    assert last < first - 0.3, f"loss went {first:.3f} -> {last:.3f}"
    assert {"lr", "grad_norm", "samples_per_s", "image_text/image_to_text_acc", "data/image_text/wait_s"} <= set(records[-1])
    # per-step wait (mean over the log interval) and the stream's running total are two keys
    assert 0 <= records[-1]["data/image_text/wait_s"] <= records[-1]["data/image_text/total_wait_s"]
    assert records[-1]["data/image_text/total_wait_s"] >= records[0]["data/image_text/total_wait_s"]
    assert (tmp_path / "tensorboard").is_dir()


def test_accumulation_and_bf16_run(tiny_config, tmp_path):
    config = tiny_config("train.steps=3", "train.accum_steps=2", "train.precision=bf16")
    last = Pretrainer(config, tmp_path).fit()
    assert last["data/image_text/samples"] == 3 * 2 * 16
    assert torch.isfinite(torch.tensor(last["loss"]))


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    import mmssl
    torch.set_num_threads(1)
    config = mmssl.load_config(sys.argv[1], sys.argv[3:])
    def kill(trainer, metrics):
        if trainer.step == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
    mmssl.Pretrainer(config, sys.argv[2], callbacks=[kill]).fit()
    """
)


def run_until_killed(config: Path, run: Path, overrides: list[str], kill_at: int) -> None:
    """Train ``config`` into ``run`` in a subprocess that SIGKILLs itself after step ``kill_at``."""
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, str(config), str(run), *overrides],
        env={**os.environ, "KILL_AT": str(kill_at)},
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == -9, proc.stderr


def resume_after_kill(config: Path, run: Path, overrides: list[str], kill_at: int, left: list[str]) -> Pretrainer:
    """Train ``config`` into ``run`` until a SIGKILL after step ``kill_at``, check that the
    kill ``left`` those checkpoints, resume from the latest to the end; the resumed trainer."""
    run_until_killed(config, run, overrides, kill_at)
    assert [p.name for p in list_checkpoints(run)] == left
    resumed = Pretrainer(mmssl.load_config(config, overrides), run)
    resumed.fit()
    return resumed


def test_resume_after_kill_is_bit_exact(tiny_config, tmp_path):
    overrides = ["train.steps=7", "train.checkpoint_every=3"]
    full = Pretrainer(tiny_config(*overrides), tmp_path / "full")
    full.fit()

    run = tmp_path / "killed"
    run_until_killed(REPO / "configs" / "tiny.yaml", run, overrides, kill_at=5)
    assert [p.name for p in list_checkpoints(run)] == ["step_00000003"]

    resumed = Pretrainer(tiny_config(*overrides), run)
    resumed.fit()
    assert resumed.step == 7
    _assert_same_weights(full.model, resumed.model)
    full_losses = [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "full" / "metrics.jsonl")]
    resumed_losses = [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl")]
    assert resumed_losses == full_losses  # the killed run's steps 4-5 were dropped and logged again
    state = load_trainer_state(resolve_checkpoint(run))  # weights_only=True load
    assert state["streams"]["image_text"]["position"] == 7


def test_load_pretrained_encodes_normalised(tiny_config, tmp_path):
    trainer = Pretrainer(tiny_config("train.steps=2"), tmp_path)
    trainer.fit()
    model = mmssl.load_pretrained(tmp_path)
    _assert_same_weights(trainer.model, model)
    text = model.encode("text", ["a red circle", "a blue star"])
    from PIL import Image

    image = model.encode("image", [Image.new("RGB", (32, 32), "red")])
    assert text.shape == (2, 32) and image.shape == (1, 32)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    saved = (resolve_checkpoint(tmp_path) / "config.yaml").read_text()
    assert mmssl.config_from_dict(__import__("yaml").safe_load(saved)) == trainer.config
    assert not hasattr(model, "run_config")  # the config comes from load_checkpoint, not a patched attribute


def test_load_checkpoint_gives_model_config_and_directory(tiny_config, tmp_path):
    trainer = Pretrainer(tiny_config("train.steps=2", "name=no"), tmp_path)
    trainer.fit()
    loaded = mmssl.load_checkpoint(tmp_path)
    assert loaded.checkpoint == resolve_checkpoint(tmp_path)
    assert loaded.config == trainer.config and loaded.config.name == "no"
    assert not loaded.model.training
    _assert_same_weights(trainer.model, loaded.model)


def test_a_fresh_start_drops_the_log_of_a_run_killed_before_its_first_checkpoint(tiny_config, tmp_path):
    # what a kill between the first metrics line and the first save leaves (the kill harness found it)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    Pretrainer(tiny_config("train.steps=2"), tmp_path).fit()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    assert read_metrics(tmp_path / "metrics.jsonl")[0]["loss"] != 9.0


def test_resume_none_starts_over(tiny_config, tmp_path):
    Pretrainer(tiny_config("train.steps=2"), tmp_path).fit()
    again = Pretrainer(tiny_config("train.steps=2", "train.resume=none"), tmp_path)
    again.fit()
    assert again.step == 2 and len(read_metrics(tmp_path / "metrics.jsonl")) == 4


def test_an_api_run_writes_its_summary_and_loss_plot(tiny_config, tmp_path):
    """train_summary.json and losses.png come from fit itself, not only from mmssl-pretrain."""
    trainer = mmssl.Pretrainer(tiny_config("train.steps=3", "train.log_every=1"), tmp_path)
    last = trainer.fit()
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary == trainer.summary
    assert list(summary) == ["steps", "seconds", *[k for k in last if "/" in k or k == "loss"],
                             "nonfinite_steps", "world_size", "per_rank_batch",
                             "samples_per_s", "tflops", "mfu", "peak_tflops", "peak_tflops_source", "flop_count"]
    assert summary["steps"] == 3 and summary["loss"] == last["loss"] and summary["nonfinite_steps"] == 0
    assert summary["world_size"] == 1 and summary["per_rank_batch"] == {"image_text": 16}
    assert 0 < summary["seconds"]
    assert (tmp_path / "losses.png").read_bytes()[:4] == b"\x89PNG"
