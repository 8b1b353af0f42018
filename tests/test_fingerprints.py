"""Fingerprints of every plugin model, recorded before a refactoring that must change no result.

``tests/fixtures/fingerprints.pt`` holds, per model variant, the weights of a model trained one
epoch on the tiny dataset and, with those weights, the loss of a fixed training batch (eval
mode), the ``predict`` and ``full_sort_predict`` scores of a few test users and the test
metrics. The test rebuilds each model from the tiny config, loads the recorded weights (written
before the recomposition: their names go through the package's map of moved parameters,
``recbole_semprune.checkpoint.LEGACY_PREFIXES``) and requires the same figures.

Record them again only for an intended change of results:
``python tests/test_fingerprints.py --record`` (from the repository root).
"""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import PRUNING_SMALL, TINY, TINY_PROTOCOL, make_tiny_dataset  # noqa: E402

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fingerprints.pt"
VARIANTS = {
    "TIGER": ("TIGER", {}),
    "DecoderOnlySID": ("DecoderOnlySID", {}),
    "RASTP": ("RASTP", {}),
    "RASTP-decoder_only": ("RASTP", {"backbone": "decoder_only"}),
    "STAMPSID": ("STAMPSID", {}),
    "STAMPSID-decoder_only": ("STAMPSID", {"backbone": "decoder_only"}),
    "Rec2PM": ("Rec2PM", {"segment_len": 3, "mem_tokens": 2}),
}


def settings(variant, data_path, checkpoint_dir):
    model, overrides = VARIANTS[variant]
    # the item codes the fixture was recorded with: content only, the default until 2026-12-05
    return model, {**TINY, **TINY_PROTOCOL, **PRUNING_SMALL, **overrides, "data_path": data_path,
                   "checkpoint_dir": checkpoint_dir, "sid_collaborative_weight": 0.0}


def figures(config, model, train_data, test_data):
    """The fingerprint of ``model`` (weights loaded) on the tiny data."""
    from recbole_semprune.utils import get_trainer

    model.eval()
    batch = next(iter(train_data)).to(model.device)
    test_batch = next(iter(test_data))[0].to(model.device)
    users = {key: test_batch[key][:8] for key in (model.ITEM_SEQ, model.ITEM_SEQ_LEN,
                                                  model.POS_ITEM_ID)}
    users[model.ITEM_ID] = users[model.POS_ITEM_ID]
    with torch.no_grad():
        loss = model.calculate_loss(batch)
        loss = sum(loss) if isinstance(loss, tuple) else loss
        out = {"loss": loss.detach(), "predict": model.predict(users),
               "full_sort_predict": model.full_sort_predict(users)}
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    out["test_result"] = dict(trainer.evaluate(test_data, load_best_model=False))
    return out


def record(folder):
    from recbole_semprune.quick_start import load_data_and_model, run_recbole_semprune

    data_path = make_tiny_dataset(Path(folder) / "data")
    prints = {}
    for variant in VARIANTS:
        model, config_dict = settings(variant, data_path, str(Path(folder) / "saved"))
        saved = run_recbole_semprune(model, "tiny", config_dict=config_dict)["saved_model_file"]
        config, net, _, train_data, _, test_data = load_data_and_model(saved)
        prints[variant] = {"state_dict": net.state_dict(),
                           **figures(config, net, train_data, test_data)}
    FIXTURE.parent.mkdir(exist_ok=True)
    torch.save(prints, FIXTURE)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_recorded_weights_give_the_recorded_figures(variant, workdir):
    from recbole.utils import init_seed

    from recbole_semprune.checkpoint import rename_legacy_keys
    from recbole_semprune.config import Config
    from recbole_semprune.quick_start import build_model
    from recbole_semprune.quick_start import prepare_data
    from recbole_semprune.utils import create_dataset

    recorded = torch.load(FIXTURE, weights_only=False)[variant]
    model, config_dict = settings(variant, make_tiny_dataset(workdir / "data"), str(workdir / "saved"))
    config = Config(model=model, dataset="tiny", config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, _, test_data = prepare_data(config, dataset)
    state_dict = rename_legacy_keys(dict(recorded["state_dict"]))
    net = build_model(config, train_data._dataset, state_dict).to(config["device"])
    net.load_state_dict(state_dict)
    assert_same_figures(figures(config, net, train_data, test_data), recorded)


def assert_same_figures(got, recorded):
    for key in ("loss", "predict", "full_sort_predict"):
        torch.testing.assert_close(got[key], recorded[key], rtol=1e-5, atol=1e-5)
        ranked = got["full_sort_predict"].topk(10).indices
        assert torch.equal(ranked, recorded["full_sort_predict"].topk(10).indices)
    assert got["test_result"] == recorded["test_result"]


@pytest.mark.parametrize("variant", ["STAMPSID", "Rec2PM"])
def test_a_checkpoint_with_the_old_parameter_names_loads(variant, workdir):
    """A checkpoint file written before the recomposition (the fixture's weights keep the old
    names) loads, as it is, through load_data_and_model (as scripts/evaluate_checkpoint.py
    does) and through RecBole's ``evaluate(load_best_model=True)``, with the recorded figures."""
    from recbole.utils import init_seed

    from recbole_semprune.checkpoint import LEGACY_PREFIXES
    from recbole_semprune.config import Config
    from recbole_semprune.quick_start import build_model, load_data_and_model, prepare_data
    from recbole_semprune.utils import create_dataset, get_trainer

    recorded = torch.load(FIXTURE, weights_only=False)[variant]
    old = recorded["state_dict"]
    assert any(key.startswith(tuple(LEGACY_PREFIXES)) for key in old)  # the names of then
    model, config_dict = settings(variant, make_tiny_dataset(workdir / "data"), str(workdir / "saved"))
    config = Config(model=model, dataset="tiny", config_dict=config_dict)
    path = workdir / f"{variant}-old.pth"
    torch.save({"config": config, "epoch": 0, "cur_step": 0, "best_valid_score": 0.0,
                "state_dict": old, "other_parameter": None, "optimizer": {}}, path)

    config, net, _, train_data, _, test_data = load_data_and_model(str(path))
    assert not any(key.startswith(tuple(LEGACY_PREFIXES)) for key in net.state_dict())
    assert_same_figures(figures(config, net, train_data, test_data), recorded)

    init_seed(config["seed"], config["reproducibility"])
    train_data, _, test_data = prepare_data(config, create_dataset(config))
    fresh = build_model(config, train_data._dataset, old).to(config["device"])  # new weights
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, fresh)
    result = trainer.evaluate(test_data, load_best_model=True, model_file=str(path))
    assert dict(result) == recorded["test_result"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit(__doc__)
    import tempfile

    import recbole_semprune  # noqa: F401

    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        record(folder)
    print(f"recorded {len(VARIANTS)} fingerprints in {FIXTURE}")
