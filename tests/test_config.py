from pathlib import Path

import pytest

import mmssl
from mmssl.config import ConfigError, config_from_dict, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates_and_builds(path):
    config = load_config(path)
    assert config.objectives and config.modalities
    assert config_from_dict(config.to_dict()) == config  # the saved form round-trips
    model = mmssl.build_model(config)
    assert set(model.encoders) == set(config.modalities)


def test_configs_folder_is_not_empty():
    assert {p.name for p in CONFIGS} >= {"tiny.yaml", "default.yaml"}


def _error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", list(overrides))
    return str(err.value)


def test_overrides_set_nested_values(tiny_config):
    config = tiny_config("train.steps=42", "objectives.image_text.weight=0.5", "modalities.text.layers=3")
    assert config.train.steps == 42
    assert config.objectives["image_text"].weight == 0.5
    assert config.modalities["text"].options.layers == 3


def test_unknown_key_is_named_with_closest():
    message = _error("train.stesp=3")
    assert "'train.stesp'" in message and "Did you mean 'steps'?" in message


def test_unknown_modality_option_is_named():
    message = _error("modalities.image.backbon=resnet18")
    assert "'modalities.image.backbon'" in message and "'backbone'" in message


def test_wrong_type_names_the_key():
    message = _error("train.steps=many")
    assert "'train.steps'" in message and "integer" in message and "many" in message


def test_literal_choice_lists_valid_values():
    message = _error("objectives.image_text.loss=clipp")
    assert "'objectives.image_text.loss'" in message and "'clip'" in message


def test_unknown_objective_type_lists_registered_names():
    message = _error("objectives.image_text.type=contrastiv")
    assert "objectives.image_text.type" in message and "Did you mean 'contrastive'?" in message


def test_objective_needs_configured_modalities():
    message = _error("objectives.image_text.modalities=[image, audio]")
    assert "'objectives.image_text.modalities[1]'" in message and "audio" in message


def test_missing_required_value_is_named():
    raw = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").to_dict()
    del raw["objectives"]["image_text"]["modalities"]
    with pytest.raises(ConfigError, match=r"'objectives.image_text.modalities': required value is missing"):
        config_from_dict(raw)


def test_csv_source_needs_path_and_columns():
    assert "'objectives.image_text.data.path'" in _error("objectives.image_text.data.source=csv")
    message = _error("objectives.image_text.data.source=csv", "objectives.image_text.data.path=x.csv")
    assert "'objectives.image_text.data.columns'" in message


def test_bad_yaml_and_missing_file_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
