"""Plugin foundation: config lookup, model / dataset resolution, errors, run + reload."""

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from conftest import REPO, TINY, write_atomic
from recbole_semprune import compat
from recbole_semprune.config import DATASET_CONFIG_DIR, MODEL_PROPERTIES_DIR, Config
from recbole_semprune.quick_start import load_data_and_model, run_recbole_semprune
from recbole_semprune.utils import DatasetError, create_dataset, get_model, get_trainer

DATASETS = ["ml-100k", "ml-1m", "amazon-beauty", "amazon-sports", "amazon-toys"]


def test_dataset_configs_are_package_data():
    for name in DATASETS:
        assert os.path.isfile(os.path.join(DATASET_CONFIG_DIR, f"{name}.yaml")), name
    # the top-level folders of the repository are the package's own
    assert os.path.samefile(REPO / "dataset_configs", DATASET_CONFIG_DIR)
    assert os.path.samefile(REPO / "properties" / "model", MODEL_PROPERTIES_DIR)


def test_wheel_ships_properties_and_dataset_configs(tmp_path):
    """A plain `pip install .` gets the yaml files: build the wheel and look inside."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        check=True,
    )
    (wheel,) = tmp_path.glob("recbole_semprune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in DATASETS:
        assert f"recbole_semprune/dataset_configs/{name}.yaml" in names
    assert "recbole_semprune/properties/sid.yaml" in names
    model_yamls = {n for n in names if n.startswith("recbole_semprune/properties/model/")}
    assert model_yamls == {
        f"recbole_semprune/properties/model/{f}"
        for f in os.listdir(MODEL_PROPERTIES_DIR)
        if f.endswith(".yaml")
    }


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_protocol(name, monkeypatch):
    monkeypatch.setattr("sys.argv", ["pytest"])
    config = Config(model="SASRec", dataset=name)
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"}
    assert config["eval_args"]["order"] == "TO"
    assert config["eval_args"]["mode"] == {"valid": "full", "test": "full"}
    assert config["topk"] == [5, 10, 20]
    assert config["valid_metric"] == "NDCG@10"
    assert {"Recall", "NDCG", "MRR", "Hit"} <= set(config["metrics"])
    assert set(config["sid_text_fields"]) <= set(config["load_col"]["item"])
    if name.startswith("amazon"):
        assert config["MAX_ITEM_LIST_LENGTH"] == 20
    else:
        assert config["MAX_ITEM_LIST_LENGTH"] >= 50


def test_user_settings_override_plugin_yaml(tmp_path, monkeypatch):
    user_yaml = tmp_path / "mine.yaml"
    user_yaml.write_text("MAX_ITEM_LIST_LENGTH: 7\ntopk: [3]\n")
    monkeypatch.setattr("sys.argv", ["pytest", "--valid_metric=Recall@3"])
    config = Config(
        model="SASRec", dataset="ml-100k", config_file_list=[str(user_yaml)],
        config_dict={"topk": [3, 6]},
    )
    assert config["MAX_ITEM_LIST_LENGTH"] == 7  # file beats the dataset config
    assert config["topk"] == [3, 6]  # dict beats file
    assert config["valid_metric"] == "Recall@3"  # command line beats everything


def test_get_model_falls_back_to_recbole():
    from recbole.model.sequential_recommender import BERT4Rec, SASRec

    assert get_model("SASRec") is SASRec
    assert get_model("BERT4Rec") is BERT4Rec
    # RecBole's plain Trainer is replaced by the plugin's, which also measures throughput
    from recbole_semprune.trainer import Trainer

    assert get_trainer(get_model("SASRec").type, "SASRec") is Trainer


def test_unknown_model_lists_what_exists():
    with pytest.raises(ValueError) as err:
        get_model("SASrec")
    message = str(err.value)
    assert "Unknown model 'SASrec'" in message
    assert "Did you mean" in message and "SASRec" in message
    assert "BERT4Rec" in message and "recbole_semprune models" in message


def test_missing_dataset_says_where_and_how(workdir):
    config = Config(model="SASRec", dataset="amazon-toys", config_dict={"data_path": str(workdir)})
    with pytest.raises(DatasetError) as err:
        create_dataset(config)
    message = str(err.value)
    assert str(workdir / "amazon-toys" / "amazon-toys.inter") in message
    assert "python -m recbole_semprune.data.amazon" in message
    assert not (workdir / "amazon-toys").exists()  # nothing was downloaded or created


def test_dataset_without_configured_fields(workdir):
    folder = workdir / "amazon-beauty"
    write_atomic(folder, "amazon-beauty", "inter", ["user_id:token", "item_id:token", "timestamp:float"],
                 [("u1", "i1", 1), ("u1", "i2", 2)])
    write_atomic(folder, "amazon-beauty", "item", ["item_id:token", "title:token_seq"],
                 [("i1", "a b"), ("i2", "c")])
    config = Config(model="SASRec", dataset="amazon-beauty", config_dict={"data_path": str(workdir)})
    with pytest.raises(DatasetError) as err:
        create_dataset(config)
    message = str(err.value)
    assert "['brand', 'categories']" in message and "amazon-beauty.item" in message


def test_cli_unknown_model_is_a_clear_error(workdir):
    result = subprocess.run(
        [sys.executable, str(REPO / "run_recbole_semprune.py"), "--model=NoSuchModel",
         "--dataset=ml-100k"],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "Unknown model 'NoSuchModel'" in result.stderr


def test_numpy_aliases_restored():
    compat.restore_numpy_aliases()
    assert np.float is np.float64 and np.float_ is np.float64 and np.long is np.int_


def test_checkpoint_loading_scope_is_restored(monkeypatch):
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    with compat.recbole_checkpoint_loading():
        assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ


@pytest.mark.parametrize("model", ["SASRec", "BERT4Rec", "Pop"])
def test_recbole_baseline_runs_and_checkpoint_reloads(model, tiny_data):
    """A RecBole baseline trains through the plugin; its checkpoint reloads to the same metrics."""
    result = run_recbole_semprune(model=model, dataset="tiny", config_dict=tiny_data)
    test_result = result["test_result"]
    assert set(test_result) >= {"recall@10", "ndcg@10", "mrr@10", "hit@5"}
    assert all(np.isfinite(v) for v in test_result.values())
    assert os.path.isfile(result["saved_model_file"])

    config, reloaded, _, _, _, test_data = load_data_and_model(result["saved_model_file"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, reloaded)
    again = trainer.evaluate(test_data, load_best_model=False)
    assert dict(again) == pytest.approx(dict(test_result), abs=1e-12)


def test_trainer_measures_throughput_and_memory(tiny_data):
    from recbole_semprune.quick_start import _build

    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_data)
    _, train_data, _, _, model, trainer = _build(config)
    trainer._train_epoch(train_data, 0)
    (stats,) = trainer.epoch_stats
    assert stats["steps"] == len(train_data)
    # every training row's history is counted once: the sum of its item_length field
    assert stats["tokens"] == int(train_data._dataset.inter_feat["item_length"].sum())
    assert stats["tokens_per_second"] > 0 and stats["peak_memory_mb"] > 0
    line = trainer._generate_train_loss_output(0, 0.0, 1.0, 0.5)
    assert "tokens/s" in line and "peak memory" in line


def test_recbole_model_lookup_leaves_anomaly_detection_off(monkeypatch):
    monkeypatch.setattr("sys.argv", ["pytest"])
    Config(model="SASRec", dataset="ml-100k")
    get_model("SINE")
    assert not torch.is_anomaly_enabled()


def test_train_rows_is_refused_where_recbole_builds_the_dataset(tiny_data):
    config = Config("SASRec", "tiny", config_dict=dict(tiny_data, train_rows="user"))
    with pytest.raises(ValueError, match="SASRec uses RecBole's own dataset"):
        create_dataset(config)
