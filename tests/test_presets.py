"""size_preset: a model's preset sizes sit between its yaml and the user's keys."""

import pytest
import yaml

from recbole_semprune.config import PRESET_DIR, Config


@pytest.mark.parametrize("model", ["TIGER", "RASTP", "STAMPSID", "DecoderOnlySID", "Rec2PM"])
def test_cpu_preset_sets_every_key_of_its_file_and_user_keys_win(model):
    with open(f"{PRESET_DIR}/cpu/{model}.yaml", encoding="utf-8") as f:
        preset = yaml.safe_load(f)
    assert preset["hidden_size"] < Config(model=model, dataset="ml-100k")["hidden_size"]
    config = Config(model=model, dataset="ml-100k", config_dict={"size_preset": "cpu"})
    assert {key: config[key] for key in preset} == preset
    config = Config(model=model, dataset="ml-100k",
                    config_dict={"size_preset": "cpu", "hidden_size": 32})
    assert config["hidden_size"] == 32


def test_preset_depths_match_across_backbones():
    tiger = Config(model="TIGER", dataset="ml-100k", config_dict={"size_preset": "cpu"})
    decoder = Config(model="DecoderOnlySID", dataset="ml-100k", config_dict={"size_preset": "cpu"})
    assert decoder["n_layers"] == tiger["n_layers"] + tiger["n_dec_layers"]


def test_recbole_models_keep_their_defaults_and_unknown_presets_fail():
    plain = Config(model="SASRec", dataset="ml-100k")
    preset = Config(model="SASRec", dataset="ml-100k", config_dict={"size_preset": "cpu"})
    assert preset["hidden_size"] == plain["hidden_size"]
    assert preset["train_batch_size"] == plain["train_batch_size"]
    with pytest.raises(ValueError, match="size_preset='gpu' is not a preset: choose one of cpu"):
        Config(model="TIGER", dataset="ml-100k", config_dict={"size_preset": "gpu"})
