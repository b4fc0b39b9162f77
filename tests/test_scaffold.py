"""python -m mmssl new-plugin: the generated package installs, passes its own tests and trains."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmssl.scaffold import ScaffoldError, write_plugin

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_generated_plugin_installs_passes_its_tests_and_trains(tmp_path):
    made = subprocess.run([sys.executable, "-m", "mmssl", "new-plugin", "lidar", "--output", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO)
    assert made.returncode == 0, made.stderr[-2000:]
    root = tmp_path / "mmssl-lidar"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                              "--target", str(tmp_path / "site"), str(root)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)])}
    listed = subprocess.run([sys.executable, "-m", "mmssl", "list", "lidar*"], capture_output=True, text=True, env=env, cwd=REPO)
    assert "lidar                mmssl_lidar.modality:LidarModality (entry point in mmssl-lidar)" in listed.stdout
    assert "lidar_reconstruct" in listed.stdout
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
                            capture_output=True, text=True, env=env, cwd=REPO)
    assert tested.returncode == 0 and "3 passed" in tested.stdout, tested.stdout[-3000:]


def test_scaffold_refuses_bad_names_and_existing_folders(tmp_path):
    for bad in ("Lidar", "my-lidar", "class", "1d"):
        with pytest.raises(ScaffoldError, match="lower-case Python identifier"):
            write_plugin(bad, tmp_path)
    write_plugin("lidar", tmp_path)
    with pytest.raises(ScaffoldError, match="already exists"):
        write_plugin("lidar", tmp_path)
