"""docs/configs.md's key table names every config key: each built-in modality's,
objective's and data source kind's options, and the run's own sections. A key added to a
dataclass without a line in the table fails here, naming the key and the row."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from mmssl.config import DataConfig, EvalConfig, TrainConfig, WorldConfig
from mmssl.registry import MODALITIES, OBJECTIVES, SOURCES

DOC = Path(__file__).resolve().parents[1] / "docs" / "configs.md"
BUILT_IN = "entry point in mmssl)"


def _rows() -> dict[str, str]:
    """The key table: first cell (backticks and all) -> the second cell."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 2 and cells[0].startswith("`"):
            rows[cells[0]] = cells[1]
    return rows


def _missing(config: type, text: str, prefix: str = "") -> list[str]:
    """Fields of dataclass ``config`` (nested ones as ``parent.child``) that ``text`` does not name."""
    missing = []
    for field in dataclasses.fields(config):
        name = f"{prefix}{field.name}"
        nested = field.type if isinstance(field.type, type) and dataclasses.is_dataclass(field.type) else None
        if nested is None and isinstance(field.default_factory, type) and dataclasses.is_dataclass(field.default_factory):
            nested = field.default_factory
        if nested is not None:
            if f"`{name}.*`" in text or f"`{name}`" in text:
                missing += [m for m in _missing(nested, text) if f"`{name}.{m}`" not in text]
            else:
                missing += _missing(nested, text, f"{name}.")
        elif f"`{name}`" not in text and f"`{field.name}`" not in text:
            missing.append(name)
    return missing


def _built_in(registry) -> list[str]:
    return [e.name for e in registry.entries() if e.source.endswith(BUILT_IN)]


@pytest.mark.parametrize("registry, row", [
    (MODALITIES, "`modalities.{}.*`"), (OBJECTIVES, "`objectives.<name>.*` ({})"), (SOURCES, "`objectives.<name>.data` ({})"),
], ids=["modalities", "objectives", "sources"])
def test_every_registered_option_is_in_the_table(registry, row):
    """Each built-in modality's, objective's and source kind's options, in its own row."""
    rows = _rows()
    for name in _built_in(registry):
        key = row.format(name)
        assert key in rows, f"docs/configs.md has no row {key}"
        missing = _missing(registry.get(name).Config, rows[key])
        assert not missing, f"{key} lacks {missing}"


@pytest.mark.parametrize("row, config", [
    ("`objectives.<name>.data`", DataConfig), ("`world.*`", WorldConfig), ("`train.*`", TrainConfig), ("`eval.*`", EvalConfig),
], ids=["data", "world", "train", "eval"])
def test_every_run_section_key_is_in_the_table(row, config):
    rows = _rows()
    assert row in rows, f"docs/configs.md has no row {row}"
    missing = [m for m in _missing(config, rows[row]) if m != "options"]  # a data section's kind options: rows above
    assert not missing, f"{row} lacks {missing}"


def test_the_table_names_no_key_that_does_not_exist():
    """The reverse: a row for a modality, objective or source kind that is not registered."""
    known = set(_built_in(MODALITIES)) | set(_built_in(OBJECTIVES)) | set(_built_in(SOURCES))
    named = {m.group(1) for row in _rows() for m in [re.search(r"\(([a-z_]+)\)$", row) or re.search(r"modalities\.([a-z_]+)\.\*", row)] if m}
    assert named <= known, sorted(named - known)
