"""train.loggers: metrics.jsonl always, and the experiment trackers listed (TensorBoard,
wandb offline, MLflow in a SQLite file) each given the run's config once and every
logged step's numbers. A tracker that cannot start stops the run before its first step
in one line; one that fails mid-run is dropped with one warning and the run goes on.
The wandb and MLflow tests run where those are installed (pip install 'mmssl[wandb]',
'mmssl[mlflow]') and read back what the real libraries wrote."""

from __future__ import annotations

import json
import logging
import shutil
import struct
import sys
from pathlib import Path

import pytest

import mmssl
from mmssl.cli import pretrain
from mmssl.config import LOGGERS, ConfigError
from mmssl.train import trackers
from mmssl.train.run_log import read_metrics

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
FAST = ["train.steps=3", "train.threads=1", "train.progress=false", "train.checkpoint_every=0"]


def _fit(run: Path, *overrides: str) -> list[dict]:
    mmssl.Pretrainer(mmssl.load_config(TINY, [*FAST, *overrides]), run).fit()
    return read_metrics(run / "metrics.jsonl")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """wandb and MLflow never reach for the network, nor write outside the test's run."""
    for key, value in {
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
        "WANDB_ERROR_REPORTING": "false", "WANDB_CONSOLE": "off",
        "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


class Recorder(trackers.Tracker):
    """A fake tracker: keeps what it is given; ``fail_at``: its n-th ``log`` raises."""

    made: list[Recorder] = []
    fail_at: int | None = None
    fail_start: Exception | None = None

    def __init__(self) -> None:
        self.info = None
        self.logged: list[tuple[int, dict]] = []
        self.finished: list[bool] = []
        Recorder.made.append(self)

    def start(self, info):
        if self.fail_start is not None:
            raise self.fail_start
        self.info = info

    def log(self, step, metrics):
        if self.fail_at is not None and len(self.logged) + 1 == self.fail_at:
            raise ConnectionError("the tracker's server went away\nand a second line")
        self.logged.append((step, dict(metrics)))

    def finish(self, ok=True):
        self.finished.append(ok)


@pytest.fixture
def recorders(monkeypatch):
    """``recorders(name=Recorder subclass, ...)`` puts fakes in place of those trackers."""
    monkeypatch.setattr(Recorder, "made", [])

    def install(**fakes):
        for name, fake in fakes.items():
            monkeypatch.setitem(trackers.TRACKERS, name, fake)
        return Recorder.made

    return install


def test_the_config_names_and_the_trackers_agree():
    assert set(trackers.TRACKERS) | {"jsonl"} == set(LOGGERS)
    assert mmssl.load_config(TINY).train.loggers == ["jsonl", "tensorboard"]


@pytest.mark.parametrize("value, says", [
    ("[jsonl, wandbb]", "'train.loggers[1]': 'wandbb' is not one of ['jsonl', 'tensorboard', 'wandb', 'mlflow']. "
                        "Did you mean 'wandb'?"),
    ("[comet]", "'train.loggers[0]': 'comet' is not one of ['jsonl', 'tensorboard', 'wandb', 'mlflow']."),
])
def test_an_unknown_logger_is_a_config_error_naming_it_and_the_choices(value, says):
    with pytest.raises(ConfigError) as error:
        mmssl.load_config(TINY, [f"train.loggers={value}"])
    assert says in str(error.value)


def test_jsonl_is_always_written_and_tensorboard_only_when_listed(tmp_path):
    records = _fit(tmp_path / "none", "train.loggers=[]")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert not (tmp_path / "none" / "tensorboard").exists()
    assert [r["step"] for r in _fit(tmp_path / "tb", "train.loggers=[tensorboard]")] == [1, 2, 3]
    assert any((tmp_path / "tb" / "tensorboard").iterdir())


def test_tensorboard_records_the_config_and_a_resumed_run_each_step_once(tmp_path):
    """A run that resumes from an earlier checkpoint than its last logged step (killed
    after logging step 4, with step 2's checkpoint the latest) logs steps 3 and 4 again:
    TensorBoard hides the first run's (purge_step), as metrics.jsonl drops its lines."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = ["train.steps=4", "train.checkpoint_every=2"]
    first = _fit(tmp_path, *steps)
    shutil.rmtree(tmp_path / "checkpoints" / "step_00000004")
    second = _fit(tmp_path, *steps)
    assert [r["step"] for r in second] == [1, 2, 3, 4] and second[:2] == first[:2]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [
        (r["step"], pytest.approx(r["loss"])) for r in second
    ]
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("run_info/text_summary")}
    assert sorted(texts) == [0, 2]  # each run's config, at the step it started from
    assert "name: tiny" in texts[2] and "  steps: 4" in texts[2] and "world_size: 1" in texts[2]


def test_each_tracker_gets_the_run_info_once_and_every_logged_step(tmp_path, recorders):
    class Fake(Recorder):
        pass

    recorders(mlflow=Fake)
    records = _fit(tmp_path, "train.loggers=[jsonl, mlflow]")
    (fake,) = Recorder.made
    assert fake.info.run_dir == tmp_path and fake.info.name == "tiny" and fake.info.start_step == 0
    assert fake.info.config["train"]["steps"] == 3 and fake.info.config_yaml.startswith("name: tiny")
    assert {"python", "torch", "mmssl", "device", "world_size"} <= set(fake.info.environment)
    assert fake.info.git_revision is None or len(fake.info.git_revision) == 40
    assert [step for step, _ in fake.logged] == [1, 2, 3]
    for (step, metrics), record in zip(fake.logged, records):
        numeric = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        assert metrics == pytest.approx(numeric)
    assert fake.finished == [True]


def test_a_tracker_failing_mid_run_warns_once_and_the_run_goes_on(tmp_path, recorders, caplog):
    class Flaky(Recorder):
        fail_at = 2

    class Steady(Recorder):
        pass

    recorders(mlflow=Flaky, wandb=Steady)
    with caplog.at_level(logging.WARNING, logger="mmssl.train.trackers"):
        records = _fit(tmp_path, "train.loggers=[mlflow, wandb]")
    assert [r["step"] for r in records] == [1, 2, 3]  # metrics.jsonl complete
    flaky, steady = Recorder.made
    assert [s for s, _ in flaky.logged] == [1] and flaky.finished == [False]
    assert [s for s, _ in steady.logged] == [1, 2, 3] and steady.finished == [True]
    warnings = [r.getMessage() for r in caplog.records if r.name == "mmssl.train.trackers"]
    assert warnings == [
        "train.loggers: mlflow failed at step 2 and is dropped for the rest of the run (metrics.jsonl has every "
        "step): the tracker's server went away"
    ]


def test_a_tracker_that_cannot_start_stops_the_run_before_its_first_step(tmp_path, recorders, monkeypatch, capsys):
    class Broken(Recorder):
        fail_start = RuntimeError("database is locked\n(background on this error at: ...)")

    class Steady(Recorder):
        pass

    recorders(tensorboard=Steady, mlflow=Broken)
    with pytest.raises(trackers.TrackerError, match=r"^train.loggers: mlflow could not start: database is locked$"):
        _fit(tmp_path / "a", "train.loggers=[tensorboard, mlflow]")
    steady = Recorder.made[0]
    assert steady.finished == [False]  # the one started before it is finished
    assert read_metrics(tmp_path / "a" / "metrics.jsonl") == []
    assert not (tmp_path / "a" / "checkpoints").exists() or not any((tmp_path / "a" / "checkpoints").iterdir())

    # wandb not installed (or hidden here): the command line says so in one line, status 2
    monkeypatch.setitem(sys.modules, "wandb", None)
    argv = [str(TINY), "--output-dir", str(tmp_path / "b"), *FAST, "train.loggers=[wandb]"]
    assert pretrain.main(argv) == 2
    assert capsys.readouterr().err == (
        "mmssl-pretrain: error: train.loggers: wandb is not installed (pip install 'mmssl[wandb]')\n"
    )
    assert read_metrics(tmp_path / "b" / "metrics.jsonl") == []


# --- the real libraries -----------------------------------------------------------------


def _wandb_log(path: Path) -> list[bytes]:
    """The records of a ``.wandb`` file: wandb's transaction log, LevelDB's log format (a
    7-byte header, ``:W&B``, 0xBEE1, version 0; then 32 KiB blocks of records, each a
    7-byte header, crc32, length, kind: whole, first, middle or last part)."""
    data = path.read_bytes()
    assert data[:7] == b":W&B\xe1\xbe\x00", f"{path} is not a wandb transaction log"
    block, pos, records, parts = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a record header never straddles blocks: zero padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            records.append(parts)
    return records


def _wandb_records(run_dir: Path) -> list:
    """Every record of the offline runs under ``run_dir/wandb``, oldest run first."""
    pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")
    out = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        run = []
        for data in _wandb_log(path):
            record = pb.Record()
            record.ParseFromString(data)
            run.append(record)
        out.append(run)
    return out


def _history(run: list) -> list[dict]:
    return [
        {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
        for r in run if r.WhichOneof("record_type") == "history"
    ]


def _config(run: list) -> dict:
    config = {}
    for r in run:
        kind = r.WhichOneof("record_type")
        items = r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        for i in items:
            config[i.key or "/".join(i.nested_key)] = json.loads(i.value_json)
    return config


def test_wandb_offline_records_the_config_and_every_step_and_a_resume_keeps_the_run_id(tmp_path):
    pytest.importorskip("wandb")
    records = _fit(tmp_path, "train.loggers=[wandb]")
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    (run,) = _wandb_records(tmp_path)
    history = _history(run)
    assert [h["_step"] for h in history] == [1, 2, 3]
    for h, record in zip(history, records):
        assert h["loss"] == pytest.approx(record["loss"]) and h["lr"] == pytest.approx(record["lr"])
    config = _config(run)
    assert config["name"] == "tiny" and config["train"]["steps"] == 3 and config["train"]["loggers"] == ["wandb"]
    assert {"python", "torch", "mmssl", "git_revision"} <= set(config["environment"])
    (header,) = [r.run for r in run if r.WhichOneof("record_type") == "run"]
    assert (header.run_id, header.project, header.display_name) == (run_id, "tiny", tmp_path.name)

    _fit(tmp_path, "train.loggers=[wandb]", "train.steps=5")  # resumes from step 3's checkpoint
    assert (tmp_path / "wandb_run_id").read_text().strip() == run_id
    first, second = _wandb_records(tmp_path)
    assert [r.run.run_id for r in second if r.WhichOneof("record_type") == "run"] == [run_id]
    assert [h["_step"] for h in _history(second)] == [4, 5]


@pytest.mark.slow  # about 13 s on a slow 2-core machine, 7 of them MLflow's schema migrations of a new store
def test_mlflow_sqlite_store_holds_params_and_every_step_and_a_resume_continues_the_run(tmp_path, caplog):
    mlflow = pytest.importorskip("mlflow")
    records = _fit(tmp_path, "train.loggers=[jsonl, mlflow]")
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = (tmp_path / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == tmp_path.name
    assert client.get_experiment(run.info.experiment_id).name == "tiny"
    assert run.data.params["train.steps"] == "3" and run.data.params["train.lr"] == "0.002"
    assert run.data.params["objectives.image_text.modalities"] == "['image', 'text']"
    assert run.data.tags["environment.device"] == "cpu"
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["loss"])) for r in records]
    assert {"lr", "image_text/loss", "data/image_text/samples"} <= set(run.data.metrics)
    artifacts = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path / "download")))
    assert artifacts.read_text() == mmssl.load_config(TINY, [*FAST, "train.loggers=[jsonl, mlflow]"]).to_yaml()

    with caplog.at_level(logging.WARNING, logger="mmssl.train.trackers"):
        _fit(tmp_path, "train.loggers=[jsonl, mlflow]", "train.steps=5")  # resumes from step 3's checkpoint
    assert (tmp_path / "mlflow_run_id").read_text().strip() == run_id
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4, 5]
    assert client.get_run(run_id).data.params["train.steps"] == "3"  # MLflow keeps a param's first value
    assert "param train.steps was '3' in this run, now '5'; MLflow keeps the first" in caplog.text
    assert len(client.search_runs([run.info.experiment_id])) == 1
