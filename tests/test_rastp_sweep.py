"""scripts/rastp_sweep.py: its points become the benchmark's labelled RASTP variants."""

import pytest

from conftest import load_script
from recbole_semprune.benchmark import parse_args


@pytest.fixture(scope="module")
def sweep():
    return load_script("scripts/rastp_sweep.py")


def test_star_points_are_labelled_variants_of_one_benchmark(sweep):
    args, extra = sweep.parse_args(["--prune_layers=1,2", "--keep_ratios=0.25,0.5",
                                    "--scorers=rastp,random", "--design=star", "--threads=1"])
    assert extra == ["--threads=1", "--max_steps=300"]  # the benchmark's flags pass through
    points = sweep.grid(args)
    names = [sweep.point_name(p) for p in points]
    assert names == ["unpruned", "rastp-p1-k0_25-fixed", "rastp-p2-k0_25-fixed",
                     "rastp-p1-k0_5-fixed", "random-p1-k0_25-fixed"]
    bench, shared, per_model = parse_args(["--dataset=x", *extra, *sweep.variant_flags(points)])
    assert bench.models == names and bench.baseline == "unpruned" and shared == {}
    assert set(bench.model_classes.values()) == {"RASTP"}
    assert per_model["unpruned"] == {"prune_scorer": "none"}
    assert per_model["rastp-p2-k0_25-fixed"] == {
        "prune_layer": "2", "keep_ratio": "0.25", "prune_scorer": "rastp",
        "keep_ratio_mode": "fixed"}


def test_grid_and_refused_flags(sweep, capsys):
    args, _ = sweep.parse_args(["--prune_layers=1,2,3", "--keep_ratios=0.25,0.5", "--epochs=1"])
    assert len(sweep.grid(args)) == 1 + 3 * 2 * 4  # the baseline, then every combination
    with pytest.raises(SystemExit):
        sweep.parse_args(["--keep_ratio=0.5"])
    assert "the sweep sets these keys itself" in capsys.readouterr().err


def test_sweep_csv_has_the_settings_the_speed_ups_and_the_benchmark_columns(sweep, tmp_path):
    import csv

    args, _ = sweep.parse_args(["--prune_layers=1", "--keep_ratios=0.25", "--scorers=rastp"])
    points = sweep.grid(args)
    rows = [{"model": sweep.point_name(p), "status": "ok", "train_seconds_per_step": seconds,
             "train_cpu_seconds_per_step": seconds, "eval_seconds": 1.0, "kept_fraction": kept,
             "test_result": {"ndcg@10": 0.1}} for p, seconds, kept in zip(points, (2.0, 0.5), (None, 0.3))]
    meta = {"budget": {"mode": "max_steps", "value": 3}, "eval_max_users": None}
    sweep.write_sweep(str(tmp_path), args, points, rows, meta)
    with open(tmp_path / "sweep.csv", newline="", encoding="utf-8") as f:
        unpruned, pruned = list(csv.DictReader(f))
    assert list(unpruned)[:8] == ["point", *sweep.FACTORS, *sweep.SPEEDUPS]
    assert "model" not in unpruned and {"ndcg@10", "kept_fraction", "params"} <= set(unpruned)
    assert (pruned["point"], pruned["prune_layer"], pruned["keep_ratio"]) == (
        "rastp-p1-k0_25-fixed", "1", "0.25")
    assert float(pruned["train_cpu_speedup"]) == 4.0 and float(pruned["ndcg@10"]) == 0.1
