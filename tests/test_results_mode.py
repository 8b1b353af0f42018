"""Results mode of the benchmark: runs to early stopping per (model, seed), tables, pairing."""

import json
import math
import os

import pytest

from conftest import TINY_FLAGS, make_tiny_dataset

from recbole_semprune.benchmark import results


def test_results_mode_trains_tables_pairs_and_skips_finished_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = make_tiny_dataset(tmp_path / "data")
    protocol = ["--load_col={'inter': ['user_id', 'item_id', 'timestamp'], 'item': ['item_id', 'title', 'genre']}",
                "--sid_text_fields=['title', 'genre']", "--MAX_ITEM_LIST_LENGTH=10",
                "--topk=[5,10]", "--valid_metric=NDCG@10", "--train_neg_sample_args=None", "--eval_args={'split': {'LS': 'valid_and_test'}, 'order': 'TO', 'group_by': 'user', 'mode': 'full'}"]
    argv = ["--dataset=tiny", f"--data_path={data}", "--models=TIGER,SASRec", "--seeds=1,2",
            "--SASRec.seeds=1", "--output=out", "--baseline=TIGER", "--compare_to=SASRec", "--threads=1",
            "--epochs=3", "--stopping_step=1", *TINY_FLAGS, "--TIGER.n_dec_layers=1", "--TIGER.sid_levels=2",
            "--TIGER.sid_codebook_size=8", "--TIGER.beam_size=10", "--state=WARNING",
            "--train_batch_size=256", *protocol]
    assert results.main(argv) == 0
    out = tmp_path / "out"
    for label, seed in (("TIGER", 1), ("TIGER", 2), ("SASRec", 1)):
        run = json.loads((out / label / f"seed-{seed}" / "result.json").read_text())
        users, positions = results.read_positions(out / label / f"seed-{seed}" / "positions.csv")
        figures = results.summarise(run, positions)
        # the per-user positions give RecBole's own test figures (mask off)
        # (RecBole rounds to metric_decimal_place=4 decimals)
        assert figures["ndcg@10_mask_off"] == pytest.approx(run["test_result"]["ndcg@10"], abs=5e-5)
        assert figures["recall@10_mask_on"] >= 0 and 1 <= figures["epochs"] <= 3
        assert figures["best_epoch"] is not None and figures["seconds_to_best"] > 0
        assert not [n for n in os.listdir(out / label / f"seed-{seed}" / "saved") if n.endswith("-last.pth")]
    table = json.loads((out / "results.json").read_text())
    rows = {row["model"]: row for row in table["rows"]}
    assert rows["TIGER"]["seeds"] == 2 and rows["SASRec"]["seeds"] == 1
    assert rows["TIGER"]["ndcg@10_mask_off_se"] >= 0
    paired = [r for r in table["paired"] if r["model"] == "SASRec"]
    assert {(r["mask"], r["metric"]) for r in paired} == {
        (m, k) for m in ("off", "on") for k in ("ndcg@10", "recall@10")}
    sasrec = next(r for r in paired if r["mask"] == "off" and r["metric"] == "ndcg@10")
    assert sasrec["model_value"] == pytest.approx(rows["SASRec"]["ndcg@10_mask_off"])
    assert sasrec["difference"] == pytest.approx(sasrec["model_value"] - sasrec["baseline_value"])
    assert "Paired per-user differences against TIGER" in (out / "results.md").read_text()
    # --compare_to: every model against SASRec too, the same pairing the other way round
    against = [r for r in table["paired"] if r["baseline"] == "SASRec"]
    assert {r["model"] for r in against} == {"TIGER"}
    tiger = next(r for r in against if r["mask"] == "off" and r["metric"] == "ndcg@10")
    assert tiger["seeds"] == 1 and tiger["difference"] == pytest.approx(-sasrec["difference"])
    assert tiger["model_value"] == pytest.approx(sasrec["baseline_value"])
    assert "Paired per-user differences against SASRec" in (out / "results.md").read_text()
    # each test user's target count in training: its interactions less its valid / test rows
    import pandas as pd
    inter = pd.read_csv(os.path.join(data, "tiny", "tiny.inter"), sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    inter = inter.sort_values(["user_id", "timestamp"], kind="stable")
    held_out = inter.groupby("user_id").cumcount(ascending=False) < 2  # valid and test targets
    in_training = inter[~held_out]["item_id"].astype(str).value_counts()
    test_items = inter[inter.groupby("user_id").cumcount(ascending=False) == 0]
    expected = sorted(int(in_training.get(str(item), 0)) for item in test_items["item_id"])
    with open(out / "TIGER" / "seed-1" / "positions.csv") as f:
        got = sorted(int(line.split("\t")[3]) for line in list(f)[1:])
    assert got == expected and len(set(got)) > 1
    by_count = table["by_target_count"]
    assert {(r["model"], r["mask"]) for r in by_count} == {
        (m, k) for m in ("TIGER", "SASRec") for k in ("off", "on")}
    # the groups' figures, weighted by their users, give the model's NDCG@10
    users, positions = results.read_positions(out / "SASRec" / "seed-1" / "positions.csv")
    from recbole_semprune.analysis import equal_groups, metrics_by_group
    _, tiger_positions = results.read_positions(out / "TIGER" / "seed-1" / "positions.csv")
    groups = metrics_by_group(positions["off"], positions["target_count"],
                              equal_groups(tiger_positions["target_count"]), [10], lowest=0)
    sasrec = next(r for r in by_count if r["model"] == "SASRec" and r["mask"] == "off")
    assert sum(users * sasrec[name][0] for name, users, _ in groups if users) / len(positions["off"]) \
        == pytest.approx(rows["SASRec"]["ndcg@10_mask_off"])
    assert "by the target's count in training" in (out / "results.md").read_text()
    # every run records the settings it used, defaults included
    run = json.loads((out / "TIGER" / "seed-2" / "result.json").read_text())
    assert run["settings"]["sid_collaborative_weight"] == 0.5  # the default
    assert run["settings"]["sid_levels"] == 2 and run["settings"]["padding_free"] is True
    assert "Warning" not in (out / "results.md").read_text()
    # a second call finds every run done with the same settings and trains nothing
    capsys.readouterr()
    assert results.main(argv) == 0
    assert capsys.readouterr().out.count("] done") == 3


def test_summarise_takes_the_last_best_epoch_as_recbole_and_the_cost_up_to_it():
    import torch

    epochs = [{"epoch": e, "seconds": 10.0 * (e + 1), "cpu_seconds": 5.0 + e, "peak_memory_mb": m}
              for e, m in zip(range(4), (100, 300, 200, 250))]
    valids = [{"epoch": e, "result": {"ndcg@10": v}} for e, v in ((1, 0.2), (2, 0.3), (3, 0.3))]
    result = {"epoch_stats": epochs, "valid_stats": valids, "valid_metric": "ndcg@10"}
    # user 0 hits at rank 0, user 1 at rank 3 with the mask on only, user 2 misses
    positions = {"off": torch.tensor([0, 12, 50]), "on": torch.tensor([0, 3, 50])}
    figures = results.summarise(result, positions)
    # the last of the tied best scores: RecBole's early stopping takes a tie as the new best
    # (value >= best) and saves that epoch's checkpoint, the one tested
    assert figures["best_epoch"] == 3
    assert figures["seconds_to_best"] == 10 + 20 + 30 + 40 and figures["epochs"] == 4
    assert figures["cpu_seconds_to_best"] == 5 + 6 + 7 + 8
    assert figures["seconds_per_epoch"] == 25 and figures["cpu_seconds_per_epoch"] == 6.5
    assert figures["peak_memory_mb"] == 300
    assert figures["recall@10_mask_off"] == pytest.approx(1 / 3)
    assert figures["ndcg@10_mask_on"] == pytest.approx((1 + 1 / math.log2(5)) / 3)
    # a run whose epochs lack CPU seconds (older result files) shows none rather than a part
    del epochs[0]["cpu_seconds"]
    figures = results.summarise(result, positions)
    assert math.isnan(figures["cpu_seconds_per_epoch"]) and math.isnan(figures["cpu_seconds_to_best"])
    # the best epoch earlier: the cost counts the epochs up to it only
    valids[-1]["result"]["ndcg@10"] = 0.1
    valids[1]["result"]["ndcg@10"] = 0.1
    epochs[0]["cpu_seconds"] = 5.0
    figures = results.summarise(result, positions)
    assert figures["best_epoch"] == 1 and figures["cpu_seconds_to_best"] == 5 + 6
    assert figures["seconds_to_best"] == 10 + 20


def test_seeds_with_other_settings_are_flagged():
    def run(seed, **settings):
        return ({"spec": {"seed": seed}, "settings": {"sid_levels": 3, **settings}}, None, None)

    runs = {"TIGER": {2020: run(2020, sid_collaborative_weight=0.0),
                      2021: run(2021, sid_collaborative_weight=0.5),
                      2022: run(2022, sid_collaborative_weight=0.0)},
            # a key added after seed 2020 ran, at the value of the earlier behaviour: the same
            "RASTP": {2020: run(2020), 2021: run(2021, retrieval_weight=0.0)},
            "STAMPSID": {2020: run(2020), 2021: run(2021, retrieval_weight=1.0)},
            "SASRec": {2020: ({"spec": {"seed": 2020}}, None, None), 2021: run(2021)}}
    assert results.mixed_settings(runs) == [
        ("TIGER", "sid_collaborative_weight", {"0.0": [2020, 2022], "0.5": [2021]}),
        ("STAMPSID", "retrieval_weight", {"0.0": [2020], "1.0": [2021]})]


def test_results_mode_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        results.parse_args(["--dataset=x", "--models=TIGER", "--output=o", "--baseline=SASRec"])
    with pytest.raises(SystemExit):
        results.parse_args(["--dataset=x", "--models=TIGER", "--output=o", "--seed=3"])
    for against in ("SASRec", "TIGER"):  # not a model of the run; the baseline itself
        with pytest.raises(SystemExit):
            results.parse_args(["--dataset=x", "--models=TIGER,RASTP", "--output=o",
                                f"--compare_to={against}"])
    with pytest.raises(SystemExit):
        results.parse_args(["--dataset=x", "--models=TIGER", "--output=o", "--Foo.hidden_size=3"])
    args, shared, overrides = results.parse_args(
        ["--dataset=x", "--models=T=TIGER,SASRec", "--output=o", "--T.seeds=5", "--epochs=2"])
    assert args.seeds == {"T": [5], "SASRec": [2020, 2021, 2022]}
    assert shared == {"epochs": "2"} and args.model_classes["T"] == "TIGER"


def test_a_settings_error_stops_the_plan_instead_of_starting_the_next_run(tmp_path, monkeypatch,
                                                                           capsys):
    """A resume state the run cannot take (here: not a resume state at all) is the command's
    problem: results mode stops with its one-line error and starts no other seed."""
    monkeypatch.chdir(tmp_path)
    data = make_tiny_dataset(tmp_path / "data")
    saved = tmp_path / "out" / "SASRec" / "seed-1" / "saved"
    saved.mkdir(parents=True)
    (saved / "SASRec-Dec-01-2026_00-00-00-last.pth").write_bytes(b"not a checkpoint")
    argv = ["--dataset=tiny", f"--data_path={data}", "--models=SASRec", "--seeds=1,2",
            "--output=out", "--threads=1", "--epochs=1", *TINY_FLAGS, "--state=WARNING",
            "--train_neg_sample_args=None"]
    assert results.main(argv) == results.USER_ERROR_EXIT
    out = capsys.readouterr().out
    assert "[SASRec seed 1] stopped, nothing else run: error: resume=True: nothing to resume" in out
    assert not (tmp_path / "out" / "SASRec" / "seed-2").exists()
    assert (saved / "SASRec-Dec-01-2026_00-00-00-last.pth").read_bytes() == b"not a checkpoint"


def test_a_kill_while_the_child_is_starting_stops_it_too(tmp_path, monkeypatch):
    """The SIGTERM lands inside ``Popen``, after the child exists and before its handle is
    returned: the child is still stopped, and the command exits as killed."""
    import signal
    import subprocess

    from recbole_semprune.benchmark import common

    started, start = [], subprocess.Popen

    def popen(*args, **kwargs):
        started.append(start(*args, **kwargs))
        os.kill(os.getpid(), signal.SIGTERM)  # handled before this call returns
        return started[-1]

    monkeypatch.setattr(common.subprocess, "Popen", popen)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        common.run_module(["timeit", "-n", "1", "-r", "1", "import time; time.sleep(120)"],
                          str(tmp_path / "child.log"))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert started[0].poll() == -signal.SIGKILL  # stopped by the command, not left running
    assert signal.getsignal(signal.SIGTERM) is before


def test_killing_the_command_stops_its_training_run(tmp_path):
    """``kill`` (SIGTERM) of a results / benchmark command stops the run it started in a child
    process too, instead of leaving it training with nobody reading its output; here the signal
    comes as soon as the child exists, often while ``Popen`` is still starting it."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from conftest import REPO

    parent = subprocess.Popen(
        [sys.executable, "-c", "from recbole_semprune.benchmark.common import run_module; "
         "run_module(['timeit', '-n', '1', '-r', '1', 'import time; time.sleep(120)'], 'child.log')"],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        children = []
        deadline = time.monotonic() + 300  # importing torch on a busy machine can take a while
        while not children and parent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            children = psutil.Process(parent.pid).children()
        assert children, "the command started no child"
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=60) == 128 + signal.SIGTERM
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, "the child kept running after its command was killed"
    finally:
        parent.kill()
        for child in psutil.Process().children(recursive=True):
            child.kill()
