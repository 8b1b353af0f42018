"""Token pruning (recbole_semprune.model.pruning) and RASTP on both backbones."""

import copy
import logging
import re

import pytest
from fractions import Fraction

import torch

from conftest import BACKBONES, PRUNING_SMALL as SMALL, build_pruning_net as build, stepwise_log_probs
from recbole_semprune.model import pruning
from recbole_semprune.model.backbones import recency_positions
from recbole_semprune.model.layers import MultiHeadAttention
from recbole_semprune.model.pruning import (
    SCORERS,
    TokenPruner,
    attention_received,
    gather_positions,
    keep_counts,
    parse_keep_ratio,
    register_scorer,
    select_tokens,
)
from recbole_semprune.quick_start import load_data_and_model, run_recbole_semprune
from recbole_semprune.utils import get_trainer



def short_histories(test_data, n=16):
    """Test histories cut to lengths 1, 2, ..., so that batches hold padding and fillers."""
    inter = next(iter(test_data))[0][:n]
    seq, seq_len = inter["item_id_list"], inter["item_length"]
    seq_len = torch.minimum(seq_len, torch.arange(len(seq_len)) % seq.shape[1] + 1)
    inter["item_id_list"] = seq.masked_fill(torch.arange(seq.shape[1]) >= seq_len.unsqueeze(1), 0)
    inter["item_length"] = seq_len
    return inter


def seq_of(net, inter):
    return inter[net.ITEM_SEQ], inter[net.ITEM_SEQ_LEN]


# ---- selection ------------------------------------------------------------------------
def test_kept_tokens_are_the_top_scores_in_original_order():
    scores = torch.tensor([
        [0.1, 0.9, 0.3, 0.8, 0.5, 0.0],
        [0.7, 0.2, 0.6, 0.0, 0.0, 0.0],
    ])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    counts = keep_counts(mask, 0.5, "per_history")
    assert counts.tolist() == [3, 1]
    index, kept = select_tokens(scores, mask, counts)
    # top 3 of row 0 are positions 1 (0.9), 3 (0.8), 4 (0.5): kept in original order;
    # row 1 keeps its best (0) after two masked fillers (kept tokens are right-aligned)
    assert index.shape == (2, 3)
    assert kept.tolist() == [[True, True, True], [False, False, True]]
    assert index[0].tolist() == [1, 3, 4]
    assert index[1, 2].item() == 0
    hidden = torch.arange(12.0).view(2, 6, 1)
    assert gather_positions(hidden, index)[0, :, 0].tolist() == [1.0, 3.0, 4.0]
    assert gather_positions(hidden, index)[1, 2, 0].item() == 6.0


def test_keep_count_modes():
    mask = torch.tensor([[1] * 9 + [0] * 3, [1] * 4 + [0] * 8, [1] * 2 + [0] * 10], dtype=torch.bool)
    # batch: the batch's longest history (9 tokens) sets the count, capped by a row's own tokens
    assert keep_counts(mask, "1/3", "batch").tolist() == [3, 3, 2]
    assert keep_counts(mask, "1/3", "per_history").tolist() == [3, 1, 1]  # at least one
    # fixed (the public code's): floor(max_tokens * rho) whatever the batch holds
    assert keep_counts(mask, "1/3", "fixed", max_tokens=12).tolist() == [4, 4, 2]
    assert keep_counts(mask[1:], "1/3", "fixed", max_tokens=12).tolist() == [4, 2]
    assert keep_counts(mask[:1], "1/3", "batch").tolist() == [3]
    assert keep_counts(mask[1:], "1/3", "batch").tolist() == [1, 1]  # batch-dependent
    index, kept = select_tokens(torch.rand(3, 12), mask, keep_counts(mask, "1/3", "batch"))
    # the 2-token history keeps both real tokens; the third slot is a masked filler
    assert kept.sum(1).tolist() == [3, 3, 2]
    assert sorted(index[2][kept[2]].tolist()) == [0, 1]
    with pytest.raises(ValueError, match="keep_ratio_mode"):
        keep_counts(mask, 0.5, "per_batch")
    with pytest.raises(ValueError, match="max_tokens"):
        keep_counts(mask, 0.5, "fixed")


def test_keep_ratio_one_third_is_exact():
    mask = torch.ones(1, 30, dtype=torch.bool)
    assert keep_counts(mask, "1/3", "per_history").tolist() == [10]
    assert keep_counts(mask, 1 / 3, "per_history").tolist() == [10]  # 1/3 from the command line
    assert keep_counts(mask, 0.3333, "per_history").tolist() == [9]  # what 0.3333 means
    assert parse_keep_ratio("2/5") == Fraction(2, 5)
    for bad in (0, "0", 1.5, "x", "1/0", True, None):
        with pytest.raises(ValueError, match="keep_ratio"):
            parse_keep_ratio(bad)


def test_padding_is_never_kept_while_a_real_token_is_dropped():
    generator = torch.Generator().manual_seed(0)
    for trial in range(200):
        batch, length = 4, int(torch.randint(1, 20, (1,), generator=generator))
        mask = torch.rand(batch, length, generator=generator) < 0.6
        mask[0] = True
        scores = torch.randn(batch, length, generator=generator)
        # padding gets the highest scores, some real tokens NaN or -inf: must not matter
        scores = scores.masked_fill(~mask, 1e9)
        scores[torch.rand(batch, length, generator=generator) < 0.1] = float("nan")
        scores[torch.rand(batch, length, generator=generator) < 0.1] = float("-inf")
        mode = "batch" if trial % 2 else "per_history"
        counts = keep_counts(mask, 0.4, mode)
        index, kept = select_tokens(scores, mask, counts)
        real_kept = mask.gather(1, index) & kept
        assert torch.equal(real_kept, kept)  # a kept slot is always a real token
        assert torch.equal(kept.sum(1), torch.minimum(counts, mask.sum(1)))
        for row in range(batch):
            positions = index[row][kept[row]]
            assert positions.tolist() == sorted(set(positions.tolist()))


def test_protected_tokens_are_always_kept():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    protect = torch.tensor([[False, False, False, False, True, True]])
    counts = keep_counts(mask, 0.5, "per_history", protect)
    index, kept = select_tokens(scores, mask, counts, protect)
    assert index[kept].tolist() == [0, 4, 5]
    # more protected tokens than the ratio allows: all of them are kept
    counts = keep_counts(mask, 0.2, "per_history", protect)
    assert counts.tolist() == [2]
    assert select_tokens(scores, mask, counts, protect).index.tolist() == [[4, 5]]
    # protection counts items back from the target: 2 most recent items x 2 levels
    pruner = TokenPruner(4, prune_layer=2, keep_ratio="1/3", scorer="rastp",
                         keep_ratio_mode="fixed", prune_at_eval=True, protect_last=2,
                         normalize_by_visible_queries=False, max_tokens=8, score_queries="real",
                         attention_after_dropout=False)
    positions = torch.tensor([[3, 2, 1, 0]])  # right-padded history of 3 items
    assert pruner.protected_tokens(positions, 2).tolist() == [[0, 0, 1, 1, 1, 1, 0, 0]]


def test_prune_layer_is_checked_only_when_pruning():
    """An unpruned stack of 1 layer (the sweep's unpruned point) accepts the default
    prune_layer=2; the same setting with a scorer is refused, naming the range."""
    options = dict(keep_ratio="1/3", keep_ratio_mode="fixed", prune_at_eval=True, protect_last=0,
                   normalize_by_visible_queries=False, max_tokens=8, score_queries="real",
                   attention_after_dropout=False)
    assert not TokenPruner(1, prune_layer=2, scorer="none", **options).enabled
    with pytest.raises(ValueError, match=r"prune_layer=2 must be an int in \[1, 1\]"):
        TokenPruner(1, prune_layer=2, scorer="rastp", **options)


# ---- scores ---------------------------------------------------------------------------
def test_rastp_score_equals_a_hand_computation():
    torch.manual_seed(0)
    heads, length = 2, 4
    attn = torch.softmax(torch.randn(1, heads, length, length), dim=-1)
    hidden = torch.randn(1, length, 3)
    mask = torch.tensor([[True, True, True, False]])  # last token is padding
    expected = []
    for k in range(length):
        received = sum(
            attn[0, h, q, k].item() for h in range(heads) for q in range(length) if mask[0, q]
        )
        expected.append(received * sum(abs(v) for v in hidden[0, k].tolist()))
    received = attention_received(attn, mask)
    score = SCORERS["rastp"].fn(hidden, received, mask)
    assert torch.allclose(score[0], torch.tensor(expected), atol=1e-6)
    assert torch.allclose(SCORERS["attention"].fn(hidden, received, mask), received)
    assert torch.allclose(SCORERS["saliency_l1"].fn(hidden, None, mask), hidden.abs().sum(-1))
    assert torch.allclose(SCORERS["saliency_l2"].fn(hidden, None, mask), hidden.norm(dim=-1))
    # causal normalisation: key k is visible to the real queries q >= k (here 3, 2, 1, 0)
    normalized = attention_received(attn, mask, causal=True, normalize_by_visible_queries=True)
    assert torch.allclose(normalized[0, :3], received[0, :3] / torch.tensor([3.0, 2.0, 1.0]))
    flat = attention_received(attn, mask, causal=False, normalize_by_visible_queries=True)
    assert torch.allclose(flat, received / 3)


def test_a_registered_scorer_drives_the_model(tiny_data):
    """How STAMP plugs in its own score: register it, name it in prune_scorer."""

    @register_scorer("test_oldest_first", needs_attention=False)
    def oldest_first(hidden, received, mask):
        return -torch.arange(mask.shape[1], dtype=torch.float).expand(mask.shape)

    try:
        with pytest.raises(ValueError, match="already registered"):
            register_scorer("test_oldest_first", needs_attention=False)(oldest_first)
        net, _, test_data = build("RASTP", tiny_data, prune_scorer="test_oldest_first",
                                  keep_ratio=0.5, keep_ratio_mode="per_history")
        seq, seq_len = seq_of(net, short_histories(test_data))
        with torch.no_grad():
            _, mask = net.backbone.encode(net, seq, seq_len)
        assert torch.equal(mask.sum(1), (seq_len * net.n_levels * 0.5).floor().long().clamp(min=1))
    finally:
        del SCORERS["test_oldest_first"]


def test_attention_is_computed_only_in_the_pruning_layer(tiny_data, monkeypatch):
    calls = []
    forward = MultiHeadAttention.forward

    def spy(self, *args, **kwargs):
        calls.append(bool(kwargs.get("need_weights")))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(MultiHeadAttention, "forward", spy)
    for scorer, expected in (("rastp", 1), ("saliency_l1", 0)):
        net, _, test_data = build("RASTP", tiny_data, prune_scorer=scorer)
        seq, seq_len = seq_of(net, short_histories(test_data))
        calls.clear()
        with torch.no_grad():
            net.backbone.encode(net, seq, seq_len)
        assert len(calls) == net.n_layers and sum(calls) == expected
        if expected:
            assert calls.index(True) == net.pruner.prune_layer - 1


# ---- models ---------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("mode, prune_layer", [("batch", 1), ("per_history", 3)])
def test_keep_ratio_one_reproduces_the_unpruned_backbone(backbone, mode, prune_layer, tiny_data):
    base, _, test_data = build(BACKBONES[backbone], tiny_data)
    kept_all, _, _ = build("RASTP", tiny_data, backbone=backbone, keep_ratio=1.0,
                           keep_ratio_mode=mode, prune_layer=prune_layer)
    no_pruning, _, _ = build("RASTP", tiny_data, backbone=backbone, prune_scorer="none")
    for net in (kept_all, no_pruning):
        net.load_state_dict(base.state_dict())
    inter = short_histories(test_data)
    seq, seq_len = seq_of(base, inter)
    items = inter[base.POS_ITEM_ID]
    with torch.no_grad():
        reference = base.target_hidden(seq, seq_len, base.item_tokens(items))
        assert torch.equal(no_pruning.target_hidden(seq, seq_len, base.item_tokens(items)), reference)
        hidden = kept_all.target_hidden(seq, seq_len, base.item_tokens(items))
        assert torch.allclose(hidden, reference, atol=1e-5)
        full = base.full_sort_predict(inter)
        assert torch.equal(no_pruning.full_sort_predict(inter), full)
        pruned = kept_all.full_sort_predict(inter)
    finite = torch.isfinite(full)
    assert torch.equal(torch.isfinite(pruned), finite)
    assert torch.allclose(pruned[finite], full[finite], atol=1e-4)


def test_pruned_stream_keeps_each_positions_source(tiny_data):
    base, train_data, _ = build("DecoderOnlySID", tiny_data)
    pruned, _, _ = build("RASTP", tiny_data, backbone="decoder_only", keep_ratio=0.5,
                         keep_ratio_mode="per_history")
    pruned.load_state_dict(base.state_dict())
    batch = next(iter(train_data))
    target = pruned.item_tokens(batch["item_id"])
    stream = pruned.backbone.stream_hidden(pruned, batch["item_id_list"], batch["item_length"], target)
    unpruned = base.backbone.stream_hidden(base, batch["item_id_list"], batch["item_length"], target)
    assert torch.equal(stream.tokens, unpruned.tokens)
    assert stream.hidden.shape[1] < unpruned.hidden.shape[1]
    # kept positions keep their order; each knows the token after it in the whole stream
    real_sources = stream.source.masked_fill(~stream.mask, -1)
    assert all((row[row >= 0].diff() > 0).all() for row in real_sources)
    next_tokens, valid = stream.tokens_ahead(1)
    assert torch.equal(valid, stream.mask)
    assert torch.equal(next_tokens[valid], stream.tokens.gather(1, stream.source + 1)[valid])
    n_history = stream.tokens.shape[1] - pruned.n_levels
    last_history = stream.source == n_history - 1  # always kept: predicts the first code
    assert torch.equal(next_tokens[last_history], target[:, 0])
    # the selection saw every history token: none may be a target of the pruned stream
    leaks = pruned.backbone.leaks(pruned, stream, stream.source + 1)
    assert torch.equal(leaks, stream.source + 1 < n_history)
    unpruned_rastp, _, _ = build("RASTP", tiny_data, backbone="decoder_only", prune_scorer="none")
    assert not unpruned_rastp.backbone.leaks(unpruned_rastp, unpruned, unpruned.source + 1).any()


def _compact_reference_tiger(net, seq, seq_len, target_tokens, keep_ratio):
    """RASTP by hand, one history at a time, without any padding: the real tokens go through
    layers [0, p), the top int(n * rho) by attention received x L1 norm go on alone through
    [p, n) and the decoder cross-attends to exactly those."""
    p = net.pruner.prune_layer
    rows = []
    for b in range(len(seq)):
        x, mask = net.embed_items(seq[b : b + 1], recency_positions(seq[b : b + 1], seq_len[b : b + 1]))
        x = x[:, mask[0]]
        first = net.backbone.encoder(x, end=p, weights_layer=p - 1)
        score = first.attn[0].sum(dim=(0, 1)) * first.hidden[0].abs().sum(-1)
        keep = score.topk(max(1, int(x.shape[1] * keep_ratio))).indices.sort().values
        memory = net.backbone.encoder(first.hidden[:, keep], start=p).hidden
        bos = torch.full_like(target_tokens[b : b + 1, :1], net.bos_token)
        inputs = torch.cat([bos, target_tokens[b : b + 1, :-1]], dim=1)
        rows.append(net.backbone.decoder(net.embed_target(inputs, 0), causal=True, memory=memory).hidden)
    return torch.cat(rows)


def _compact_reference_decoder_only(net, seq, seq_len, target_tokens, keep_ratio):
    """The same for the causal stream: history queries score history keys, the last history
    token is always kept, the target tokens are never pruned."""
    p = net.pruner.prune_layer
    rows = []
    for b in range(len(seq)):
        history, mask, _ = net.backbone.embed_history(net, seq[b : b + 1], seq_len[b : b + 1])
        history = history[:, mask[0]]
        n = history.shape[1]
        target = net.embed_target(target_tokens[b : b + 1, :-1], 0, torch.zeros(1, dtype=torch.long))
        first = net.backbone.decoder(torch.cat([history, target], 1), causal=True, end=p, weights_layer=p - 1)
        score = first.attn[0, :, :n, :n].sum(dim=(0, 1)) * first.hidden[0, :n].abs().sum(-1)
        score[-1] = float("inf")
        keep = score.topk(max(1, int(n * keep_ratio))).indices.sort().values
        rest = torch.cat([first.hidden[:, keep], first.hidden[:, n:]], 1)
        rows.append(net.backbone.decoder(rest, causal=True, start=p).hidden[:, -net.n_levels :])
    return torch.cat(rows)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_pruned_model_equals_a_by_hand_run_on_the_kept_tokens(backbone, tiny_data):
    """Batched pruning (padding, fillers, gathered hidden states, the reduced mask in the
    decoder's cross-attention or in the causal stream) = the kept tokens alone."""
    net, _, test_data = build("RASTP", tiny_data, backbone=backbone, keep_ratio=0.5,
                              keep_ratio_mode="per_history")
    inter = short_histories(test_data)
    seq, seq_len = seq_of(net, inter)
    target_tokens = net.item_tokens(inter[net.POS_ITEM_ID])
    reference = {"tiger": _compact_reference_tiger,
                 "decoder_only": _compact_reference_decoder_only}[backbone]
    with torch.no_grad():
        hidden = net.target_hidden(seq, seq_len, target_tokens)
        expected = reference(net, seq, seq_len, target_tokens, 0.5)
    assert torch.allclose(hidden, expected, atol=1e-5)


def test_decoder_cross_attention_gets_the_reduced_mask(tiny_data):
    net, _, test_data = build("RASTP", tiny_data)
    inter = short_histories(test_data)
    seq, seq_len = seq_of(net, inter)
    seen = []
    hook = net.backbone.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("memory_padding_mask")), with_kwargs=True
    )
    with torch.no_grad():
        memory, mask = net.backbone.encode(net, seq, seq_len)
        net.target_hidden(seq, seq_len, net.item_tokens(inter[net.POS_ITEM_ID]))
        cache = net.generation_state(seq, seq_len)[0]
    hook.remove()
    n_tokens = seq.shape[1] * net.n_levels
    longest = int(seq_len.max()) * net.n_levels
    assert memory.shape[1] == mask.shape[1] == int(longest * net.pruner.keep_ratio) < n_tokens
    assert torch.equal(seen[0], mask)
    assert all(torch.equal(layer["cross_mask"], mask) for layer in cache)
    assert all(layer["cross_k"].shape[2] == mask.shape[1] for layer in cache)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_generation_prunes_as_training_does(backbone, tiny_data):
    """Teacher-forced log-probs (training path) = the KV-cached beam-search steps."""
    net, _, test_data = build("RASTP", tiny_data, backbone=backbone, prune_protect_last=1)
    inter = short_histories(test_data)
    seq, seq_len = seq_of(net, inter)
    items = inter[net.POS_ITEM_ID]
    codes = net.codes[items]
    with torch.no_grad():
        predicted = net.predict({net.ITEM_SEQ: seq, net.ITEM_SEQ_LEN: seq_len, net.ITEM_ID: items})
        stepwise = stepwise_log_probs(net, seq, seq_len, codes)
    assert torch.allclose(predicted, stepwise, atol=1e-4)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_beam_search_returns_valid_items_with_pruning(backbone, tiny_data):
    net, _, test_data = build("RASTP", tiny_data, backbone=backbone)
    inter = short_histories(test_data)
    with torch.no_grad():
        items, scores = net.generate(*seq_of(net, inter))
        full = net.full_sort_predict(inter)
    assert items.shape == (len(inter), net.beam_size)
    assert (items >= 1).all() and (items < net.n_items).all() and torch.isfinite(scores).all()
    assert all(len(set(row.tolist())) == net.beam_size for row in items)
    assert torch.equal(net.trie.item_ids(net.codes[items.flatten()]), items.flatten())
    assert torch.isinf(full[:, 0]).all() and (torch.isfinite(full).sum(1) == net.beam_size).all()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_gradients_reach_every_parameter(backbone, tiny_data):
    net, train_data, _ = build("RASTP", tiny_data, backbone=backbone)
    net.train()
    loss = net.calculate_loss(next(iter(train_data)))
    loss.backward()
    assert torch.isfinite(loss)
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_prune_at_eval_false_runs_the_full_encoder_at_eval(tiny_data):
    base, train_data, test_data = build("TIGER", tiny_data)
    net, _, _ = build("RASTP", tiny_data, prune_at_eval=False)
    net.load_state_dict(base.state_dict())
    seq, seq_len = seq_of(net, short_histories(test_data))
    with torch.no_grad():
        assert torch.equal(net.backbone.encode(net, seq, seq_len)[0], base.backbone.encode(base, seq, seq_len)[0])
        net.train()
        assert net.backbone.encode(net, seq, seq_len)[0].shape[1] < base.backbone.encode(base, seq, seq_len)[0].shape[1]


def test_kept_tokens_are_counted_per_training_epoch(tiny_data):
    net, train_data, _ = build("RASTP", tiny_data, keep_ratio_mode="per_history")
    net.train()
    histories = 0
    for _, batch in zip(range(3), train_data):  # the batches of an epoch
        net.calculate_loss(batch)
        histories += len(batch)
    assert net.pruner._histories == histories
    epoch = net.pop_epoch_stats()
    assert 0 < epoch["kept_tokens_per_history"] < epoch["tokens_per_history"]
    assert epoch["pruned_length"] < epoch["padded_length"]
    assert "tokens per history" in net.describe_epoch_stats(epoch)
    assert net.pop_epoch_stats() == {}  # reset by the pop
    net.eval()
    with torch.no_grad():  # evaluation batches are not counted
        net.calculate_loss(batch)
    assert net.pop_epoch_stats() == {}


def test_bad_settings_fail_clearly(tiny_data):
    for overrides, message in [
        ({"prune_layer": 0}, r"prune_layer=0 must be an int in \[1, 3\]"),
        ({"prune_layer": 4}, r"prune_layer=4"),
        ({"keep_ratio": 0}, r"keep_ratio=0 must be a number or a fraction .a/b. in \(0, 1\]"),
        ({"prune_score_queries": "all"}, r"set padding_free=False"),
        ({"prune_score_queries": "pad"}, r"prune_score_queries=.pad."),
        ({"keep_ratio": 1.5}, r"keep_ratio=1.5"),
        ({"prune_scorer": "l1"}, r"unknown prune_scorer 'l1'.*rastp"),
        ({"keep_ratio_mode": "global"}, r"keep_ratio_mode='global'"),
        ({"prune_protect_last": -1}, r"prune_protect_last=-1"),
        ({"backbone": "decoder_only", "dense_loss": True}, r"dense_loss cannot be used"),
        ({"backbone": "t5"}, r"backbone='t5' must be one of tiger, decoder_only"),
    ]:
        with pytest.raises(ValueError, match=message):
            build("RASTP", tiny_data, **overrides)
    with pytest.raises(ValueError, match="reserved"):
        register_scorer("none", needs_attention=False)(lambda *args: None)
    assert pruning.NO_PRUNING not in SCORERS


@pytest.mark.parametrize("backbone", BACKBONES)
def test_copies_keep_the_backbone(backbone, tiny_data):
    net, _, test_data = build("RASTP", tiny_data, backbone=backbone)
    copied = copy.deepcopy(net)  # RecBole's get_flops copies the model
    assert type(copied) is type(net) and repr(copied.pruner) == repr(net.pruner)
    inter = short_histories(test_data)
    with torch.no_grad():
        assert torch.equal(copied.full_sort_predict(inter), net.full_sort_predict(inter))


def test_trains_logs_and_reloads_from_a_checkpoint(tiny_data, caplog):
    settings = dict(tiny_data, **SMALL, state="INFO", epochs=2, train_batch_size=2048)
    with caplog.at_level(logging.INFO):
        result = run_recbole_semprune(model="RASTP", dataset="tiny", config_dict=settings)
    messages = [re.sub(r"\x1b\[[0-9;]*m", "", r.getMessage()) for r in caplog.records]
    training_lines = [m for m in messages if "training [time" in m]
    assert len(training_lines) == 2  # one per epoch, each with that epoch's kept tokens
    assert all("token pruning: kept" in line for line in training_lines)
    config, net, _, _, _, test_data = load_data_and_model(result["saved_model_file"])
    assert type(net).__name__ == "RASTP" and net.pruning
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    again = trainer.evaluate(test_data, load_best_model=False)
    assert dict(again) == pytest.approx(dict(result["test_result"]), abs=1e-12)
