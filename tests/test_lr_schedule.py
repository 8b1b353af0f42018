"""The learning-rate schedule (config keys lr_schedule, lr_warmup_steps; trainer.LRSchedule):
the rate of every optimisation step, for plugin and RecBole models, and exact resumes."""

import pytest

from conftest import TINY_SID, build_tiny
from recbole_semprune.quick_start import run_recbole_semprune
from recbole_semprune.trainer import LRSchedule, Trainer


def schedule(kind, warmup):
    return LRSchedule({"lr_schedule": kind, "lr_warmup_steps": warmup})


def test_factors_of_each_schedule():
    cosine = schedule("cosine", 4)
    assert [cosine.factor(k, 14) for k in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert cosine.factor(5, 14) == 1.0  # the decay starts after the warm-up
    assert cosine.factor(10, 14) == pytest.approx(0.5)  # half-way through the 10 decay steps
    assert 0 < cosine.factor(14, 14) < 0.03  # the last step of the budget, nearly 0
    assert cosine.factor(20, 14) == 0.0  # past the budget (never reached by the trainer)
    inverse = schedule("inverse_sqrt", 100)
    assert inverse.factor(50, 10**6) == 0.5
    assert inverse.factor(400, 10**6) == pytest.approx(0.5)
    assert inverse.factor(10_000, 10**6) == pytest.approx(0.1)
    assert schedule("constant", 0).factor(7, 10) == 1.0 and not schedule("constant", 0).active
    warm = schedule("constant", 3)
    assert warm.active and [warm.factor(k, 10) for k in (1, 3, 9)] == [pytest.approx(1 / 3), 1.0, 1.0]


def rates_per_step(monkeypatch):
    """The learning rate the optimiser holds at each training step (after the schedule set it)."""
    seen = []
    set_rate = Trainer._schedule_learning_rate

    def record(self, step):
        set_rate(self, step)
        seen.append((step, self.optimizer.param_groups[0]["lr"]))

    monkeypatch.setattr(Trainer, "_schedule_learning_rate", record)
    return seen


@pytest.mark.parametrize("model, sizes", [("SASRec", {}), ("TIGER", TINY_SID)])
def test_every_step_gets_its_scheduled_rate(model, sizes, tiny_data, monkeypatch):
    """Over two epochs of a cosine schedule with warm-up: step k has learning_rate x factor(k)
    of a budget of epochs x batches per epoch, decaying every step after the warm-up; RecBole's SASRec and a SID model."""
    seen = rates_per_step(monkeypatch)
    config = {**tiny_data, **sizes, "epochs": 2, "learning_rate": 0.01,
              "lr_schedule": "cosine", "lr_warmup_steps": 2}
    built = build_tiny(model, config)
    built.trainer.fit(built.train, built.valid, saved=False)
    total = 2 * len(built.train)
    assert total >= 4
    assert [step for step, _ in seen] == list(range(1, total + 1))
    expected = [0.01 * schedule("cosine", 2).factor(k, total) for k in range(1, total + 1)]
    assert [rate for _, rate in seen] == pytest.approx(expected)
    after_warmup = [rate for _, rate in seen[2:]]
    assert seen[0][1] == pytest.approx(0.005) and after_warmup[0] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(after_warmup, after_warmup[1:]))  # decays every step


def test_default_leaves_recboles_rate(tiny_data, monkeypatch):
    seen = rates_per_step(monkeypatch)
    built = build_tiny("SASRec", {**tiny_data, "learning_rate": 0.003})
    built.trainer.fit(built.train, built.valid, saved=False)
    assert len(seen) == len(built.train) and {rate for _, rate in seen} == {0.003}


def test_max_steps_is_the_cosine_budget(tiny_data, monkeypatch):
    seen = rates_per_step(monkeypatch)
    config = {**tiny_data, "epochs": 50, "max_steps": 5, "learning_rate": 0.01, "lr_schedule": "cosine"}
    built = build_tiny("SASRec", config)
    built.trainer.fit(built.train, built.valid, saved=False)
    assert [rate for _, rate in seen] == pytest.approx(
        [0.01 * schedule("cosine", 0).factor(k, 5) for k in range(1, 6)])


def test_schedule_is_part_of_the_run_result(tiny_data):
    """The schedule changes training (else it is not applied): another test result."""
    config = {**tiny_data, **TINY_SID, "epochs": 2, "learning_rate": 0.01}
    plain = run_recbole_semprune(model="TIGER", dataset="tiny", config_dict=config, saved=False)
    warm = run_recbole_semprune(model="TIGER", dataset="tiny", saved=False,
                                config_dict={**config, "lr_schedule": "inverse_sqrt", "lr_warmup_steps": 3})
    assert dict(plain["best_valid_result"]) != dict(warm["best_valid_result"])


def test_checkpoint_from_before_the_schedule_keys_reloads(tiny_data, monkeypatch):
    """A checkpoint whose config lacks the keys added since (here the schedule keys, as in the
    runs trained before they existed) reloads with them at their defaults and evaluates to the
    run's own test result."""
    import torch

    from conftest import reload_and_evaluate
    from recbole_semprune.compat import load_checkpoint

    config = {**tiny_data, **TINY_SID, "epochs": 1}
    run = run_recbole_semprune(model="TIGER", dataset="tiny", config_dict=config)
    saved = load_checkpoint(run["saved_model_file"], map_location="cpu")
    for key in ("lr_schedule", "lr_warmup_steps"):
        del saved["config"].final_config_dict[key]
    torch.save(saved, run["saved_model_file"])
    assert dict(reload_and_evaluate(run["saved_model_file"], monkeypatch)) == dict(run["test_result"])
    reloaded = load_checkpoint(run["saved_model_file"], map_location="cpu")["config"]
    assert "lr_schedule" not in reloaded.final_config_dict  # the file itself is left as it was
