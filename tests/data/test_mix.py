"""Mixing sources for one objective with weights: shares, determinism, resume."""

from pathlib import Path

import pytest

import mmssl
from mmssl.config import ConfigError
from mmssl.data import MixSource, build_streams
from mmssl.common.seeding import sample_rng

TINY_JOINT = Path(__file__).resolve().parents[2] / "configs" / "tiny_joint.yaml"


class _Named:
    def __init__(self, label: str, n: int) -> None:
        self.label, self.n = label, n

    def __len__(self) -> int:
        return self.n

    def get(self, index, rng):
        return {"text": f"{self.label} {index}"}

    def where(self, index):
        return f"{self.label} {index}"


def _draws(mix: MixSource, epoch: int, count: int) -> list[str]:
    return [mix.get(i, sample_rng(0, "mlm", epoch, i))["text"] for i in range(count)]


def test_weights_set_the_shares_and_the_draws_repeat():
    mix = MixSource([_Named("a", 50), _Named("b", 7)], [3.0, 1.0], size=2000, names=["a", "b"])
    draws = _draws(mix, 0, 2000)
    share = sum(d.startswith("a ") for d in draws) / len(draws)
    assert abs(share - 0.75) <= 0.03, share
    assert draws == _draws(mix, 0, 2000)  # the same in every run
    assert draws[1500:] == [mix.get(i, sample_rng(0, "mlm", 0, i))["text"] for i in range(1500, 2000)]  # and mid-epoch
    assert {int(d.split()[1]) for d in draws if d.startswith("b ")} == set(range(7))  # every item of the small source


def _corpus(path: Path, word: str, n: int) -> Path:
    path.write_text("\n".join(f"a {word} shape number {i}" for i in range(n)) + "\n")
    return path


def test_a_mix_of_two_corpora_feeds_an_objective_and_resumes(tmp_path):
    a, b = _corpus(tmp_path / "a.txt", "red", 30), _corpus(tmp_path / "b.txt", "blue", 10)
    overrides = [
        "objectives.mlm.data.source=mix", "objectives.mlm.data.epoch_size=64",
        f"objectives.mlm.data.sources=[{{source: text, path: {a}, weight: 3}}, {{source: text, path: {b}}}]",
    ]
    config = mmssl.load_config(TINY_JOINT, overrides)
    assert mmssl.config_from_dict(config.to_dict()) == config
    model = mmssl.build_model(config)
    stream = build_streams(config, model)["mlm"]
    assert len(stream.source) == 64
    first = [next(stream)["text"]["ids"] for _ in range(3)]
    again = build_streams(config, model)["mlm"]
    again.load_state_dict({"epoch": 0, "position": 1})  # resume after the first batch
    assert all((x == y).all() for x, y in zip(first[1:], [next(again)["text"]["ids"] for _ in range(2)]))


def test_mix_sections_are_checked_naming_the_component(tmp_path):
    def load(sources: str) -> None:
        mmssl.load_config(TINY_JOINT, ["objectives.mlm.data.source=mix", f"objectives.mlm.data.sources={sources}"])

    with pytest.raises(ConfigError, match=r"'objectives.mlm.data.sources\[1\].source': unknown source 'txet'.*'text'"):
        load("[{source: text, path: a.txt}, {source: txet, path: b.txt}]")
    with pytest.raises(ConfigError, match=r"'objectives.mlm.data.sources\[0\].weight': must be > 0, got 0.0"):
        load("[{source: text, path: a.txt, weight: 0}, {source: text, path: b.txt}]")
    with pytest.raises(ConfigError, match=r"'objectives.mlm.data.sources\[1\].path': required when data.source is 'text'"):
        load("[{source: text, path: a.txt}, {source: text}]")
    with pytest.raises(ConfigError, match="at least two sources"):
        load("[{source: text, path: a.txt}]")
