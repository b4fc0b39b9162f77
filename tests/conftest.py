"""Shared fixtures: the tiny config, small on-disk datasets built per test."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch
from PIL import Image

import mmssl

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` are skipped, saying why, where torch sees no GPU (CI)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU: torch.cuda.is_available() is False here")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Same thread count in every test, so runs compared within a test are bit-identical.
    torch.set_num_threads(1)
    yield


@pytest.fixture
def tiny_config():
    """``tiny_config(*overrides)`` -> RunConfig from configs/tiny.yaml."""

    def make(*overrides: str) -> mmssl.RunConfig:
        return mmssl.load_config(CONFIGS / "tiny.yaml", list(overrides))

    return make


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    """A CSV with the rows' keys as header."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_image(path: Path, seed: int, size: int = 24) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def image_text_csv(tmp_path: Path):
    """``image_text_csv(n, corrupt=(i, ...), missing=(j, ...))`` -> CSV path with filepath,title columns."""

    def make(n: int, corrupt: Sequence[int] = (), missing: Sequence[int] = ()) -> Path:
        root = tmp_path / "pairs"
        (root / "images").mkdir(parents=True)
        rows = []
        for i in range(n):
            name = f"images/{i:03d}.png"
            if i in corrupt:
                (root / name).write_bytes(b"this is not a png")
            elif i not in missing:
                write_image(root / name, i)
            rows.append({"filepath": name, "title": f"picture number {i}"})
        return write_csv(root / "pairs.csv", rows)

    return make
