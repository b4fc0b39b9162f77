"""WebDataset shards: conversion, map-style reading, bad shards."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import mmssl
from mmssl.train.checkpoint import resolve_checkpoint
from mmssl.cli.make_shards import main as make_shards
from mmssl.data import DataError, ShardSource, build_streams
from mmssl.data.shards import expand_shards
from modalities.base import InvalidSample

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


def _tiny(*overrides: str) -> mmssl.RunConfig:
    return mmssl.load_config(CONFIGS / "tiny.yaml", ["train.steps=3", "train.checkpoint_every=0", "train.progress=false", *overrides])


def test_csv_and_its_shards_train_to_the_same_weights(image_text_csv, tmp_path):
    csv_path = image_text_csv(40)
    assert make_shards([str(csv_path), "--output", str(tmp_path / "shards"), "--shard-size", "16"]) == 0
    shards = expand_shards(tmp_path / "shards")
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert expand_shards(str(tmp_path / "shards" / "shard-{000000..000002}.tar")) == shards
    runs = {}
    for name, data in {
        "csv": ["objectives.image_text.data.source=csv", f"objectives.image_text.data.path={csv_path}",
                "objectives.image_text.data.columns={image: filepath, text: title}"],
        "shards": ["objectives.image_text.data.source=shards", f"objectives.image_text.data.path={tmp_path / 'shards'}"],
    }.items():
        mmssl.Pretrainer(_tiny(*data), tmp_path / name).fit()
        runs[name] = load_file(resolve_checkpoint(tmp_path / name) / "model.safetensors")
    assert all(torch.equal(runs["csv"][k], runs["shards"][k]) for k in runs["csv"])


def _shard(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _png(seed: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def _encoders():
    model = mmssl.build_model(_tiny())
    return {"image": model.processors["image"], "text": model.processors["text"]}


def test_bad_members_are_skips_naming_shard_and_key(tmp_path, caplog):
    shard = _shard(tmp_path / "a.tar", {
        "k0.png": _png(0), "k0.txt": b"a red circle",
        "k1.png": _png(1),  # no caption
        "k2.png": b"not a png", "k2.txt": b"a blue star",
        "k3.png": _png(3), "k3.json": b'{"caption": "a green cross"}',
        "k4.png": _png(4), "k4.txt": b"   ",
    })
    source = ShardSource([shard], _encoders())
    assert len(source) == 5
    assert source.get(0, np.random.default_rng(0))["text"] == "a red circle"
    assert source.get(3, np.random.default_rng(0))["text"] == "a green cross"
    for index, reason in [(1, "no caption member"), (2, "not a readable image"), (4, "empty caption")]:
        with pytest.raises(InvalidSample, match=reason) as err:
            source.get(index, np.random.default_rng(0))
        assert f"{shard} key k{index}" in str(err.value)


@pytest.mark.parametrize("keep", [0.5, 0.6])  # cut on a block boundary, and inside a member
def test_truncated_shard_keeps_what_precedes_the_cut_and_counts_the_rest(tmp_path, caplog, keep):
    members = {}
    for i in range(3):
        members[f"k{i}.png"], members[f"k{i}.txt"] = _png(i), b"a shape"
    data = _shard(tmp_path / "whole.tar", members).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: int(len(data) * keep)])
    with caplog.at_level(logging.WARNING):
        source = ShardSource([cut], _encoders())
    readable = [i for i in range(len(source)) if _readable(source, i)]
    lost = [_reason(source, i) for i in range(len(source)) if i not in readable]
    assert readable == list(range(len(readable))) and 1 <= len(readable) < 3  # the samples before the cut
    assert lost and all(str(cut) in reason and "key k" in reason for reason in lost)
    assert "cut.tar" in caplog.text


def _readable(source, index) -> bool:
    try:
        source.get(index, np.random.default_rng(0))
        return True
    except InvalidSample:
        return False


def _reason(source, index) -> str:
    try:
        source.get(index, np.random.default_rng(0))
    except InvalidSample as exc:
        return str(exc)
    return ""


def test_stream_counts_skipped_shard_samples_or_fails_under_on_error_fail(tmp_path):
    members = {}
    for i in range(16):  # one batch of the tiny config: every sample is drawn
        members[f"k{i:02d}.png"] = b"corrupt" if i == 5 else _png(i)
        members[f"k{i:02d}.txt"] = b"a red circle"
    _shard(tmp_path / "s.tar", members)
    config = _tiny("objectives.image_text.data.source=shards", f"objectives.image_text.data.path={tmp_path / 's.tar'}")
    model = mmssl.build_model(config)
    stream = build_streams(config, model)["image_text"]
    next(stream)
    assert stream.skipped == 1 and stream.samples == 15
    failing = _tiny("objectives.image_text.data.source=shards", f"objectives.image_text.data.path={tmp_path / 's.tar'}",
                    "objectives.image_text.data.on_error=fail")
    stream = build_streams(failing, model)["image_text"]
    with pytest.raises(DataError, match=r"s\.tar key k05.*not a readable image"):
        next(stream)


def test_missing_shard_fails_at_start_naming_it(tmp_path):
    _shard(tmp_path / "shard-0.tar", {"k.png": _png(0), "k.txt": b"x"})
    with pytest.raises(DataError, match=r"shard not found: .*shard-1\.tar"):
        expand_shards(str(tmp_path / "shard-{0..1}.tar"))
    config = _tiny("objectives.image_text.data.source=shards", f"objectives.image_text.data.path={tmp_path / 'shard-{0..2}.tar'}")
    with pytest.raises(DataError, match="shard not found"):
        build_streams(config, mmssl.build_model(config))
    with pytest.raises(mmssl.ConfigError, match=r"'objectives.image_text.data.path': required when data.source is 'shards'"):
        _tiny("objectives.image_text.data.source=shards")


def test_graph_jsonl_and_folder_convert_in_order(tmp_path):
    jsonl = tmp_path / "g.jsonl"
    jsonl.write_text('{"edges": [[0, 1]], "num_nodes": 2, "text": "a path"}\n\n{"edges": [], "num_nodes": 1}\n')
    assert make_shards([str(jsonl), "--output", str(tmp_path / "g")]) == 0
    with tarfile.open(tmp_path / "g" / "shard-000000.tar") as tar:
        assert tar.getnames() == ["00000000.json", "00000001.json"]
        assert tar.extractfile("00000000.json").read() == b'{"edges": [[0, 1]], "num_nodes": 2, "text": "a path"}'
    folder = tmp_path / "files"
    folder.mkdir()
    for name in ("b.wav", "a.wav"):
        (folder / name).write_bytes(name.encode())
    assert make_shards([str(folder), "--output", str(tmp_path / "f")]) == 0
    with tarfile.open(tmp_path / "f" / "shard-000000.tar") as tar:
        assert [tar.extractfile(n).read() for n in tar.getnames()] == [b"a.wav", b"b.wav"]  # name order, bytes as they were
    assert not list((tmp_path / "f").glob(".*tmp*"))
    assert make_shards([str(tmp_path / "nope.csv"), "--output", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_shard_fed_run_resumes_mid_epoch_exactly(image_text_csv, tmp_path, workers):
    assert make_shards([str(image_text_csv(40)), "--output", str(tmp_path / "shards"), "--shard-size", "7"]) == 0
    data = ["objectives.image_text.data.source=shards", f"objectives.image_text.data.path={tmp_path / 'shards'}",
            f"objectives.image_text.data.num_workers={workers}", "train.steps=5", "train.checkpoint_every=3"]
    # 40 samples, batches of 16: an epoch is 2 batches, so step 3 stops inside epoch 1
    mmssl.Pretrainer(_tiny(*data), tmp_path / "whole").fit()
    step3 = tmp_path / "whole" / "checkpoints" / "step_00000003"
    resumed = mmssl.Pretrainer(_tiny(*data, f"train.resume={step3}"), tmp_path / "resumed")
    resumed.fit()
    assert resumed.streams["image_text"].epoch == 2
    whole = load_file(resolve_checkpoint(tmp_path / "whole") / "model.safetensors")
    again = load_file(resolve_checkpoint(tmp_path / "resumed") / "model.safetensors")
    assert all(torch.equal(whole[k], again[k]) for k in whole)


def test_labelled_image_shards_as_an_evaluation_set(tmp_path):
    from mmssl.data.eval_sets import EvaluationError
    from mmssl.data.shards import shard_set

    (tmp_path / "test").mkdir()
    (tmp_path / "classnames.txt").write_text("red circle\nblue square\n")  # clip_benchmark: names one folder up
    _shard(tmp_path / "test" / "0.tar", {"a.png": _png(0), "a.cls": b"1", "a.txt": b"a blue square",
                                          "b.png": _png(1), "b.cls": b"0", "b.txt": b"a red circle"})
    _shard(tmp_path / "test" / "1.tar", {"c.png": _png(2), "c.cls": b"one", "c.txt": b"?", "d.png": b"not a png", "d.cls": b"0"})
    image = _encoders()["image"]
    data = shard_set(str(tmp_path / "test" / "{0..1}.tar"), image)
    assert data.class_names == ["red circle", "blue square"] and data.labels == [1, 0, 0]
    assert data.skipped == 1 and data.where[2].endswith("1.tar key d")
    assert data.captions == []  # d has no caption: no retrieval
    assert data.items[0].size == (16, 16)  # read when indexed
    with pytest.raises(InvalidSample, match="key d"):
        data.items[2]
    with pytest.raises(EvaluationError, match=r"1.tar key c: .cls member 'one' is not a class index"):
        shard_set(str(tmp_path / "test"), image, on_error="fail")
    with pytest.raises(EvaluationError, match="label 1 out of range for 1 class names"):
        shard_set(str(tmp_path / "test" / "0.tar"), image, class_names=["red circle"])
