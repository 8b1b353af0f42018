"""scripts/evaluate_checkpoint.py: inference-only variants of one saved model."""

import importlib.util
from pathlib import Path

import pytest

from conftest import REPO
from recbole_semprune.quick_start import run_recbole_semprune

SMALL = {"sid_levels": 2, "sid_codebook_size": 8, "beam_size": 10, "segment_len": 3, "mem_tokens": 2}


def load_script():
    spec = importlib.util.spec_from_file_location(
        "evaluate_checkpoint", REPO / "scripts" / "evaluate_checkpoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


def test_variants_of_a_rec2pm_checkpoint(script, tiny_data, tmp_path):
    result = run_recbole_semprune(model="Rec2PM", dataset="tiny", config_dict=dict(tiny_data, **SMALL))
    output = tmp_path / "table.md"
    rows = script.main([
        result["saved_model_file"], "--output", str(output),
        "--variants=;exclude_seen=True;memory_mode=append,exclude_seen=True;exclude_seen=False",
    ])
    names = [row[0] for row in rows]
    assert names == ["(as saved)", "exclude_seen=True", "memory_mode=append,exclude_seen=True",
                     "exclude_seen=False"]
    saved, excluded, _, back = (row[2] for row in rows)
    # the checkpoint as saved gives the run's own test result; a variant does not leak into
    # the next one
    assert dict(saved) == pytest.approx(dict(result["test_result"]), abs=1e-12)
    assert dict(back) == pytest.approx(dict(saved), abs=1e-12)
    # the tiny users cycle through their genre's 10 items, so targets are often seen items:
    # excluding those changes the metrics (here: lowers them)
    assert excluded["recall@10"] != saved["recall@10"]
    text = output.read_text()
    assert text.splitlines()[0].startswith("| variant | eval s | recall@5 | recall@10")
    assert "| exclude_seen=True |" in text


@pytest.mark.parametrize("variant, message", [
    ("hidden_size=32", "not an inference-only key"),
    ("exclude_seen", "not KEY=VALUE"),
    ("beam_size=ten", "beam_size must be a int"),
    ("exclude_seen=1", "exclude_seen must be a bool"),
])
def test_bad_variants_are_refused_before_loading(script, variant, message):
    with pytest.raises(script.VariantError, match=message):
        script.parse_variant(variant)


def test_length_groups_split_the_users_and_average_to_recboles_figures(script, tiny_data):
    # user u keeps its first 6 + u % 8 interactions: test histories of 5 to 12 items
    inter = Path(tiny_data["data_path"]) / "tiny" / "tiny.inter"
    header, *lines = inter.read_text().splitlines()
    kept = [line for line in lines
            if float(line.split("\t")[2]) % 1000 < 6 + int(line.split("\t")[0][1:]) % 8]
    inter.write_text("\n".join([header, *kept]) + "\n")
    config = dict(tiny_data, **SMALL, MAX_ITEM_LIST_LENGTH=20)
    result = run_recbole_semprune(model="DecoderOnlySID", dataset="tiny", config_dict=config)
    rows = script.main([result["saved_model_file"], "--length_groups=7,10",
                        "--variants=;exclude_seen=True"])
    for text, _, overall, groups in rows:
        assert [name for name, _, _ in groups] == ["1-6", "7-9", ">=10"]
        # 2, 3 and 3 of every 8 users
        assert [n for _, n, _ in groups] == [30, 45, 45]
        users = [n for _, n, _ in groups]
        assert sum(users) == 120 and min(users) > 0  # one test row per tiny user
        for metric in ("recall@10", "ndcg@10", "recall@5", "ndcg@5"):
            mean = sum(n * values[metric] for _, n, values in groups) / sum(users)
            assert mean == pytest.approx(overall[metric], abs=1e-4), (text, metric)
    # the variants change the groups' figures as they change the overall ones
    assert rows[0][3] != rows[1][3]


@pytest.mark.parametrize("text, message", [
    ("50,x", "comma-separated integers"), ("200,50", "increasing"), ("1,5", "above 1"),
])
def test_bad_length_groups_are_refused(script, text, message):
    with pytest.raises(script.VariantError, match=message):
        script.parse_groups(text)
