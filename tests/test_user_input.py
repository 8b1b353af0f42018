"""Fail fast, in one line: a bad setting, config file or data file ends the run script with one
``error:`` line and exit status 2, before the dataset is loaded (settings) or the semantic IDs
are built (data-sized settings), and a failed run leaves nothing on disk."""

import os
import subprocess
import sys

import pytest

from conftest import REPO, load_script, make_tiny_dataset, write_atomic


def tree(root):
    """Every path under ``root`` (files and folders)."""
    return {
        os.path.relpath(os.path.join(folder, name), root)
        for folder, folders, files in os.walk(root)
        for name in folders + files
    }


@pytest.fixture
def cli(workdir, monkeypatch, capsys):
    """``cli(*args, loads=False)`` runs the script's main() on the tiny dataset (no dataset
    config: its fields come from the headers) and returns ``(exit status, stderr)``; it fails
    the test if the run changed any file under the temporary folder, if the dataset was loaded
    (unless ``loads``) or if semantic IDs were built."""
    data_path = make_tiny_dataset(workdir / "data")
    main = load_script("run_recbole_semprune.py").main

    def never(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} before the error")

        return fail

    monkeypatch.setattr("recbole_semprune.model.sid_recommender.build_semantic_ids",
                        never("semantic IDs were built"))

    def run(*args, loads=False):
        if not loads:
            monkeypatch.setattr("recbole_semprune.quick_start.create_dataset",
                                never("the dataset was loaded"))
        dataset = [] if any(arg.startswith("--dataset=") for arg in args) else ["--dataset=tiny"]
        argv = ["run_recbole_semprune.py", *dataset, f"--data_path={data_path}",
                "--epochs=1", "--show_progress=False", *args]
        monkeypatch.setattr(sys, "argv", argv)
        before = tree(workdir)
        with pytest.raises(SystemExit) as stop:
            main()
        assert tree(workdir) == before, "the failed run changed files on disk"
        return stop.value.code, capsys.readouterr().err

    return run


def one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("run_recbole_semprune.py: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model=RASTP", "--keep_ratio=0"], "keep_ratio=0 must be a number or a fraction 'a/b' in (0, 1]"),
        (["--model=RASTP", "--prune_layer=9"], "prune_layer=9 must be an int in [1, 4]"),
        (["--model=TIGER", "--beam_size=5"], "beam_size=5 is smaller than the largest topk=20"),
        (["--model=TIGER", "--sid_levels=0"], "sid_levels=0 must be an int >= 1"),
        (["--model=STAMPSID", "--prune_scorer=nope"], "unknown prune_scorer 'nope'"),
        (["--model=Rec2PM", "--segment_len=60"], "segment_len=60 exceeds MAX_ITEM_LIST_LENGTH=50"),
        (["--model=DecoderOnlySID", "--sid_embedding=bert"], "sid_embedding='bert' must be one of"),
        (["--model=STAMPSID", "--multistep_steps=-1"], "multistep_steps=-1 must be an int >= 0"),
        (["--model=STAMPSID", "--map_steps=0"], "map_steps was renamed multistep_steps"),
        (["--model=TIGER", "--retrieval_weight=-1"], "retrieval_weight=-1 must be a number >= 0"),
        (["--model=RASTP", "--retrieval_items=ids"], "retrieval_items='ids' must be one of both"),
        (["--model=Rec2PM", "--retrieval_weight=0.5"], "retrieval_weight must be 0 for Rec2PM"),
        (["--model=RASTP", "--backbone=rnn"], "backbone='rnn' must be one of tiger, decoder_only"),
        (["--model=RASTP", "--backbone=decoder_only", "--prune_layer=9"], "must be an int in [1, 4]"),
        (["--model=TIGER", "--sid_text_fields=[title, plot]"], "sid_text_fields names ['plot']"),
        (["--model=SASRec", "--train_rows=user"], "SASRec uses RecBole's own dataset"),
        (["--model=BPR", "--train_neg_sample_args=None"], "BPR trains on (positive, negative) pairs"),
        (["--model=SASRec", "--lr_schedule=linear"], "lr_schedule='linear' must be one of constant, cosine, inverse_sqrt"),
        (["--model=TIGER", "--lr_schedule=inverse_sqrt"], "lr_schedule=inverse_sqrt needs lr_warmup_steps >= 1"),
        (["--model=TIGER", "--lr_warmup_steps=-5"], "lr_warmup_steps=-5 must be an int >= 0"),
        (["--model=SASRec", "--max_steps=0"], "max_steps must be a positive int or None, got 0"),
        (["--model=SASrec"], "Unknown model 'SASrec'"),
    ],
)
def test_bad_setting_is_one_line_before_loading(cli, args, expected):
    status, err = cli(*args)
    assert status == 2
    assert expected in err  # (the unknown model's error lists the models on more lines)
    if "SASrec" not in expected:
        one_error_line(err)


def test_missing_config_file(cli):
    status, err = cli("--model=TIGER", "--config_files=nowhere.yaml")
    assert status == 2
    assert "config file 'nowhere.yaml' not found" in one_error_line(err)


def test_config_file_that_is_not_yaml(cli, workdir):
    (workdir / "bad.yaml").write_text("epochs: 3\nlearning_rate: [0.1\n")
    status, err = cli("--model=TIGER", "--config_files=bad.yaml")
    assert status == 2
    line = one_error_line(err)
    assert "config file 'bad.yaml', line 3: not valid yaml" in line


def test_non_numeric_timestamp_names_file_field_and_line(cli, workdir):
    path = workdir / "data" / "tiny" / "tiny.inter"
    lines = path.read_text().splitlines()
    lines[5] = lines[5].rsplit("\t", 1)[0] + "\tyesterday"
    path.write_text("\n".join(lines) + "\n")
    status, err = cli("--model=TIGER")
    assert status == 2
    line = one_error_line(err)
    assert f"{path}, field timestamp, line 6: 'yesterday' is not a number" in line


def test_header_without_type(cli, workdir):
    path = workdir / "data" / "tiny" / "tiny.item"
    text = path.read_text().replace("genre:token", "genre", 1)
    path.write_text(text)
    status, err = cli("--model=SASRec")
    assert status == 2
    assert "column 'genre' needs a type" in one_error_line(err)


def test_inter_file_without_time(cli, workdir):
    folder = workdir / "data" / "notime"
    write_atomic(folder, "notime", "inter", ["user_id:token", "item_id:token"],
                 [("u1", "i1"), ("u1", "i2")])
    status, err = cli("--model=SASRec", "--dataset=notime")
    assert status == 2
    line = one_error_line(err)
    assert "has no field 'timestamp' (TIME_FIELD" in line and "set TIME_FIELD" in line


def test_load_col_that_leaves_out_the_time(cli):
    status, err = cli("--model=TIGER", "--load_col={'inter': ['user_id', 'item_id']}")
    assert status == 2
    assert "load_col does not load 'timestamp' (TIME_FIELD" in one_error_line(err)


def test_codebook_set_larger_than_the_items(cli):
    """Known only once the data is loaded: still one line, no semantic IDs built, no log left."""
    status, err = cli("--model=TIGER", "--sid_codebook_size=100", loads=True)
    assert status == 2
    line = one_error_line(err)
    assert "sid_codebook_size=100 is larger than the number of items (60)" in line


def test_cli_error_in_a_fresh_process(workdir):
    """The same through a real process: exit status 2, one line, no traceback."""
    result = subprocess.run(
        [sys.executable, str(REPO / "run_recbole_semprune.py"), "--model=TIGER",
         "--config_files=missing.yaml"],
        capture_output=True, text=True, cwd=workdir,
    )
    assert result.returncode == 2
    one_error_line(result.stderr)
    assert os.listdir(workdir) == []
