"""Experiment trackers: where a run's metrics go besides ``metrics.jsonl``.

``train.loggers`` lists them (``jsonl`` is always on: it is the run's own record, which
resume, the plots and the tests read). Each tracker starts once with the run's
``RunInfo`` (the resolved config, the git revision, the environment), logs the numbers
of each logged step, and finishes. ``RunLog`` owns them (rank 0 only) through
``Trackers``, which drops a tracker that fails mid-run with one warning; one that cannot
start stops the run before its first step with a ``TrackerError`` naming it and why.

    tensorboard   DIR/tensorboard/ (torch's SummaryWriter); the config once, as text
    wandb         offline, under DIR/wandb/; a resumed run keeps the id in DIR/wandb_run_id
    mlflow        a SQLite store, DIR/mlflow.db (artifacts under DIR/mlartifacts/); the
                  run id in DIR/mlflow_run_id

A new tracker is a ``Tracker`` subclass in ``TRACKERS``, and its name in
``mmssl.config.LOGGERS`` (the names ``train.loggers`` accepts).
"""

from __future__ import annotations

import logging
import math
import platform
import re
import secrets
import string
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mmssl.common.atomic import write_text_atomic
from mmssl.config import ConfigError

log = logging.getLogger(__name__)


class TrackerError(ConfigError):
    """A tracker listed in ``train.loggers`` could not start (not installed, or its own
    error): one line naming it and why, raised before the run's first step."""


@dataclass(frozen=True)
class RunInfo:
    """What a tracker records once, when it starts."""

    run_dir: Path
    name: str = "run"  # the config's name: wandb's project, MLflow's experiment
    config: Mapping[str, Any] | None = None  # the resolved run config (RunConfig.to_dict())
    config_yaml: str | None = None  # the same, as the YAML a checkpoint's config.yaml holds
    git_revision: str | None = None  # HEAD of the repository mmssl runs from, if it runs from one
    environment: Mapping[str, Any] = field(default_factory=dict)  # python, torch, mmssl, device, world_size
    start_step: int = 0  # the step the run starts (or resumes) from

    @property
    def run_name(self) -> str:
        """The run's own name in a tracker: its output directory's name."""
        return self.run_dir.resolve().name or self.name


def environment(device: Any = None, world_size: int | None = None) -> dict[str, Any]:
    """Python, torch and mmssl versions, and the device and world size when given."""
    import torch

    import mmssl

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "mmssl": mmssl.__version__}
    if device is not None:
        env["device"] = str(device)
    if world_size is not None:
        env["world_size"] = world_size
    return env


def git_revision(path: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the repository whose tracked files include ``path``
    (default: mmssl's own package, so an installed copy that sits inside some other
    repository's tree has none); None when there is none or git is missing."""
    path = Path(path) if path is not None else Path(__file__).resolve().parents[1] / "__init__.py"
    try:
        tracked = subprocess.run(
            ["git", "ls-files", "--error-unmatch", path.name], cwd=path.parent, capture_output=True, timeout=10
        )
        if tracked.returncode != 0:
            return None
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path.parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() or None


def numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a record: what trackers log (``metrics.jsonl`` keeps the
    rest, and writes a non-finite value as the string "nan" or "inf")."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def first_line(exc: BaseException) -> str:
    """An exception's message, first line, or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


class Tracker:
    """One experiment tracker. ``start`` once (raise anything: it becomes a
    ``TrackerError`` naming the tracker), then ``log`` each logged step's finite numbers,
    then ``finish`` (``ok`` false when the run stopped on an error)."""

    name = ""

    def start(self, info: RunInfo) -> None:
        raise NotImplementedError

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        raise NotImplementedError

    def finish(self, ok: bool = True) -> None:
        pass


def _not_installed(name: str) -> TrackerError:
    return TrackerError(f"train.loggers: {name} is not installed (pip install 'mmssl[{name}]')")


class TensorBoardTracker(Tracker):
    """Scalars under ``DIR/tensorboard/``; the config, git revision and environment as
    one text entry (``run_info``) at the step the run starts from. Events a killed run
    wrote after that step are hidden (``purge_step``): the run logs those steps again."""

    name = "tensorboard"

    def start(self, info: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(info.run_dir / "tensorboard"), purge_step=info.start_step + 1)
        if info.config_yaml is not None:
            about = [f"git revision: {info.git_revision or 'none'}", *(f"{k}: {v}" for k, v in info.environment.items())]
            text = "\n".join(f"    {line}" for line in [*about, "", *info.config_yaml.splitlines()])
            self._writer.add_text("run_info", text, global_step=info.start_step)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)

    def finish(self, ok: bool = True) -> None:
        self._writer.close()


WANDB_RUN_ID = "wandb_run_id"


class WandbTracker(Tracker):
    """Weights & Biases, offline: the run goes to ``DIR/wandb/offline-run-*`` and
    ``wandb sync`` uploads it later. Project: the config's name; run name: the output
    directory's. The run id is kept in ``DIR/wandb_run_id``, so a resumed run (a new
    offline directory) syncs into the same wandb run."""

    name = "wandb"

    def start(self, info: RunInfo) -> None:
        try:
            import wandb
        except ImportError as error:
            raise _not_installed("wandb") from error
        self._wandb = wandb
        id_file = info.run_dir / WANDB_RUN_ID
        run_id = id_file.read_text().strip() if id_file.is_file() else ""
        if not run_id:  # wandb's own form: 8 of [a-z0-9]
            run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
            write_text_atomic(id_file, run_id + "\n")
        config = dict(info.config or {})
        config["environment"] = {"git_revision": info.git_revision, **info.environment}
        self._run = wandb.init(
            mode="offline",
            dir=str(info.run_dir),
            project=info.name,
            name=info.run_name,
            id=run_id,
            resume="allow",
            reinit="create_new",  # a run of its own, beside any the caller has open
            config=config,
            settings=wandb.Settings(console="off", silent=True, save_code=False),
        )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self._run.log(dict(metrics), step=step)

    def finish(self, ok: bool = True) -> None:
        self._run.finish(exit_code=0 if ok else 1)


MLFLOW_RUN_ID = "mlflow_run_id"
MLFLOW_PARAM_LENGTH = 6000  # MLflow's limit on a param's value (since 2.8; 500 before)
# what MLflow refuses in metric and param names (a colon too, which it takes but not on Windows)
_MLFLOW_BAD_KEY = re.compile(r"[^\w./\- ]")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


class MlflowTracker(Tracker):
    """MLflow, in a SQLite store in the run directory (``sqlite:///DIR/mlflow.db``;
    artifacts under ``DIR/mlartifacts/``). Experiment: the config's name; run name: the
    output directory's. Params: the flattened config (a value longer than MLflow takes is
    cut, with a warning; the whole config is the artifact ``config.yaml``); tags: the git
    revision (``mlflow.source.git.commit``) and the environment (``environment.torch`` ...);
    metrics per step. The run id is kept in ``DIR/mlflow_run_id``: a resumed run continues
    the same MLflow run."""

    name = "mlflow"

    def start(self, info: RunInfo) -> None:
        try:
            import mlflow
            from mlflow.entities import Metric, Param, RunTag
        except ImportError as error:
            raise _not_installed("mlflow") from error
        self._metric = Metric
        run_dir = info.run_dir.resolve()
        self.tracking_uri = f"sqlite:///{run_dir / 'mlflow.db'}"
        client = self._client = mlflow.tracking.MlflowClient(tracking_uri=self.tracking_uri)
        experiment = client.get_experiment_by_name(info.name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(info.name, artifact_location=(run_dir / "mlartifacts").as_uri())
        )
        id_file = run_dir / MLFLOW_RUN_ID
        run_id = id_file.read_text().strip() if id_file.is_file() else ""
        existing: dict[str, str] = {}
        if run_id:
            try:
                run = client.get_run(run_id)
                existing = dict(run.data.params)
                client.update_run(run_id, status="RUNNING")
            except mlflow.exceptions.MlflowException:  # the store was removed or replaced: a new run
                run_id = ""
        if not run_id:
            run_id = client.create_run(experiment_id, run_name=info.run_name).info.run_id
            write_text_atomic(id_file, run_id + "\n")
        self.run_id = run_id
        params = []
        for key, value in flatten(info.config or {}).items():
            key, text = _MLFLOW_BAD_KEY.sub("_", key), str(value)
            if len(text) > MLFLOW_PARAM_LENGTH:
                log.warning(
                    "train.loggers: mlflow: param %s is %d characters, cut to MLflow's %d (config.yaml, an artifact "
                    "of the run, holds it whole)", key, len(text), MLFLOW_PARAM_LENGTH,
                )
                text = text[:MLFLOW_PARAM_LENGTH]
            if key in existing:  # MLflow refuses to change a param; a resume with other values keeps the first
                if existing[key] != text:
                    log.warning("train.loggers: mlflow: param %s was %r in this run, now %r; MLflow keeps the first",
                                key, existing[key], text)
                continue
            params.append(Param(key, text))
        tags = [RunTag(f"environment.{k}", str(v)) for k, v in info.environment.items()]
        if info.git_revision:
            tags.append(RunTag("mlflow.source.git.commit", info.git_revision))
        for i in range(0, max(len(params), 1), 100):  # MLflow takes 100 params a batch
            client.log_batch(run_id, params=params[i : i + 100], tags=tags if i == 0 else [])
        if info.config_yaml is not None:
            client.log_text(run_id, info.config_yaml, "config.yaml")

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [self._metric(_MLFLOW_BAD_KEY.sub("_", key), value, now, step) for key, value in metrics.items()]
        for i in range(0, len(batch), 1000):  # MLflow takes 1000 metrics a batch
            self._client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def finish(self, ok: bool = True) -> None:
        self._client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


TRACKERS: dict[str, Callable[[], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "mlflow": MlflowTracker,
}


class Trackers:
    """The started trackers of a run, fanned out to. A tracker that raises in ``log`` or
    ``finish`` is named in one warning and dropped; the run goes on."""

    def __init__(self, trackers: Sequence[Tracker] = ()) -> None:
        self.trackers = list(trackers)

    @classmethod
    def start(cls, names: Sequence[str], info: RunInfo) -> Trackers:
        """Start each tracker ``names`` lists (``jsonl`` is ``RunLog``'s own), in order.
        One that fails finishes those started before it and raises ``TrackerError``."""
        started = cls()
        for name in dict.fromkeys(names):
            if name == "jsonl":
                continue
            try:
                tracker = TRACKERS[name]()
                tracker.name = name
                tracker.start(info)
            except Exception as exc:  # noqa: BLE001 - any tracker's own error, named in one line
                started.finish(ok=False)
                if isinstance(exc, TrackerError):
                    raise
                raise TrackerError(f"train.loggers: {name} could not start: {first_line(exc)}") from exc
            started.trackers.append(tracker)
        return started

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        values = numbers(metrics)
        for tracker in list(self.trackers):
            try:
                tracker.log(step, values)
            except Exception as exc:  # noqa: BLE001 - a tracker's failure never stops the run
                self._drop(tracker, f"failed at step {step}", exc)

    def finish(self, ok: bool = True) -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            try:
                tracker.finish(ok)
            except Exception as exc:  # noqa: BLE001
                log.warning("train.loggers: %s failed to finish: %s", tracker.name, first_line(exc))

    def _drop(self, tracker: Tracker, when: str, exc: Exception) -> None:
        self.trackers.remove(tracker)
        log.warning("train.loggers: %s %s and is dropped for the rest of the run (metrics.jsonl has every step): %s",
                    tracker.name, when, first_line(exc))
        try:
            tracker.finish(ok=False)
        except Exception:  # noqa: BLE001 - it failed already; its finish is best effort
            pass
