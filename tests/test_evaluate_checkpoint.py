"""scripts/evaluate_checkpoint.py: inference-only variants of one saved model, and the paired
comparison of two (``--compare``)."""

from pathlib import Path

import pytest

from conftest import REC2PM_SMALL, load_script, make_tiny_dataset
from recbole_semprune.quick_start import run_recbole_semprune

SMALL = REC2PM_SMALL


@pytest.fixture(scope="module")
def script():
    return load_script("scripts/evaluate_checkpoint.py")


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


def test_paired_comparison_of_two_checkpoints(script, tiny_data, workdir):
    rec2pm = run_recbole_semprune(model="Rec2PM", dataset="tiny", config_dict=dict(tiny_data, **SMALL))
    decoder = run_recbole_semprune(model="DecoderOnlySID", dataset="tiny", config_dict=dict(tiny_data, **SMALL))
    name_a, name_b, users, rows = script.main(["--compare", rec2pm["saved_model_file"],
                                               decoder["saved_model_file"]])
    assert (name_a, name_b, users) == ("Rec2PM", "DecoderOnlySID", 120)
    table = {metric: values for metric, *values in rows}
    assert set(table) == {"recall@5", "ndcg@5", "recall@10", "ndcg@10"}
    for metric, (a, b, diff, se) in table.items():
        # A and B are each run's own test result; the difference is theirs, with a real SE
        assert a == pytest.approx(rec2pm["test_result"][metric], abs=1e-4)
        assert b == pytest.approx(decoder["test_result"][metric], abs=1e-4)
        assert diff == pytest.approx(a - b, abs=1e-6)
        assert se >= 0
    assert any(se > 0 for _, _, _, _, se in rows)  # the two models differ on some user
    # a checkpoint against itself: no difference, no spread
    _, _, _, same = script.compare_runs([(decoder["saved_model_file"],) * 2])[0]
    assert all(diff == 0 and se == 0 for _, _, _, diff, se in same)
    # two pairs pool per user: (Rec2PM - DO + 0) / 2 for each user, so half the difference and
    # half its standard error; A and B are averaged over the runs
    name_a, name_b, users, pooled = script.main([
        "--compare", rec2pm["saved_model_file"], decoder["saved_model_file"],
        decoder["saved_model_file"], decoder["saved_model_file"], "--exclude_seen=False",
    ])
    assert (name_a, name_b, users) == ("Rec2PM/DecoderOnlySID (2 runs)", "DecoderOnlySID (2 runs)", 120)
    for (metric, a, b, diff, se), (_, a1, b1, diff1, se1) in zip(pooled, rows):
        assert a == pytest.approx((a1 + b1) / 2, abs=1e-6) and b == pytest.approx(b1, abs=1e-6)
        assert diff == pytest.approx(diff1 / 2, abs=1e-6) and se == pytest.approx(se1 / 2, abs=1e-6)
    with pytest.raises(SystemExit):  # not in pairs
        script.main(["--compare", rec2pm["saved_model_file"], decoder["saved_model_file"],
                     decoder["saved_model_file"]])
    with pytest.raises(SystemExit):  # two checkpoints need --compare
        script.main([rec2pm["saved_model_file"], decoder["saved_model_file"]])


def test_paired_comparison_refuses_different_users(script, tiny_data, workdir):
    first = run_recbole_semprune(model="DecoderOnlySID", dataset="tiny", config_dict=dict(tiny_data, **SMALL))
    other = make_tiny_dataset(workdir / "other", n_users=90)
    second = run_recbole_semprune(model="DecoderOnlySID", dataset="tiny",
                                  config_dict=dict(tiny_data, **SMALL, data_path=other,
                                                   checkpoint_dir=str(workdir / "saved-other")))
    with pytest.raises(script.CompareError, match="not the same users"):
        script.compare_runs([(first["saved_model_file"], second["saved_model_file"])])


def test_exclude_seen_variant_of_a_recbole_model(script, tiny_data):
    """``exclude_seen`` is every model's history mask: a SASRec checkpoint evaluates with and
    without it, and ``--compare`` ranks it with the mask as the trainer does."""
    sasrec = run_recbole_semprune(model="SASRec", dataset="tiny", config_dict=tiny_data)
    rows = script.main([sasrec["saved_model_file"], "--variants=;exclude_seen=True;"])
    saved, masked, back = (row[2] for row in rows)
    assert dict(saved) == pytest.approx(dict(sasrec["test_result"]), abs=1e-12)
    assert dict(back) == pytest.approx(dict(saved), abs=1e-12)
    assert masked["recall@10"] != saved["recall@10"]  # tiny targets are often history items
    for exclude, expected in (("True", masked), ("False", saved)):
        _, _, users, table = script.main(["--compare", sasrec["saved_model_file"],
                                          sasrec["saved_model_file"], f"--exclude_seen={exclude}"])
        for metric, a, b, diff, se in table:
            assert a == b == pytest.approx(expected[metric], abs=1e-4)


def test_code_ranks_say_where_greedy_generation_goes_wrong(script, tiny_data, tmp_path):
    import torch

    from conftest import TINY_SID
    from recbole_semprune.analysis import code_ranks, load_checkpoint

    result = run_recbole_semprune(model="TIGER", dataset="tiny",
                                  config_dict=dict(tiny_data, **TINY_SID, epochs=3))
    output = tmp_path / "table.md"
    script.main([result["saved_model_file"], "--code_ranks", "--output", str(output)])
    table = output.read_text().split("\n\n")[1].splitlines()
    assert table[0].startswith("| target count | users | level 0 first | level 1 first |")
    assert table[-1].startswith("| all | 120 |")
    # a target whose code ranks first at every level, given its own prefix, is exactly what
    # greedy decoding (a beam of 1) generates
    _, model, data = load_checkpoint(result["saved_model_file"])
    model.exclude_seen = False
    ranks, targets = code_ranks(model, data)
    greedy = torch.cat([model.generate(*model.history(batch[0]), beam_size=1)[0][:, 0]
                        for batch in data])
    assert torch.equal((ranks == 0).all(1), greedy == targets)
    assert 0 < int((greedy == targets).sum()) < len(targets)
    first = f"{100 * float((ranks[:, 0] == 0).float().mean()):.1f}%"
    assert table[-1].split(" | ")[2] == first


def test_code_ranks_refuse_a_model_without_codes_before_loading_its_data(script, tiny_data,
                                                                         capsys):
    result = run_recbole_semprune(model="SASRec", dataset="tiny",
                                  config_dict=dict(tiny_data, epochs=1))
    with pytest.raises(SystemExit):
        script.main([result["saved_model_file"], "--code_ranks"])
    assert "--code_ranks needs a SID model" in capsys.readouterr().err
