"""The README's Python API example runs as written."""

import os
import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_api_example_runs(tmp_path, capsys):
    blocks = _python_blocks((REPO / "README.md").read_text())
    assert blocks, "README has no python example"
    (tmp_path / "configs").symlink_to(REPO / "configs")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict = {}
        exec(compile(blocks[0], "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert (tmp_path / "runs" / "api-example" / "checkpoints").is_dir()
    similarity = namespace["similarity"]
    assert similarity.shape == (2, 2) and torch.all(similarity.abs() <= 1.0 + 1e-5)


def test_readme_quick_start_matches_ci():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    test_command = 'pip install -e ".[dev]" && pytest'
    assert test_command in readme
    assert 'pip install -e ".[dev]"' in ci and "\npytest" in ci


def test_readme_and_docs_link_only_to_files_in_the_repo():
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    assert len(pages) > 1, "docs/ has no pages"
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = page.parent / path if path else page
            assert linked.exists(), f"{page.relative_to(REPO)} links to missing {target}"
            if anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)
                slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
                assert anchor in slugs, f"{page.relative_to(REPO)} links to missing heading {target}"


def test_readme_stays_a_front_door():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines: measured records belong in docs/"
