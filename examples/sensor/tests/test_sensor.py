"""The plugin's own tests: mmssl's contract suite, and its reader and source.

    pip install -e "examples/sensor[test]" && pytest examples/sensor/tests
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmssl.testing import check_modality, check_objective
from mmssl_sensor.modality import SensorModality
from modalities.base import InvalidSample

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sensor.yaml"
TINY = ["train.threads=1", "modalities.sensor.width=32", "modalities.sensor.depth=1", "modalities.text.width=32"]


def test_sensor_meets_the_modality_contract():
    check_modality(SensorModality, {"width": 32, "depth": 1})


def test_forecast_meets_the_objective_contract():
    check_objective(CONFIG, "forecast", TINY)


def test_sensor_text_meets_the_objective_contract():
    check_objective(CONFIG, "sensor_text", TINY)


def test_files_are_read_and_bad_ones_named(tmp_path):
    sensor = SensorModality.build(SensorModality.Config(), "sensor").processor
    window = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
    np.save(tmp_path / "a.npy", window)
    np.savetxt(tmp_path / "a.csv", window, delimiter=",", header="x,y,z", comments="")
    assert np.allclose(sensor.load(str(tmp_path / "a.npy")), sensor.load(str(tmp_path / "a.csv")), atol=1e-6)
    assert sensor.transform(str(tmp_path / "a.npy"), None)["signal"].shape == (3, 256)
    np.save(tmp_path / "bad.npy", window[:, :2])
    with pytest.raises(InvalidSample, match=r"bad.npy: sensor data must be \[time, 3\]"):
        sensor.load(str(tmp_path / "bad.npy"))
