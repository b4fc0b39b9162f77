"""A plugin's source kind feeds evaluation and fine-tuning as it feeds training: the
registry resolves ``--data KIND:PATH`` in ``mmssl-zero-shot`` and ``mmssl-finetune``
alike, and the ``csv:`` name of ESC-50's layout is an alias that says so once."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from mmssl.cli.finetune import main as finetune_main
from mmssl.cli.zero_shot import main as zero_shot_main
from mmssl.data import DataError, SourceKind
from mmssl.data.eval_sets import eval_kinds, load_eval_set
from mmssl.data.labelled import EvalSetContext, EvaluationError, LabelledSet
from mmssl.registry import SOURCES
from mmssl.train.checkpoint import load_checkpoint
from tests.test_finetune import colour_folder, pretrained  # noqa: F401  (fixtures)


@dataclass(frozen=True)
class ListOptions:
    path: str | None = None


class LabelListKind(SourceKind):
    """A JSON-lines list of ``{"file": ..., "label": ...}``: labelled files anywhere."""

    Config = ListOptions

    @classmethod
    def build(cls, options, objective, modalities, context):
        raise DataError("label lists are for evaluation in this test")

    @classmethod
    def labelled_set(cls, path: str, context: EvalSetContext) -> LabelledSet:
        cls.require_files(context)
        rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
        names = sorted({r["label"] for r in rows})
        return LabelledSet([r["file"] for r in rows], [names.index(r["label"]) for r in rows], names,
                           [f"{path} line {i + 1}" for i in range(len(rows))], source=f"labellist:{path}")


@pytest.fixture
def label_list(colour_folder: Path, tmp_path: Path):  # noqa: F811
    """A label list of the colour folder's files, with its kind registered for the test."""
    path = tmp_path / "colours.jsonl"
    rows = [{"file": str(f), "label": f.parent.name} for f in sorted(colour_folder.rglob("*.png"))]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    SOURCES.add("labellist", LabelListKind)
    yield path
    SOURCES._entries.pop("labellist")


def test_a_plugin_source_kind_feeds_zero_shot_and_finetune(pretrained: Path, label_list: Path, tmp_path: Path,  # noqa: F811
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert "labellist" in eval_kinds()
    report = tmp_path / "zero_shot.json"
    assert zero_shot_main(["--checkpoint", str(pretrained), "--modality", "image", "--data", f"labellist:{label_list}",
                           "--output", str(report)]) == 0
    figures = json.loads(report.read_text())
    assert figures["data"] == f"labellist:{label_list}"
    assert figures["num_samples"] == 24 and figures["class_names"] == ["blue", "red"]
    assert finetune_main([str(pretrained), "image", "--output-dir", str(tmp_path / "ft"), "--data", f"labellist:{label_list}",
                          "--steps", "3", "--eval-every", "3", "--no-progress"]) == 0
    tuned = json.loads((tmp_path / "ft" / "finetune_report.json").read_text())
    assert tuned["data"] == f"labellist:{label_list}" and tuned["num_classes"] == 2
    assert tuned["num_train"] + tuned["num_eval"] == 24  # the set's stratified split
    # a kind that gives no labelled sets, and an unknown one, are refused naming the known kinds
    assert zero_shot_main(["--checkpoint", str(pretrained), "--modality", "image", "--data", "text:x.txt"]) == 2
    assert "'data' (--data): unknown evaluation data kind 'text'" in capsys.readouterr().err
    assert zero_shot_main(["--checkpoint", str(pretrained), "--modality", "image", "--data", "labelist:x"]) == 2
    assert "Did you mean 'labellist'?" in capsys.readouterr().err


def test_csv_is_the_pairs_csv_and_esc50_layout_under_csv_is_an_alias_said_once(
    pretrained: Path, colour_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    loaded = load_checkpoint(pretrained)
    world = loaded.config.world
    files = sorted(colour_folder.rglob("*.png"))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("filepath,title\n" + "".join(f"{f},a {f.parent.name} square\n" for f in files), encoding="utf-8")
    data = load_eval_set(loaded.model, "image", f"csv:{pairs}", world)
    assert data.source == f"csv:{pairs}" and len(data.captions) == 24 and not data.labels
    assert load_eval_set(loaded.model, "image", f"pairs:{pairs}", world).captions == data.captions  # the old name
    esc = tmp_path / "classes.csv"
    esc.write_text("filename,target,category\n" + "".join(f"{f},{int(f.parent.name == 'red')},{f.parent.name}\n" for f in files),
                   encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="mmssl.data.files"):
        first = load_eval_set(loaded.model, "image", f"csv:{esc}", world)
        second = load_eval_set(loaded.model, "image", f"csv:{esc}", world)
    assert first.source == second.source == f"esc50:{esc}" and first.labels == load_eval_set(loaded.model, "image", f"esc50:{esc}", world).labels
    said = [r.getMessage() for r in caplog.records if "ESC-50" in r.getMessage()]
    assert len(said) == 1 and "write esc50:PATH" in said[0]
    with pytest.raises(EvaluationError, match="reads no files"):
        load_eval_set(loaded.model, "text", f"esc50:{esc}", world)
