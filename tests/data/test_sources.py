"""Source kinds come from a registry: config checks against it, plugins add kinds."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import mmssl
from mmssl.config import ConfigError
from mmssl.data import SourceKind, build_streams
from mmssl.registry import SOURCES

TINY_JOINT = Path(__file__).resolve().parents[2] / "configs" / "tiny_joint.yaml"


def test_unknown_source_is_named_with_the_closest_kind():
    with pytest.raises(ConfigError, match=r"'objectives.mlm.data.source': unknown source 'txt'\. Did you mean 'text'\?"):
        mmssl.load_config(TINY_JOINT, ["objectives.mlm.data.source=txt"])


def test_options_are_checked_against_the_kind():
    with pytest.raises(ConfigError, match=r"'objectives.mlm.data.render_pool': unknown key.*'path'"):
        mmssl.load_config(TINY_JOINT, ["objectives.mlm.data.source=text", "objectives.mlm.data.path=c.txt",
                                       "objectives.mlm.data.render_pool=4"])
    with pytest.raises(ConfigError, match=r"'objectives.mlm.data.render_pol': unknown key\. Did you mean 'render_pool'"):
        mmssl.load_config(TINY_JOINT, ["objectives.mlm.data.render_pol=4"])


@dataclass(frozen=True)
class _CountOptions:
    count: int = 40
    word: str = "shape"


class _Counting:
    """A source of numbered captions."""

    def __init__(self, key: str, options: _CountOptions) -> None:
        self.key, self.options = key, options

    def __len__(self) -> int:
        return self.options.count

    def get(self, index: int, rng: np.random.Generator) -> dict:
        return {self.key: f"a {self.options.word} number {index}"}

    def where(self, index: int) -> str:
        return f"counted caption {index}"


class CountingKind(SourceKind):
    Config = _CountOptions

    @classmethod
    def check(cls, options, key, modalities):
        if options.count < 1:
            raise ConfigError(f"'{key}.count': must be >= 1, got {options.count}")

    @classmethod
    def build(cls, options, objective, modalities, context):
        (key,) = modalities
        return _Counting(key, options)


@pytest.fixture
def counting_source():
    mmssl.register_source("counting")(CountingKind)
    yield "counting"
    SOURCES._entries.pop("counting")


def test_a_registered_source_kind_feeds_an_objective(counting_source):
    config = mmssl.load_config(TINY_JOINT, ["objectives.mlm.data.source=counting", "objectives.mlm.data.count=32",
                                            "objectives.mlm.data.word=star"])
    assert config.objectives["mlm"].data.options == _CountOptions(count=32, word="star")
    assert mmssl.config_from_dict(config.to_dict()) == config  # the flat YAML layout round-trips
    streams = build_streams(config, mmssl.build_model(config))
    assert len(streams["mlm"].source) == 32
    assert next(streams["mlm"])["text"]["ids"].shape[0] == 16
    with pytest.raises(ConfigError, match=r"'objectives.mlm.data.count': must be >= 1, got 0"):
        mmssl.load_config(TINY_JOINT, ["objectives.mlm.data.source=counting", "objectives.mlm.data.count=0"])


def test_one_modality_kinds_refuse_an_objective_of_two():
    for kind in ("folder", "text"):
        with pytest.raises(mmssl.ConfigError, match=rf"'objectives.image_text.data.source': '{kind}' feeds objectives of one modality only"):
            mmssl.load_config(TINY_JOINT.with_name("tiny.yaml"), [f"objectives.image_text.data={{source: {kind}, path: x}}"])
