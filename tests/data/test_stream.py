import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import mmssl
from mmssl.data import CsvSource, DataError, FolderSource, RenderPool, Stream, WorldSource, build_streams
from mmssl.data.stream import StreamBatches
from mmssl.world import world_for
from modalities.base import Encoder
from objectives.base import Objective


REPO = Path(__file__).resolve().parents[2]


def _processors(tiny_config):
    model = mmssl.build_model(tiny_config())
    return model, {"image": model.processors["image"], "text": model.processors["text"]}


def _csv_stream(model, path, **kw):
    processors = {"image": model.processors["image"], "text": model.processors["text"]}
    source = CsvSource(path, {"image": "filepath", "text": "title"}, processors)
    return Stream("pairs", source, processors, **{"batch_size": 4, **kw})


def test_corrupt_and_missing_images_are_counted_and_skipped(tiny_config, image_text_csv, caplog):
    model, _ = _processors(tiny_config)
    path = image_text_csv(12, corrupt=(1,), missing=(6,))
    stream = _csv_stream(model, path, shuffle=False)
    sizes = [next(stream)["image"]["pixels"].shape[0] for _ in range(3)]
    assert sizes == [3, 3, 4]
    assert stream.skipped == 2 and stream.samples == 10
    assert "row 3" in caplog.text and "001.png" in caplog.text  # the corrupt file, by row and name
    assert "row 8" in caplog.text and "not found" in caplog.text


def test_on_error_fail_names_the_file(tiny_config, image_text_csv):
    model, _ = _processors(tiny_config)
    stream = _csv_stream(model, image_text_csv(8, corrupt=(2,)), shuffle=False, on_error="fail")
    with pytest.raises(DataError, match=r"stream 'pairs'.*row 4.*002\.png"):
        next(stream)


def test_too_many_bad_samples_stop_the_run(tiny_config, image_text_csv):
    model, _ = _processors(tiny_config)
    stream = _csv_stream(model, image_text_csv(8, corrupt=(0, 1, 2)), shuffle=False, max_skip_fraction=0.5)
    with pytest.raises(DataError, match="3 of 4 samples"):
        next(stream)


def test_missing_column_is_named_with_closest(tiny_config, image_text_csv):
    model, processors = _processors(tiny_config)
    with pytest.raises(DataError, match=r"no column 'filpath'.*Did you mean 'filepath'"):
        CsvSource(image_text_csv(4), {"image": "filpath", "text": "title"}, processors)


def test_batches_do_not_depend_on_workers(tiny_config):
    config = tiny_config()
    model = mmssl.build_model(config)
    a = build_streams(config, model)["image_text"]
    b = build_streams(config, model)["image_text"]
    b.num_workers = 2
    for _ in range(3):
        x, y = next(a), next(b)
        assert torch.equal(x["image"]["pixels"], y["image"]["pixels"])
        assert torch.equal(x["text"]["ids"], y["text"]["ids"])


def test_resumed_stream_continues_exactly(tiny_config):
    config = tiny_config()
    model = mmssl.build_model(config)
    stream = build_streams(config, model)["image_text"]
    next(stream)
    state = stream.state_dict()
    expected = next(stream)
    resumed = build_streams(config, model)["image_text"]
    resumed.load_state_dict(state)
    got = next(resumed)
    assert torch.equal(expected["image"]["pixels"], got["image"]["pixels"])
    assert torch.equal(expected["match"]["text"], got["match"]["text"])


def test_epochs_reshuffle_csv(tiny_config, image_text_csv):
    model, _ = _processors(tiny_config)
    stream = _csv_stream(model, image_text_csv(8))
    first_epoch = [next(stream)["text"]["ids"] for _ in range(2)]
    second_epoch = [next(stream)["text"]["ids"] for _ in range(2)]
    assert stream.epoch == 1
    assert not torch.equal(torch.cat(first_epoch), torch.cat(second_epoch))
    assert sorted(map(tuple, torch.cat(first_epoch).tolist())) == sorted(map(tuple, torch.cat(second_epoch).tolist()))


def test_world_stream_draws_only_training_classes(tiny_config):
    config = tiny_config()
    model = mmssl.build_model(config)
    world = world_for(model.renderers["image"], config.world)
    source = WorldSource(world, model.renderers["image"], model.processors["text"], size=200)
    from mmssl.common.seeding import sample_rng

    heldout = {tuple(world.classes[i].attributes.values()) for i in world.heldout_classes}
    for i in range(200):
        item = source.get(i, sample_rng(0, "t", i))
        codes = item["match"]["image"]
        names = tuple(list(v)[c] for v, c in zip(world.space.class_attributes.values(), codes))
        assert names not in heldout


def _same_render(a, b) -> bool:
    if hasattr(a, "edge_index"):  # PyG Data
        return a.num_nodes == b.num_nodes and torch.equal(a.edge_index, b.edge_index)
    if isinstance(a, tuple):  # (waveform, sample rate)
        return np.array_equal(a[0], b[0]) and a[1] == b[1]
    return np.array_equal(np.asarray(a), np.asarray(b))  # PIL image


def test_render_pool_is_shared_reused_and_left_unmodified():
    config = mmssl.load_config(
        Path(__file__).resolve().parents[2] / "configs" / "tiny_joint.yaml",
        [f"objectives.{n}.data.render_pool=6" for n in ("image_text", "audio_text", "graph_text", "masked_audio", "graph_contrastive")],
    )
    model = mmssl.build_model(config)
    streams = build_streams(config, model)
    assert streams["audio_text"].source.pool is streams["masked_audio"].source.pool  # one pool per modality
    assert streams["graph_text"].source.pool is streams["graph_contrastive"].source.pool
    for name, stream in streams.items():
        for _ in range(3):
            batch = next(stream)
        if not isinstance(stream.source, WorldSource):
            continue
        pool = stream.source.pool
        assert len(pool) == 6  # 48 samples, every one of them from the 6 slots
        world = pool.world
        heldout = {tuple(world.attribute_codes(world.classes[i].attributes)) for i in world.heldout_classes}
        fresh = RenderPool(world_for(pool.renderer, config.world), pool.renderer, 6)
        for slot in range(6):
            concept, render = pool.get(slot)
            again, rerender = fresh.get(slot)
            assert concept == again  # a slot's content depends on the world seed and the slot only
            assert _same_render(render, rerender), f"{name}: slot {slot} was modified by a transform"
            assert tuple(world.attribute_codes(concept)) not in heldout
        slot_codes = {tuple(world.match_codes(pool.get(i)[0])) for i in range(6)}
        renderer = pool.renderer.key
        assert {tuple(c) for c in batch["match"][renderer].tolist()} <= slot_codes
        if "text" in batch:  # captions are drawn afresh per sample: 16 samples, 6 renders
            assert len({tuple(ids) for ids in batch["text"]["ids"].tolist()}) > 6


def test_render_pool_size_must_not_be_negative():
    with pytest.raises(mmssl.ConfigError, match=r"objectives\.image_text\.data\.render_pool': must be >= 0"):
        mmssl.load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml", ["objectives.image_text.data.render_pool=-1"])


def test_folder_source_reads_one_modality_and_skips_bad_files(tmp_path):
    import soundfile

    config = mmssl.load_config(
        Path(__file__).resolve().parents[2] / "configs" / "tiny_audio.yaml",
        ["objectives.masked_audio.data.source=folder", f"objectives.masked_audio.data.path={tmp_path}",
         "objectives.masked_audio.data.batch_size=3"],
    )
    rng = np.random.default_rng(0)
    (tmp_path / "sub").mkdir()
    for i in range(5):
        soundfile.write(tmp_path / "sub" / f"{i}.wav", rng.normal(0, 0.1, 4000).astype(np.float32), 8000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF....garbage")
    (tmp_path / "notes.txt").write_text("not audio")
    model = mmssl.build_model(config)
    stream = build_streams(config, model)["masked_audio"]
    assert len(stream.source) == 6  # five good wavs and the broken one; the .txt is not audio
    batches = [next(stream) for _ in range(2)]  # one epoch: every file once
    assert stream.skipped == 1 and stream.samples == 5
    assert all(b["audio"]["mel"].shape[1:] == (32, 50) for b in batches)
    assert "patch_mask" in batches[0]["extras"]


def test_folder_source_errors_name_the_folder(tiny_config, tmp_path):
    model = mmssl.build_model(tiny_config())
    with pytest.raises(DataError, match="no image files"):
        FolderSource(tmp_path, model.processors["image"])
    with pytest.raises(DataError, match="data folder not found"):
        FolderSource(tmp_path / "nope", model.processors["image"])


def test_audio_text_csv_stream(tmp_path, caplog):
    import soundfile

    from tests.conftest import write_csv

    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        name = f"clip{i}.flac"
        if i == 2:
            (tmp_path / name).write_bytes(b"fLaC but not really")
        else:
            soundfile.write(tmp_path / name, rng.normal(0, 0.1, 6000).astype(np.float32), 16000)
        rows.append({"path": name, "caption": f"sound number {i}"})
    path = write_csv(tmp_path / "audio_text.csv", rows)
    config = mmssl.load_config(
        Path(__file__).resolve().parents[2] / "configs" / "tiny_audio.yaml",
        ["objectives.audio_text.data.source=csv", f"objectives.audio_text.data.path={path}",
         "objectives.audio_text.data.columns={audio: path, text: caption}", "objectives.audio_text.data.batch_size=3"],
    )
    model = mmssl.build_model(config)
    stream = build_streams(config, model)["audio_text"]
    stream.shuffle = False
    first = next(stream)
    assert first["audio"]["mel"].shape[0] == 2 and first["text"]["ids"].shape[0] == 2
    assert stream.skipped == 1 and "row 4" in caplog.text and "clip2.flac" in caplog.text


def test_ranks_slices_together_are_the_one_process_batch(tiny_config):
    """Under data parallelism rank r of W takes the r-th slice of each global batch, every
    sample drawn from the generator of its global index."""
    config = tiny_config()
    model = mmssl.build_model(config)
    whole = build_streams(config, model)["image_text"]
    ranks = [build_streams(config, model, rank=r, world_size=2)["image_text"] for r in (0, 1)]
    for _ in range(3):
        full = next(whole)
        halves = [next(s) for s in ranks]
        assert torch.equal(torch.cat([h["image"]["pixels"] for h in halves]), full["image"]["pixels"])
        assert torch.equal(torch.cat([h["text"]["ids"] for h in halves]), full["text"]["ids"])
    assert [s.state_dict()["position"] for s in ranks] == [whole.state_dict()["position"]] * 2


def test_batch_that_does_not_divide_over_ranks_is_named(tiny_config):
    config = tiny_config("objectives.image_text.data.batch_size=15")
    with pytest.raises(DataError, match=r"objective 'image_text': data.batch_size 15 does not divide over 2 processes"):
        build_streams(config, mmssl.build_model(config), rank=0, world_size=2)


def test_batches_are_built_on_one_torch_thread(tiny_config, monkeypatch):
    """A sample's tensors are small, so the training process builds its batches on one
    intra-op thread (as loader workers do) and gives the model its threads back."""
    config = tiny_config()
    model = mmssl.build_model(config)
    stream = build_streams(config, model)["image_text"]
    image = model.processors["image"]
    seen = []
    transform = image.transform
    monkeypatch.setattr(image, "transform", lambda raw, rng=None: seen.append(torch.get_num_threads()) or transform(raw, rng))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        next(stream)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert seen and set(seen) == {1}


class _ModuleFinder(pickle.Pickler):
    """Pickles an object while noting every encoder, objective and parameter it reaches:
    what a spawned loader worker would receive."""

    def __init__(self, file):
        super().__init__(file)
        self.found: list[str] = []

    def persistent_id(self, obj):
        if isinstance(obj, (Encoder, Objective, torch.nn.Parameter)):
            self.found.append(type(obj).__name__)
        return None


def test_loader_workers_hold_processors_and_no_model_module():
    """Every built-in objective's stream (tiny_ssl has them all, views and token masking
    included) pickles for a worker without an encoder, an objective or a parameter."""
    config = mmssl.load_config(REPO / "configs" / "tiny_ssl.yaml")
    for name, stream in build_streams(config, mmssl.build_model(config)).items():
        finder = _ModuleFinder(io.BytesIO())
        finder.dump(StreamBatches(stream))
        assert finder.found == [], (name, finder.found)
