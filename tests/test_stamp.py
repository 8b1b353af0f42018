"""STAMPSID (STAMP: semantic adaptive pruning + multi-step auxiliary prediction), both backbones."""

import pytest
import torch
from recbole.data import data_preparation

from conftest import TINY, write_atomic, BACKBONES, PRUNING_SMALL as SMALL, build_pruning_net as build
from recbole_semprune.config import Config
from recbole_semprune.data.dataset import future_field
from recbole_semprune.model.pruning import SCORERS
from recbole_semprune.model.backbones import DecoderOnly, EncoderDecoder
from recbole_semprune.model.stamp import STAMPSID, stamp_score
from recbole_semprune.quick_start import load_data_and_model, run_recbole_semprune
from recbole_semprune.utils import create_dataset, get_model, get_trainer



# ---- no leakage: hand-made dataset ----------------------------------------------------------
def hand_dataset(root, lengths=(4, 5, 6, 7, 9)):
    """User u has items u<u>i0, u<u>i1, ... (all distinct), two per timestamp (ties)."""
    rows = [(f"u{u}", f"u{u}i{t}", 100 * u + t // 2)
            for u, n in enumerate(lengths) for t in range(n)]
    write_atomic(root / "hand", "hand", "inter",
                 ["user_id:token", "item_id:token", "timestamp:float"], rows)
    return {
        **TINY, **SMALL, "data_path": str(root), "sid_embedding": "collaborative",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user",
                      "mode": "full"},
        "MAX_ITEM_LIST_LENGTH": 3, "train_neg_sample_args": None, "topk": [5],
        "metrics": ["Recall", "NDCG"], "valid_metric": "NDCG@5", "train_batch_size": 4,
    }


@pytest.mark.parametrize("steps", [1, 3])
def test_future_targets_are_later_training_items_only(workdir, steps):
    config = Config("STAMPSID", "hand", config_dict=dict(hand_dataset(workdir), multistep_steps=steps))
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    field = future_field(config)
    token = lambda i: dataset.id2token("item_id", int(i))  # noqa: E731
    held_out = {token(i) for split in (valid, test) for i in split.dataset.inter_feat["item_id"]}
    assert len(held_out) == 2 * 5  # one validation and one test item per user
    assert field not in valid.dataset.inter_feat and field not in test.dataset.inter_feat
    seen = 0
    for batch in train:  # what the model really receives, batch by batch
        for target, future in zip(batch["item_id"].tolist(), batch[field].tolist()):
            user, t = token(target)[1:].split("i")
            n_train = (4, 5, 6, 7, 9)[int(user)] - 2  # the last two: validation, test
            expected = [f"u{user}i{t2}" for t2 in range(int(t) + 1, int(t) + 1 + steps)]
            expected = [e if int(e.split("i")[1]) < n_train else "[PAD]" for e in expected]
            assert [token(f) for f in future] == expected  # next training items, then masked
            assert not {token(f) for f in future} & held_out
            seen += 1
    assert seen == sum(n - 3 for n in (4, 5, 6, 7, 9))  # every training row checked


def test_models_without_future_targets_get_no_field(workdir):
    config = Config("STAMPSID", "hand", config_dict=dict(hand_dataset(workdir), multistep_weight=0))
    train, _, _ = data_preparation(config, create_dataset(config))
    assert future_field(config) not in train.dataset.inter_feat
    config = Config("STAMPSID", "hand",
                    config_dict=dict(hand_dataset(workdir), backbone="decoder_only"))
    train, _, _ = data_preparation(config, create_dataset(config))
    assert future_field(config) not in train.dataset.inter_feat


def test_masked_future_steps_add_nothing(tiny_data):
    net, train_data, _ = build("STAMPSID", tiny_data, prune_scorer="none", multistep_steps=2)
    batch = next(iter(train_data))
    field = net.multistep.future_field
    with torch.no_grad():
        main, aux = net.multistep.losses(net, batch)
        partial = batch[field].clone()
        partial[:, 1] = 0  # every second step runs out: only the first steps count
        batch.interaction[field] = partial
        main_partial, aux_partial = net.multistep.losses(net, batch)
        batch.interaction[field] = torch.zeros_like(partial)  # the whole future runs out
        main_none, aux_none = net.multistep.losses(net, batch)
    assert torch.allclose(main, main_partial) and torch.allclose(main, main_none)
    assert aux_none == 0 and aux_partial != aux
    assert torch.equal(net.calculate_loss(batch), main_none)


def test_decoder_only_targets_never_a_history_token_the_pruning_saw(tiny_data):
    pruned, train_data, _ = build("STAMPSID", tiny_data, backbone="decoder_only", multistep_steps=3,
                                  keep_ratio=0.5)
    unpruned, _, _ = build("STAMPSID", tiny_data, backbone="decoder_only", multistep_steps=3,
                           prune_scorer="none")
    batch = next(iter(train_data))
    target = pruned.item_tokens(batch["item_id"])
    for net, history_targets in ((pruned, False), (unpruned, True)):
        stream = net.backbone.stream_hidden(net, batch["item_id_list"], batch["item_length"], target)
        n_history = stream.tokens.shape[1] - net.n_levels
        for step, (tokens, valid) in enumerate(net.multistep.stream_targets(net, stream)):
            where = stream.source + step + 2
            assert (where[valid] < stream.tokens.shape[1]).all()  # never past the stream
            inside = where.clamp(max=stream.tokens.shape[1] - 1)
            assert torch.equal(tokens[valid], stream.tokens.gather(1, inside)[valid])
            assert (tokens[valid] != 0).all()
            assert bool((where[valid] < n_history).any()) == history_targets


# ---- equivalences ---------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", BACKBONES)
def test_multistep_weight_zero_is_the_backbone_loss(backbone, tiny_data):
    base, _, _ = build(BACKBONES[backbone], tiny_data)
    off, _, _ = build("STAMPSID", tiny_data, backbone=backbone, prune_scorer="none",
                      multistep_weight=0)
    on, train_data, _ = build("STAMPSID", tiny_data, backbone=backbone, prune_scorer="none",
                              multistep_weight=0.5)  # tiger: its training batches hold future items
    assert off.multistep.heads is None  # MAP off adds no parameter
    off.load_state_dict(base.state_dict())
    on.load_state_dict(base.state_dict(), strict=False)
    batch = next(iter(train_data))
    with torch.no_grad():
        reference = base.calculate_loss(batch)
        assert torch.equal(off.calculate_loss(batch), reference)
        main, aux = on.multistep.losses(on, batch)  # the shared decoder pass leaves the main loss as is
        assert torch.allclose(main, reference, atol=1e-6)
        assert torch.allclose(on.calculate_loss(batch), main + 0.5 * aux)
        assert aux > 0


@pytest.mark.parametrize("backbone", BACKBONES)
def test_sap_with_ratio_one_gives_the_backbones_outputs(backbone, tiny_data):
    base, _, test_data = build(BACKBONES[backbone], tiny_data)
    net, _, _ = build("STAMPSID", tiny_data, backbone=backbone, keep_ratio=1.0, multistep_steps=0)
    net.load_state_dict(base.state_dict())
    inter = next(iter(test_data))[0][:16]
    seq, seq_len = inter["item_id_list"], inter["item_length"]
    tokens = base.item_tokens(inter["item_id"])
    with torch.no_grad():
        assert torch.allclose(net.target_hidden(seq, seq_len, tokens),
                              base.target_hidden(seq, seq_len, tokens), atol=1e-5)
        full, pruned = base.full_sort_predict(inter), net.full_sort_predict(inter)
    finite = torch.isfinite(full)
    assert torch.equal(torch.isfinite(pruned), finite)
    assert torch.allclose(pruned[finite], full[finite], atol=1e-4)


def test_tiger_auxiliary_steps_equal_separate_decoder_runs(tiny_data):
    net, train_data, _ = build("STAMPSID", tiny_data, keep_ratio=0.5, multistep_steps=2,
                               multistep_heads="separate", multistep_weight=1.0)
    batch = next(iter(train_data))
    with torch.no_grad():
        main, aux = net.multistep.losses(net, batch)
        memory, mask = net.backbone.encode(net, batch["item_id_list"], batch["item_length"])
        future = batch[net.multistep.future_field]
        total, count = 0.0, 0
        for step in range(2):
            tokens = net.item_tokens(future[:, step])
            x = net.backbone.teacher_forcing_input(net, tokens)  # BOS replaced by the step's start token
            x[:, 0] = net.multistep.start[step] + net.level_embedding.weight[0]
            hidden = net.backbone.decoder(x, causal=True, memory=memory, memory_padding_mask=mask).hidden
            log_probs = net.output.token_log_probs(net.multistep.heads(hidden, step), tokens)
            real = future[:, step] != 0
            total -= log_probs[real].sum()
            count += int(real.sum()) * net.n_levels
    assert count > 0 and torch.allclose(aux, total / count, atol=1e-5)


def test_stamp_score_by_hand():
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]]])
    received = torch.tensor([[0.5, 1.0, 2.0]])
    mask = torch.tensor([[True, True, False]])  # the padding does not move the mean
    mean = torch.tensor([0.5, 1.0])
    expected = received * (hidden[0] - mean).norm(dim=-1)
    assert torch.allclose(stamp_score(hidden, received, mask)[:, :2], expected[:, :2])
    assert SCORERS["stamp"].needs_attention


# ---- models ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone, expected", [("tiger", EncoderDecoder),
                                                ("decoder_only", DecoderOnly)])
def test_trains_evaluates_and_reloads(backbone, expected, tiny_data):
    settings = dict(tiny_data, **SMALL, backbone=backbone, epochs=1, train_batch_size=256)
    result = run_recbole_semprune(model="STAMPSID", dataset="tiny", config_dict=settings)
    assert all(torch.isfinite(torch.tensor(v)) for v in result["test_result"].values())
    config, net, _, _, _, test_data = load_data_and_model(result["saved_model_file"])
    assert type(net) is STAMPSID and type(net.backbone) is expected and net.pruner.active(False) and net.multistep.settings.active
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
    again = trainer.evaluate(test_data, load_best_model=False)
    assert dict(again) == pytest.approx(dict(result["test_result"]), abs=1e-12)


def test_gradients_reach_the_auxiliary_heads(tiny_data):
    for backbone in BACKBONES:
        net, train_data, _ = build("STAMPSID", tiny_data, backbone=backbone,
                                   multistep_heads="separate", multistep_steps=2)
        net.train().calculate_loss(next(iter(train_data))).backward()
        for name, parameter in net.multistep.heads.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_recboles_own_stamp_still_runs(tiny_data):
    assert get_model("STAMP").__module__ == "recbole.model.sequential_recommender.stamp"
    result = run_recbole_semprune(model="STAMP", dataset="tiny", config_dict=dict(tiny_data))
    assert "ndcg@10" in result["test_result"]


def test_bad_settings_fail_clearly(tiny_data):
    for overrides, message in [
        ({"multistep_steps": -1}, r"multistep_steps=-1 must be an int >= 0"),
        ({"multistep_weight": -0.1}, r"multistep_weight=-0.1 must be a number >= 0"),
        ({"multistep_heads": "tied"}, r"multistep_heads='tied' must be one of shared, separate"),
        ({"backbone": "t5"}, r"backbone='t5' must be one of tiger, decoder_only"),
        ({"backbone": "decoder_only", "dense_loss": True}, r"dense_loss cannot be used"),
    ]:
        with pytest.raises(ValueError, match=message):
            build("STAMPSID", tiny_data, **overrides)

