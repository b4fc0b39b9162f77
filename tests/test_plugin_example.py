"""The example plugin (examples/sensor) installed as a third party would install it:
it registers, trains with text and images from its own config, and evaluates."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "sensor"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """An environment with the example installed into a directory of its own on
    PYTHONPATH: the test environment itself is not changed."""
    root = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(EXAMPLE, root / "src", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet", "--target", str(root / "site"), str(source)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "site"), str(REPO)])}


def _run(env, *args, timeout=600):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def test_installed_plugin_is_listed_with_its_distribution(plugin_env):
    listed = _run(plugin_env, "-m", "mmssl", "list")
    assert listed.returncode == 0, listed.stderr[-2000:]
    for line in ("sensor               mmssl_sensor.modality:SensorModality (entry point in mmssl-sensor)",
                 "forecast             mmssl_sensor.forecast:ForecastObjective (entry point in mmssl-sensor)",
                 "recording            mmssl_sensor.recording:RecordingKind (entry point in mmssl-sensor)"):
        assert line in listed.stdout


@pytest.mark.slow
def test_plugin_passes_its_own_tests_built_on_the_contract_suite(plugin_env):
    done = _run(plugin_env, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests"))
    assert done.returncode == 0, done.stdout[-3000:]
    assert "4 passed" in done.stdout


@pytest.mark.slow
def test_plugin_trains_from_its_config_and_its_source_and_evaluates_above_chance(plugin_env, tmp_path):
    # a long recording for the forecast objective, read through the plugin's own source
    rng = np.random.default_rng(0)
    t = np.arange(3000) / 50
    recording = np.stack([np.sin(2 * np.pi * 1.3 * t), np.cos(2 * np.pi * 2.1 * t), rng.normal(0, 0.1, t.size)], 1)
    np.save(tmp_path / "walk.npy", recording.astype(np.float32))
    run = tmp_path / "run"
    trained = _run(plugin_env, "tools/pretrain.py", str(EXAMPLE / "configs" / "sensor.yaml"), "--output-dir", str(run),
                   "train.steps=80", "train.progress=false", "train.checkpoint_every=0",
                   f"objectives.forecast.data={{source: recording, path: {tmp_path / 'walk.npy'}, batch_size: 16}}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["forecast/loss"] < records[0]["forecast/loss"]
    output = tmp_path / "results.json"
    evaluated = _run(plugin_env, "tools/zero_shot.py", "--checkpoint", str(run), "--modality", "sensor", "--task", "all",
                     "--samples-per-class", "20", "--fewshot-k", "1", "--fewshot-trials", "2", "--output", str(output))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    results = json.loads(output.read_text())
    tasks = {(r["task"], r.get("direction")) for r in results if r.get("modality") == "sensor"}
    assert {("classification", None), ("retrieval", "sensor_to_text"), ("linear_probe", None), ("fewshot", None)} <= tasks
    classification = next(r for r in results if r["task"] == "classification")
    assert classification["num_classes"] == 12 and classification["top1"] > 1 / 12
    assert {(r["query"], r["gallery"]) for r in results if r["task"] == "cross_modal"} == {("image", "sensor"), ("sensor", "image")}
