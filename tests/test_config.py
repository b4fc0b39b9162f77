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
    if any(spec.pretrained for spec in config.modalities.values()):
        return  # built on its stage-1 export in tests/test_interop.py (bind.yaml)
    if any(getattr(spec.options, "teacher", None) for spec in config.objectives.values()):
        return  # built on a saved teacher in tests/objectives/test_distill.py (distill_default.yaml)
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


def test_an_objective_set_to_null_is_dropped():
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny_joint.yaml", ["objectives.mlm=null"])
    assert "mlm" not in config.objectives and "image_text" in config.objectives
    assert "no objective 'image_txt' to drop. Did you mean 'image_text'?" in _error("objectives.image_txt=null")
    assert "'objectives': required section is missing or empty" in _error("objectives.image_text=null")


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


# --- YAML 1.1 surprises: plain scalars are read by the field's declared type ----------

NUMBER_SPELLINGS = ["2e-3", "1e-3", "1.0e9", "-5e-4", "1E3", "+0.5", "1_000.5", "3"]


def _tiny_text() -> str:
    return (Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").read_text()


@pytest.mark.parametrize("text", NUMBER_SPELLINGS)
def test_every_float_spelling_loads_as_a_float_from_a_file(tmp_path, text):
    path = tmp_path / "lr.yaml"
    path.write_text(_tiny_text().replace("  lr: 0.002", f"  lr: {text}"))
    config = load_config(path)
    assert type(config.train.lr) is float and config.train.lr == float(text)


@pytest.mark.parametrize("text", NUMBER_SPELLINGS)
def test_every_float_spelling_loads_as_a_float_from_an_override(tiny_config, text):
    config = tiny_config(f"train.lr={text}", f"train.weight_decay={text}")
    assert type(config.train.lr) is float and config.train.lr == float(text)
    assert type(config.train.weight_decay) is float and config.train.weight_decay == float(text)


def test_int_fields_take_python_int_spellings(tiny_config):
    config = tiny_config("train.steps=1_000", "train.log_every=010", "train.warmup_steps=+5")
    assert (config.train.steps, config.train.log_every, config.train.warmup_steps) == (1000, 10, 5)
    assert "'train.steps': expected an integer, got str '1e3'" in _error("train.steps=1e3")


def test_string_fields_keep_yaml_1_1_booleans_and_numbers_as_text(tmp_path, tiny_config):
    path = tmp_path / "strings.yaml"
    path.write_text(_tiny_text().replace("name: tiny", "name: no") + "  resume: on\n")
    config = load_config(path)
    assert config.name == "no" and config.train.resume == "on"
    config = tiny_config("name=off", "train.grad_diagnostics_modality=yes", "train.device=010")
    assert (config.name, config.train.grad_diagnostics_modality, config.train.device) == ("off", "yes", "010")
    assert type(config.name) is str  # a plain str, so the config saves as YAML
    assert config_from_dict(mmssl.config.read_yaml(config.to_yaml())) == config


def test_bool_fields_take_yes_no_on_off(tiny_config):
    assert tiny_config("train.progress=off").train.progress is False
    assert tiny_config("train.progress=Yes").train.progress is True
    assert "'train.progress': expected true/false" in _error("train.progress=maybe")


def test_optional_and_union_fields_read_plain_scalars_by_type(tiny_config):
    config = tiny_config("train.grad_clip=1e-1", "train.threads=2", "world.heldout=5")
    assert config.train.grad_clip == 0.1 and config.train.threads == 2 and config.world.heldout == 5
    assert tiny_config("train.grad_clip=null").train.grad_clip is None


def test_untyped_options_follow_yaml_1_2_core(tiny_config):
    args = tiny_config("modalities.image.backbone_args={drop_rate: 1e-1, flag: true, word: no, n: 1_0}")
    assert args.modalities["image"].options.backbone_args == {"drop_rate": 0.1, "flag": True, "word": "no", "n": 10}


def test_a_real_non_number_still_fails_naming_the_key():
    message = _error("train.lr=abc")
    assert "'train.lr': expected a number, got str 'abc'" in message


def test_quoted_numbers_stay_strings(tmp_path):
    path = tmp_path / "quoted.yaml"
    path.write_text(_tiny_text().replace("  lr: 0.002", '  lr: "2e-3"'))
    with pytest.raises(ConfigError, match=r"'train.lr': expected a number, got str '2e-3' \(a quoted string: write it without quotes\)"):
        load_config(path)
