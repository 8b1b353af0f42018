"""Padding-free batches (recbole_semprune/data/batching.py, SIDRecommender.history).

A row's loss, predict score and beam result must not depend on how far it is padded nor on
which rows share its batch. The models run in float64 here, so that the comparison is exact up
to the rounding of reductions over a different number of (masked) slots: a difference there is
below 1e-7, a real dependence on padding or batch-mates is above 1e-4 (the `batch`
keep-count control below).
"""

import pytest
import torch

from conftest import PRUNING_SMALL, build_pruning_net

from recbole_semprune.data.batching import LengthBucketBatchSampler, padding_share

# every SID model and backbone; Rec2PM with segments that fit the tiny histories
VARIANTS = {
    "TIGER": ("TIGER", {}),
    "DecoderOnlySID": ("DecoderOnlySID", {}),
    "RASTP": ("RASTP", {}),
    "RASTP-per_history": ("RASTP", {"keep_ratio_mode": "per_history"}),
    "RASTP-decoder_only": ("RASTP", {"backbone": "decoder_only"}),
    "STAMPSID": ("STAMPSID", {}),
    "STAMPSID-decoder_only": ("STAMPSID", {"backbone": "decoder_only"}),
    "Rec2PM": ("Rec2PM", {"segment_len": 3, "mem_tokens": 2}),
}
EXACT = dict(rtol=1e-7, atol=1e-7)


def row_results(net, interaction):
    """Per-row teacher-forced target log-probabilities [B], beam items [B, K] and scores."""
    with torch.no_grad():
        target = net.predict({**interaction, net.ITEM_ID: interaction[net.POS_ITEM_ID]})
        items, scores = net.generate(*net.history(interaction))
    return target, items, scores


def varied_batch(train_data, rows=24):
    """Training rows cut to many different history lengths (so most rows are padded)."""
    batch = train_data._dataset.inter_feat[torch.arange(rows)]
    seq, length = batch["item_id_list"].clone(), batch["item_length"].clone()
    length = torch.minimum(length, torch.arange(rows) % 9 + 1)
    seq[torch.arange(seq.shape[1]) >= length.unsqueeze(1)] = 0
    return {"item_id_list": seq, "item_length": length, "item_id": batch["item_id"]}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_row_results_do_not_depend_on_padding_or_batch(variant, tiny_data):
    model, overrides = VARIANTS[variant]
    net, train_data, _ = build_pruning_net(model, tiny_data, **overrides)
    net = net.double()
    batch = varied_batch(train_data)
    assert len(set(batch["item_length"].tolist())) >= 8
    assert net.padding_free
    free = row_results(net, batch)
    net.padding_free = False  # RecBole's rows, padded to MAX_ITEM_LIST_LENGTH
    padded = row_results(net, batch)
    assert net.history(batch)[0].shape[1] == 10 > int(batch["item_length"].max()) - 1
    torch.testing.assert_close(free[0], padded[0], **EXACT)
    assert torch.equal(free[1], padded[1])
    torch.testing.assert_close(free[2], padded[2], **EXACT)
    # each row alone (eval_batch_size 1) gets what it gets inside the batch
    net.padding_free = True
    for row in range(0, len(batch["item_length"]), 5):
        alone = row_results(net, {key: value[row : row + 1] for key, value in batch.items()})
        torch.testing.assert_close(alone[0], free[0][row : row + 1], **EXACT)
        assert torch.equal(alone[1], free[1][row : row + 1])
        torch.testing.assert_close(alone[2], free[2][row : row + 1], **EXACT)


def test_batch_keep_ratio_mode_depends_on_the_batch(tiny_data):
    """The control: the old `batch` count keeps fewer tokens of a short history when it is
    alone, so its score changes with its batch-mates (why `fixed` is the default)."""
    net, train_data, _ = build_pruning_net("RASTP", tiny_data, keep_ratio_mode="batch")
    net = net.double()
    batch = varied_batch(train_data)
    together = row_results(net, batch)[0]
    alone = torch.cat([row_results(net, {k: v[r : r + 1] for k, v in batch.items()})[0]
                       for r in range(len(together))])
    assert (alone - together).abs().max() > 1e-4


def test_loss_of_a_row_is_the_same_padded_or_not(tiny_data):
    net, train_data, _ = build_pruning_net("TIGER", tiny_data)
    net = net.double()
    batch = varied_batch(train_data)
    free = net.target_log_probs(batch, batch["item_id"])[0]
    net.padding_free = False
    torch.testing.assert_close(free, net.target_log_probs(batch, batch["item_id"])[0], **EXACT)


def test_length_buckets_cover_every_row_once_and_cut_padding():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 21, (1000,), generator=generator)
    sampler = LengthBucketBatchSampler(lengths, 64, shuffle=True, bucket_batches=16,
                                       generator=generator)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    assert all(len(batch) <= 64 for batch in batches)
    random_batches = torch.randperm(1000, generator=generator).split(64)
    assert padding_share(lengths, batches) < 0.1 < padding_share(lengths, random_batches)
    # a new pass is a new draw; bucket_batches=1 keeps random batch composition
    assert list(sampler) != batches
    single = LengthBucketBatchSampler(lengths, 64, shuffle=True, bucket_batches=1,
                                      generator=torch.Generator().manual_seed(1))
    assert padding_share(lengths, list(single)) > 0.2
    # evaluation: sorted by length, the same every time
    ordered = LengthBucketBatchSampler(lengths, 100, shuffle=False)
    first = list(ordered)
    assert first == list(ordered) and len(first) == 10
    assert lengths[first[0]].max() <= lengths[first[-1]].min()


def test_loaders_draw_bucketed_batches_and_training_is_reproducible(tiny_data):
    from recbole_semprune.config import Config
    from recbole_semprune.quick_start import run_recbole_semprune

    net, train_data, test_data = build_pruning_net("TIGER", tiny_data, train_batch_size=64)
    assert isinstance(train_data.batch_sampler, LengthBucketBatchSampler)
    assert isinstance(test_data.batch_sampler, LengthBucketBatchSampler)
    rows = sum(len(batch[net.ITEM_SEQ_LEN]) for batch in train_data)
    assert rows == len(train_data._dataset)
    lengths = train_data._dataset.inter_feat["item_length"]
    assert padding_share(lengths, list(train_data.batch_sampler)) < 0.1
    # RecBole's own models keep RecBole's loaders
    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_data)
    assert config["padding_free"]
    results = [
        run_recbole_semprune("TIGER", "tiny", config_dict={**tiny_data, "sid_levels": 2,
                                                           "sid_codebook_size": 8, "beam_size": 10})
        ["test_result"] for _ in range(2)
    ]
    assert results[0] == results[1]


@pytest.mark.parametrize("variant", ["TIGER", "DecoderOnlySID", "RASTP-decoder_only", "STAMPSID", "Rec2PM"])
def test_every_sid_model_trains_and_decodes_under_cpu_autocast(variant, tiny_data, monkeypatch):
    """enable_amp (RecBole's key): training and beam search run under bf16 autocast on CPU."""
    from recbole_semprune.quick_start import run_recbole_semprune

    from recbole_semprune.model.sid_recommender import SIDRecommender

    model, overrides = VARIANTS[variant]
    seen = {"linear": set(), "decoding under autocast": set()}
    linear, full_sort_predict = torch.nn.functional.linear, SIDRecommender.full_sort_predict

    def recording_linear(*args, **kwargs):
        out = linear(*args, **kwargs)
        seen["linear"].add(out.dtype)
        return out

    def recording_full_sort_predict(self, interaction):
        seen["decoding under autocast"].add(torch.is_autocast_enabled("cpu"))
        return full_sort_predict(self, interaction)

    monkeypatch.setattr(torch.nn.functional, "linear", recording_linear)
    monkeypatch.setattr(SIDRecommender, "full_sort_predict", recording_full_sort_predict)
    settings = {**PRUNING_SMALL, **overrides, "enable_amp": True}
    result = run_recbole_semprune(model, "tiny", config_dict={**tiny_data, **settings})
    assert torch.bfloat16 in seen["linear"]
    assert seen["decoding under autocast"] == {True}
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
