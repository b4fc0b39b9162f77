"""benchmarks/gpu_session.sh's bookkeeping: every figure of a GPU session in one JSON file.

    python benchmarks/gpu_session_record.py start SESSION_JSON --out-dir DIR --budget-s 285 [--only STEPS]
    python benchmarks/gpu_session_record.py environment FILE        # the machine, as JSON
    python benchmarks/gpu_session_record.py step SESSION_JSON NAME --rc RC --seconds S --timeout-s T \\
        --command CMD --log LOG [--json FILE] [--junit FILE] [--run-dir DIR] [--config FILE]
    python benchmarks/gpu_session_record.py skip SESSION_JSON NAME --reason WHY [--command CMD]
    python benchmarks/gpu_session_record.py finish SESSION_JSON

The session file is rewritten whole (a temporary file, then a rename) after every step,
so a session killed at any point keeps every step it finished. Its layout:

- ``session``: the output directory and each window the script ran in (start, finish,
  budget, the steps asked for, the git commit);
- ``steps``: one record per step, by name: ``status`` (ok, failed, timeout, skipped),
  ``rc``, ``seconds`` (wall time), ``timeout_s``, ``command``, ``log`` and ``result``
  (what the step measured: a benchmark's own JSON, pytest's counts, the main job's
  summary and zero-shot figures);
- ``summary``: the headline figures of the steps there are, recomputed at every write.

A later window (``gpu_session.sh OUT --only ...``) replaces the records of the steps it
runs and keeps the others.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# what the session's steps import beyond torch: their versions go into the record
PACKAGES = (
    "torch", "torchvision", "torchaudio", "torch_geometric", "timm", "open_clip_torch", "numpy", "pandas",
    "webdataset", "braceexpand", "ftfy", "regex", "soundfile", "cffi", "matplotlib", "safetensors", "tensorboard",
    "einops", "pytest", "mmssl",
)
ZERO_SHOT_KEYS = ("top1", "top5", "mean_per_class_recall", "composition_top1", "seen_top1", "num_samples", "num_classes")
THROUGHPUT_KEYS = ("samples_per_s", "tflops", "mfu", "step_s")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_json(path: str | Path | None) -> Any:
    if path is None or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        return {"unreadable": f"{path}: {exc}"}


def write_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def load_session(path: Path) -> dict[str, Any]:
    session = read_json(path)
    if not isinstance(session, dict) or "steps" not in session:
        session = {"session": {"windows": []}, "steps": {}}
    return session


def save_session(path: Path, session: dict[str, Any]) -> None:
    session["summary"] = summary(session["steps"])
    write_atomic(path, session)


def git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# --- the machine ---------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    """The GPU (nvidia-smi and torch's view of it), torch, CUDA, Python, the packages."""
    from importlib import metadata

    record: dict[str, Any] = {
        "python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "hostname": platform.node(),
    }
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20,
        )
        record["nvidia_smi"] = smi.stdout.strip().splitlines() if smi.returncode == 0 else f"rc {smi.returncode}: {smi.stderr.strip()}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        record["nvidia_smi"] = f"not run: {exc}"
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    record["packages"] = versions
    try:
        import torch

        record["torch"] = torch.__version__
        record["torch_cuda"] = torch.version.cuda
        record["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        record["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            record["gpu"] = {
                "name": props.name, "count": torch.cuda.device_count(), "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
                "bf16": torch.cuda.is_bf16_supported(),
            }
    except Exception as exc:  # noqa: BLE001 - a broken torch is itself the finding
        record["torch"] = f"import failed: {exc!r}"
    imports = {}
    for module in ("open_clip", "open_clip_train.main", "soundfile", "matplotlib", "mmssl"):
        try:
            __import__(module)
            imports[module] = "ok"
        except Exception as exc:  # noqa: BLE001
            imports[module] = f"{type(exc).__name__}: {exc}"
    record["imports"] = imports
    return record


# --- what each step measured ---------------------------------------------------------------
def pytest_counts(junit: str | None, log: str | None) -> dict[str, Any]:
    """passed/failed/errors/skipped from pytest's JUnit XML, else its closing line."""
    if junit and Path(junit).is_file():
        try:
            root = ElementTree.parse(junit).getroot()
            suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
            total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
            failed = [f"{case.get('classname')}::{case.get('name')}" for s in suites for case in s.iter("testcase")
                      if case.find("failure") is not None or case.find("error") is not None]
            skipped = sorted({(case.find("skipped").get("message") or "")[:200] for s in suites for case in s.iter("testcase")
                              if case.find("skipped") is not None})
            return {"passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
                    "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"],
                    "failed_tests": failed, "skip_reasons": skipped}
        except (OSError, ElementTree.ParseError) as exc:
            note = f"junit unreadable: {exc}"
    else:
        note = "no junit file"
    counts: dict[str, Any] = {"note": note}
    text = Path(log).read_text(errors="replace") if log and Path(log).is_file() else ""
    lines = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    if lines:
        for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", lines[-1]):
            counts["errors" if what.startswith("error") else what] = int(n)
    return counts


def mean_of(records: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in records if isinstance(r.get(key), (int, float))]
    return statistics.fmean(values) if values else None


def main_job_training(run_dir: Path, config: str | None, seconds: float) -> dict[str, Any]:
    """The main job's pretraining: train_summary.json when it finished; from metrics.jsonl
    (steps done, their rate, the time the whole run would take at it) when it was cut."""
    result: dict[str, Any] = {"wall_s": round(seconds, 1)}
    summary_file = read_json(run_dir / "train_summary.json")
    if summary_file is not None:
        result["train_summary"] = summary_file
    metrics = run_dir / "metrics.jsonl"
    records = []
    if metrics.is_file():
        for line in metrics.read_text(errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                pass  # the line a killed run was writing
    steps_total = None
    if config:
        try:
            import yaml

            steps_total = int(yaml.safe_load(Path(config).read_text())["train"]["steps"])
        except Exception:  # noqa: BLE001
            steps_total = None
    if records:
        last = max(r.get("step", 0) for r in records)
        result["steps_done"] = last
        result["steps_total"] = steps_total
        # steps after the first 10% (start-up, render pools filling) when there are enough
        steady = [r for r in records if r.get("step", 0) > max(1, last // 10)] or records
        result["logged"] = {key: mean_of(steady, key) for key in THROUGHPUT_KEYS}
        step_s = result["logged"]["step_s"]
        if steps_total and step_s and summary_file is None:
            result["projected_train_s"] = round(steps_total * step_s, 1)
    return result


def main_job_zero_shot(run_dir: Path, seconds: float) -> dict[str, Any]:
    reports = {}
    for path in sorted(run_dir.glob("zero_shot_*.json")):
        report = read_json(path) or {}
        reports[path.stem.removeprefix("zero_shot_")] = {k: report.get(k) for k in ZERO_SHOT_KEYS if k in report}
    return {"wall_s": round(seconds, 1), "zero_shot": reports}


def step_result(args: argparse.Namespace) -> Any:
    if args.name == "cuda_tests":
        return pytest_counts(args.junit, args.log)
    if args.name == "main_job_train" and args.run_dir:
        return main_job_training(Path(args.run_dir), args.config, args.seconds)
    if args.name == "main_job_zero_shot" and args.run_dir:
        return main_job_zero_shot(Path(args.run_dir), args.seconds)
    return read_json(args.json)


def log_tail(log: str | None, chars: int = 1500) -> str | None:
    if not log or not Path(log).is_file():
        return None
    return Path(log).read_text(errors="replace")[-chars:]


# --- the headline figures ------------------------------------------------------------------
def _get(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def summary(steps: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"status": {name: record.get("status") for name, record in steps.items()}}
    env = _get(steps, "environment", "result")
    if isinstance(env, dict):
        out["gpu"] = _get(env, "gpu", "name") or env.get("nvidia_smi")
        out["torch"], out["cuda"], out["python"] = env.get("torch"), env.get("torch_cuda"), env.get("python")
    tests = _get(steps, "cuda_tests", "result")
    if isinstance(tests, dict):
        out["cuda_tests"] = {k: tests.get(k) for k in ("passed", "failed", "errors", "skipped") if k in tests}
    for name in ("clip", "clip_compile"):
        models = _get(steps, name, "result", "models")
        if isinstance(models, dict):
            out[name] = {
                model: {
                    "batch": figures.get("batch"),
                    "mmssl_over_open_clip_compute": _get(figures, "ratio_mmssl_over_open_clip", "compute"),
                    "mmssl_over_open_clip_with_data": _get(figures, "ratio_mmssl_over_open_clip", "data"),
                    "samples_per_s_compute": {side: _get(v, "compute", "median") for side, v in figures.get("sides", {}).items()},
                    "fraction_of_matmul_peak": {side: v.get("fraction_of_matmul_peak") for side, v in figures.get("sides", {}).items()},
                }
                for model, figures in models.items()
            }
    train = _get(steps, "main_job_train", "result")
    if isinstance(train, dict):
        summ = train.get("train_summary") or {}
        logged = train.get("logged") or {}
        out["main_job"] = {
            "train_wall_s": train.get("wall_s"), "train_s": summ.get("seconds"), "steps": summ.get("steps") or train.get("steps_done"),
            "projected_train_s": train.get("projected_train_s"),
            **{key: summ.get(key, logged.get(key)) for key in ("samples_per_s", "tflops", "mfu")},
        }
        zero = _get(steps, "main_job_zero_shot", "result")
        if isinstance(zero, dict):
            out["main_job"]["zero_shot_wall_s"] = zero.get("wall_s")
            out["main_job"]["zero_shot"] = {m: {k: r.get(k) for k in ("top1", "composition_top1")} for m, r in zero.get("zero_shot", {}).items()}
    joint = _get(steps, "joint_step", "result", "rows")
    if isinstance(joint, dict):
        out["joint_step"] = {row: {k: v.get(k) for k in ("step_s", "compute_s", "gflop_per_s", "fraction_of_matmul_peak")}
                             for row, v in joint.items()}
    return out


# --- commands ------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    start = sub.add_parser("start")
    start.add_argument("session")
    start.add_argument("--out-dir", required=True)
    start.add_argument("--budget-s", type=float, required=True)
    start.add_argument("--only", default="")
    start.add_argument("--settings", default="{}", help="JSON of the script's settings")
    env = sub.add_parser("environment")
    env.add_argument("output")
    step = sub.add_parser("step")
    step.add_argument("session")
    step.add_argument("name")
    step.add_argument("--rc", type=int, required=True)
    step.add_argument("--seconds", type=float, required=True)
    step.add_argument("--timeout-s", type=float, default=None)
    step.add_argument("--command", default="")
    step.add_argument("--log", default=None)
    step.add_argument("--json", default=None)
    step.add_argument("--junit", default=None)
    step.add_argument("--run-dir", default=None)
    step.add_argument("--config", default=None)
    skip = sub.add_parser("skip")
    skip.add_argument("session")
    skip.add_argument("name")
    skip.add_argument("--reason", required=True)
    skip.add_argument("--command", default="")
    finish = sub.add_parser("finish")
    finish.add_argument("session")
    args = parser.parse_args(argv)

    if args.what == "environment":
        write_atomic(Path(args.output), environment())
        return 0
    path = Path(args.session)
    session = load_session(path)
    if args.what == "start":
        session["session"]["out_dir"] = args.out_dir
        session["session"].setdefault("started", now())
        session["session"]["windows"].append({
            "started": now(), "budget_s": args.budget_s, "only": args.only or "all",
            "git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain")),
            "settings": json.loads(args.settings),
        })
    elif args.what == "step":
        status = "ok" if args.rc == 0 else "timeout" if args.rc in (124, 137) else "failed"
        record: dict[str, Any] = {
            "status": status, "rc": args.rc, "seconds": round(args.seconds, 1), "timeout_s": args.timeout_s,
            "command": args.command, "log": args.log, "finished": now(),
        }
        try:
            record["result"] = step_result(args)
        except Exception as exc:  # noqa: BLE001 - the record keeps going
            record["result"] = None
            record["record_error"] = repr(exc)
        if status != "ok":
            record["log_tail"] = log_tail(args.log)
        session["steps"][args.name] = record
    elif args.what == "skip":
        session["steps"][args.name] = {"status": "skipped", "reason": args.reason, "command": args.command, "finished": now()}
    elif args.what == "finish":
        if session["session"]["windows"]:
            session["session"]["windows"][-1]["finished"] = now()
    save_session(path, session)
    if args.what == "finish":
        print(json.dumps(session["summary"], indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
