"""Training that survives interruption: a run stopped at any moment (SIGKILL included) and
resumed ends exactly as the uninterrupted run (recbole_semprune.checkpoint, trainer.Trainer)."""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY_SID
from recbole_semprune import checkpoint
from recbole_semprune.checkpoint import ResumeError
from recbole_semprune.compat import load_checkpoint
from recbole_semprune.config import Config
from recbole_semprune.quick_start import resume_state, run_recbole_semprune
from recbole_semprune.trainer import Trainer

# a few epochs, validated after each, with early stopping able to act
EPOCHS = {"epochs": 3, "eval_step": 1, "stopping_step": 2}
SID_SMALL = dict(TINY_SID, head_size=8, MAX_ITEM_LIST_LENGTH=5)


class Interrupted(Exception):
    pass


def last_files(folder):
    return glob.glob(os.path.join(folder, f"*{checkpoint.LAST_SUFFIX}"))


def best_checkpoint(result):
    saved = load_checkpoint(result["saved_model_file"], map_location="cpu")
    return saved["epoch"], saved["state_dict"]


def assert_same_run(resumed, uninterrupted):
    assert dict(resumed["test_result"]) == dict(uninterrupted["test_result"])
    assert dict(resumed["best_valid_result"]) == dict(uninterrupted["best_valid_result"])
    assert resumed["best_valid_score"] == uninterrupted["best_valid_score"]
    epoch_a, weights_a = best_checkpoint(resumed)
    epoch_b, weights_b = best_checkpoint(uninterrupted)
    assert epoch_a == epoch_b
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key


@pytest.mark.parametrize("model, schedule", [
    ("TIGER", {}), ("TIGER", {"lr_schedule": "cosine", "lr_warmup_steps": 2})])
def test_interrupted_sid_run_resumes_to_the_same_result(model, schedule, tiny_data, monkeypatch):
    """Stopped right after epoch 0's resume state is written, then ``resume=True``: the same
    test metrics, best epoch and best weights as the uninterrupted run; the resumed model takes
    the checkpoint's semantic IDs (rebuilding them fails the test). With a learning-rate
    schedule, the resumed epoch goes on at the rate of its step."""
    config = {**tiny_data, **SID_SMALL, **EPOCHS, "epochs": 2, **schedule}
    uninterrupted = run_recbole_semprune(model=model, dataset="tiny", config_dict=config)
    folder = tiny_data["checkpoint_dir"]
    assert last_files(folder) == []  # removed once the run has its test result

    write = Trainer._write_last_checkpoint

    def stop_after_epoch_0(self, epoch):
        write(self, epoch)
        raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_write_last_checkpoint", stop_after_epoch_0)
        with pytest.raises(Interrupted):
            run_recbole_semprune(model=model, dataset="tiny", config_dict=config)
    (last,) = last_files(folder)
    state = load_checkpoint(last, map_location="cpu")
    assert state["epoch"] == 0 and not state["finished"]
    assert [s["epoch"] for s in state["epoch_stats"]] == [0]
    assert torch.equal(state["state_dict"]["codes"], best_checkpoint(uninterrupted)[1]["codes"])

    def no_rebuild(*args, **kwargs):
        raise AssertionError("semantic IDs were rebuilt")

    monkeypatch.setattr("recbole_semprune.model.sid_recommender.build_semantic_ids", no_rebuild)
    epochs_trained = []
    train_epoch = Trainer._train_epoch
    monkeypatch.setattr(
        Trainer, "_train_epoch",
        lambda self, data, epoch, *a, **k: epochs_trained.append(epoch) or train_epoch(self, data, epoch, *a, **k),
    )
    resumed = run_recbole_semprune(model=model, dataset="tiny", config_dict={**config, "resume": True})
    assert epochs_trained == [1]
    assert_same_run(resumed, uninterrupted)
    assert resumed["saved_model_file"] == last[: -len(checkpoint.LAST_SUFFIX)] + ".pth"
    assert last_files(folder) == []


CHILD = r"""
import json, os, signal, sys
config, kill_at = json.loads(sys.argv[1])
sys.argv = ["child"]  # RecBole's Config reads the command line
import torch
from recbole_semprune import checkpoint
from recbole_semprune.quick_start import resume_state, run_recbole_semprune

save = torch.save
writes = []

def save_then_die(obj, f, *args, **kwargs):
    # the resume state after epoch `kill_at`: killed with half of it written
    if isinstance(obj, dict) and obj.get("format") == checkpoint.FORMAT and obj["epoch"] == kill_at:
        save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return save(obj, f, *args, **kwargs)

torch.save = save_then_die
run_recbole_semprune(model="SASRec", dataset="tiny", config_dict=config)
"""


def test_sigkilled_run_resumes_to_the_same_result(tiny_data, monkeypatch):
    """A real SIGKILL of a training process while it writes a resume state: the state before
    stays whole, and the resumed run (``resume`` = that file's path) ends as the uninterrupted
    one: test metrics, best epoch, best weights, and the epoch early stopping ends on.

    At this learning rate the valid NDCG@10 of the tiny data peaks at epoch 4 and falls at 5
    and 6, so with ``stopping_step: 1`` training stops after epoch 6 of 10. The
    process is killed while it writes that last state: the surviving one, after epoch 5, has an
    early-stopping count of 1 and a best epoch (4) that is not its last."""
    config = {**tiny_data, "epochs": 10, "eval_step": 1, "stopping_step": 1, "learning_rate": 0.05}
    folder = tiny_data["checkpoint_dir"]
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([config, 6])],
        cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300,
    )
    assert child.returncode == -9, child.stderr[-2000:]
    (last,) = last_files(folder)
    state = load_checkpoint(last, map_location="cpu")  # the whole earlier state
    assert (state["epoch"], state["cur_step"], state["best_checkpoint"]["epoch"]) == (5, 1, 4)
    assert glob.glob(os.path.join(folder, ".*.part"))  # the half-written one never replaced it

    uninterrupted = run_recbole_semprune(model="SASRec", dataset="tiny", config_dict=config)
    epochs_trained = []
    train_epoch = Trainer._train_epoch
    monkeypatch.setattr(
        Trainer, "_train_epoch",
        lambda self, data, epoch, *a, **k: epochs_trained.append(epoch) or train_epoch(self, data, epoch, *a, **k),
    )
    resumed = run_recbole_semprune(model="SASRec", dataset="tiny",
                                   config_dict={**config, "resume": last})
    assert epochs_trained == [6]  # and early stopping ends the run there, as it did
    assert_same_run(resumed, uninterrupted)


def test_finished_training_resumes_to_testing_only(tiny_data, monkeypatch):
    """Killed after training, while testing: the resume state says training is over, so the
    resumed run trains nothing and tests the best epoch's weights."""
    config = {**tiny_data, **EPOCHS}
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "remove_last_checkpoint", lambda self: None)
        uninterrupted = run_recbole_semprune(model="SASRec", dataset="tiny", config_dict=config)
    (last,) = last_files(tiny_data["checkpoint_dir"])
    assert load_checkpoint(last, map_location="cpu")["finished"]
    monkeypatch.setattr(Trainer, "_train_epoch", lambda *a, **k: pytest.fail("trained again"))
    resumed = run_recbole_semprune(model="SASRec", dataset="tiny",
                                   config_dict={**config, "resume": True})
    assert_same_run(resumed, uninterrupted)


def write_state(tiny_data, model="SASRec", **overrides):
    """A resume state of a short interrupted run (one epoch), its path."""
    config = {**tiny_data, "epochs": 2, **overrides}
    write = Trainer._write_last_checkpoint

    def stop(self, epoch):
        write(self, epoch)
        raise Interrupted

    Trainer._write_last_checkpoint = stop
    try:
        with pytest.raises(Interrupted):
            run_recbole_semprune(model=model, dataset="tiny", config_dict=config)
    finally:
        Trainer._write_last_checkpoint = write
    (last,) = last_files(tiny_data["checkpoint_dir"])
    return last


def resume_error(tiny_data, model="SASRec", **overrides):
    config = Config(model=model, dataset="tiny", config_dict={**tiny_data, **overrides})
    with pytest.raises(ResumeError) as error:
        resume_state(config)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_resume_errors_are_one_line_and_specific(tiny_data):
    assert "nothing to resume" in resume_error(tiny_data, resume=True)
    assert "no file" in resume_error(tiny_data, resume="saved/nowhere-last.pth")
    assert "must be True, False or the path" in resume_error(tiny_data, resume=3)
    assert "S3RecTrainer" in resume_error(tiny_data, model="S3Rec", resume=True)

    last = write_state(tiny_data)
    best = last[: -len(checkpoint.LAST_SUFFIX)] + ".pth"
    assert os.path.isfile(best)
    assert "is not a resume state" in resume_error(tiny_data, resume=best)
    message = resume_error(tiny_data, resume=True, epochs=2, learning_rate=0.01)
    assert "learning_rate 0.001 there, 0.01 here" in message and "resume=False" in message
    assert "learning_rate" in resume_error(tiny_data, resume=last, epochs=2, learning_rate=0.01)
    assert "is a SASRec run on tiny, not BERT4Rec" in resume_error(tiny_data, model="BERT4Rec",
                                                                   resume=last)
    # what may change: more epochs, another device or progress display, its own key
    config = Config(model="SASRec", dataset="tiny",
                    config_dict={**tiny_data, "resume": True, "epochs": 5, "show_progress": True})
    path, state = resume_state(config)
    assert path == last and state["epoch"] == 0


def test_cli_resume_error_is_one_line(tiny_data):
    result = subprocess.run(
        [sys.executable, str(REPO / "run_recbole_semprune.py"), "--model=SASRec",
         "--dataset=tiny", f"--data_path={tiny_data['data_path']}",
         f"--checkpoint_dir={tiny_data['checkpoint_dir']}", "--train_neg_sample_args=None",
         "--resume=True"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "resume=True: nothing to resume" in lines[0]
    assert "Traceback" not in result.stderr


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = str(tmp_path / "state.pth")
    checkpoint.atomic_save({"value": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        checkpoint.atomic_save({"value": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint(path) == {"value": 1}
    assert os.listdir(tmp_path) == ["state.pth"]  # no partial file left behind
    checkpoint.atomic_save({"value": 3}, path)
    assert load_checkpoint(path) == {"value": 3}


def test_key_added_since_the_checkpoint_resumes_only_at_its_default():
    """A run saved before a key existed (fast_dropout, say) resumes when this run leaves the
    key at its library default, and is another run when this run sets it otherwise."""
    from types import SimpleNamespace

    defaults = {"fast_dropout": False, "learning_rate": 0.001}
    saved = SimpleNamespace(final_config_dict={"learning_rate": 0.001})

    def now(**settings):
        return SimpleNamespace(final_config_dict={**defaults, **settings},
                               internal_config_dict=defaults)

    assert checkpoint.config_differences(saved, now()) == []
    assert checkpoint.config_differences(saved, now(fast_dropout=True)) == [
        ("fast_dropout", None, True)]
    # a key the saved run had is compared as before, default or not
    saved_with = SimpleNamespace(final_config_dict={"learning_rate": 0.001, "fast_dropout": True})
    assert checkpoint.config_differences(saved_with, now()) == [("fast_dropout", True, False)]


def test_a_key_whose_default_changed_resumes_at_its_earlier_behaviour(tiny_data):
    """sid_collaborative_weight came with default 0 (content-only codes) and became 0.5 later:
    a run saved before the key existed ran at 0, so it resumes at 0, not at today's default,
    and a checkpoint of it reloads at 0."""
    from types import SimpleNamespace

    from recbole_semprune.config import add_keys_added_since

    assert checkpoint.earlier_behaviour("sid_collaborative_weight", 0.5) == 0.0
    assert checkpoint.earlier_behaviour("fast_dropout", False) is False
    defaults = {"sid_collaborative_weight": 0.5}
    saved = SimpleNamespace(final_config_dict={})

    def now(**settings):
        return SimpleNamespace(final_config_dict={**defaults, **settings},
                               internal_config_dict=defaults)

    assert checkpoint.config_differences(saved, now(sid_collaborative_weight=0.0)) == []
    assert checkpoint.config_differences(saved, now()) == [("sid_collaborative_weight", None, 0.5)]
    from recbole_semprune.config import Config

    config = Config(model="TIGER", dataset="tiny", config_dict=tiny_data)
    assert config["sid_collaborative_weight"] == 0.5  # today's default
    del config.final_config_dict["sid_collaborative_weight"]  # as in an earlier checkpoint
    assert "sid_collaborative_weight" in add_keys_added_since(config)
    assert config["sid_collaborative_weight"] == 0.0
