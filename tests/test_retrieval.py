"""Dense retrieval beside generation (recbole_semprune/model/retrieval.py): its loss is the SID
loss plus the weighted cross-entropy of the target, its ranking mixes the beam's scores with
the dense ones, and it is absent (no parameter, no change) at its default."""

import pytest
import torch
import torch.nn.functional as F

from conftest import PRUNING_SMALL, TINY_SID, build_tiny, load_script, reload_and_evaluate
from recbole_semprune.model.retrieval import DenseRetrieval
from recbole_semprune.quick_start import run_recbole_semprune

ON = {"retrieval_weight": 0.5}
# model, overrides: each path of the loss that reads the target row
LOSS_PATHS = {
    "TIGER": ("TIGER", {}),
    "DecoderOnlySID": ("DecoderOnlySID", {}),
    "DecoderOnlySID-dense_loss": ("DecoderOnlySID", {"dense_loss": True}),
    "RASTP-decoder_only": ("RASTP", {"backbone": "decoder_only"}),
    "STAMPSID": ("STAMPSID", {}),
    "STAMPSID-decoder_only": ("STAMPSID", {"backbone": "decoder_only"}),
}


def test_off_by_default_the_model_has_no_retrieval_parameter(tiny_data):
    net = build_tiny("TIGER", {**tiny_data, **TINY_SID}).model
    assert net.retrieval is None
    assert not [name for name in net.state_dict() if "retrieval" in name]


@pytest.mark.parametrize("items", ["both", "free", "codes"])
def test_item_vectors_are_free_vectors_and_or_code_embedding_sums(items, tiny_data):
    net = build_tiny("TIGER", {**tiny_data, **TINY_SID}, retrieval_items=items, **ON).model
    vectors = net.retrieval.item_vectors(net)
    codes = net.token_embedding(net.item_tokens(torch.arange(net.n_items))).sum(1)
    free = net.retrieval.item_embedding.weight if items != "codes" else 0
    assert vectors.shape == (net.n_items, net.hidden_size)
    assert torch.equal(vectors, free + (codes if items != "free" else 0))
    assert (net.retrieval.item_embedding is None) == (items == "codes")


@pytest.mark.parametrize("path", sorted(LOSS_PATHS))
def test_loss_is_the_sid_loss_plus_weighted_cross_entropy_of_the_target(path, tiny_data):
    model, overrides = LOSS_PATHS[path]
    built = build_tiny(model, {**tiny_data, **PRUNING_SMALL}, **overrides, **ON)
    net = built.model.eval()  # no dropout: the same figures on every pass
    batch = next(iter(built.train))
    items = batch[net.POS_ITEM_ID]
    with torch.no_grad():
        with_retrieval = net.calculate_loss(batch)
        retrieval, net.retrieval = net.retrieval, None
        without = net.calculate_loss(batch)
        net.retrieval = retrieval
        # the query: the row that predicts the target's first code
        seq, seq_len = net.history(batch)
        query = net.target_hidden(seq, seq_len, net.item_tokens(items))[:, 0]
        logits = retrieval.query(query) @ retrieval.item_vectors(net).t()
        logits[:, 0] = float("-inf")
        expected = 0.5 * F.cross_entropy(logits, items)
    assert expected > 0
    assert torch.allclose(with_retrieval, without + expected, atol=1e-5)


def test_rank_mixes_beam_and_dense_scores():
    dense = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]] * 3), -1)
    beam_items = torch.tensor([[1, 2, 3, 0], [3, 0, 0, 0], [0, 0, 0, 0]])
    beam = torch.tensor([[-0.5, -1.0, -3.0, float("-inf")], [-1.0] + [float("-inf")] * 3,
                         [float("-inf")] * 4])
    scores = DenseRetrieval.rank(dense, beam_items, beam, 1.0)
    # row 0: beam items carry their score, the others the lowest beam score (-3.0)
    assert torch.allclose(scores[0, 1:], dense[0, 1:] + torch.tensor([-0.5, -1.0, -3, -3, -3]))
    assert scores[:, 0].eq(float("-inf")).all()
    # row 2: the beam found nothing, the dense order alone
    assert torch.allclose(scores[2, 1:], dense[2, 1:])
    # a heavy beam weight keeps the beam's order first; zero weight is the dense order
    heavy = DenseRetrieval.rank(dense, beam_items, beam, 100.0)
    assert heavy[0].argsort(descending=True)[:2].tolist() == [1, 2]
    assert heavy[0].argsort(descending=True)[2:5].tolist() == [5, 4, 3]
    dense_only = DenseRetrieval.rank(dense, beam_items, beam, 0.0)
    assert dense_only[1].argsort(descending=True)[:5].tolist() == [5, 4, 3, 2, 1]
    masked = DenseRetrieval.rank(dense, beam_items, beam, 1.0, exclude=torch.tensor(
        [[5, 0], [3, 4], [0, 0]]))
    assert masked[0, 5] == float("-inf") and masked[1, 3] == masked[1, 4] == float("-inf")
    assert torch.isfinite(masked[2, 1:]).all()


@pytest.mark.parametrize("model", ["TIGER", "DecoderOnlySID"])
@pytest.mark.parametrize("exclude_seen", [False, True])
def test_full_sort_predict_gives_beam_items_their_predict_score(model, exclude_seen, tiny_data,
                                                                monkeypatch):
    built = build_tiny(model, {**tiny_data, **TINY_SID}, exclude_seen=exclude_seen,
                       retrieval_beam_weight=0.7, **ON)
    net = built.model.eval()
    batch = next(iter(built.test))[0]
    users = {key: batch[key][:6] for key in (net.ITEM_SEQ, net.ITEM_SEQ_LEN)}
    with torch.no_grad():
        with monkeypatch.context() as patch:  # the query comes from the beam's first step
            patch.setattr(net.backbone, "target_hidden", None)
            full = net.full_sort_predict(users)
        items, _ = net.generate(*net.history(users))
        for column in range(items.shape[1]):
            one = dict(users, **{net.ITEM_ID: items[:, column]})
            real = items[:, column] > 0
            got = full.gather(1, items[:, column : column + 1]).squeeze(1)
            assert torch.allclose(got[real], net.predict(one)[real], atol=1e-4)
    assert torch.isfinite(full[:, 1:]).sum() > 0 and full[:, 0].eq(float("-inf")).all()
    seen = users[net.ITEM_SEQ]
    history_scores = full.gather(1, seen)[seen > 0]
    assert history_scores.eq(float("-inf")).all() == exclude_seen
    if not exclude_seen:  # every item is ranked, not only the beam's
        assert torch.isfinite(full[:, 1:]).all()


def test_trained_checkpoint_reloads_exactly_and_varies_its_beam_weight(tiny_data, monkeypatch):
    result = run_recbole_semprune(model="TIGER", dataset="tiny",
                                  config_dict=dict(tiny_data, **TINY_SID, **ON))
    again = reload_and_evaluate(result["saved_model_file"], monkeypatch)
    assert dict(again) == dict(result["test_result"])
    monkeypatch.undo()
    script = load_script("scripts/evaluate_checkpoint.py")
    rows = script.main([result["saved_model_file"],
                        "--variants=;retrieval_beam_weight=1;retrieval_beam_weight=0"])
    saved, same, dense_only = (row[2] for row in rows)
    assert saved == same == dict(result["test_result"])  # 1.0, the default, is as saved
    assert dense_only != saved


def test_beam_weight_variant_needs_a_model_with_dense_retrieval(tiny_data):
    script = load_script("scripts/evaluate_checkpoint.py")
    built = build_tiny("TIGER", {**tiny_data, **TINY_SID})
    with pytest.raises(script.VariantError, match="has no 'retrieval_beam_weight'"):
        script.apply_variant(built.model, built.config, {"retrieval_beam_weight": 0.0})
