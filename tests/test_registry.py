import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest
import torch

from mmssl import registry
from mmssl.registry import Registry, RegistryError
from modalities.base import Modality


def test_builtins_arrive_through_entry_points():
    entries = {e.name: e for e in registry.MODALITIES.entries()}
    assert {"image", "text"} <= set(entries)
    assert "entry point in mmssl" in entries["image"].source
    assert registry.get_objective("contrastive").__name__ == "ContrastiveObjective"


def test_unknown_name_lists_known_and_closest():
    with pytest.raises(RegistryError) as err:
        registry.get_modality("imgae")
    message = str(err.value)
    assert "Did you mean 'image'?" in message
    assert "'text'" in message and "mmssl.modalities" in message


def test_duplicate_name_names_both_sources():
    reg = Registry("modality", "mmssl.test-none")

    @reg.register("thing")
    class First(Modality):
        pass

    with pytest.raises(RegistryError) as err:

        @reg.register("thing")
        class Second(Modality):
            pass

    assert "First" in str(err.value) and "Second" in str(err.value)


def test_decorator_and_listing_with_pattern():
    reg = Registry("objective", "mmssl.test-none")
    for name in ("clip_a", "clip_b", "mlm"):
        reg.add(name, type(name, (), {}))
    assert reg.list("clip_*") == ["clip_a", "clip_b"]


class _FakeDist:
    def __init__(self, name):
        self.name = name


def _entry_points_of(name, value, dist_name):
    """A stand-in for importlib.metadata.entry_points with one plugin from ``dist_name``."""

    def fake(group=None):
        ep = EntryPoint(name=name, value=value, group=group)
        try:
            ep = ep._for(_FakeDist(dist_name)) or ep
        except AttributeError:
            object.__setattr__(ep, "dist", _FakeDist(dist_name))
        return [ep]

    return fake


def test_third_party_entry_point_loads_and_can_be_disabled(monkeypatch):
    monkeypatch.setattr(registry, "entry_points", _entry_points_of("toy", "modalities.text:TextModality", "someone-elses-plugin"))
    reg = Registry("modality", "mmssl.test-plugins")
    assert reg.get("toy").__name__ == "TextModality"
    assert "someone-elses-plugin" in reg.entries()[0].source

    monkeypatch.setenv("MMSSL_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert Registry("modality", "mmssl.test-plugins").list() == []


def _entry_points(*specs):
    """A stand-in for importlib.metadata.entry_points with (name, value, distribution) entries."""

    def fake(group=None):
        return [_entry_points_of(name, value, dist)(group)[0] for name, value, dist in specs]

    return fake


def test_broken_plugin_is_contained_and_named_when_used(monkeypatch):
    monkeypatch.setattr(registry, "entry_points", _entry_points(
        ("broken", "no_such_module_xyz:Thing", "broken-dist"), ("toy", "modalities.text:TextModality", "good-dist"),
    ))
    reg = Registry("modality", "g")
    assert reg.get("toy").__name__ == "TextModality"  # the other plugin still works
    with pytest.raises(RegistryError, match="'broken' = 'no_such_module_xyz:Thing' from distribution 'broken-dist'.*ModuleNotFoundError"):
        reg.get("broken")
    assert list(reg.problems()) == ["broken"] and reg.list() == ["toy"]


def test_plugin_taking_a_built_in_name_is_refused_naming_both(monkeypatch, caplog):
    monkeypatch.setattr(registry, "entry_points", _entry_points(
        ("image", "modalities.text:TextModality", "impostor-dist"), ("image", "modalities.image:ImageModality", "mmssl"),
    ))
    reg = Registry("modality", "g")
    assert reg.get("image").__name__ == "ImageModality"  # the built-in keeps its name, whatever the order found
    (why,) = reg.problems().values()
    assert "modalities.image:ImageModality (entry point in mmssl)" in why and "modalities.text:TextModality (entry point in impostor-dist)" in why
    assert "refused" in caplog.text


def test_listing_marks_a_broken_plugin(tmp_path):
    site = tmp_path / "site"
    (site / "brokenplug-0.1.dist-info").mkdir(parents=True)
    (site / "brokenplug-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.1\n")
    (site / "brokenplug-0.1.dist-info" / "entry_points.txt").write_text("[mmssl.modalities]\nlidar = brokenplug_missing:Lidar\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-m", "mmssl", "list"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "lidar                BROKEN: could not load modality plugin 'lidar'" in out.stdout and "brokenplug" in out.stdout
    assert "image" in out.stdout  # the rest is listed as usual
    off = subprocess.run([sys.executable, "-m", "mmssl", "list"], capture_output=True, text=True,
                         env={**env, "MMSSL_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert "lidar" not in off.stdout and "image" in off.stdout


def test_cli_list_prints_sources():
    out = subprocess.run([sys.executable, "-m", "mmssl", "list"], capture_output=True, text=True, check=True).stdout
    assert "modalities:" in out and "objectives:" in out and "sources:" in out and "evaluation tasks:" in out
    assert "mmssl.eval.tasks:ClusteringTask" in out and "mmssl.data.files:Esc50Kind (entry point in mmssl)  [--data]" in out
    assert "image" in out and "modalities.image:ImageModality" in out
    assert "contrastive" in out
    assert "mmssl.data.files:CsvKind" in out and "mmssl.data.world:WorldKind" in out


def test_a_one_class_modality_of_the_old_contract_is_refused_saying_what_to_change():
    """A plugin modality written as one nn.Module (before encoder, processor and renderer
    were apart) gets one error that says how to migrate, not a failure deep in a run."""
    reg = Registry("modality", "mmssl.test-none", check=registry._check_modality)

    class OldSensor(torch.nn.Module):
        def transform(self, raw, rng=None):
            return raw

    with pytest.raises(RegistryError, match=r"modality 'sensor' .* is one nn.Module.*split it into an Encoder.*a Processor"
                                            r".*a Renderer.*docs/plugins.md"):
        reg.add("sensor", OldSensor, "old_sensor:OldSensor (entry point in old-sensor)")
    with pytest.raises(RegistryError, match="is no modalities.base.Modality subclass"):
        reg.add("thing", object)
