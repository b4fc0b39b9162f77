"""benchmarks/gpu_session.sh without a GPU: its dry run names every step's command and
creates nothing, and its recorder keeps a session's steps in one JSON file."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_session.sh"
RECORDER = REPO / "benchmarks" / "gpu_session_record.py"


def dry_run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_SESSION_")}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, env=env, timeout=60)


def step_commands(stdout: str) -> dict[str, list[str]]:
    """'[name] timeout Ns: command' lines -> name: the command's words."""
    commands = {}
    for line in stdout.splitlines():
        if line.startswith("["):
            name, _, rest = line[1:].partition("]")
            commands[name] = shlex.split(rest.split(": ", 1)[1])
    return commands


def test_dry_run_prints_every_step_and_creates_nothing(tmp_path):
    runs_before = sorted((REPO / "runs").iterdir()) if (REPO / "runs").is_dir() else None
    out = tmp_path / "session"
    done = dry_run(str(out))
    assert done.returncode == 0, done.stderr
    assert not out.exists()
    assert (sorted((REPO / "runs").iterdir()) if (REPO / "runs").is_dir() else None) == runs_before
    steps = step_commands(done.stdout)
    assert list(steps) == ["environment", "cuda_tests", "clip", "clip_compile", "main_job_train", "main_job_zero_shot", "joint_step"]

    tests = steps["cuda_tests"]
    assert tests[1:6] == ["-m", "pytest", "-q", "-m", "cuda"] and "tests/test_cuda.py" in tests

    for name in ("clip", "clip_compile"):
        words = steps[name]
        assert "benchmarks/clip_vs_open_clip.py" in words
        options = dict(zip(words, words[1:]))
        assert options["--device"] == "cuda" and options["--precision"] == "bf16"
        assert options["--model"] == "ViT-B-32" and options["--batch-size"] == "256"
        assert options["--json"].startswith(str(out))
    assert "--compile" not in steps["clip"] and "--compile" in steps["clip_compile"]

    train = steps["main_job_train"]
    assert train[1:3] == ["tools/pretrain.py", "configs/default.yaml"] and "train.device=cuda" in train
    assert train[train.index("--output-dir") + 1] == str(out / "main_job")
    assert "tools/zero_shot.py" in steps["main_job_zero_shot"] and str(out / "main_job") in steps["main_job_zero_shot"]
    joint = steps["joint_step"]
    assert "benchmarks/joint_step.py" in joint and "configs/default.yaml" in joint
    assert joint[joint.index("--device") + 1] == "cuda"


def test_dry_run_only_and_bad_options(tmp_path):
    done = dry_run(str(tmp_path / "s"), "--only", "main_job")
    assert done.returncode == 0, done.stderr
    assert list(step_commands(done.stdout)) == ["environment", "main_job_train", "main_job_zero_shot"]
    assert dry_run("--only", "nonsense").returncode == 2
    assert dry_run("--frobnicate").returncode == 2
    assert not (tmp_path / "s").exists()


def record(*args: str) -> None:
    subprocess.run([sys.executable, str(RECORDER), *args], check=True, capture_output=True, timeout=60)


def test_the_recorder_keeps_every_step_in_one_file(tmp_path):
    session = tmp_path / "gpu_session.json"
    record("start", str(session), "--out-dir", str(tmp_path), "--budget-s", "285")
    clip = tmp_path / "clip.json"
    clip.write_text(json.dumps({"models": {"ViT-B-32": {
        "batch": 256, "ratio_mmssl_over_open_clip": {"compute": {"median": 1.02, "min": 0.98, "max": 1.05}},
        "sides": {"mmssl": {"compute": {"median": 900.0}, "fraction_of_matmul_peak": 0.4}},
    }}}))
    record("step", str(session), "clip", "--rc", "0", "--seconds", "61.5", "--command", "python x", "--json", str(clip))
    junit = tmp_path / "cuda_tests.xml"
    junit.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="0">'
                     '<testcase classname="tests.test_cuda" name="test_a"/><testcase classname="tests.test_cuda" name="test_b">'
                     '<failure message="no"/></testcase><testcase classname="tests.test_cuda" name="test_c"/></testsuite></testsuites>')
    record("step", str(session), "cuda_tests", "--rc", "1", "--seconds", "20", "--junit", str(junit))
    record("step", str(session), "main_job_train", "--rc", "124", "--seconds", "150", "--run-dir", str(tmp_path / "absent"))
    record("skip", str(session), "joint_step", "--reason", "session budget")
    data = json.loads(session.read_text())
    assert {n: s["status"] for n, s in data["steps"].items()} == {
        "clip": "ok", "cuda_tests": "failed", "main_job_train": "timeout", "joint_step": "skipped"}
    assert data["steps"]["cuda_tests"]["result"]["passed"] == 2
    assert data["steps"]["cuda_tests"]["result"]["failed_tests"] == ["tests.test_cuda::test_b"]
    assert data["summary"]["clip"]["ViT-B-32"]["mmssl_over_open_clip_compute"]["median"] == 1.02
    assert data["summary"]["main_job"]["train_wall_s"] == 150
    # a second window replaces the steps it runs and keeps the others
    record("start", str(session), "--out-dir", str(tmp_path), "--budget-s", "285", "--only", "joint_step")
    record("skip", str(session), "joint_step", "--reason", "again")
    data = json.loads(session.read_text())
    assert len(data["session"]["windows"]) == 2 and data["steps"]["clip"]["status"] == "ok"
    assert data["steps"]["joint_step"]["reason"] == "again"
