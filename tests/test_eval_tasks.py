"""mmssl-zero-shot --task: every task on a tiny joint checkpoint, each data kind, each error."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmssl.train.checkpoint import load_checkpoint
import dataclasses

from mmssl.eval.tasks import CrossModalTask, EvalOptions, Evaluator
from tests.conftest import write_image

REPO = Path(__file__).resolve().parents[1]
HUB = [f"objectives.{o}.space=hub" for o in ("image_text", "audio_text", "graph_text")]


def _pretrain(out: Path, *overrides: str) -> Path:
    proc = subprocess.run(
        [sys.executable, "tools/pretrain.py", "configs/tiny_joint.yaml", "--output-dir", str(out), "train.steps=3",
         "train.progress=false", *overrides],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory):
    return _pretrain(tmp_path_factory.mktemp("hub_run"), *HUB)


def _zero_shot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/zero_shot.py", *args], capture_output=True, text=True, cwd=REPO)


def _zero_shot_here(capsys, *args: str) -> subprocess.CompletedProcess:
    """The CLI in this process (no interpreter start-up), as a CompletedProcess."""
    from mmssl.cli.zero_shot import main

    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


@pytest.mark.slow
def test_task_all_runs_every_task_for_every_modality_and_cross_modal_pairs(hub_run, tmp_path):
    output = tmp_path / "results.json"
    proc = _zero_shot("--checkpoint", str(hub_run), "--task", "all", "--samples-per-class", "3", "--fewshot-k", "1", "2",
                      "--fewshot-trials", "2", "--output", str(output))
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(output.read_text())
    assert isinstance(records, list) and all(r["data"] == "world" and r["checkpoint"].startswith(str(hub_run)) for r in records)
    kinds = {(r["task"], r.get("modality"), r.get("direction"), r.get("k")) for r in records if r["task"] != "cross_modal"}
    for m in ("image", "audio", "graph"):
        assert {("classification", m, None, None), ("linear_probe", m, None, None), ("fewshot", m, None, 1), ("fewshot", m, None, 2),
                ("retrieval", m, f"{m}_to_text", None), ("retrieval", m, f"text_to_{m}", None)} <= kinds
    cross = {(r["query"], r["gallery"]) for r in records if r["task"] == "cross_modal"}
    assert cross == {("image", "audio"), ("audio", "image"), ("image", "graph"), ("graph", "image"), ("audio", "graph"), ("graph", "audio")}
    one = next(r for r in records if r["task"] == "cross_modal" and r["query"] == "audio" and r["gallery"] == "image")
    assert one["attribute"] == "count" and one["space"] == "hub" and one["num_values"] == 4
    assert {"R@1", "R@5", "mAP", "R@1_chance", "R@5_chance", "mAP_chance", "R@1_over_chance"} <= set(one)
    classification = next(r for r in records if r["task"] == "classification" and r["modality"] == "image")
    assert {"top1", "top5", "mean_per_class_recall", "per_class_accuracy", "composition_top1"} <= set(classification)
    assert "confusion" not in classification and (tmp_path / "results_image_confusion.png").is_file()
    assert "cross_modal audio->image" in proc.stdout and "classification graph" in proc.stdout
    clusters = {r["modality"]: r for r in records if r["task"] == "clustering"}
    assert {"image", "audio", "graph"} <= set(clusters)
    for r in clusters.values():
        assert -1 <= r["AMI"] <= 1 and abs(r["AMI_random"]) < 0.2 and 0 < r["cluster_entropy"] <= 1
    assert "clustering image" in proc.stdout


def test_cross_modal_figures_match_a_direct_computation(hub_run):
    evaluator = Evaluator(load_checkpoint(hub_run), EvalOptions(world_eval_per_class=3))
    records = CrossModalTask.pair(evaluator, "audio", "image")
    forward = next(r for r in records if r["query"] == "audio")
    space_objective = {m: evaluator.model.shared_space(m, space="hub") for m in ("audio", "image")}
    emb = {m: evaluator.embeddings(m, space_objective[m])[0].numpy() for m in ("audio", "image")}
    values = {m: np.array([("one", "two", "three", "four").index(a["count"]) for a in evaluator.data(m).item_attributes])
              for m in ("audio", "image")}
    scores = emb["audio"] @ emb["image"].T
    relevant = values["audio"][:, None] == values["image"][None, :]
    # ties counted against the query: rank by score, non-relevant first among equals
    ranked = [relevant[q][np.lexsort((relevant[q], -scores[q]))] for q in range(len(scores))]
    assert forward["R@1"] == pytest.approx(np.mean([r[0] for r in ranked]))
    assert forward["R@5"] == pytest.approx(np.mean([r[:5].any() for r in ranked]))
    ap = [np.mean((np.cumsum(r) / np.arange(1, len(r) + 1))[r]) for r in ranked if r.any()]
    assert forward["mAP"] == pytest.approx(np.mean(ap), rel=1e-5)
    p_query = np.bincount(values["audio"], minlength=4) / len(values["audio"])
    p_gallery = np.bincount(values["image"], minlength=4) / len(values["image"])
    assert forward["R@1_chance"] == pytest.approx(float(p_query @ p_gallery))
    # embedded once: the second task reuses the cached embeddings
    assert evaluator.embeddings("audio", space_objective["audio"])[0] is evaluator._embeddings[("audio", space_objective["audio"])][0]
    # --center: each modality's mean embedding removed, then renormalised, before matching
    evaluator.options = dataclasses.replace(evaluator.options, center=True)
    centered = next(r for r in CrossModalTask.pair(evaluator, "audio", "image") if r["query"] == "audio")
    unit = {m: (e - e.mean(0)) / np.linalg.norm(e - e.mean(0), axis=1, keepdims=True) for m, e in emb.items()}
    scores = unit["audio"] @ unit["image"].T
    ranked = [relevant[q][np.lexsort((relevant[q], -scores[q]))] for q in range(len(scores))]
    assert centered["centered"] and centered["R@1"] == pytest.approx(np.mean([r[0] for r in ranked]))


def _pairs_csv(root: Path) -> Path:
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(4):
        write_image(root / "img" / f"{i}.png", i, size=32)
        rows.append({"filepath": f"img/{i}.png", "title": f"picture number {i}"})
    rows.append({"filepath": "img/0.png", "title": "another caption of the first picture"})
    rows.append({"filepath": "img/3.png", "title": "a shared caption"})
    rows.append({"filepath": "img/2.png", "title": "a shared caption"})
    path = root / "pairs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["filepath", "title"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_retrieval_on_paired_csv_groups_captions_per_file(hub_run, tmp_path, capsys):
    path = _pairs_csv(tmp_path)
    output = tmp_path / "pairs.json"
    proc = _zero_shot_here(capsys, "--checkpoint", str(hub_run), "--modality", "image", "--task", "retrieval", "--data", f"pairs:{path}",
                      "--output", str(output))
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(output.read_text())
    assert [r["direction"] for r in records] == ["image_to_text", "text_to_image"]
    assert records[0]["num_items"] == 4 and records[0]["num_captions"] == 7
    assert {"R@1", "R@5", "R@10", "mean_rank", "median_rank"} <= set(records[0])
    proc = _zero_shot_here(capsys, "--checkpoint", str(hub_run), "--modality", "image", "--task", "classification", "--data", f"pairs:{path}")
    assert proc.returncode == 2 and "has no labels: classification needs a labelled set" in proc.stderr


def test_classification_reads_class_names_and_templates_for_a_folder(hub_run, tmp_path, capsys):
    for name in ("red_circle", "blue_square"):
        (tmp_path / "shapes" / name).mkdir(parents=True)
        for i in range(2):
            write_image(tmp_path / "shapes" / name / f"{i}.png", i, size=32)
    (tmp_path / "names.txt").write_text("crimson disc\nnavy box\n")
    (tmp_path / "templates.txt").write_text("a drawing of a {}.\n\na {} on a noisy background\n")
    output = tmp_path / "folder.json"
    proc = _zero_shot_here(capsys, "--checkpoint", str(hub_run), "--modality", "image", "--task", "classification", "--data",
                      f"folder:{tmp_path / 'shapes'}", "--class-names", str(tmp_path / "names.txt"), "--templates",
                      str(tmp_path / "templates.txt"), "--output", str(output))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(output.read_text())[0]
    assert set(record["per_class_accuracy"]) == {"crimson disc", "navy box"} and record["num_samples"] == 4


@pytest.mark.parametrize("args, message", [
    (["--modality", "smell", "--task", "retrieval"], "checkpoint has no modality 'smell'"),
    (["--modality", "image", "--task", "classification", "--class-names", "{names3}"], "'class_names' (--class-names) has 3 names but world has 36 classes"),
    (["--modality", "image", "--task", "classification", "--data", "folder:{empty}"], "no class sub-folders"),
    (["--modality", "graph", "--task", "classification", "--data", "folder:{empty}"], "modality 'graph' reads no files"),
    (["--modality", "image", "--task", "classification", "--data", "graphs:{empty}/g.jsonl"], "does not read graph records"),
    (["--modality", "image", "--task", "classification", "--space", "nope"], "no space 'nope'; the model has ['hub']"),
    (["--task", "cross_modal", "--modalities", "audio", "image", "--space", "nope"], "checkpoint has no space 'nope'"),
    (["--modality", "image", "--task", "classification", "--templates", "{bad_templates}"], "line 1: a template needs exactly one {}"),
])
def test_errors_are_one_clear_line(hub_run, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "names3.txt").write_text("a\nb\nc\n")
    (tmp_path / "bad.txt").write_text("a photo\n")
    fill = {"names3": tmp_path / "names3.txt", "empty": tmp_path / "empty", "bad_templates": tmp_path / "bad.txt"}
    proc = _zero_shot_here(capsys, "--checkpoint", str(hub_run), *[a.format(**fill) if "{" in a else a for a in args])
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert any(line.startswith("mmssl-zero-shot: error:") and message in line for line in proc.stderr.splitlines()), proc.stderr[-2000:]


@pytest.mark.slow
def test_separate_spaces_cannot_match_across_modalities_and_two_checkpoints_compare(hub_run, tmp_path, capsys):
    own = _pretrain(tmp_path / "own")
    proc = _zero_shot_here(capsys, "--checkpoint", str(own), "--task", "cross_modal", "--modalities", "audio", "image")
    assert proc.returncode == 2 and "no space embeds both 'audio' and 'image'" in proc.stderr
    output = tmp_path / "compare.json"
    proc = _zero_shot_here(capsys, "--checkpoint", str(hub_run), str(own), "--modality", "image", "--task", "classification",
                      "--output", str(output))
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(output.read_text())
    assert [Path(r["checkpoint"]).parents[1] for r in records] == [hub_run, own]
    assert (tmp_path / "compare_comparison.png").read_bytes()[:4] == b"\x89PNG"
    alone = tmp_path / "alone.json"  # each checkpoint's record is the one it gets evaluated alone
    proc = _zero_shot_here(capsys, "--checkpoint", str(own), "--modality", "image", "--task", "classification",
                           "--output", str(alone))
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = json.loads(alone.read_text())
    single = single[0] if isinstance(single, list) else single
    assert records[1]["top1"] == single["top1"] and records[1]["top5"] == single["top5"]
