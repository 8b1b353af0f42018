"""SID backbones: tokenisation, exact scoring, beam search = brute force, checkpoints, CLI."""

import subprocess
import sys

import pytest
import torch
import yaml

from conftest import REPO, TINY_SID, build_tiny, reload_and_evaluate, stepwise_log_probs
from recbole_semprune.quick_start import run_recbole_semprune

MODELS = ["TIGER", "DecoderOnlySID"]
SMALL = TINY_SID


def build(model, tiny_data, **overrides):
    built = build_tiny(model, {**tiny_data, **SMALL}, **overrides)
    return built.config, built.train, built.test, built.model.eval(), built.trainer


def histories(test_data, n=8):
    batch = next(iter(test_data))[0]
    return batch[:n]


@pytest.mark.parametrize("model", MODELS)
def test_tokens_round_trip(model, tiny_data):
    _, _, _, net, _ = build(model, tiny_data)
    items = torch.arange(1, net.n_items)
    tokens = net.item_tokens(items)
    assert tokens.min() >= 1 and tokens.max() <= net.n_codes
    codes = tokens - 1 - net.level_offsets
    assert torch.equal(net.trie.item_ids(codes), items)
    assert (net.item_tokens(torch.zeros(3, dtype=torch.long)) == 0).all()


@pytest.mark.parametrize("model", MODELS)
def test_predict_is_sum_of_level_log_probs_and_matches_cached_decoding(model, tiny_data):
    _, _, test_data, net, _ = build(model, tiny_data)
    inter = histories(test_data)
    seq, seq_len, items = inter[net.ITEM_SEQ], inter[net.ITEM_SEQ_LEN], inter[net.POS_ITEM_ID]
    with torch.no_grad():
        predicted = net.predict({net.ITEM_SEQ: seq, net.ITEM_SEQ_LEN: seq_len, net.ITEM_ID: items})
        hidden = net.target_hidden(seq, seq_len, net.item_tokens(items))
        codes = net.codes[items]
        manual = sum(
            net.output.level_log_probs(hidden[:, level], level).gather(1, codes[:, level : level + 1]).squeeze(1)
            for level in range(net.n_levels)
        )
        # the same log-probabilities, step by step through the KV-cached generation path
        stepwise = stepwise_log_probs(net, seq, seq_len, codes)
    assert torch.allclose(predicted, manual, atol=1e-5)
    assert torch.allclose(predicted, stepwise, atol=1e-4)
    assert (predicted < 0).all()


@pytest.mark.parametrize("model", MODELS)
def test_beam_search_equals_brute_force(model, tiny_data):
    """With as many beams as items, beam search ranks exactly as scoring every item's SID."""
    _, _, test_data, net, _ = build(model, tiny_data, beam_size=64)
    inter = histories(test_data, n=4)
    seq, seq_len = inter[net.ITEM_SEQ], inter[net.ITEM_SEQ_LEN]
    with torch.no_grad():
        full = net.full_sort_predict(inter)
        n_real = net.n_items - 1
        brute = torch.stack([
            net.target_log_probs(
                {net.ITEM_SEQ: seq[u : u + 1].expand(n_real, -1),
                 net.ITEM_SEQ_LEN: seq_len[u : u + 1].expand(n_real)},
                torch.arange(1, net.n_items),
            )[0].sum(-1)
            for u in range(len(seq))
        ])
    assert full.shape == (len(seq), net.n_items)
    assert torch.isinf(full[:, 0]).all()
    assert torch.allclose(full[:, 1:], brute, atol=1e-4)
    assert torch.equal(full[:, 1:].topk(10).indices, brute.topk(10).indices)


@pytest.mark.parametrize("model", MODELS)
def test_exclude_seen_ranks_the_unseen_items_as_brute_force(model, tiny_data):
    """``exclude_seen``: no history item is generated, and the other items keep their ranking
    and exact scores (all beams go to unseen items)."""
    _, _, test_data, net, _ = build(model, tiny_data, beam_size=64)
    inter = histories(test_data, n=4)
    seq = inter[net.ITEM_SEQ]
    with torch.no_grad():
        full = net.full_sort_predict(inter)
        net.exclude_seen = True
        unseen = net.full_sort_predict(inter)
        items, scores = net.generate(seq, inter[net.ITEM_SEQ_LEN], beam_size=10)
    seen = torch.zeros_like(full, dtype=torch.bool).scatter_(1, seq, True)
    seen[:, 0] = False
    assert seen.sum() > 0
    assert torch.isinf(unseen[seen]).all()
    expected = full.masked_fill(seen, float("-inf"))
    assert torch.allclose(unseen[~seen], expected[~seen], atol=1e-5)
    assert torch.isfinite(scores).all() and not seen.gather(1, items).any()


@pytest.mark.parametrize("model", MODELS)
def test_small_beam_returns_distinct_real_items(model, tiny_data):
    _, _, test_data, net, _ = build(model, tiny_data)
    inter = histories(test_data)
    with torch.no_grad():
        items, scores = net.generate(inter[net.ITEM_SEQ], inter[net.ITEM_SEQ_LEN])
    assert items.shape == (len(items), net.beam_size)
    assert (items >= 1).all() and torch.isfinite(scores).all()
    assert all(len(set(row.tolist())) == net.beam_size for row in items)
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_beam_smaller_than_topk_is_an_error(tiny_data):
    with pytest.raises(ValueError, match="beam_size=5 is smaller than the largest topk=10"):
        build("TIGER", tiny_data, beam_size=5)


def test_left_pad():
    from recbole_semprune.model.backbones import DecoderOnly

    seq = torch.tensor([[4, 5, 6, 0, 0], [7, 0, 0, 0, 0], [1, 2, 3, 4, 5]])
    out = DecoderOnly.left_pad(seq, torch.tensor([3, 1, 5]))
    assert out.tolist() == [[0, 0, 4, 5, 6], [0, 0, 0, 0, 7], [1, 2, 3, 4, 5]]


def test_dense_loss_trains_on_the_whole_stream(tiny_data):
    _, train_data, _, net, _ = build("DecoderOnlySID", tiny_data, dense_loss=True)
    net.train()
    batch = next(iter(train_data))
    dense = net.calculate_loss(batch)
    dense.backward()
    assert torch.isfinite(dense)
    assert net.token_embedding.weight.grad.abs().sum() > 0
    net.backbone.dense_loss = False
    torch.manual_seed(0)
    net.eval()
    target_only = net.calculate_loss(batch)
    net.backbone.dense_loss = True
    assert not torch.isclose(net.calculate_loss(batch), target_only)


@pytest.mark.parametrize("model", MODELS)
def test_trained_checkpoint_reloads_to_identical_metrics(model, tiny_data, monkeypatch):
    result = run_recbole_semprune(model=model, dataset="tiny", config_dict=dict(tiny_data, **SMALL))
    # reloading must take the codes from the checkpoint, not rebuild them
    again = reload_and_evaluate(result["saved_model_file"], monkeypatch)
    assert dict(again) == pytest.approx(dict(result["test_result"]), abs=1e-12)


@pytest.mark.parametrize("model", MODELS)
def test_cli_trains_and_evaluates(model, tiny_data, workdir):
    settings = dict(tiny_data, **SMALL)
    settings.pop("state")
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(settings))
    out = subprocess.run(
        [sys.executable, str(REPO / "run_recbole_semprune.py"), f"--model={model}", "--dataset=tiny",
         "--config_files=tiny.yaml", "--state=INFO"],
        capture_output=True, text=True, cwd=workdir,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "tokens/s" in log and "peak memory" in log
    assert "test result" in log and "ndcg@10" in log
