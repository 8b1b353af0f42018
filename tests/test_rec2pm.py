"""Rec2PM: block mask, parallel training = a looped reference, serving state, training rows."""

import logging
import math

import numpy as np
import pytest
import torch

from conftest import REC2PM_SMALL, TINY, TINY_FLAGS, TINY_PROTOCOL, build_tiny, reload_and_evaluate, write_atomic
from recbole_semprune.config import Config
from recbole_semprune.model.rec2pm import Rec2PMState, global_attention_mask
from recbole_semprune.quick_start import run_recbole_semprune

SMALL = REC2PM_SMALL


def build(tiny_data, model="Rec2PM", **overrides):
    built = build_tiny(model, {**tiny_data, **SMALL}, **overrides)
    return built.config, built.train, built.valid, built.test, built.model.eval()


def batch_of(net, histories, targets):
    """A training interaction from lists of item ids (histories of different lengths)."""
    width = max(len(h) for h in histories)
    seq = torch.tensor([h + [0] * (width - len(h)) for h in histories])
    return {
        net.ITEM_SEQ: seq,
        net.ITEM_SEQ_LEN: torch.tensor([len(h) for h in histories]),
        net.POS_ITEM_ID: torch.tensor(targets),
    }


def random_histories(net, lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, net.n_items, (n,), generator=generator).tolist() for n in lengths]


# ---- the global block mask -------------------------------------------------------------------
def test_block_mask_each_query_block_sees_exactly_its_own_and_earlier_segments():
    k, t, c = 4, 5, 3
    mask = global_attention_mask(k, t, c)
    block = t + c
    assert mask.shape == (k * block, k * block)
    for i in range(k * block):
        seg_i, off_i = divmod(i, block)
        for j in range(k * block):
            seg_j, off_j = divmod(j, block)
            if off_i < t:  # a raw token: raw tokens at or before it (any segment), no query
                expected = off_j < t and seg_j * t + off_j <= seg_i * t + off_i
            else:  # a query of block seg_i: raw tokens of segments <= seg_i, its own block only
                expected = (off_j < t and seg_j <= seg_i) or (seg_j == seg_i and t <= off_j <= off_i)
            assert bool(mask[i, j]) == expected, (i, j)
    # never another query block
    queries = torch.arange(k * block) % block >= t
    other_block = (torch.arange(k * block) // block)[:, None] != (torch.arange(k * block) // block)[None]
    assert not (mask & queries[:, None] & queries[None, :] & other_block).any()


def test_reference_memory_depends_only_on_its_own_and_earlier_segments(tiny_data):
    _, _, _, _, net = build(tiny_data)
    stream = torch.tensor([random_histories(net, [12], seed=1)[0]])  # 4 segments of 3 items
    changed = stream.clone()
    changed[0, 6:9] = torch.tensor(random_histories(net, [3], seed=2)[0])  # segment 3
    with torch.no_grad():
        refs = [net.backbone.reference_memories(net, *net.backbone.embed_segments(net, s), 4) for s in (stream, changed)]
    assert torch.equal(refs[0][:, :2], refs[1][:, :2])
    assert not torch.allclose(refs[0][:, 2], refs[1][:, 2])


# ---- parallel training = the same quantities computed one user and one segment at a time ------
def looped_loss_terms(net, histories, targets):
    """L_AR and L_con by explicit loops: each reference memory by its own causal pass over the
    raw tokens of segments 1..h and then the queries; each segment's step on its own, reading
    the last ``tail_len`` items of the segment before it (none for the first)."""
    c, t, seg, r = net.mem_tokens, net.segment_tokens, net.segment_len, net.tail_len
    log_prob_sum, n_tokens, con_sum, n_con = 0.0, 0, 0.0, 0
    for history, target in zip(histories, targets):
        items = history + [target]
        k = math.ceil(len(items) / seg)
        stream = torch.tensor([items + [0] * (k * seg - len(items))])
        raw, raw_mask = net.backbone.embed_segments(net, stream)
        tokens = net.item_tokens(stream).view(k, t)
        references = []
        for h in range(k):
            number = net.backbone.segment_embedding.weight[: h + 1].repeat_interleave(t, dim=0)
            queries = net.backbone.query_embedding.weight + net.backbone.segment_embedding.weight[h]
            x = torch.cat([raw[:, : (h + 1) * t] + number, queries.unsqueeze(0)], dim=1)
            mask = torch.cat([raw_mask[:, : (h + 1) * t], torch.ones(1, c, dtype=torch.bool)], 1)
            references.append(net.backbone.decoder(x, padding_mask=mask, causal=True).hidden[:, -c:])
        for h in range(k):
            if tokens[h, 0] == 0:
                continue
            memory = net.backbone.initial_memory.weight.unsqueeze(0) if h == 0 else references[h - 1]
            tail_items = items[h * seg - r : h * seg] if h and r else []
            tail_positions = torch.arange(1, len(tail_items) + 1).view(1, -1)
            tail, _ = net.embed_items(torch.tensor([tail_items], dtype=torch.long), tail_positions)
            x = torch.cat([
                net.backbone.embed_memory(net, memory), tail, raw[:, h * t : (h + 1) * t],
                net.backbone.query_embedding.weight.unsqueeze(0),
            ], dim=1)
            mask = torch.cat([
                torch.ones(1, c + tail.shape[1], dtype=torch.bool),
                raw_mask[:, h * t : (h + 1) * t], torch.ones(1, c, dtype=torch.bool),
            ], dim=1)
            hidden = net.backbone.decoder(x, padding_mask=mask, causal=True).hidden[0]
            for i in range(t):
                if tokens[h, i] != 0:
                    predictor = hidden[c - 1 + tail.shape[1] + i]
                    log_prob_sum += net.output.token_log_probs(predictor, tokens[h, i])
                    n_tokens += 1
            if h + 1 < k and tokens[h + 1, 0] != 0:
                con_sum += (hidden[-c:] - references[h][0]).pow(2).mean()
                n_con += 1
    return -log_prob_sum / n_tokens, con_sum / max(n_con, 1)


@pytest.mark.parametrize("tail_len", [0, 2])
def test_parallel_training_loss_equals_the_looped_reference(tiny_data, tail_len):
    _, _, _, _, net = build(tiny_data, con_weight=0.7, tail_len=tail_len)
    lengths = [9, 4, 1, 6, 2, 11]
    histories = random_histories(net, lengths)
    targets = [h[-1] % (net.n_items - 1) + 1 for h in histories]
    interaction = batch_of(net, histories, targets)
    with torch.no_grad():
        ar, con = net.loss_terms(interaction)
        loop_ar, loop_con = looped_loss_terms(net, histories, targets)
        ar_term, con_term = net.calculate_loss(interaction)
    assert torch.allclose(ar, loop_ar, atol=1e-5)
    assert torch.allclose(con, loop_con, atol=1e-6)
    assert con > 0
    assert torch.allclose(ar_term, loop_ar, atol=1e-5)
    assert torch.allclose(con_term, 0.7 * loop_con, atol=1e-6)
    net.con_weight = 0.0
    with torch.no_grad():
        assert torch.equal(net.calculate_loss(interaction)[1], torch.zeros(()))


def test_detach_reference_stops_only_the_consistency_gradient_into_the_reference(tiny_data):
    _, _, _, _, net = build(tiny_data)
    # streams of 2 segments: the one consistency term compares the first step's output (which
    # reads the initial memory, not a reference) with the first reference memory
    histories = random_histories(net, [4, 5])
    interaction = batch_of(net, histories, [1, 2])
    grads = {}
    for detach in (False, True):
        net.detach_reference = detach
        net.zero_grad()
        _, con = net.loss_terms(interaction)
        con.backward()
        grads[detach] = net.backbone.segment_embedding.weight.grad  # reached only through the reference
        net.zero_grad()
        ar, _ = net.loss_terms(interaction)
        ar.backward()
        assert net.backbone.segment_embedding.weight.grad.abs().sum() > 0  # L_AR still trains the teacher
    assert grads[False].abs().sum() > 0
    assert grads[True] is None or grads[True].abs().sum() == 0


def test_training_step_is_finite_and_trains_every_part(tiny_data):
    _, train_data, _, _, net = build(tiny_data)
    net.train()
    loss = sum(net.calculate_loss(next(iter(train_data))))
    loss.backward()
    assert torch.isfinite(loss)
    for name in ("backbone.query_embedding", "backbone.memory_slot_embedding",
                 "backbone.memory_proj", "backbone.segment_embedding", "backbone.initial_memory",
                 "token_embedding"):
        grad = net.get_submodule(name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_memory_spread_is_logged_per_epoch_and_zero_for_identical_memories(tiny_data):
    _, train_data, _, _, net = build(tiny_data)
    net.train()
    batch = next(iter(train_data))
    net.calculate_loss(batch)
    net.calculate_loss(batch)
    stats = net.pop_epoch_stats()
    assert set(stats) == {"memory_spread"} and 0 < stats["memory_spread"] < 1
    assert "memory spread" in net.describe_epoch_stats(stats)
    assert net.pop_epoch_stats() == {}  # reset after each epoch
    net.eval()
    net.calculate_loss(batch)  # evaluation batches are not counted
    assert net.pop_epoch_stats() == {}
    # the same memory for every segment: no information about the user
    net.spread.record(torch.randn(1, 2, 8).expand(5, -1, -1))
    assert net.pop_epoch_stats()["memory_spread"] == pytest.approx(0.0, abs=1e-7)


# ---- serving ----------------------------------------------------------------------------------
def assert_same_state(a, b):
    """Same real memory slots per user (append mode may pad users differently), same rest."""
    for u in range(len(a.memory)):
        real_a, real_b = a.memory[u][a.memory_mask[u]], b.memory[u][b.memory_mask[u]]
        assert real_a.shape == real_b.shape and torch.allclose(real_a, real_b, atol=1e-5)
    assert torch.equal(a.pending, b.pending) and torch.equal(a.pending_len, b.pending_len)
    assert torch.equal(a.n_segments, b.n_segments)


@pytest.mark.parametrize("memory_mode, tail_len", [("overwrite", 0), ("append", 0), ("overwrite", 2)])
def test_incremental_updates_equal_the_whole_history_at_once(tiny_data, memory_mode, tail_len):
    _, _, _, _, net = build(tiny_data, memory_mode=memory_mode, tail_len=tail_len)
    lengths = [10, 7, 3, 1, 9]
    histories = random_histories(net, lengths, seed=3)
    whole = net.init_state(histories)
    # one segment at a time
    state = net.init_state(len(histories))
    for start in range(0, max(lengths), net.segment_len):
        state = net.update(state, [h[start : start + net.segment_len] for h in histories])
    assert_same_state(state, whole)
    # ragged chunks: users get different numbers of new items per request, some none
    chunks = [1, 2, 0, 4, 3, 5]
    state, done = net.init_state(len(histories)), [0] * len(histories)
    for request, size in enumerate(chunks * 3):
        size = (size + request) % 4 if request % 2 else size
        new = []
        for u, history in enumerate(histories):
            new.append(history[done[u] : done[u] + size] if u % 2 == request % 2 else [])
            done[u] += len(new[-1])
        state = net.update(state, new)
    state = net.update(state, [h[n:] for h, n in zip(histories, done)])
    assert_same_state(state, whole)
    items, scores = net.recommend(state, k=10)
    again, again_scores = net.recommend(whole, k=10)
    assert torch.equal(items, again) and torch.allclose(scores, again_scores, atol=1e-5)


@pytest.mark.parametrize("tail_len", [0, 3])
def test_recommend_equals_recbole_batch_evaluation(tiny_data, tail_len):
    _, _, _, test_data, net = build(tiny_data, tail_len=tail_len)
    inter = next(iter(test_data))[0][:12]
    seq, seq_len = inter[net.ITEM_SEQ], inter[net.ITEM_SEQ_LEN]
    with torch.no_grad():
        full = net.full_sort_predict(inter)
    state = net.init_state(len(seq))
    for start in range(0, seq.shape[1], net.segment_len):  # one segment at a time
        chunk = seq[:, start : start + net.segment_len]
        within = torch.arange(start, start + chunk.shape[1]) < seq_len.unsqueeze(1)
        state = net.update(state, chunk * within)
    items, scores = net.recommend(state, k=10)
    top_scores, top_items = full.topk(10)
    assert torch.equal(items, top_items)
    assert torch.allclose(scores, top_scores, atol=1e-5)
    assert (items > 0).all() and torch.isfinite(scores).all()

    # the state does not keep the seen items: serving passes them, evaluation reads item_seq
    net.exclude_seen = True
    with torch.no_grad():
        unseen_full = net.full_sort_predict(inter)
    items, scores = net.recommend(state, k=10, exclude=seq)
    top_scores, top_items = unseen_full.topk(10)
    assert torch.equal(items, top_items) and torch.allclose(scores, top_scores, atol=1e-5)
    assert not (items[:, :, None] == seq[:, None, :]).any()


@pytest.mark.parametrize("tail_len", [0, 2])
def test_predict_matches_cached_generation_scores(tiny_data, tail_len):
    from conftest import stepwise_log_probs

    _, _, _, test_data, net = build(tiny_data, tail_len=tail_len)
    inter = next(iter(test_data))[0][:8]
    seq, seq_len, items = inter[net.ITEM_SEQ], inter[net.ITEM_SEQ_LEN], inter[net.POS_ITEM_ID]
    with torch.no_grad():
        predicted = net.predict({net.ITEM_SEQ: seq, net.ITEM_SEQ_LEN: seq_len, net.ITEM_ID: items})
        stepwise = stepwise_log_probs(net, seq, seq_len, net.codes[items])
    assert torch.allclose(predicted, stepwise, atol=1e-4)


@pytest.mark.parametrize("tail_len", [0, 2])
def test_state_is_c_by_d_floats_per_user_whatever_the_history_length(tiny_data, tail_len):
    _, _, _, _, net = build(tiny_data, mem_tokens=3, tail_len=tail_len)
    c, d, seg, r = net.mem_tokens, net.hidden_size, net.segment_len, net.tail_len
    sizes = set()
    for n in (0, 2, 30, 300):
        state = net.init_state(random_histories(net, [n, n]))
        assert isinstance(state, Rec2PMState)
        assert state.memory.shape == (2, c, d) and state.memory.dtype == torch.float32
        assert state.pending.shape == (2, seg - 1) and state.tail.shape == (2, r)
        assert int(state.n_segments[0]) == n // seg and int(state.pending_len[0]) == n % seg
        sizes.add(state.bytes_per_user())
    assert sizes == {c * d * 4 + c + (r + seg - 1) * 8 + 2 * 8}


def test_memory_runs_over_histories_longer_than_any_seen_in_training(tiny_data):
    config, train_data, _, _, net = build(tiny_data)
    longest_trained = config["MAX_ITEM_LIST_LENGTH"] + 1
    assert max(int(next(iter(train_data))[net.ITEM_SEQ_LEN].max()), 0) < longest_trained
    n = 40 * longest_trained  # 440 items, 146 segments
    a, b = random_histories(net, [n, n], seed=5)
    b = a[:-60] + b[-60:]  # same old part, different last 20 segments
    state = net.init_state([a, b, a[:n // 2]])
    assert state.memory.shape == (3, net.mem_tokens, net.hidden_size)
    assert torch.isfinite(state.memory).all()
    assert not torch.allclose(state.memory[0], state.memory[1])
    items, scores = net.recommend(state, k=5)
    assert (items > 0).all() and torch.isfinite(scores).all()


def test_append_memory_grows_by_c_per_segment(tiny_data):
    _, _, _, _, net = build(tiny_data, memory_mode="append")
    state = net.init_state(random_histories(net, [7, 2]))
    c = net.mem_tokens
    # initial memory, then one block per folded segment; the initial block is retired
    assert state.memory.shape[1] == 3 * c
    assert state.memory_mask[0].tolist() == [False] * c + [True] * 2 * c
    assert state.memory_mask[1].tolist() == [True] * c + [False] * 2 * c


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"segment_len": 0}, "segment_len"),
        ({"mem_tokens": 0}, "mem_tokens"),
        ({"segment_len": 11}, "exceeds MAX_ITEM_LIST_LENGTH"),
        ({"memory_mode": "ring"}, "memory_mode"),
        ({"con_weight": -1}, "con_weight"),
        ({"initial_memory": "random"}, "initial_memory"),
        ({"tail_len": 4}, "tail_len"),
        ({"tail_len": -1}, "tail_len"),
        ({"tail_len": 1.5}, "tail_len"),
        ({"segment_len": 8, "tail_len": 3}, "tail_len \\+ segment_len = 11 exceeds"),
    ],
)
def test_bad_config_is_a_clear_error(tiny_data, overrides, message):
    with pytest.raises(ValueError, match=message):
        build(tiny_data, **overrides)


# ---- training rows ----------------------------------------------------------------------------
def make_sequences(root, lengths):
    """A dataset whose every interaction has its own item (``u<u>i<t>``), so a leak shows."""
    rows, items = [], []
    for u, n in enumerate(lengths):
        for t in range(n):
            rows.append((f"u{u}", f"u{u}i{t}", 100 * u + t))
            items.append((f"u{u}i{t}", f"word{t % 4} w{u}", f"g{u % 3}"))
    folder = root / "seqs"
    write_atomic(folder, "seqs", "inter", ["user_id:token", "item_id:token", "timestamp:float"], rows)
    write_atomic(folder, "seqs", "item", ["item_id:token", "title:token_seq", "genre:token"], items)
    return str(root)


def split_rows(config):
    from recbole.data import data_preparation

    from recbole_semprune.utils import create_dataset

    dataset = create_dataset(config)
    splits = data_preparation(config, dataset)
    out = []
    for split in splits:
        feat = split._dataset.inter_feat
        seq, lens, target = feat["item_id_list"], feat["item_length"], feat["item_id"]
        users = dataset.id2token("user_id", feat["user_id"])
        rows = {}
        for u, s, n, t in zip(users, seq, lens, target):
            history = [str(i) for i in np.atleast_1d(dataset.id2token("item_id", s[:n]))]
            rows.setdefault(u, []).append((history, dataset.id2token("item_id", int(t))))
        out.append(rows)
    return out


def test_user_rows_hold_each_users_training_sequence_and_no_valid_or_test_item(workdir, caplog):
    lengths = [5, 9, 14, 4, 12]
    data = make_sequences(workdir / "data", lengths)
    base = dict(TINY, **TINY_PROTOCOL, **SMALL, data_path=data, checkpoint_dir=str(workdir / "saved"))
    base["MAX_ITEM_LIST_LENGTH"] = 6
    caplog.set_level(logging.INFO)
    user_mode = split_rows(Config(model="Rec2PM", dataset="seqs", config_dict=dict(base, train_rows="user")))
    assert "training rows: user" in caplog.text.replace("\x1b[1;34m", "").replace("\x1b[0m", "")
    prefix_mode = split_rows(Config(model="Rec2PM", dataset="seqs", config_dict=dict(base, train_rows="prefix")))
    assert "training rows: prefix" in caplog.text.replace("\x1b[1;34m", "").replace("\x1b[0m", "")
    train, valid, test = user_mode
    assert valid == prefix_mode[1] and test == prefix_mode[2]  # evaluation rows unchanged
    assert sorted(train) == sorted(f"u{u}" for u in range(len(lengths)))
    for u, n in enumerate(lengths):
        sequence = [f"u{u}i{t}" for t in range(n)]
        (history, target), = train[f"u{u}"]  # exactly one row per user
        assert target == sequence[n - 3]  # the last training item
        assert history == sequence[: n - 3][-6:]  # all training items before it, capped at 6
        held_out = {valid[f"u{u}"][0][1], test[f"u{u}"][0][1]}
        assert held_out == {sequence[n - 2], sequence[n - 1]}
        assert not held_out & set(history + [target])
        # the user-row is the last of the prefix rows
        assert prefix_mode[0][f"u{u}"][-1] == (history, target)
        assert len(prefix_mode[0][f"u{u}"]) == n - 3


def test_user_rows_need_a_dense_loss(workdir):
    data = make_sequences(workdir / "data", [6, 7])
    base = dict(TINY, **TINY_PROTOCOL, **SMALL, data_path=data, checkpoint_dir=str(workdir / "saved"),
                train_rows="user")
    with pytest.raises(ValueError, match="DecoderOnlySID has no such loss"):
        split_rows(Config(model="DecoderOnlySID", dataset="seqs", config_dict=dict(base, dense_loss=False)))
    train, _, _ = split_rows(
        Config(model="DecoderOnlySID", dataset="seqs", config_dict=dict(base, dense_loss=True))
    )
    assert {u: len(rows) for u, rows in train.items()} == {"u0": 1, "u1": 1}
    with pytest.raises(ValueError, match="train_rows=.all. must be one of"):
        split_rows(Config(model="Rec2PM", dataset="seqs", config_dict=dict(base, train_rows="all")))


# ---- end to end -------------------------------------------------------------------------------
def test_trains_evaluates_and_reloads_to_identical_metrics(tiny_data, monkeypatch):
    result = run_recbole_semprune(model="Rec2PM", dataset="tiny", config_dict=dict(tiny_data, **SMALL))
    assert 0 <= result["test_result"]["ndcg@10"] <= 1

    again = reload_and_evaluate(result["saved_model_file"], monkeypatch)
    assert dict(again) == pytest.approx(dict(result["test_result"]), abs=1e-12)


# ---- the benchmark's latency command ---------------------------------------------------------
def test_latency_mode_writes_its_table(tiny_data, workdir):
    import contextlib
    import csv
    import io

    import yaml

    from recbole_semprune.benchmark.latency import main

    protocol = {k: v for k, v in tiny_data.items() if k in TINY_PROTOCOL}
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(protocol))
    output = workdir / "latency"
    argv = [
        "--dataset=tiny", f"--data_path={tiny_data['data_path']}", "--models=Rec2PM,DecoderOnlySID",
        "--baseline=DecoderOnlySID", f"--config_files={workdir / 'tiny.yaml'}",
        "--latency_lengths=4,9", "--latency_repeats=1", f"--output={output}", "--threads=1",
        *TINY_FLAGS, "--state=WARNING",
        f"--checkpoint_dir={workdir / 'saved'}",
        *[f"--{k}={v}" for k, v in SMALL.items() if k not in ("segment_len", "mem_tokens")],
        "--Rec2PM.segment_len=3", "--Rec2PM.mem_tokens=2",
    ]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    with open(output / "latency.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["history_length"]) for r in rows] == [
        ("Rec2PM", "4"), ("Rec2PM", "9"), ("DecoderOnlySID", "4"), ("DecoderOnlySID", "9")
    ]
    assert all(float(r["latency_ms"]) > 0 for r in rows)
    rec2pm, full = rows[:2], rows[2:]
    # Rec2PM: C x d floats + C mask bytes + (segment_len - 1) pending ids + 2 counters, any length
    assert {int(r["state_bytes"]) for r in rec2pm} == {2 * 16 * 4 + 2 + 2 * 8 + 2 * 8}
    assert [int(r["requests"]) for r in rec2pm] == [3, 3]  # one segment of requests
    # full history: keys and values of every layer, n x L tokens x n_heads x head_size floats
    levels = 3  # sid_levels=2 + the de-duplication level
    assert [int(r["state_bytes"]) for r in full] == [2 * n * levels * 2 * 64 * 4 for n in (4, 9)]
    assert [r["latency_ratio"] for r in full] == ["1.0", "1.0"]
    table = (output / "latency.md").read_text()
    assert "| Rec2PM | 9 |" in table and "--latency_lengths=4,9" in table
    assert "Latency and state per user" in out.getvalue()


def test_latency_mode_bad_flag_is_a_usage_error(capsys):
    from recbole_semprune.benchmark.latency import main

    assert main(["--dataset=tiny", "--models=Rec2PM", "--latency_lengths=10,x"]) == 2
    assert "--latency_lengths must be comma-separated integers" in capsys.readouterr().err
