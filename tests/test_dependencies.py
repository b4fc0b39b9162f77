"""Every import is the standard library, the project, or a distribution its
pyproject.toml declares for that part: a fresh `pip install -e ".[dev]"` then has
everything the code and the tests import (issue 34: a test imported scipy, which
nothing declared, and passed only where scipy had been installed by hand)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mmssl.scaffold import write_plugin
from tests.dependency_audit import CORE, Guarded, audit, declared_groups

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.parent for p in (REPO / "examples").glob("*/pyproject.toml"))

# The repository's parts and the requirement groups each may import from; the library
# (mmssl/, modalities/, objectives/) and tools/ get the core dependencies alone.
REPO_PARTS = {"tests": (CORE, "dev"), "benchmarks": (CORE, "bench")}
# A plugin's package gets its dependencies; its tests those and its `test` extra.
PLUGIN_PARTS = {"tests": (CORE, "test")}

# Optional imports behind an ImportError that names their extra, listed so that adding
# one is a visible decision.
GUARDED: list[Guarded] = [
    Guarded("mmssl/data/molecules.py", "rdkit", "molecules"),
    Guarded("mmssl/train/trackers.py", "wandb", "wandb"),
    Guarded("mmssl/train/trackers.py", "mlflow", "mlflow"),
    Guarded("mmssl/train/trackers.py", "mlflow", "mlflow"),
]


def test_repository_imports_only_what_pyproject_declares():
    problems, guarded = audit(REPO, REPO_PARTS, skip=tuple(EXAMPLES))
    assert not problems, "\n".join(problems)
    assert guarded == GUARDED


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_each_example_declares_its_own_imports(example):
    problems, guarded = audit(example, PLUGIN_PARTS, label=f"examples/{example.name}/pyproject.toml")
    assert not problems, "\n".join(problems)
    assert not guarded


def test_the_scaffolded_plugin_declares_its_own_imports(tmp_path):
    root = write_plugin("lidar", tmp_path)
    problems, _ = audit(root, PLUGIN_PARTS)
    assert not problems, "\n".join(problems)


def test_builds_without_isolation_have_setuptools_declared():
    """Tests install plugins with `pip install --no-build-isolation`: the build backend
    then comes from the test environment, so the dev extra must bring it."""
    users = [p.name for p in (REPO / "tests").rglob("test_*.py") 
             if p.name != Path(__file__).name and "--no-build-isolation" in p.read_text()]
    assert users, "no test builds without isolation any more: drop this test and setuptools from dev"
    assert "setuptools" in declared_groups(REPO / "pyproject.toml")["dev"], users


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))


def test_the_audit_names_the_file_the_module_and_where_it_belongs(tmp_path):
    _write(tmp_path, {
        "pyproject.toml": """
            [project]
            name = "toy"
            version = "0"
            dependencies = ["numpy>=1.26", "PyYAML"]
            [project.optional-dependencies]
            dev = ["pytest"]
            bench = ["Web_Dataset_Toy>=0.2"]
        """,
        "toy/__init__.py": "",
        "toy/core.py": """
            import json
            import numpy as np
            import yaml
            from toy import helpers
            from . import helpers as same

            def later():
                import scipy.ndimage
        """,
        "toy/helpers.py": "import importlib\nimportlib.import_module('sklearn')\n",
        "toy/optional.py": """
            def stream():
                try:
                    import web_dataset_toy
                except ImportError as error:
                    raise ImportError("streaming needs the bench extra: pip install 'toy[bench]'") from error
        """,
        "toy/quiet.py": """
            try:
                import web_dataset_toy
            except ImportError:
                raise RuntimeError("streaming is not available")
        """,
        "toy/unguarded.py": "import web_dataset_toy\n",
        "tests/test_toy.py": "import pytest\nimport toy.core\nimport hypothesis\n",
        "benchmarks/bench_toy.py": "import web_dataset_toy\nimport pytest\n",
    })
    problems, guarded = audit(tmp_path, REPO_PARTS)
    assert guarded == [Guarded("toy/optional.py", "web_dataset_toy", "bench")]
    by_file = {p.split(" ")[0]: p for p in problems}
    assert set(by_file) == {"toy/core.py:9", "toy/helpers.py:2", "toy/quiet.py:3", "toy/unguarded.py:1",
                            "tests/test_toy.py:3", "benchmarks/bench_toy.py:2"}
    assert by_file["toy/core.py:9"] == ("toy/core.py:9 imports scipy (distribution scipy), which pyproject.toml "
                                        "does not declare: add it to [project] dependencies of pyproject.toml")
    assert "imports sklearn" in by_file["toy/helpers.py:2"]  # importlib.import_module("...") counts too
    assert by_file["toy/quiet.py:3"].endswith("guarded, but its ImportError message does not name the extra "
                                              "that installs it ('bench')")
    assert by_file["toy/unguarded.py:1"] == (
        "toy/unguarded.py:1 imports web_dataset_toy (distribution web-dataset-toy), which only the extra bench "
        "declares: add it to [project] dependencies of pyproject.toml or guard it with an ImportError that names the extra")
    assert by_file["tests/test_toy.py:3"].endswith("add it to [project.optional-dependencies] dev of pyproject.toml")
    assert by_file["benchmarks/bench_toy.py:2"].startswith("benchmarks/bench_toy.py:2 imports pytest (distribution pytest)")
    assert by_file["benchmarks/bench_toy.py:2"].endswith("add it to [project.optional-dependencies] bench of pyproject.toml "
                                                         "or guard it with an ImportError that names the extra")
