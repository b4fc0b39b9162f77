"""The bad-input corpus (tests/data/bad_inputs.py) through the sources and streams: each
bad item is a counted skip named in the log, per draw, under ``on_error: skip``, and one
error naming it under ``on_error: fail``; unusual but valid items are trained on; a
source no run can use fails at start either way."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import mmssl
from mmssl.data import (
    CsvSource,
    DataError,
    FolderSource,
    GraphSource,
    ShardSource,
    Stream,
    TextCorpusSource,
)
from mmssl.data.eval_sets import EvaluationError, load_eval_set
from mmssl.data.shards import expand_shards
from mmssl.eval.zero_shot import embed_items
from tests.data.bad_inputs import GOOD, KINDS, SOURCE_KINDS, VALID_KINDS, Case, tone, wav_bytes

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def processors() -> dict[str, Any]:
    """Processors of every modality the corpus feeds (built once: the readers and
    transforms are what is tested, not the weights)."""
    image = mmssl.build_model(mmssl.load_config(CONFIGS / "tiny.yaml")).processors
    audio = mmssl.build_model(mmssl.load_config(CONFIGS / "tiny_audio.yaml")).processors
    graph = mmssl.build_model(mmssl.load_config(CONFIGS / "tiny_graph.yaml")).processors
    graph_x = mmssl.build_model(mmssl.load_config(CONFIGS / "tiny_graph.yaml", ["modalities.graph.in_features=1"])).processors
    return {"image": image["image"], "text": image["text"], "audio": audio["audio"], "graph": graph["graph"], "graph_x": graph_x["graph"]}


def build_source(case: Case, enc: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """(source, modalities of the stream) that read ``case``'s dataset."""
    layout = case.layout
    if layout in ("image_csv", "audio_csv"):
        mods = {layout.split("_")[0]: enc[layout.split("_")[0]], "text": enc["text"]}
        columns = {name: "filepath" if name != "text" else "title" for name in mods}
        return CsvSource(case.path, columns, mods), mods
    if layout == "audio_folder":
        return FolderSource(case.path, enc["audio"]), {"audio": enc["audio"]}
    if layout in ("text_jsonl", "text_txt"):
        return TextCorpusSource(case.path, enc["text"]), {"text": enc["text"]}
    if layout in ("graphs", "graphs_x", "graph_text"):
        mods = {"graph": enc["graph_x" if layout == "graphs_x" else "graph"]}
        if layout == "graph_text":
            mods["text"] = enc["text"]
        return GraphSource.from_file(case.path, mods), mods
    if layout == "shards":
        mods = {"image": enc["image"], "text": enc["text"]}
        return ShardSource(expand_shards(case.path), mods), mods
    raise AssertionError(f"unknown layout {layout}")


def case_stream(case: Case, enc: dict[str, Any], on_error: str) -> Stream:
    """A stream whose every batch is one epoch of the case's dataset, in file order."""
    source, mods = build_source(case, enc)
    assert len(source) == case.items, f"{case.path}: {len(source)} items, expected {case.items}"
    return Stream("corpus", source, mods, batch_size=len(source), shuffle=False, on_error=on_error)


def skip_messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if "skipped bad sample" in r.getMessage()]


@pytest.mark.parametrize("name", sorted(KINDS))
def test_bad_item_is_a_counted_skip_named_per_draw(name, processors, tmp_path, caplog):
    case = KINDS[name](tmp_path)
    stream = case_stream(case, processors, "skip")
    with caplog.at_level(logging.INFO):
        for _ in range(2):  # two epochs: the bad item is drawn twice
            next(stream)
    assert stream.skipped == 2 and stream.samples == 2 * GOOD, (stream.skipped, stream.samples, stream.skip_reasons)
    (reason,) = stream.skip_reasons
    assert re.search(case.reason, reason), reason
    (first, again) = skip_messages(caplog)
    assert first[0] == logging.WARNING and re.search(case.where, first[1]) and reason in first[1], first
    assert again[0] == logging.INFO and re.search(case.where, again[1]) and "again (draw 2; 2 skipped so far)" in again[1], again


@pytest.mark.parametrize("name", sorted(KINDS))
def test_bad_item_under_fail_is_one_error_naming_it(name, processors, tmp_path):
    case = KINDS[name](tmp_path)
    stream = case_stream(case, processors, "fail")
    with pytest.raises(DataError) as error:
        next(stream)
    message = str(error.value)
    assert message.startswith("stream 'corpus': bad sample at ") and "\n" not in message, message
    assert re.search(case.where, message) and re.search(case.reason, message), message


@pytest.mark.parametrize("name", sorted(SOURCE_KINDS))
def test_unusable_source_fails_at_start_naming_the_file(name, processors, tmp_path):
    case = SOURCE_KINDS[name](tmp_path)
    with pytest.raises(DataError) as error:
        build_source(case, processors)
    message = str(error.value)
    assert re.search(case.where, message) and re.search(case.reason, message) and "\n" not in message, message


@pytest.mark.parametrize("name", sorted(VALID_KINDS))
def test_unusual_but_valid_item_is_trained_on(name, processors, tmp_path):
    case = VALID_KINDS[name](tmp_path)
    stream = case_stream(case, processors, "fail")
    batch = next(stream)
    assert stream.skipped == 0 and stream.samples == case.items
    for value in batch.values():
        for tensor in (value.values() if isinstance(value, dict) else [getattr(value, "x", None)]):
            assert tensor is None or torch.isfinite(tensor.float()).all()


def test_other_sample_rate_is_resampled_and_silence_is_a_sample(processors):
    audio = processors["audio"]
    rate = audio.config.sample_rate
    resampled = audio.waveform((tone(0.25, rate=44100), 44100))
    assert resampled.shape == (rate // 4,)
    silent = audio.transform((np.zeros(rate // 4, np.float32), rate), None)
    mel = silent["mel"]
    assert torch.isfinite(mel).all() and mel.std() < 1e-5  # log-mel of silence: one finite value
    assert silent["valid_frames"] > 0


def test_a_worker_reports_the_bad_item_and_the_error_is_one_line(processors, tmp_path):
    case = KINDS["image_truncated"](tmp_path)
    stream = case_stream(case, processors, "fail")
    stream.num_workers = 1
    with pytest.raises(DataError, match=r"^stream 'corpus': bad sample at .*row 3 \(.*bad\.png\): corrupt image") as error:
        next(stream)
    assert "\n" not in str(error.value) and "Traceback" not in str(error.value)


def test_skip_count_survives_resume(processors, tmp_path):
    case = KINDS["csv_row_not_utf8"](tmp_path)
    stream = case_stream(case, processors, "skip")
    next(stream)
    resumed = case_stream(case, processors, "skip")
    resumed.load_state_dict(stream.state_dict())
    next(resumed)
    assert resumed.skipped == 2 and resumed.stats()["skipped"] == 2


# --- evaluation sets: the same bad items, counted and named alike ----------------------------------


def test_bad_graph_lines_are_skipped_in_evaluation_too(processors, tmp_path, caplog):
    lines = [json.dumps({"edges": [[0, 1], [1, 2]], "num_nodes": 3, "label": "path"}),
             '{"edges": [[0, 1]], "num_nodes": ',
             json.dumps({"edges": [[0, 1], [1, 2], [2, 0]], "num_nodes": 3, "label": "cycle"}),
             json.dumps({"edges": [[0, 1]], "num_nodes": 2}),
             json.dumps({"edges": [[0, 7]], "num_nodes": 2, "label": "path"})]
    path = tmp_path / "graphs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    model = mmssl.build_model(mmssl.load_config(CONFIGS / "tiny_graph.yaml"))
    data = load_eval_set(model, "graph", f"graphs:{path}", None, on_error="skip")
    assert data.skipped == 2 and len(data.items) == 3  # the bad JSON line and the unlabelled graph
    emb, kept, skipped = embed_items(model, "graph", data, None, 8, "skip")
    assert skipped == 1 and kept == [0, 1] and emb.shape[0] == 2  # line 5's edge is out of range
    messages = [m for _, m in skip_messages(caplog)]
    assert any("graphs.jsonl line 2: not valid JSON" in m for m in messages)
    assert any("graphs.jsonl line 4: no usable 'label'" in m for m in messages)
    assert any("graphs.jsonl line 5: edge endpoint 7 out of range" in m for m in messages)
    with pytest.raises(EvaluationError, match=r"graphs\.jsonl line 2: not valid JSON"):
        load_eval_set(model, "graph", f"graphs:{path}", None, on_error="fail")


def test_bad_rows_of_evaluation_csvs_are_skipped(processors, tmp_path):
    model = mmssl.build_model(mmssl.load_config(CONFIGS / "tiny_audio.yaml"))
    (tmp_path / "a.wav").write_bytes(wav_bytes(tone()))
    esc = tmp_path / "esc50.csv"
    esc.write_bytes(b"filename,target,category\na.wav,0,dog\na.wav,one,cat\na.wav,1,caf\xe9\na.wav,1,cat\n")
    data = load_eval_set(model, "audio", f"csv:{esc}", None, on_error="skip")
    assert data.skipped == 2 and data.class_names == ["dog", "cat"] and len(data.items) == 2
    with pytest.raises(EvaluationError, match=r"esc50\.csv row 3: target 'one' is not an integer"):
        load_eval_set(model, "audio", f"csv:{esc}", None, on_error="fail")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text('filepath,title\na.wav,a tone\na.wav,\n,no file\na.wav,"never closed\n')
    data = load_eval_set(model, "audio", f"pairs:{pairs}", None, on_error="skip")
    assert data.skipped == 3 and data.captions == ["a tone"]
    with pytest.raises(EvaluationError, match=r"pairs\.csv row 3: empty 'title' cell"):
        load_eval_set(model, "audio", f"pairs:{pairs}", None, on_error="fail")



# --- a run over a dataset with 10 % bad items -----------------------------------------------


def ten_percent_bad_audio_csv(root: Path, rows: int = 40) -> tuple[Path, dict[int, str]]:
    """An audio-text CSV of ``rows`` rows, a tenth of them bad (NaN samples, a WAV cut
    short, a row that is not UTF-8, a missing file), and among the good ones a silent
    clip and one at 44.1 kHz. Returns the CSV and the bad rows' reasons by row index."""
    (root / "clips").mkdir(parents=True)
    nan = tone()
    nan[10] = np.nan
    bad = {3: ("NaN or infinite", wav_bytes(nan, subtype="FLOAT")), 14: ("truncated", wav_bytes(tone())[:900]),
           25: ("not UTF-8", None), 36: ("file not found", None)}
    lines = ["filepath,title"]
    for i in range(rows):
        name = f"clips/{i:02d}.wav"
        samples = np.zeros(2000, np.float32) if i == 7 else tone(seed=i, rate=44100 if i == 8 else 8000)
        data = bad[i][1] if i in bad and bad[i][1] else wav_bytes(samples, rate=44100 if i == 8 else 8000)
        if i != 36:
            (root / name).write_bytes(data)
        lines.append(f"{name},caf\udce9 number {i}" if i == 25 else f"{name},sound number {i}")
    path = root / "pairs.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
    return path, {i: reason for i, (reason, _) in bad.items()}


@pytest.mark.slow
def test_ten_percent_bad_run_completes_and_counts_every_skip(tmp_path, caplog):
    from mmssl.eval.zero_shot import caption_pairs, caption_retrieval
    from mmssl.common.seeding import sample_rng
    from mmssl.train.trainer import Pretrainer

    path, bad = ten_percent_bad_audio_csv(tmp_path / "data")
    steps, batch = 7, 8  # 56 draws of 40 rows: one epoch and a part of the next
    config = mmssl.load_config(CONFIGS / "tiny_audio.yaml", [
        f"train.steps={steps}", "train.checkpoint_every=0", "objectives.masked_audio.data.batch_size=4",
        "objectives.audio_text.data={source: csv, columns: {audio: filepath, text: title}}",
        f"objectives.audio_text.data.path={path}", f"objectives.audio_text.data.batch_size={batch}",
    ])
    with caplog.at_level(logging.INFO):
        last = Pretrainer(config, tmp_path / "run").fit()
    # the stream's order is a function of (seed, stream, epoch): the rows drawn, independently
    drawn = [int(i) for e in range(2) for i in sample_rng(config.seed, "audio_text", e, "order").permutation(40)][: steps * batch]
    bad_draws = [i for i in drawn if i in bad]
    assert last["data/audio_text/skipped"] == len(bad_draws) and last["data/audio_text/samples"] == len(drawn) - len(bad_draws)
    assert len(set(bad_draws)) < len(bad_draws), "some bad row should be drawn twice, to show it counts twice"
    train_log = [m for _, m in skip_messages(caplog) if m.startswith("stream 'audio_text'")]
    assert len(train_log) == len(bad_draws)
    for i in set(bad_draws):
        named = [m for m in train_log if re.search(rf"pairs\.csv row {i + 2}\b", m)]
        assert len(named) == bad_draws.count(i) and bad[i] in named[0], named
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["data/audio_text/skipped"] == len(bad_draws)

    # evaluation over the same file: each bad row once, counted and named as training named it
    caplog.clear()
    model = mmssl.build_model(config)
    data = load_eval_set(model, "audio", f"pairs:{path}", None, on_error="skip")
    emb, kept, skipped = embed_items(model, "audio", data, "audio_text", 16, "skip")
    assert data.skipped + skipped == len(bad) and len(kept) == 40 - len(bad)
    eval_log = {m.split("skipped bad sample ", 1)[1].rsplit(" (", 1)[0] for _, m in skip_messages(caplog)}
    train_named = {m.split("skipped bad sample ", 1)[1].rsplit(" (", 1)[0] for m in train_log if " again " not in m}
    assert train_named <= eval_log and len(eval_log) == len(bad)
    captions, _, _ = caption_pairs(data, kept)
    assert len(captions) == 40 - len(bad)  # retrieval runs over the usable items' own captions
    retrieval = caption_retrieval(model, "audio", "text", data, emb, kept, "audio_text")
    assert set(retrieval) == {"audio_to_text", "text_to_audio"}


def test_csv_rows_are_named_by_row_and_by_their_lines_where_these_differ(tmp_path):
    from mmssl.data.bad_input import BadRecord
    from mmssl.data.files import read_csv

    path = tmp_path / "t.csv"
    path.write_text('a,b\n1,x\n\n2,"two\nlines"\n3,"open\n')
    rows = read_csv(path)
    assert [rows.where(i) for i in range(3)] == [f"{path} row 2", f"{path} row 3 (lines 4-5)", f"{path} row 4 (line 6)"]
    assert rows.records[1] == {"a": "2", "b": "two\nlines"} and isinstance(rows.records[2], BadRecord)
