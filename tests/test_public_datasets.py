"""Public datasets in their published layouts (mmssl.data.captions, docs/data.md#public-datasets):
COCO's caption JSON and Karpathy's split file, Clotho's and AudioCaps' CSVs, each on a
tiny fixture written here with the layout's quirks, trained a few steps and evaluated;
and the fold protocol of cross-validated probes (mmssl.eval.folds), ESC-50's fixed
folds and stratified k-fold."""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

import mmssl
from mmssl.cli.zero_shot import main as zero_shot_main
from mmssl.data.captions import (
    CaptionedSource,
    ClothoKind,
    ClothoOptions,
    CocoKind,
    CocoOptions,
    captioned_set,
    read_audiocaps,
    read_clotho,
    read_coco,
)
from mmssl.data.eval_sets import eval_kinds
from mmssl.data.files import esc50_set
from mmssl.config import WorldConfig
from mmssl.data.labelled import EvalSetContext, EvaluationError, LabelledSet
from mmssl.data.stream import DataError
from mmssl.eval.folds import given_folds, probe_folds, stratified_kfold
from mmssl.eval.metrics import retrieval_metrics
from mmssl.eval.zero_shot import caption_pairs
from mmssl.train.trainer import Pretrainer
from modalities.base import InvalidSample

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
QUICK = ["train.steps=2", "train.checkpoint_every=2", "train.threads=1", "train.progress=false"]
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


def _train(config: str, run: Path, overrides: list[str]) -> Path:
    torch.set_num_threads(1)
    Pretrainer(mmssl.load_config(CONFIGS / config, QUICK + overrides), run).fit()
    return run


def _wav(path: Path, seed: int, pitch: float = 440.0) -> None:
    t = np.arange(4000) / 8000
    wave = 0.3 * np.sin(2 * np.pi * pitch * t) + np.random.default_rng(seed).normal(0, 0.02, t.size)
    soundfile.write(path, wave.astype(np.float32), 8000)


# --------------------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------------------

IMAGE_IDS = [391895, 522418, 184613, 318219, 554625, 397133]


class _Images:
    """An image processor's file side, for reading sets without a model."""

    key, consumes_captions, file_extensions = "image", False, (".jpg",)

    def load(self, path):
        if not Path(path).is_file():
            raise InvalidSample("image file not found", source=path)
        return path


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    """COCO 2017's layout: annotations/captions_train2017.json beside train2017/. Image ids
    are not file names (one file is named unlike its id); each image has two or three
    captions (one with a comma and quotes); image 999 is in 'images' but its file is
    missing; one annotation names an image id that 'images' lacks."""
    root = tmp_path_factory.mktemp("coco")
    (root / "annotations").mkdir()
    (root / "train2017").mkdir()
    images, annotations = [], []
    names = {i: f"{i:012d}.jpg" for i in IMAGE_IDS}
    names[IMAGE_IDS[-1]] = "renamed_after_export.jpg"
    for n, (image_id, colour) in enumerate(zip(IMAGE_IDS, COLOURS)):
        Image.new("RGB", (32, 32), colour).save(root / "train2017" / names[image_id])
        images.append({"id": image_id, "file_name": names[image_id], "height": 32, "width": 32})
        for c in range(2 + n % 2):
            annotations.append({"image_id": image_id, "id": 1000 + len(annotations), "caption": f"colour {n}, view {c}"})
    annotations[0]["caption"] = 'a "red" square, seen from above'
    images.append({"id": 999, "file_name": "000000000999.jpg", "height": 32, "width": 32})
    annotations.append({"image_id": 999, "id": 5000, "caption": "an image whose file is missing"})
    annotations.append({"image_id": 123456, "id": 5001, "caption": "an annotation of no listed image"})
    path = root / "annotations" / "captions_train2017.json"
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations}), encoding="utf-8")
    return path


def test_coco_maps_image_ids_to_files_and_names_bad_records(coco: Path) -> None:
    found = read_coco(coco)
    assert found.media == coco.parent.parent / "train2017"  # annotations/captions_X.json -> ../X/
    items = found.items
    assert len(items) == 7 and [len(i.captions) for i in items] == [2, 3, 2, 3, 2, 3, 1]
    assert items[0].captions[0] == 'a "red" square, seen from above'
    assert items[5].path.name == "renamed_after_export.jpg" and "image id 397133" in items[5].where
    bad = [e for e in found.entries if e not in items]
    assert len(bad) == 1 and "image_id 123456 is not in 'images'" in bad[0].reason and "(id 5001)" in bad[0].where

    source = CaptionedSource(found, _Images(), type("Text", (), {"key": "text"})())
    rng = np.random.default_rng(0)
    drawn = {source.get(1, np.random.default_rng(s))["text"] for s in range(20)}
    assert drawn == set(items[1].captions)  # every caption of the image is drawn, one a draw
    with pytest.raises(InvalidSample) as missing:
        source.get(6, rng)
    assert "image id 999" in missing.value.source and "000000000999.jpg" in missing.value.source
    with pytest.raises(InvalidSample, match="is not in 'images'"):
        source.get(7, rng)

    data = captioned_set(found, "skip")
    assert data.skipped == 1 and len(data.items) == 7 and data.caption_owners[:5] == [0, 0, 1, 1, 1]
    with pytest.raises(EvaluationError, match=r"annotations\[\d+\] \(id 5001\).*not in 'images'"):
        captioned_set(found, "fail")


def test_retrieval_counts_any_of_an_items_captions_as_a_hit_as_clip_benchmark_does() -> None:
    """Two images, image 0 with captions 0 and 1, image 1 with caption 2. Image 0's best
    caption is its second: a hit at rank 1. Image 1 ranks another image's caption first:
    rank 2. Each caption retrieves its own image; caption 1 finds image 1 first."""
    data = LabelledSet(["a.jpg", "b.jpg"], [], [], ["a", "b"], captions=["x", "y", "z"], caption_owners=[0, 0, 1])
    captions, item_to_caption, caption_to_item = caption_pairs(data, [0, 1])
    images = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    texts = torch.nn.functional.normalize(torch.tensor([[0.5, 0.5], [1.0, 0.1], [0.0, 1.0]]), dim=-1)
    scores = images @ texts.T  # image 1: caption 0 (0.99) over its own caption 2 (0.8)
    to_text = retrieval_metrics(images, texts, item_to_caption, ks=(1, 2))
    to_image = retrieval_metrics(texts, images, caption_to_item, ks=(1, 2))
    assert (to_text["R@1"], to_text["R@2"]) == (0.5, 1.0)
    # CLIP_benchmark: positive_pairs[caption, image]; text->image recall@k: the caption's image in its top k;
    # image->text: any of the image's captions in its top k
    positive = torch.zeros(3, 2, dtype=torch.bool)
    positive[torch.arange(3), torch.tensor(data.caption_owners)] = True
    for k in (1, 2):
        top_images = scores.T.topk(k, dim=1).indices
        assert to_image[f"R@{k}"] == pytest.approx(positive.gather(1, top_images).any(1).float().mean().item())
        top_texts = scores.topk(k, dim=1).indices
        assert to_text[f"R@{k}"] == pytest.approx(positive.T.gather(1, top_texts).any(1).float().mean().item())
    assert to_image["R@1"] == pytest.approx(2 / 3)


def test_coco_trains_and_evaluates_retrieval(coco: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run = _train("tiny.yaml", tmp_path / "run", [
        "objectives.image_text.data={source: coco, path: '%s', batch_size: 6}" % coco])
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("image_text/loss" in m for m in metrics)
    output = tmp_path / "retrieval.json"
    with caplog.at_level(logging.WARNING):
        assert zero_shot_main(["--checkpoint", str(run), "--modality", "image", "--data", f"coco:{coco}", "--task", "retrieval",
                               "--output", str(output), "--no-progress"]) == 0
    records = json.loads(output.read_text())
    assert {r["direction"] for r in records} == {"image_to_text", "text_to_image"}
    assert all(r["num_items"] == 6 and r["skipped"] == 2 for r in records)  # the missing image and the orphan annotation
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "image id 999 (annotations 5000)" in logged and "000000000999.jpg): file not found" in logged and "(id 5001)" in logged


def test_karpathy_split_file_chooses_splits(tmp_path: Path) -> None:
    """dataset_coco.json beside train2014/ and val2014/: images by filepath/filename, their
    sentences' raw text; training takes train and restval, evaluation the test split."""
    for folder in ("train2014", "val2014"):
        (tmp_path / folder).mkdir()
    records = []
    for n, split in enumerate(["train", "restval", "val", "test", "test"]):
        folder = "train2014" if split == "train" else "val2014"
        name = f"COCO_{folder}_{n:012d}.jpg"
        Image.new("RGB", (8, 8), COLOURS[n]).save(tmp_path / folder / name)
        records.append({"filepath": folder, "filename": name, "imgid": n, "cocoid": 7000 + n, "split": split,
                        "sentences": [{"raw": f"image {n}, caption {c}", "tokens": []} for c in range(5)]})
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": records, "dataset": "coco"}), encoding="utf-8")
    train = read_coco(path)
    assert [i.path.name for i in train.items] == ["COCO_train2014_000000000000.jpg", "COCO_val2014_000000000001.jpg"]
    assert all(i.path.is_file() and len(i.captions) == 5 for i in train.items)
    assert len(read_coco(path, split="val").items) == 1
    evaluation = read_coco(path, default_split=("test",))
    assert [i.where.endswith("(cocoid 7003)") for i in evaluation.items] == [True, False]
    context = EvalSetContext("image", _Images(), None, WorldConfig())
    assert [Path(p).name for p in CocoKind.labelled_set(str(path), context).items] == [
        "COCO_val2014_000000000003.jpg", "COCO_val2014_000000000004.jpg"]  # --data coco:PATH: the test split
    assert len(CocoKind.labelled_set(f"{path}:val,train", context).captions) == 10
    with pytest.raises(DataError, match="'split' chooses splits of Karpathy's file"):
        read_coco(_official(tmp_path), split="test")


def _official(root: Path) -> Path:
    path = root / "captions_val2014.json"
    path.write_text(json.dumps({"images": [], "annotations": []}), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------
# Clotho and AudioCaps
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clotho(tmp_path_factory) -> Path:
    """Clotho's layout: clotho_captions_development.csv beside development/; file names
    with spaces and commas, captions with commas and quotes (quoted cells)."""
    root = tmp_path_factory.mktemp("clotho")
    (root / "development").mkdir()
    path = root / "clotho_captions_development.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name"] + [f"caption_{i}" for i in range(1, 6)])
        for n in range(8):
            name = f"Field recording {n}, river bank.wav"
            _wav(root / "development" / name, n, 200 + 90 * n)
            writer.writerow([name, f'a "tone" number {n}, rising slowly', *(f"sound {n}, take {c}" for c in range(2, 6))])
    return path


@pytest.fixture(scope="module")
def clotho_run(clotho: Path, tmp_path_factory) -> Path:
    """tiny_audio's audio-text objective trained 2 steps on the Clotho fixture."""
    return _train("tiny_audio.yaml", tmp_path_factory.mktemp("clotho_run"), [
        "objectives.masked_audio=null", "objectives.audio_text.data={source: clotho, path: '%s', batch_size: 8}" % clotho])


def test_clotho_reads_quoted_captions_and_trains_and_evaluates(clotho: Path, clotho_run: Path, tmp_path: Path) -> None:
    found = read_clotho(clotho)
    assert found.media == clotho.parent / "development" and len(found.items) == 8
    first = found.items[0]
    assert first.path.name == "Field recording 0, river bank.wav" and first.path.is_file()
    assert first.captions[0] == 'a "tone" number 0, rising slowly' and len(first.captions) == 5
    run = clotho_run
    assert any("audio_text/loss" in line for line in (run / "metrics.jsonl").read_text().splitlines())
    output = tmp_path / "clotho.json"
    assert zero_shot_main(["--checkpoint", str(run), "--modality", "audio", "--data", f"clotho:{clotho}", "--task", "retrieval",
                           "--output", str(output), "--no-progress"]) == 0
    records = json.loads(output.read_text())
    assert all(r["num_items"] == 8 and r["num_captions"] == 40 and r["skipped"] == 0 for r in records)


@pytest.fixture(scope="module")
def audiocaps(tmp_path_factory) -> Path:
    """AudioCaps' CSV (audiocap_id,youtube_id,start_time,caption) beside train/, files named
    by id as the common distributions name them: <youtube_id>_<start_time>.wav,
    Y<youtube_id>.wav, <youtube_id>.flac, <audiocap_id>.wav; one clip with two caption
    rows; one clip whose video is gone (no file)."""
    root = tmp_path_factory.mktemp("audiocaps")
    (root / "train").mkdir()
    rows = []
    for n in range(8):
        youtube_id, start = f"vid{n:04d}xyz", str(10 * n)
        audiocap_id = str(90000 + n)
        rows.append([audiocap_id, youtube_id, start, f"a sound, number {n}"])
        name = [f"{youtube_id}_{start}.wav", f"Y{youtube_id}.wav", f"{youtube_id}.flac", f"{audiocap_id}.wav"][n % 4]
        if n != 7:
            _wav(root / "train" / name, n, 200 + 90 * n)
    rows.append(["91111", "vid0001xyz", "10", "the same clip, described again"])
    path = root / "train.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["audiocap_id", "youtube_id", "start_time", "caption"], *rows])
    return path


def test_audiocaps_finds_files_named_by_id_and_trains_and_evaluates(audiocaps: Path, tmp_path: Path) -> None:
    found = read_audiocaps(audiocaps, (".wav", ".flac"))
    items = found.items
    assert found.media == audiocaps.parent / "train" and len(items) == 7
    assert [i.path.name for i in items[:4]] == ["vid0000xyz_0.wav", "Yvid0001xyz.wav", "vid0002xyz.flac", "90003.wav"]
    assert items[1].captions == ["a sound, number 1", "the same clip, described again"]
    (gone,) = [e for e in found.entries if e not in items]
    assert "vid0007xyz_70" in gone.reason and "row 9" in gone.where
    run = _train("tiny_audio.yaml", tmp_path / "run", [
        "objectives.masked_audio=null", "objectives.audio_text.data={source: audiocaps, path: '%s', batch_size: 8}" % audiocaps])
    assert (run / "metrics.jsonl").is_file()
    output = tmp_path / "audiocaps.json"
    assert zero_shot_main(["--checkpoint", str(run), "--modality", "audio", "--data", f"audiocaps:{audiocaps}", "--task",
                           "retrieval", "--output", str(output), "--no-progress"]) == 0
    records = json.loads(output.read_text())
    assert all(r["num_items"] == 7 and r["skipped"] == 1 and r["num_captions"] == 8 for r in records)


def test_caption_kinds_are_registered_for_training_and_evaluation() -> None:
    assert {"coco", "clotho", "audiocaps"} <= set(eval_kinds())
    with pytest.raises(mmssl.ConfigError, match="feeds objectives of two modalities"):
        ClothoKind.check(ClothoOptions(path="x.csv"), "objectives.masked_audio.data", ["audio"])
    with pytest.raises(mmssl.ConfigError, match="'objectives.x.data.split': 'tset' is not a split.*Did you mean 'test'"):
        CocoKind.check(CocoOptions(path="dataset_coco.json", split="tset"), "objectives.x.data", ["image", "text"])


# --------------------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------------------


def _esc50(root: Path, with_folds: bool = True) -> Path:
    """ESC-50's layout (meta/esc50.csv, audio/), 5 folds x 2 classes x 2 clips."""
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir(exist_ok=True)
    path = root / "meta" / "esc50.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"] if with_folds
                        else ["filename", "target", "category"])
        for fold in range(1, 6):
            for target, category in ((0, "dog"), (1, "rain")):
                for take in "AB":
                    name = f"{fold}-{target}{take}-{take}-{target}.wav"
                    _wav(root / "audio" / name, fold * 10 + target, 250 if target == 0 else 900)
                    writer.writerow([name, fold, target, category, "True", name[:8], take] if with_folds else [name, target, category])
    return path


def test_stratified_kfold_tests_every_item_once_and_spreads_each_class() -> None:
    labels = [0] * 11 + [1] * 7 + [2] * 3 + [3]
    folds = stratified_kfold(labels, 4, seed=0)
    tested = [i for f in folds for i in f.test]
    assert sorted(tested) == list(range(len(labels)))  # every item tested exactly once
    for f in folds:
        assert sorted(f.train + f.test) == list(range(len(labels))) and not set(f.train) & set(f.test)
    for c in range(4):
        counts = [sum(labels[i] == c for i in f.test) for f in folds]
        assert max(counts) - min(counts) <= 1, (c, counts)
    sizes = [len(f.test) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    assert [f.test for f in stratified_kfold(labels, 4, seed=0)] == [f.test for f in folds]
    assert [f.test for f in stratified_kfold(labels, 4, seed=1)] != [f.test for f in folds]
    with pytest.raises(EvaluationError, match="at least 2 folds"):
        stratified_kfold(labels, 1)


def test_esc50_keeps_its_folds_and_the_fold_protocol_tests_each_item_once(tmp_path: Path) -> None:
    data = esc50_set(_esc50(tmp_path))
    assert Counter(data.folds) == {str(f): 4 for f in range(1, 6)}
    folds, how = probe_folds(data, list(range(len(data.items))), 5, seed=0)
    assert how == "the set's own 5 folds" and [f.name for f in folds] == [f"fold {n}" for n in range(1, 6)]
    assert sorted(i for f in folds for i in f.test) == list(range(20))
    for f in folds:  # train on four folds, test on the fifth
        assert {data.folds[i] for i in f.test} == {f.name.split()[1]} and len(f.train) == 16
    with pytest.raises(EvaluationError, match="fixes its own 5 folds.*--folds 5"):
        probe_folds(data, list(range(20)), 10, seed=0)
    assert [len(f.test) for f in given_folds(["10", "9", "10", "1"])] == [1, 1, 2]  # numeric order


def test_linear_probe_with_folds_records_mean_and_sd(clotho_run: Path, tmp_path: Path) -> None:
    fixed = _esc50(tmp_path / "esc50")
    output = tmp_path / "folds.json"
    common = ["--checkpoint", str(clotho_run), "--modality", "audio", "--task", "linear_probe", "--no-progress"]
    assert zero_shot_main([*common, "--data", f"esc50:{fixed}", "--folds", "5", "--output", str(output)]) == 0
    (record,) = json.loads(output.read_text())
    assert record["split"] == "the set's own 5 folds" and record["folds"] == 5 and len(record["top1_folds"]) == 5
    assert record["top1_mean"] == pytest.approx(np.mean(record["top1_folds"])) == record["top1"]
    assert record["top1_sd"] == pytest.approx(np.std(record["top1_folds"], ddof=1))
    assert record["num_test_folds"] == [4] * 5 and record["num_items"] == 20
    stratified = _esc50(tmp_path / "plain", with_folds=False)
    assert zero_shot_main([*common, "--data", f"esc50:{stratified}", "--folds", "4", "--output", str(output)]) == 0
    (record,) = json.loads(output.read_text())
    assert record["split"].startswith("stratified 4-fold") and record["num_test_folds"] == [5] * 4
    assert zero_shot_main([*common, "--data", f"esc50:{fixed}", "--folds", "1"]) == 2
    report = tmp_path / "report.json"  # the default report's probe, cross-validated
    assert zero_shot_main(["--checkpoint", str(clotho_run), "--modality", "audio", "--data", f"esc50:{fixed}", "--linear-probe",
                           "--folds", "5", "--output", str(report), "--no-progress"]) == 0
    probe = json.loads(report.read_text())["linear_probe"]
    assert probe["split"] == "the set's own 5 folds" and len(probe["top1_folds"]) == 5 and "top1_sd" in probe
