"""The benchmark command: one protocol for several models, one table (docs/benchmarks.md)."""

import contextlib
import csv
import io
import json
import math
import subprocess
import sys

import pytest

from conftest import REPO, TINY_FLAGS, write_atomic
from recbole_semprune.benchmark import main, parse_args
from recbole_semprune.benchmark import report

# tiny models; one torch thread keeps steps fast and steady on a busy CPU
TINY = [
    *TINY_FLAGS,
    "--train_batch_size=256",
    "--state=WARNING",
    "--show_progress=False",
    "--threads=1",
]
ML100K = ["--dataset=ml-100k", "--max_steps=3", "--eval_max_users=50", *TINY]
REQUIRED = [
    "model",
    "train_steps",
    "train_seconds_per_step",
    "train_seconds_per_epoch",
    "epoch_time_source",
    "tokens_per_second",
    "padding_share",
    "model_gflops_per_second",
    "matmul_gflops_per_second",
    "utilisation",
    "kept_fraction",
    "peak_memory_mb",
    "eval_seconds",
    "eval_seconds_per_user",
    "params",
]
METRICS = ["recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr@10", "hit@10"]


def run_main(argv, cwd):
    """``main(argv)`` in ``cwd`` (RecBole writes log/ there): ``(status, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
    return status, out.getvalue(), err.getvalue()


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    """SASRec and BERT4Rec on ml-100k, each in its own worker process (the default)."""
    work = tmp_path_factory.mktemp("bench")
    output = work / "out"
    status, stdout, stderr = run_main(
        ["--models=SASRec,BERT4Rec", *ML100K, f"--output={output}"], work
    )
    return {"status": status, "stdout": stdout, "stderr": stderr, "output": output}


def test_results_csv(ml100k):
    assert ml100k["status"] == 0, ml100k["stderr"][-3000:]
    rows = read_csv(ml100k["output"] / "results.csv")
    assert [r["model"] for r in rows] == ["SASRec", "BERT4Rec"]
    columns = list(rows[0])
    assert columns[: len(REQUIRED)] == REQUIRED
    assert set(METRICS) <= set(columns)
    # the metrics follow the cost columns, in RecBole's order and spelling
    assert columns.index("recall@5") == len(REQUIRED)
    for row in rows:
        assert row["status"] == "ok"
        assert int(row["train_steps"]) == 3
        assert row["epoch_time_source"] == "extrapolated"
        for column in (
            "train_seconds_per_step",
            "train_cpu_seconds_per_step",
            "train_seconds_per_epoch",
            "tokens_per_second",
            "peak_memory_mb",
            "eval_seconds",
            "eval_seconds_per_user",
            "model_gflops_per_second",
            "matmul_gflops_per_second",
            "utilisation",
        ):
            value = float(row[column])
            assert math.isfinite(value) and value > 0, (column, value)
        assert float(row["padding_share"]) == 0.0  # RecBole models: no SID padding counted
        assert float(row["utilisation"]) == pytest.approx(
            float(row["model_gflops_per_second"]) / float(row["matmul_gflops_per_second"]))
        # extrapolated: seconds/step x the length of the full train loader
        steps_per_epoch = int(row["steps_per_epoch"])
        assert steps_per_epoch > 3
        assert float(row["train_seconds_per_epoch"]) == pytest.approx(
            float(row["train_seconds_per_step"]) * steps_per_epoch
        )
        assert int(row["params"]) > 0
        assert int(row["eval_users"]) == 50
        for metric in METRICS:
            assert 0.0 <= float(row[metric]) <= 1.0
    assert float(rows[0]["train_seconds_per_step_ratio"]) == 1.0
    assert float(rows[1]["peak_memory_ratio"]) == pytest.approx(
        float(rows[1]["peak_memory_mb"]) / float(rows[0]["peak_memory_mb"])
    )


def test_same_eval_users_and_seed_for_every_model(ml100k):
    results = json.loads((ml100k["output"] / "results.json").read_text())
    rows = results["rows"]
    assert {r["eval_users_fingerprint"] for r in rows} == {rows[0]["eval_users_fingerprint"]}
    assert {r["eval_users_total"] for r in rows} == {943}
    assert {r["seed"] for r in rows} == {2020}
    assert {r["torch_threads"] for r in rows} == {1}
    assert results["meta"]["budget"] == {"mode": "max_steps", "value": 3}


def test_results_markdown_and_saved_inputs(ml100k):
    markdown = (ml100k["output"] / "results.md").read_text()
    header, table = markdown.split("\n\n| ", 1)
    assert "# Benchmark: ml-100k" in header
    assert "max_steps=3" in header and "--eval_max_users=50" in header
    assert "seed: 2020" in header
    assert "device: cpu" in header
    assert "torch " in header and "recbole 1.2.1" in header
    assert "- date: " in header
    command = "python -m recbole_semprune.benchmark --models=SASRec,BERT4Rec --dataset=ml-100k"
    assert command in header
    lines = ("| " + table).splitlines()
    assert lines[0].startswith("| model | train_steps | train_seconds_per_step |")
    for ratio in ("train_seconds_per_step_ratio", "train_cpu_seconds_per_step_ratio",
                  "peak_memory_ratio", "eval_seconds_ratio"):
        assert f"| {ratio} |" in lines[0]
    assert lines[2].startswith("| SASRec | 3 |") and lines[3].startswith("| BERT4Rec | 3 |")
    assert "1.00x" in lines[2]
    # the table is printed at the end
    assert "| SASRec | 3 |" in ml100k["stdout"] and "| BERT4Rec | 3 |" in ml100k["stdout"]
    for model in ("SASRec", "BERT4Rec"):
        folder = ml100k["output"] / model
        overrides = json.loads((folder / "overrides.json").read_text())
        assert overrides["global"]["hidden_size"] == "16"
        assert overrides["model"] == {}
        result = json.loads((folder / "result.json").read_text())
        assert result["model"] == model and result["train_steps"] == 3
        assert result["config"]["hidden_size"] == 16
        assert (folder / "worker.log").is_file()


def _one_transformer_layer_params():
    from recbole.model.layers import TransformerLayer

    layer = TransformerLayer(2, 16, 32, 0.5, 0.5, "gelu", 1e-12)
    return sum(p.numel() for p in layer.parameters())


def test_per_model_override_reaches_only_that_model(ml100k, tmp_path):
    """--SASRec.n_layers=2 adds one transformer layer to SASRec and nothing to BERT4Rec."""
    status, _, stderr = run_main(
        ["--models=SASRec,BERT4Rec", *ML100K, "--SASRec.n_layers=2", "--in_process",
         f"--output={tmp_path / 'out'}"],
        tmp_path,
    )
    assert status == 0, stderr[-3000:]
    base = {r["model"]: int(r["params"]) for r in read_csv(ml100k["output"] / "results.csv")}
    rows = {r["model"]: r for r in read_csv(tmp_path / "out" / "results.csv")}
    assert int(rows["SASRec"]["params"]) == base["SASRec"] + _one_transformer_layer_params()
    assert int(rows["BERT4Rec"]["params"]) == base["BERT4Rec"]
    sasrec = json.loads((tmp_path / "out" / "SASRec" / "result.json").read_text())
    bert = json.loads((tmp_path / "out" / "BERT4Rec" / "result.json").read_text())
    assert sasrec["config"]["n_layers"] == 2 and bert["config"]["n_layers"] == 1
    assert json.loads((tmp_path / "out" / "SASRec" / "overrides.json").read_text())["model"] == {
        "n_layers": "2"
    }
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "overrides for SASRec only: `n_layers=2`" in markdown


def test_crashing_workers_are_reported_and_the_others_still_run(tmp_path):
    """GRU4Rec's worker process dies building the model, BERT4Rec's in evaluation (after
    training); SASRec's still runs (tiny data, default subprocess workers)."""
    config = tiny_dataset(tmp_path / "data")
    status, stdout, stderr = run_main(
        ["--models=GRU4Rec,SASRec,BERT4Rec", *tiny_flags(tmp_path, config), "--max_steps=1",
         "--GRU4Rec.dropout_prob=2", "--BERT4Rec.metric_decimal_place=x",
         f"--output={tmp_path / 'out'}"],
        tmp_path,
    )
    assert status == 1
    # which model, and the tail of its worker's output
    assert "GRU4Rec failed: worker exited with status 1" in stderr
    assert "dropout probability has to be between 0 and 1" in stderr
    assert (
        "BERT4Rec failed: worker exited with status 1 (after training, during evaluation)"
        in stderr
    )
    rows = {r["model"]: r for r in read_csv(tmp_path / "out" / "results.csv")}
    assert rows["GRU4Rec"]["status"] == "failed" and rows["GRU4Rec"]["train_steps"] == ""
    assert "dropout probability" in rows["GRU4Rec"]["error"]
    assert rows["SASRec"]["status"] == "ok" and int(rows["SASRec"]["train_steps"]) == 1
    assert rows["SASRec"]["train_seconds_per_step_ratio"] == ""  # the baseline failed
    # BERT4Rec failed after training: its training cost is kept, its metrics are not
    assert rows["BERT4Rec"]["status"] == "failed" and int(rows["BERT4Rec"]["train_steps"]) == 1
    assert float(rows["BERT4Rec"]["train_seconds_per_step"]) > 0
    assert rows["BERT4Rec"]["ndcg@5"] == "" and rows["BERT4Rec"]["eval_seconds"] == ""
    assert "TypeError" in rows["BERT4Rec"]["error"]
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| GRU4Rec | **failed** |" in markdown
    assert "| BERT4Rec (**failed**) | 1 |" in markdown
    assert "Failures:" in markdown and "- GRU4Rec: worker exited with status 1" in markdown
    assert "| GRU4Rec | **failed** |" in stdout


def test_unknown_model_fails_before_any_training(tmp_path):
    status, stdout, stderr = run_main(
        ["--models=SASRec,NoSuchRec", *ML100K, f"--output={tmp_path / 'out'}"], tmp_path
    )
    assert status == 2
    assert "Unknown model 'NoSuchRec'" in stderr
    assert "RecBole models:" in stderr and "BERT4Rec" in stderr  # the error lists the models
    assert "[1/2]" not in stderr  # no model started
    assert not (tmp_path / "out").exists()
    assert stdout == ""


def test_missing_dataset_fails_before_any_training(tmp_path):
    status, _, stderr = run_main(
        ["--models=SASRec", "--dataset=amazon-beauty", f"--data_path={tmp_path}", "--max_steps=1"],
        tmp_path,
    )
    assert status == 2
    assert "Dataset 'amazon-beauty' not found" in stderr


def test_epochs_and_max_steps_together_is_an_error():
    """Through `python -m`, as a user types it: argparse's usage error, status 2."""
    process = subprocess.run(
        [sys.executable, "-m", "recbole_semprune.benchmark", "--dataset=ml-100k",
         "--models=SASRec", "--epochs=1", "--max_steps=10"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert process.returncode == 2
    assert "argument --max_steps: not allowed with argument --epochs" in process.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models=SASRec"], "one of the arguments --epochs --max_steps is required"),
        (["--models=SASRec", "--max_steps=0"], "must be >= 1"),
        (["--models=SASRec,SASRec", "--max_steps=1"], "SASRec more than once"),
        (["--models=SASRec", "--max_steps=1", "--baseline=GRU4Rec"], "--baseline=GRU4Rec is not"),
        (["--models=SASRec", "--max_steps=1", "--GRU4Rec.n_layers=2"], "GRU4Rec is not one of"),
        (["--models=SASRec", "--max_steps=1", "--SASRec.seed=1"], "seed must be the same for"),
        (["--models=SASRec", "--max_steps=1", "--model=GRU4Rec"], "model is set by the benchmark"),
        (["--models=SASRec", "--max_steps=1", "--hidden_size"], "are written --key=value"),
        (["--models=SASRec", "--max_steps=1", "--n_layers=1", "--n_layers=2"], "given twice"),
    ],
)
def test_bad_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--dataset=ml-100k", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_overrides_parsing():
    args, global_overrides, model_overrides = parse_args(
        ["--dataset=ml-100k", "--models=SASRec, BERT4Rec", "--max_steps=5", "--hidden_size=64",
         "--BERT4Rec.n_layers=3", "--topk=[5,10]", '--config_files=a.yaml b.yaml']
    )
    assert args.models == ["SASRec", "BERT4Rec"] and args.baseline == "SASRec"
    assert args.max_steps == 5 and args.epochs is None
    assert args.config_files == ["a.yaml", "b.yaml"]
    assert dict(global_overrides) == {"hidden_size": "64", "topk": "[5,10]"}
    assert model_overrides == {"SASRec": {}, "BERT4Rec": {"n_layers": "3"}}


def tiny_dataset(folder):
    """30 users x 8 interactions over 20 items, and the leave-one-out protocol as a config file."""
    rows = [(u, (u * 3 + k) % 20, 1000 * u + k) for u in range(30) for k in range(8)]
    write_atomic(folder / "bench-tiny", "bench-tiny", "inter",
                 ["user_id:token", "item_id:token", "timestamp:float"], rows)
    config = folder / "bench-tiny.yaml"
    config.write_text(
        "load_col: {inter: [user_id, item_id, timestamp]}\n"
        "eval_args: {split: {LS: valid_and_test}, order: TO, group_by: user, mode: full}\n"
        "train_neg_sample_args: ~\nMAX_ITEM_LIST_LENGTH: 10\n"
        "metrics: [Recall, NDCG]\ntopk: [5]\nvalid_metric: NDCG@5\n"
    )
    return config


def tiny_flags(tmp_path, config):
    return [
        "--dataset=bench-tiny", f"--data_path={tmp_path / 'data'}", f"--config_files={config}",
        *[f for f in TINY if not f.startswith("--train_batch_size")], "--train_batch_size=64",
    ]


def test_epochs_budget_measures_full_epochs_with_validation(tmp_path):
    config = tiny_dataset(tmp_path / "data")
    status, _, stderr = run_main(
        ["--models=SASRec", *tiny_flags(tmp_path, config), "--epochs=2", "--valid",
         "--in_process", f"--output={tmp_path / 'out'}"],
        tmp_path,
    )
    assert status == 0, stderr[-3000:]
    (row,) = read_csv(tmp_path / "out" / "results.csv")
    assert row["epoch_time_source"] == "measured"
    assert int(row["train_steps"]) == 2 * int(row["steps_per_epoch"])
    assert float(row["train_seconds_per_epoch"]) == pytest.approx(float(row["train_seconds"]) / 2)
    assert 0.0 <= float(row["valid_ndcg@5"]) <= 1.0 and 0.0 <= float(row["ndcg@5"]) <= 1.0
    result = json.loads((tmp_path / "out" / "SASRec" / "result.json").read_text())
    assert [s["epoch"] for s in result["epoch_stats"]] == [0, 1]
    assert result["eval_users"] == result["eval_users_total"] == 30
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "2 full epoch(s) per model" in markdown and "all 30 test users" in markdown
    # the validation curve: one point per epoch, at the training time spent so far
    curve = read_csv(tmp_path / "out" / "curves.csv")
    assert [(c["model"], int(c["epoch"])) for c in curve] == [("SASRec", 0), ("SASRec", 1)]
    seconds = [float(c["train_seconds"]) for c in curve]
    assert 0 < seconds[0] < seconds[1] == pytest.approx(float(row["train_seconds"]))
    assert float(curve[1]["ndcg@5"]) == pytest.approx(float(row["valid_ndcg@5"]))
    for png in ("results.png", "tradeoff.png", "curves.png"):
        assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"


def test_resume_reuses_finished_models_with_the_same_settings(tmp_path):
    config = tiny_dataset(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["--models=SASRec,GRU4Rec", *tiny_flags(tmp_path, config), "--max_steps=2",
            "--in_process", f"--output={out}"]
    status, _, stderr = run_main(argv, tmp_path)
    assert status == 0, stderr[-3000:]
    first = read_csv(out / "results.csv")
    (out / "GRU4Rec" / "result.json").unlink()  # as if the run had stopped during GRU4Rec
    status, stdout, stderr = run_main(argv + ["--resume"], tmp_path)
    assert status == 0, stderr[-3000:]
    assert "SASRec: finished in an earlier run with the same settings, reused" in stderr
    assert "GRU4Rec: finished" not in stderr
    again = read_csv(out / "results.csv")
    assert again[0] == first[0]  # SASRec's row untouched
    assert again[1]["model"] == "GRU4Rec" and again[1]["status"] == "ok"
    assert stdout.count("progress: epoch 1/1, step 2/2") == 1  # only GRU4Rec trained again
    # other settings: nothing is reused
    status, _, stderr = run_main(argv + ["--resume", "--SASRec.n_layers=2"], tmp_path)
    assert status == 0 and "SASRec: finished" not in stderr


def test_resume_continues_an_interrupted_model_from_its_last_epoch(tmp_path, monkeypatch):
    """A model stopped after its epoch 1 (of 3) goes on at epoch 2 with ``--resume``: the same
    test metrics and validation curve as an uninterrupted benchmark, epochs 0 and 1 not
    trained again; the resume state is removed with the result."""
    from recbole_semprune.trainer import Trainer

    config = tiny_dataset(tmp_path / "data")
    argv = ["--models=SASRec", *tiny_flags(tmp_path, config), "--epochs=3", "--valid",
            "--in_process"]
    status, _, stderr = run_main(argv + [f"--output={tmp_path / 'whole'}"], tmp_path)
    assert status == 0, stderr[-3000:]
    whole = json.loads((tmp_path / "whole" / "SASRec" / "result.json").read_text())
    assert not (tmp_path / "whole" / "SASRec" / "last.pth").exists()

    out = tmp_path / "out"
    write = Trainer._write_last_checkpoint

    def stop_after_epoch_1(self, epoch):
        write(self, epoch)
        if epoch == 1:
            raise RuntimeError("interrupted")

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_write_last_checkpoint", stop_after_epoch_1)
        status, _, stderr = run_main(argv + [f"--output={out}"], tmp_path)
    assert status == 1 and "interrupted" in stderr
    assert (out / "SASRec" / "last.pth").exists()

    status, stdout, stderr = run_main(argv + [f"--output={out}", "--resume"], tmp_path)
    assert status == 0, stderr[-3000:]
    assert "SASRec: resumed from its last completed epoch" in stderr
    assert "progress: epoch 3/3" in stdout and "progress: epoch 2/3" not in stdout
    resumed = json.loads((out / "SASRec" / "result.json").read_text())
    assert resumed["resumed_at_epoch"] == 2
    assert [s["epoch"] for s in resumed["epoch_stats"]] == [0, 1, 2]
    assert resumed["test_result"] == whole["test_result"]
    assert [v["result"] for v in resumed["valid_curve"]] == [v["result"] for v in whole["valid_curve"]]
    assert not (out / "SASRec" / "last.pth").exists()


def test_resume_needs_the_output_folder(tmp_path):
    config = tiny_dataset(tmp_path / "data")
    status, _, stderr = run_main(
        ["--models=SASRec", *tiny_flags(tmp_path, config), "--max_steps=1", "--resume"],
        tmp_path,
    )
    assert status == 2 and "--resume needs the --output folder" in stderr


def test_max_steps_is_a_trainer_budget_across_epochs(tiny_data):
    """``max_steps`` (config key): epochs go on until N optimisation steps, the last one cut
    short; for RecBole's Pop too (its TraditionalTrainer records the same figures)."""
    from recbole_semprune.quick_start import run_recbole_semprune

    # 120 users x 9 training rows in batches of 512: 3 steps per epoch
    result = run_recbole_semprune(model="SASRec", dataset="tiny",
                                  config_dict=dict(tiny_data, epochs=10, max_steps=7))
    assert [(s["epoch"], s["steps"]) for s in result["epoch_stats"]] == [(0, 3), (1, 3), (2, 1)]
    pop = run_recbole_semprune(model="Pop", dataset="tiny", config_dict=dict(tiny_data, max_steps=2))
    assert [s["steps"] for s in pop["epoch_stats"]] == [2]


def test_pop_runs_in_the_benchmark(tmp_path):
    config = tiny_dataset(tmp_path / "data")
    status, _, stderr = run_main(
        ["--models=Pop,SASRec", *tiny_flags(tmp_path, config), "--max_steps=2", "--in_process",
         f"--output={tmp_path / 'out'}"], tmp_path)
    assert status == 0, stderr[-3000:]
    pop, sasrec = read_csv(tmp_path / "out" / "results.csv")
    assert pop["status"] == "ok" and int(pop["train_steps"]) == 2 and sasrec["status"] == "ok"


def test_plot_is_optional(ml100k, tmp_path, monkeypatch, caplog):
    rows = json.loads((ml100k["output"] / "results.json").read_text())["rows"]
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
        with caplog.at_level("INFO", logger="recbole_semprune.benchmark"):
            assert report.write_plot(str(tmp_path / "a.png"), rows) is False
    assert "matplotlib is not installed: skipping a.png" in caplog.text
    assert not (tmp_path / "a.png").exists()
    pytest.importorskip("matplotlib")
    assert report.write_plot(str(tmp_path / "b.png"), rows, title="t") is True
    assert (tmp_path / "b.png").stat().st_size > 0
    assert (ml100k["output"] / "results.png").is_file()


def test_first_users_loader_keeps_the_first_users_in_loader_order(tmp_path, monkeypatch):
    from recbole.data import data_preparation

    from recbole_semprune.benchmark.worker import build_config, first_users_loader
    from recbole_semprune.utils import create_dataset

    config_file = tiny_dataset(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    config = build_config({
        "model": "SASRec", "dataset": "bench-tiny", "config_files": [str(config_file)],
        "config_dict": {"data_path": str(tmp_path / "data"), "eval_batch_size": 4,
                        "state": "WARNING"},
    })
    _, _, test_data = data_preparation(config, create_dataset(config))
    uid = config["USER_ID_FIELD"]

    def users(loader):
        return [u for batch in loader for u in batch[0][uid].tolist()]

    subset, kept = first_users_loader(test_data, 7)
    assert users(subset) == users(test_data)[:7] == list(kept)
    assert type(subset) is type(test_data) and len(subset) == 2  # 7 users, batches of 4
    same, kept = first_users_loader(test_data, 1000)
    assert same is test_data and len(kept) == 30


def test_in_process_failure_after_training_keeps_the_training_figures(tmp_path):
    config = tiny_dataset(tmp_path / "data")
    status, _, stderr = run_main(
        ["--models=SASRec", *tiny_flags(tmp_path, config), "--max_steps=2", "--in_process",
         "--SASRec.metric_decimal_place=x", f"--output={tmp_path / 'out'}"],
        tmp_path,
    )
    assert status == 1
    assert "SASRec failed: TypeError" in stderr
    (row,) = read_csv(tmp_path / "out" / "results.csv")
    assert row["status"] == "failed" and int(row["train_steps"]) == 2
    assert "during evaluation" in row["error"]
    assert "ndcg@5" not in row  # no model has test metrics: no metric columns
    assert "Traceback" in (tmp_path / "out" / "SASRec" / "worker.log").read_text()
    trained = json.loads((tmp_path / "out" / "SASRec" / "trained.json").read_text())
    assert trained["status"] == "trained" and trained["train_steps"] == 2


def test_pruning_models_report_their_kept_tokens(tmp_path):
    config = tiny_dataset(tmp_path / "data")
    sid = ["--sid_embedding=collaborative", "--sid_levels=2", "--sid_codebook_size=4",
           "--beam_size=5", "--n_dec_layers=1", "--head_size=8", "--prune_layer=1",
           "--keep_ratio=0.5", "--keep_ratio_mode=per_history"]
    status, _, stderr = run_main(
        ["--models=TIGER,RASTP", *tiny_flags(tmp_path, config), *sid, "--max_steps=2",
         "--in_process", "--baseline=TIGER", f"--output={tmp_path / 'out'}"],
        tmp_path,
    )
    assert status == 0, stderr[-3000:]
    tiger, rastp = read_csv(tmp_path / "out" / "results.csv")
    assert tiger["kept_fraction"] == ""  # no pruning, no figure
    # per_history keeps int(n / 2) of the n real tokens of every history
    assert 0.3 < float(rastp["kept_fraction"]) <= 0.5
    assert float(rastp["kept_tokens_per_history"]) < float(rastp["tokens_per_history"])
    assert "%" in (tmp_path / "out" / "results.md").read_text()


def test_labelled_variants_of_one_model(tmp_path):
    config = tiny_dataset(tmp_path / "data")
    status, _, stderr = run_main(
        ["--models=SASRec,deep=SASRec", *tiny_flags(tmp_path, config), "--max_steps=1",
         "--in_process", "--deep.n_layers=2", f"--output={tmp_path / 'out'}"],
        tmp_path,
    )
    assert status == 0, stderr[-3000:]
    plain, deep = read_csv(tmp_path / "out" / "results.csv")
    assert (plain["model"], deep["model"]) == ("SASRec", "deep")
    assert int(deep["params"]) > int(plain["params"])  # the override reached the variant only
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["model_class"] for r in result["rows"]] == ["SASRec", "SASRec"]


@pytest.mark.parametrize("models, message", [
    ("SASRec,SASRec", "lists SASRec more than once"),
    ("a=SASRec,a=BERT4Rec", "lists a more than once"),
    ("bad label=SASRec", "write MODEL or LABEL=MODEL"),
])
def test_bad_model_lists(models, message, capsys):
    with pytest.raises(SystemExit):
        parse_args([f"--models={models}", "--dataset=ml-100k", "--max_steps=1"])
    assert message in capsys.readouterr().err
