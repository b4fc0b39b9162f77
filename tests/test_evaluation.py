import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mmssl.data.eval_sets import EvaluationError
from mmssl.data.files import esc50_set as classification_csv_set

REPO = Path(__file__).resolve().parents[1]


def _esc50(root: Path, rows, bad=()) -> Path:
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    for name, _, _ in rows:
        if name in bad:
            (root / "audio" / name).write_bytes(b"not a wav")
        else:
            soundfile.write(root / "audio" / name, rng.normal(0, 0.1, 4000).astype(np.float32), 8000)
    path = root / "meta" / "esc50.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "fold", "target", "category"])
        for name, target, category in rows:
            writer.writerow([name, 1, target, category])
    return path


def test_classification_csv_in_esc50_layout(tmp_path):
    path = _esc50(tmp_path, [("a.wav", 3, "rising_sine"), ("b.wav", 0, "steady_square"), ("c.wav", 3, "rising_sine")])
    data = classification_csv_set(path)
    assert data.class_names == ["steady square", "rising sine"]
    assert data.labels == [1, 0, 1]
    assert data.items[0] == str(tmp_path / "audio" / "a.wav")


def test_classification_csv_errors_name_the_row(tmp_path):
    path = _esc50(tmp_path, [("a.wav", 1, "dog"), ("b.wav", 1, "cat")])
    with pytest.raises(EvaluationError, match=r"row 3: target 1 is 'cat' here but 'dog' before"):
        classification_csv_set(path)
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,label\nx.wav,1\n")
    with pytest.raises(EvaluationError, match=r"missing columns \['category', 'target'\]"):
        classification_csv_set(bad)
    not_a_number = _esc50(tmp_path / "second", [("a.wav", 1, "dog"), ("b.wav", "two", "cat")])
    assert classification_csv_set(not_a_number).skipped == 1  # a row, not the set
    with pytest.raises(EvaluationError, match=r"row 3: target 'two' is not an integer"):
        classification_csv_set(not_a_number, on_error="fail")


def _pretrain_two_steps(out: Path, config: str) -> Path:
    """A 2-step run of ``configs/<config>`` through tools/pretrain.py, into ``out``."""
    proc = subprocess.run(
        [sys.executable, "tools/pretrain.py", f"configs/{config}", "--output-dir", str(out), "train.steps=2"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def tiny_audio_run(tmp_path_factory):
    return _pretrain_two_steps(tmp_path_factory.mktemp("audio_run"), "tiny_audio.yaml")


def _zero_shot(*args):
    return subprocess.run([sys.executable, "tools/zero_shot.py", *args], capture_output=True, text=True, cwd=REPO)


def test_audio_zero_shot_on_world_reports_retrieval(tiny_audio_run, tmp_path):
    output = tmp_path / "audio.json"
    proc = _zero_shot("--checkpoint", str(tiny_audio_run), "--modality", "audio", "--output", str(output))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(output.read_text())
    assert report["num_classes"] == 16 and len(report["heldout_classes"]) == 4
    assert set(report["retrieval"]) == {"audio_to_text", "text_to_audio"}
    assert set(report["retrieval"]["audio_to_text"]) == {"R@1", "R@5", "R@10", "mean_rank", "median_rank"}
    assert "retrieval audio_to_text" in proc.stdout


def test_audio_zero_shot_on_esc50_csv_skips_bad_files(tiny_audio_run, tmp_path):
    path = _esc50(
        tmp_path,
        [("a.wav", 0, "rising_sine"), ("b.wav", 1, "falling_noise"), ("c.wav", 1, "falling_noise")],
        bad=("c.wav",),
    )
    output = tmp_path / "esc.json"
    proc = _zero_shot("--checkpoint", str(tiny_audio_run), "--modality", "audio", "--data", f"csv:{path}", "--output", str(output))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(output.read_text())
    assert report["num_samples"] == 2 and report["skipped"] == 1 and report["num_classes"] == 2
    assert "c.wav" in proc.stderr


# --- graphs ----------------------------------------------------------------------------------


def _graph_records(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_graph_file_set_reads_string_and_integer_labels(tmp_path):
    from mmssl.data.graphs import graph_file_set

    ring = {"edges": [[0, 1], [1, 2], [2, 0]], "num_nodes": 3}
    path = _graph_records(tmp_path / "g.jsonl", [{**ring, "label": "triangle", "text": "a triangle", "split": "train"},
                                                  {**ring, "label": "path", "text": "a path", "split": "test"}])
    data = graph_file_set(path)
    assert data.class_names == ["path", "triangle"] and data.labels == [1, 0]
    assert data.captions == ["a triangle", "a path"] and data.splits == ["train", "test"]
    assert data.where[1] == f"{path} line 2"
    numbered = _graph_records(tmp_path / "n.jsonl", [{**ring, "label": 1}, {**ring, "label": 0}])
    with pytest.raises(EvaluationError, match="integer labels need class names"):
        graph_file_set(numbered)
    assert graph_file_set(numbered, ["small cycle", "large star"]).labels == [1, 0]
    with pytest.raises(EvaluationError, match="line 1: label 1 out of range for 1 class names"):
        graph_file_set(numbered, ["only"])
    unlabelled = _graph_records(tmp_path / "u.jsonl", [ring])
    with pytest.raises(EvaluationError, match="u.jsonl line 1: no usable 'label'"):
        graph_file_set(unlabelled, on_error="fail")
    with pytest.raises(EvaluationError, match=r"u.jsonl: no graph with a readable label \(1 skipped\)"):
        graph_file_set(unlabelled)  # skipped, and then nothing is left


@pytest.fixture(scope="module")
def tiny_graph_run(tmp_path_factory):
    return _pretrain_two_steps(tmp_path_factory.mktemp("graph_run"), "tiny_graph.yaml")


def test_graph_zero_shot_on_world_reports_composition_retrieval_and_probe(tiny_graph_run, tmp_path):
    output = tmp_path / "graph.json"
    proc = _zero_shot("--checkpoint", str(tiny_graph_run), "--modality", "graph", "--output", str(output), "--linear-probe")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(output.read_text())
    assert report["num_classes"] == 24 and report["num_samples"] == 48 and len(report["heldout_classes"]) == 4
    assert 0 <= report["composition_top1"] <= 1
    assert set(report["retrieval"]) == {"graph_to_text", "text_to_graph"}
    assert report["linear_probe"]["num_classes"] == 24 and report["linear_probe"]["num_test"] == 24
    assert "linear probe top1" in proc.stdout


def test_graph_zero_shot_on_a_labelled_graph_file(tiny_graph_run, tmp_path):
    records = []
    for n in range(4, 10):
        records.append({"edges": [[i, (i + 1) % n] for i in range(n)], "num_nodes": n, "label": 0, "text": f"a ring of {n}"})
        records.append({"edges": [[0, i] for i in range(1, n)], "num_nodes": n, "label": 1, "text": f"a star of {n}"})
    records.append({"edges": [[0, 1]], "num_nodes": 1, "label": 1, "text": "broken"})
    path = _graph_records(tmp_path / "graphs.jsonl", records)
    names = tmp_path / "classes.txt"
    names.write_text("small cycle\nsmall star\n")
    output = tmp_path / "file.json"
    proc = _zero_shot("--checkpoint", str(tiny_graph_run), "--modality", "graph", "--data", f"graphs:{path}",
                      "--class-names", str(names), "--linear-probe", "--output", str(output))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(output.read_text())
    assert report["num_samples"] == 12 and report["skipped"] == 1 and report["class_names"] == ["small cycle", "small star"]
    assert report["linear_probe"]["num_train"] + report["linear_probe"]["num_test"] == 12
    assert "graphs.jsonl line 13" in proc.stderr and "edge endpoint 1 out of range for 1 nodes" in proc.stderr
    proc = _zero_shot("--checkpoint", str(tiny_graph_run), "--modality", "graph", "--data", f"graphs:{path}")
    assert proc.returncode == 2 and "integer labels need class names" in proc.stderr


def test_graph_zero_shot_on_labelled_shards(tiny_graph_run, tmp_path):
    from mmssl.cli.make_shards import main as make_shards

    records = []
    for n in range(4, 10):
        records.append({"edges": [[i, (i + 1) % n] for i in range(n)], "num_nodes": n, "label": "small cycle", "text": f"a ring of {n}"})
        records.append({"edges": [[0, i] for i in range(1, n)], "num_nodes": n, "label": "small star", "text": f"a star of {n}"})
    records.append({"edges": [[0, 1]], "num_nodes": 2, "text": "no label"})
    assert make_shards([str(_graph_records(tmp_path / "g.jsonl", records)), "--output-dir", str(tmp_path / "shards"), "--shard-size", "5"]) == 0
    output = tmp_path / "shards.json"
    proc = _zero_shot("--checkpoint", str(tiny_graph_run), "--modality", "graph", "--data", f"shards:{tmp_path / 'shards'}",
                      "--linear-probe", "--output", str(output))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(output.read_text())
    assert report["num_samples"] == 12 and report["skipped"] == 1 and report["class_names"] == ["small cycle", "small star"]
    assert set(report["retrieval"]) == {"graph_to_text", "text_to_graph"}
    assert "shard-000002.tar key 00000012" in proc.stderr and "no label" in proc.stderr
    proc = _zero_shot("--checkpoint", str(tiny_graph_run), "--modality", "graph", "--data", f"shards:{tmp_path / 'shards'}",
                      "--on-error", "fail")
    assert proc.returncode == 2 and "key 00000012" in proc.stderr
