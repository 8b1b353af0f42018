"""Every kind of model on every shipped dataset config, a dataset brought without a config, and
the model / dataset keys of config files."""

import logging
import math
import os
import random
import sys

import pytest

from conftest import TINY, load_script, make_tiny_dataset, write_atomic
from recbole_semprune.config import Config
from recbole_semprune.quick_start import check_run, run_recbole_semprune

SHIPPED = ["ml-100k", "ml-1m", "amazon-beauty", "amazon-sports", "amazon-toys"]
# one general, one sequential and one plugin model
MODELS = ["BPR", "SASRec", "TIGER"]
SMALL = dict(TINY, n_dec_layers=1, epochs=1)
# a SID model's cost grows with the padded history (up to 200 items x 4 tokens on ml-1m)
SHORT = {"TIGER": {"MAX_ITEM_LIST_LENGTH": 10}}


def write_dataset_like(root, name, n_users=30, n_items=30, length=8, seed=0):
    """Tiny atomic files with exactly the fields the shipped config of ``name`` loads."""
    config = Config(model="SASRec", dataset=name, config_dict={"data_path": str(root)})
    load_col = config["load_col"]
    rng = random.Random(seed)
    words = ["jazz", "rock", "folk", "live", "best", "deep"]
    item_fields = [field for field in load_col["item"] if field != "item_id"]
    items = [
        (f"i{k}", *(f"{rng.choice(words)} {rng.choice(words)}" for _ in item_fields))
        for k in range(n_items)
    ]
    inter = [
        (f"u{u}", f"i{rng.randrange(n_items)}", 100 * u + t)
        for u in range(n_users)
        for t in range(length)
    ]
    assert load_col["inter"] == ["user_id", "item_id", "timestamp"]
    folder = os.path.join(root, name)
    write_atomic(folder, name, "inter", ["user_id:token", "item_id:token", "timestamp:float"], inter)
    write_atomic(folder, name, "item", ["item_id:token"] + [f"{f}:token_seq" for f in item_fields],
                 items)
    return str(root)


@pytest.mark.parametrize("name", SHIPPED)
def test_general_sequential_and_plugin_model_on_every_dataset_config(name, workdir):
    data_path = write_dataset_like(workdir / "data", name)
    for model in MODELS:
        result = run_recbole_semprune(
            model=model, dataset=name,
            config_dict=dict(SMALL, data_path=data_path, checkpoint_dir=str(workdir / "saved"),
                             **SHORT.get(model, {})),
        )
        test_result = result["test_result"]
        assert {"recall@20", "ndcg@10", "mrr@5", "hit@10"} <= set(test_result), (model, name)
        assert all(type(v) is float and math.isfinite(v) for v in test_result.values())
        assert type(result["best_valid_score"]) is float


def test_graph_model_runs(tiny_data):
    """LightGCN fills its adjacency with dok_matrix._update, gone from scipy >= 1.13 (compat)."""
    settings = {key: value for key, value in tiny_data.items() if key != "train_neg_sample_args"}
    result = run_recbole_semprune(model="LightGCN", dataset="tiny", config_dict=settings)
    assert math.isfinite(result["test_result"]["ndcg@10"])


def test_negative_sampling_by_kind_of_model(monkeypatch):
    monkeypatch.setattr("sys.argv", ["pytest"])

    def negatives(model, **settings):
        return Config(model, "ml-100k", config_dict=settings)["train_neg_sample_args"]["distribution"]

    assert negatives("BPR") == "uniform"  # pairwise: needs a negative per interaction
    assert negatives("SASRec") == "none"  # loss_type CE: RecBole refuses negatives
    assert negatives("SASRec", loss_type="BPR") == "uniform"
    assert negatives("TIGER") == "none" and negatives("Rec2PM") == "none"


def test_ml100k_from_data_path_only_when_given_and_present(workdir, monkeypatch):
    monkeypatch.setattr("sys.argv", ["pytest"])
    builtin = Config("BPR", "ml-100k")["data_path"]
    assert os.path.isfile(os.path.join(builtin, "ml-100k.inter"))  # RecBole's own copy
    assert Config("BPR", "ml-100k", config_dict={"data_path": str(workdir)})["data_path"] == builtin
    data_path = write_dataset_like(workdir / "data", "ml-100k")
    config = Config("BPR", "ml-100k", config_dict={"data_path": data_path})
    assert config["data_path"] == os.path.join(data_path, "ml-100k")


@pytest.mark.parametrize("model", ["TIGER", "SASRec"])
def test_two_files_without_a_config_train(model, workdir, caplog):
    """A .inter and a .item with ordinary headers, nothing else: the protocol, fields, text
    fields and codebook size are chosen and logged."""
    caplog.set_level(logging.INFO)
    data_path = make_tiny_dataset(workdir / "data", name="mine")
    result = run_recbole_semprune(
        model=model, dataset="mine",
        config_dict=dict(SMALL, data_path=data_path, checkpoint_dir=str(workdir / "saved"),
                         state="INFO"),
    )
    assert math.isfinite(result["test_result"]["ndcg@10"])
    log = caplog.text
    assert "Dataset 'mine' has no dataset config" in log
    assert "load_col read from the atomic files' headers" in log
    assert "inter: user_id, item_id, timestamp; item: item_id, title, genre" in log
    if model == "TIGER":
        assert "text fields ['title', 'genre']" in log
        assert "sid_codebook_size: the default 256 is larger than the 60 items of 'mine': using 3" in log


def test_item_text_left_out_by_load_col_is_reported(workdir, monkeypatch):
    monkeypatch.setattr("sys.argv", ["pytest"])
    data_path = make_tiny_dataset(workdir / "data", name="mine")
    load_col = {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "genre"]}
    config = Config("TIGER", "mine", config_dict={"data_path": data_path, "load_col": load_col})
    notes = [line for _, line in check_run(config)]
    assert any("mine.item has text fields ['title'] that load_col does not load" in n for n in notes)


def test_own_load_col_is_kept(workdir, monkeypatch):
    monkeypatch.setattr("sys.argv", ["pytest"])
    data_path = make_tiny_dataset(workdir / "data", name="mine")
    load_col = {"inter": ["user_id", "item_id", "timestamp"]}
    config = Config("SASRec", "mine", config_dict={"data_path": data_path, "load_col": load_col})
    check_run(config)
    assert config["load_col"] == load_col


@pytest.mark.parametrize(
    "args, file_keys, expected",
    [
        ([], "model: Pop\ndataset: tiny\n", ("Pop", "tiny")),
        (["--model=SASRec"], "model: Pop\ndataset: tiny\n", ("SASRec", "tiny")),
        ([], "epochs: 1\n", ("BPR", "ml-100k")),  # RecBole's run_recbole.py defaults
    ],
)
def test_model_and_dataset_keys_of_config_files(args, file_keys, expected, workdir, monkeypatch):
    (workdir / "my.yaml").write_text(file_keys)
    script = load_script("run_recbole_semprune.py")
    calls = []
    monkeypatch.setattr(script, "run", lambda model, dataset, **kwargs: calls.append((model, dataset)))
    monkeypatch.setattr(sys, "argv", ["run_recbole_semprune.py", "--config_files=my.yaml", *args])
    script.main()
    assert calls == [expected]
