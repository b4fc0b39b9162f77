"""The import rules docs/architecture.md states ("Who may import whom"), checked on the
source: every import statement of every module, at any depth (a function-level import
counts as much as one at the top)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mmssl", "modalities", "objectives", "tools")
# mmssl's layers, bottom first: a layer imports only from itself and the layers below it
CORE_LAYERS = {
    "mmssl.common": 0,
    "mmssl.config": 1, "mmssl.registry": 1, "mmssl.world": 1, "mmssl.import_warnings": 1,
    "mmssl.data": 2, "mmssl.model": 2, "mmssl.interop": 2,
    "mmssl.train": 3,
    "mmssl.eval": 4, "mmssl.interop.export": 4, "mmssl.interop.open_clip_format": 4, "mmssl.interop.timm_format": 4,
    "mmssl.transfer": 5,
    "mmssl.testing": 6, "mmssl.scaffold": 6,
    "mmssl.cli": 7, "mmssl.__main__": 7, "mmssl": 7,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (``from a import b`` counts as ``a.b`` and ``a``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def layer_of(name: str) -> int | None:
    """The core layer of module ``name`` (its longest listed prefix), None outside mmssl."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in CORE_LAYERS:
            return CORE_LAYERS[".".join(parts[:i])]
    return None


def existing(name: str) -> bool:
    """Whether ``name`` is a module or package of this repository (not a name inside one)."""
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def violations(rule) -> list[str]:
    out = []
    for name, path in MODULES.items():
        for imported in sorted(imports_of(path)):
            if not existing(imported):
                continue
            why = rule(name, imported)
            if why:
                out.append(f"{path.relative_to(ROOT)} imports {imported}: {why}")
    return out


def test_the_rules_see_every_package() -> None:
    assert {"mmssl.train.trainer", "mmssl.eval.tasks", "mmssl.common.clustering", "objectives.cluster",
            "modalities.image.encoder", "mmssl.cli.zero_shot"} <= set(MODULES)
    # and an import the rules must catch is seen: the cluster objective's k-means
    assert "mmssl.common.clustering" in imports_of(MODULES["objectives.cluster"])


def test_core_layers_import_downwards_only() -> None:
    def rule(name: str, imported: str) -> str | None:
        mine, theirs = layer_of(name), layer_of(imported)
        if mine is None or theirs is None or imported == "mmssl":
            return None
        return f"layer {theirs} is above layer {mine}" if theirs > mine else None

    assert violations(rule) == []


def test_modalities_and_objectives_import_only_the_bottom_layer_of_mmssl() -> None:
    def rule(name: str, imported: str) -> str | None:
        if not name.startswith(("modalities", "objectives")):
            return None
        if imported.startswith("mmssl") and not imported.startswith("mmssl.common"):
            return "modalities and objectives import only mmssl.common of the core"
        if name.startswith("modalities") and imported.startswith("objectives"):
            return "a modality never imports an objective"
        if name.startswith("objectives") and imported.startswith("modalities") and imported != "modalities.base":
            return "an objective uses modalities through modalities.base only"
        if name.startswith("modalities.") and imported.startswith("modalities."):
            mine, theirs = name.split(".")[1], imported.split(".")[1]
            if theirs not in ("base", mine) and mine != "base":
                return "a modality package imports no other modality"
        return None

    assert violations(rule) == []


def test_the_core_reaches_modalities_and_objectives_through_the_registry() -> None:
    def rule(name: str, imported: str) -> str | None:
        if not name.startswith("mmssl"):
            return None
        if imported.startswith("modalities") and imported not in ("modalities", "modalities.base"):
            return "the core imports no concrete modality (the registry finds them)"
        if imported.startswith("objectives") and imported not in ("objectives", "objectives.base"):
            return "the core imports no concrete objective or objective helper"
        return None

    assert violations(rule) == []


def test_the_bottom_layer_imports_nothing_else_of_the_repository() -> None:
    def rule(name: str, imported: str) -> str | None:
        if not name.startswith("mmssl.common"):
            return None
        if imported.startswith(("modalities", "objectives")) or (imported.startswith("mmssl") and not imported.startswith("mmssl.common")):
            return "mmssl.common is the bottom layer"
        return None

    assert violations(rule) == []


def test_nothing_imports_tools() -> None:
    assert violations(lambda name, imported: "tools/ is the top" if imported.startswith("tools") and not name.startswith("tools") else None) == []


def test_mmssl_root_holds_at_most_twelve_modules() -> None:
    root = sorted(p.name for p in (ROOT / "mmssl").glob("*.py"))
    assert len(root) <= 12, root


@pytest.mark.parametrize("bad", ["objectives.cluster", "mmssl.train.trainer"])
def test_a_broken_rule_is_caught(bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules fail on a violation: the bottom layer importing the trainer, or a
    concrete objective, is named."""
    fake = ROOT / "mmssl" / "common" / "seeding.py"
    source = fake.read_text(encoding="utf-8") + f"\nimport {bad}\n"
    patched = tmp_path / "seeding.py"
    patched.write_text(source, encoding="utf-8")
    monkeypatch.setitem(MODULES, "mmssl.common.seeding", patched)
    monkeypatch.setattr(Path, "relative_to", lambda self, other: self)
    with pytest.raises(AssertionError, match=bad.replace(".", r"\.")):
        test_the_bottom_layer_imports_nothing_else_of_the_repository()
