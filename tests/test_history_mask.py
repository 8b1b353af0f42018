"""The protocol key ``exclude_seen``: one history mask for every model's evaluation."""

import pytest
import torch

from conftest import TINY_SID, build_tiny
from recbole_semprune.analysis import per_user_metrics, positions_of
from recbole_semprune.config import Config

MODELS = {"SASRec": {}, "TIGER": TINY_SID}


def build(model, tiny_data, **overrides):
    built = build_tiny(model, {**tiny_data, **MODELS.get(model, {})}, **overrides)
    built.trainer._train_epoch(built.train, 0)  # a model that ranks something, not its initialisation
    return built.model.eval(), built.trainer, built.test


def by_hand(net, test_data, mask, topk=(5, 10)):
    """RecBole's full-ranking metrics, every step written out: the model's scores, padding
    item last, each history item last if ``mask``; also whether a top-k item is in its
    history."""
    positions, history_in_top = [], False
    with torch.no_grad():
        for batch in test_data:
            interaction = batch[0]
            scores = net.full_sort_predict(interaction).view(len(interaction), -1).clone()
            scores[:, 0] = float("-inf")
            history = interaction[net.ITEM_SEQ]
            if mask:
                for row in range(len(interaction)):
                    for item in history[row].tolist():
                        scores[row, item] = float("-inf")
            top = scores.topk(max(topk), dim=1).indices
            history_in_top |= any(
                bool(set(top[row].tolist()) & (set(history[row].tolist()) - {0}))
                for row in range(len(interaction))
            )
            positions.append(positions_of(top, interaction[net.POS_ITEM_ID]))
    values = per_user_metrics(torch.cat(positions), topk)
    return {metric: round(float(v.mean()), 4) for metric, v in values.items()}, history_in_top


def trainer_top_items(trainer, test_data, k=10):
    """Each row's top-k items as the trainer's evaluation ranks them, with its history."""
    rows = []
    for batch in test_data:
        interaction, scores, _, _ = trainer._full_sort_batch_eval(batch)
        top = scores.topk(k, dim=1).indices.cpu()
        rows += list(zip(top.tolist(), interaction[trainer.model.ITEM_SEQ].tolist()))
    return rows


def test_tiny_data_has_targets_in_their_history(tiny_data):
    """The mask matters on the test data: some test targets occur in their user's history."""
    _, _, test_data = build("SASRec", tiny_data, exclude_seen=False)[:3]
    seen = 0
    for batch in test_data:
        interaction = batch[0]
        seen += int((interaction["item_id_list"] == interaction["item_id"].unsqueeze(1)).any(1).sum())
    assert seen > 0


@pytest.mark.parametrize("model", ["SASRec", "TIGER"])
def test_exclude_seen_masks_the_history_of_every_model(model, tiny_data):
    """On: no top-k item of a user's history, and the metrics of masking by hand. Off: the
    metrics of the unmasked scores, history items included."""
    net, trainer, test_data = build(model, tiny_data, exclude_seen=True)
    masked = dict(trainer.evaluate(test_data, load_best_model=False))
    for top, history in trainer_top_items(trainer, test_data):
        assert not set(top) & (set(history) - {0})
    expected, history_in_top = by_hand(net, test_data, mask=True)
    assert not history_in_top
    assert {m: masked[m] for m in expected} == pytest.approx(expected, abs=1.5e-4)

    trainer.config["exclude_seen"] = False
    if hasattr(net, "exclude_seen"):
        net.exclude_seen = False
    unmasked = dict(trainer.evaluate(test_data, load_best_model=False))
    expected, history_in_top = by_hand(net, test_data, mask=False)
    assert history_in_top  # unmasked, the models do recommend items of the history
    assert {m: unmasked[m] for m in expected} == pytest.approx(expected, abs=1.5e-4)
    assert unmasked != masked


def test_sid_beam_already_excludes_the_history(tiny_data):
    """A SID model with ``exclude_seen`` leaves the history out of its beam: the trainer's
    mask then changes no score."""
    net, trainer, test_data = build("TIGER", tiny_data, exclude_seen=True)
    assert net.exclude_seen
    trainer.evaluate(test_data, load_best_model=False)  # sets the trainer's item count
    batch = next(iter(test_data))
    with torch.no_grad():
        _, scores, _, _ = trainer._full_sort_batch_eval(batch)
        raw = net.full_sort_predict(batch[0]).view(len(batch[0]), -1)
    raw[:, 0] = float("-inf")
    assert torch.equal(scores, raw)


def test_sampled_ranking_is_masked_too(tiny_data):
    """Sampled evaluation (``uni100``): a history item among the candidates ranks last."""
    eval_args = dict(tiny_data["eval_args"], mode={"valid": "uni100", "test": "uni100"})
    net, trainer, test_data = build("SASRec", tiny_data, exclude_seen=True, eval_args=eval_args)
    trainer.evaluate(test_data, load_best_model=False)
    masked_rows = 0
    with torch.no_grad():
        for batch in test_data:
            interaction, scores, positive_u, _ = trainer._neg_sample_batch_eval(batch)
            row_idx = batch[1]
            history = interaction[net.ITEM_SEQ]
            candidates = interaction[net.ITEM_ID]
            for r in range(len(interaction)):
                score = scores[row_idx[r], candidates[r]]
                in_history = bool((history[r] == candidates[r]).any())
                assert (score == float("-inf")) == in_history
                masked_rows += in_history
    assert masked_rows > 0


def test_exclude_seen_must_be_a_bool(tiny_data):
    from recbole_semprune.trainer import exclude_seen

    config = Config(model="SASRec", dataset="tiny", config_dict={**tiny_data, "exclude_seen": "yes"})
    with pytest.raises(ValueError, match="exclude_seen must be True or False, got 'yes'"):
        exclude_seen(config)
