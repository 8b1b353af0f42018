"""Tests of recbole_semprune.model.generation: the tensor prefix trie and constrained beam search."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recbole_semprune.model.generation import PrefixTrie, constrained_beam_search, scores_to_full
from recbole_semprune.model.layers import TransformerStack, reorder_cache

LEVELS = [3, 4, 5]


def _mixed_radix(prefix, sizes):
    key = 0
    for code, size in zip(prefix, sizes):
        key = key * size + code
    return key


def _random_codes(n_real, sizes, seed=0):
    """Unique random SIDs (row 0 = padding -1); many share their first codes."""
    g = torch.Generator().manual_seed(seed)
    total = 1
    for s in sizes:
        total *= s
    keys = torch.randperm(total, generator=g)[:n_real]
    cols = []
    for s in reversed(sizes):
        cols.append(keys % s)
        keys = keys // s
    real = torch.stack(cols[::-1], dim=1)
    return torch.cat([torch.full((1, len(sizes)), -1), real])


# ----------------------------------------------------------------------------------------- trie


def test_trie_matches_python_sets():
    codes = _random_codes(30, LEVELS, seed=1)
    trie = PrefixTrie(codes, LEVELS)
    sids = [tuple(row) for row in codes[1:].tolist()]
    assert len({s[0] for s in sids}) < len(sids)  # collisions at early levels
    for length in range(len(LEVELS) + 1):
        valid = {s[:length] for s in sids}
        assert trie.num_prefixes(length) == len(valid)
        combos = list(itertools.product(*[range(s) for s in LEVELS[:length]]))
        every = torch.tensor(combos, dtype=torch.long).reshape(len(combos), length)
        got = trie.is_valid_prefix(every)
        assert got.tolist() == [tuple(p) in valid for p in every.tolist()]
        if length < len(LEVELS):
            allowed = trie.allowed(length, every)
            assert allowed.shape == (every.shape[0], LEVELS[length])
            expect = [[tuple(p) + (c,) in {s[:length + 1] for s in sids} for c in range(LEVELS[length])]
                      for p in every.tolist()]
            assert allowed.tolist() == expect
    # level 0: empty prefix
    assert trie.allowed(0, torch.zeros(2, 0, dtype=torch.long)).tolist() == [
        [c in {s[0] for s in sids} for c in range(LEVELS[0])]] * 2


def test_trie_rejects_invalid_and_maps_item_ids():
    codes = _random_codes(30, LEVELS, seed=2)
    trie = PrefixTrie(codes, LEVELS)
    ids = trie.item_ids(codes)
    assert ids.tolist() == list(range(31))  # row 0 (all -1) maps to 0, others to themselves
    perm = torch.randperm(30) + 1
    assert torch.equal(trie.item_ids(codes[perm]), perm)

    sids = {tuple(row) for row in codes[1:].tolist()}
    missing = next(p for p in itertools.product(*[range(s) for s in LEVELS]) if p not in sids)
    bad = torch.tensor([missing, [-1, 0, 0], [0, 4, 0], [3, 0, 0], [0, 0, 5]])
    assert trie.item_ids(bad).tolist() == [0] * 5
    assert not trie.is_valid_prefix(bad).any()
    assert not trie.allowed(2, bad[:, :2][1:4]).any()  # out-of-range codes never extend
    assert not trie.is_valid_prefix(torch.tensor([[7], [-2]])).any()

    buffers = dict(trie.named_buffers())
    assert {"keys_0", "keys_3", "child_0", "child_2", "item_of_key"} <= set(buffers)
    assert buffers["child_1"].dtype == torch.bool

    with pytest.raises(ValueError):
        PrefixTrie(torch.cat([codes, codes[3:4]]), LEVELS)  # duplicate SID
    with pytest.raises(ValueError):
        PrefixTrie(torch.tensor([[-1, -1, -1], [0, 4, 0]]), LEVELS)  # code out of range


# ------------------------------------------------------------------------------ models for search


class TableModel:
    """Conditional log-probs from a fixed random table per user, level and prefix."""

    def __init__(self, n_users, sizes, seed=0, factorised=False, boost=None):
        g = torch.Generator().manual_seed(seed)
        self.sizes = sizes
        self.tables = []
        n_prefixes = 1
        for size in sizes:
            rows = 1 if factorised else n_prefixes
            self.tables.append(torch.randn(n_users, rows, size, generator=g) * 2)
            n_prefixes *= size
        if boost is not None:  # boost[u] = SID made much more likely for user u
            for user, sid in enumerate(boost):
                for level, code in enumerate(sid):
                    self.tables[level][user, _mixed_radix(sid[:level], sizes), code] += 20.0

    def log_probs(self, users, prefixes, level):
        key = torch.zeros(prefixes.shape[0], dtype=torch.long)
        for l in range(level):
            key = key * self.sizes[l] + prefixes[:, l]
        table = self.tables[level]
        key = key.clamp_max(table.shape[1] - 1)
        return F.log_softmax(table[users, key], dim=-1)

    def step_fn(self, state, prefixes, level):
        assert prefixes.shape == (state.shape[0], level)
        return self.log_probs(state, prefixes, level), state

    def brute_force(self, codes):
        """[n_users, n_items - 1] exact log-probability of every real item's SID."""
        n_users = self.tables[0].shape[0]
        real = codes[1:]
        total = torch.zeros(n_users, real.shape[0])
        for user in range(n_users):
            users = torch.full((real.shape[0],), user)
            for level in range(len(self.sizes)):
                lp = self.log_probs(users, real[:, :level], level)
                total[user] += lp.gather(1, real[:, level:level + 1]).squeeze(1)
        return total


def _check_against_brute(items, scores, brute, k):
    """Beam results equal the top-k of brute force (ids are column + 1)."""
    best, order = brute.topk(k, dim=1)
    assert torch.equal(items[:, :k], order + 1)
    torch.testing.assert_close(scores[:, :k], best, atol=1e-5, rtol=0)


def _check_valid_distinct(items, scores, brute):
    for user in range(items.shape[0]):
        finite = torch.isfinite(scores[user])
        got = items[user][finite]
        assert (got >= 1).all() and len(set(got.tolist())) == got.numel()
        assert torch.all(items[user][~finite] == 0)
        torch.testing.assert_close(scores[user][finite], brute[user, got - 1], atol=1e-5, rtol=0)
        assert torch.all(scores[user][finite][:-1] >= scores[user][finite][1:])


# ---------------------------------------------------------------------------------- beam search


@pytest.mark.parametrize("beam_size", [30, 45])
def test_beam_search_exhaustive_equals_brute_force(beam_size):
    codes = _random_codes(30, LEVELS, seed=3)
    trie = PrefixTrie(codes, LEVELS)
    model = TableModel(n_users=4, sizes=LEVELS, seed=3)
    users = torch.arange(4)
    items, scores = constrained_beam_search(model.step_fn, users, 4, beam_size, trie, LEVELS,
                                            reorder_cache)
    assert items.shape == scores.shape == (4, beam_size)
    brute = model.brute_force(codes)
    _check_against_brute(items, scores, brute, 30)
    _check_valid_distinct(items, scores, brute)
    assert torch.all(items[:, 30:] == 0) and torch.all(scores[:, 30:] == float("-inf"))
    assert len({tuple(row) for row in items[:, :5].tolist()}) > 1  # users differ


def test_beam_search_small_beam_valid_distinct_and_exact_scores():
    codes = _random_codes(40, LEVELS, seed=4)
    trie = PrefixTrie(codes, LEVELS)
    model = TableModel(n_users=5, sizes=LEVELS, seed=4)
    items, scores = constrained_beam_search(model.step_fn, torch.arange(5), 5, 6, trie)
    assert torch.isfinite(scores).all()
    _check_valid_distinct(items, scores, model.brute_force(codes))


def test_beam_search_exact_top_k_when_model_factorises():
    # every combination is a valid SID and log-probs do not depend on the prefix:
    # beam search of width k is then exact for the top-k.
    sizes = [4, 3, 5]
    all_sids = torch.tensor(list(itertools.product(*[range(s) for s in sizes])))
    perm = torch.randperm(all_sids.shape[0], generator=torch.Generator().manual_seed(5))
    codes = torch.cat([torch.full((1, 3), -1), all_sids[perm]])
    trie = PrefixTrie(codes, sizes)
    model = TableModel(n_users=3, sizes=sizes, seed=5, factorised=True)
    brute = model.brute_force(codes)
    for k in (1, 4):
        items, scores = constrained_beam_search(model.step_fn, torch.arange(3), 3, k, trie)
        _check_against_brute(items, scores, brute, k)


def test_beam_search_top1_exact_on_sparse_trie_with_dominant_item():
    codes = _random_codes(30, LEVELS, seed=6)
    trie = PrefixTrie(codes, LEVELS)
    targets = [5, 17, 29]
    model = TableModel(n_users=3, sizes=LEVELS, seed=6, boost=[codes[t].tolist() for t in targets])
    brute = model.brute_force(codes)
    items, scores = constrained_beam_search(model.step_fn, torch.arange(3), 3, 1, trie)
    assert items[:, 0].tolist() == targets
    _check_against_brute(items, scores, brute, 1)


def test_fewer_valid_items_than_beams():
    sizes = [4, 4]
    codes = torch.tensor([[-1, -1], [2, 1], [2, 3], [0, 0]])
    trie = PrefixTrie(codes, sizes)
    model = TableModel(n_users=2, sizes=sizes, seed=7)
    items, scores = constrained_beam_search(model.step_fn, torch.arange(2), 2, 6, trie)
    assert items.shape == (2, 6)
    assert torch.isfinite(scores[:, :3]).all() and torch.all(scores[:, 3:] == float("-inf"))
    assert torch.all(items[:, 3:] == 0)
    brute = model.brute_force(codes)
    _check_against_brute(items, scores, brute, 3)
    _check_valid_distinct(items, scores, brute)

    full = scores_to_full(items, scores, n_items=4)
    assert full.shape == (2, 4) and full[:, 0].eq(float("-inf")).all()
    torch.testing.assert_close(full[:, 1:], brute)

    with pytest.raises(ValueError):
        constrained_beam_search(model.step_fn, torch.arange(2), 2, 0, trie)


def test_scores_to_full():
    items = torch.tensor([[3, 1, 0], [2, 0, 0]])
    scores = torch.tensor([[-0.5, -1.0, float("-inf")], [-0.2, float("-inf"), float("-inf")]])
    full = scores_to_full(items, scores, n_items=5)
    inf = float("-inf")
    assert torch.equal(full, torch.tensor([[inf, -1.0, inf, -0.5, inf], [inf, inf, -0.2, inf, inf]]))


# ------------------------------------------------------- transformer decoder with a KV cache


class TinySeq2Seq(nn.Module):
    """Encoder memory -> TransformerStack decoder that generates SID codes level by level."""

    def __init__(self, sizes, hidden=16):
        super().__init__()
        self.sizes = sizes
        self.offsets = [1 + sum(sizes[:l]) for l in range(len(sizes))]  # token 0 = BOS
        self.tok = nn.Embedding(1 + sum(sizes), hidden)
        self.pos = nn.Embedding(len(sizes), hidden)
        self.decoder = TransformerStack(2, hidden, n_heads=2, head_size=12, inner_size=32,
                                        cross_attention=True)
        self.heads = nn.ModuleList(nn.Linear(hidden, s) for s in sizes)

    def _tokens(self, prefixes):
        """Decoder input for prefixes [N, l]: BOS followed by the level-offset code tokens."""
        bos = torch.zeros(prefixes.shape[0], 1, dtype=torch.long)
        shifted = prefixes + torch.tensor(self.offsets[:prefixes.shape[1]], dtype=torch.long)
        return torch.cat([bos, shifted], dim=1)

    def step_fn(self, cache, prefixes, level):
        """One decoding step with the KV cache: only the newest token is embedded and run."""
        token = self._tokens(prefixes)[:, -1:]
        x = self.tok(token) + self.pos.weight[level]
        out = self.decoder(x, causal=True, cache=cache)
        return F.log_softmax(self.heads[level](out.hidden[:, -1]), dim=-1), out.cache

    def brute_force(self, memory, memory_mask, codes):
        """Teacher-forced log-probability of every real SID for every user: [B, n_items - 1]."""
        real = codes[1:]
        n, n_levels = real.shape
        x = self.tok(self._tokens(real[:, :-1])) + self.pos.weight[:n_levels]
        result = []
        for user in range(memory.shape[0]):
            hidden = self.decoder(x, causal=True, memory=memory[user].expand(n, -1, -1),
                                  memory_padding_mask=memory_mask[user].expand(n, -1)).hidden
            total = torch.zeros(n)
            for level in range(n_levels):
                lp = F.log_softmax(self.heads[level](hidden[:, level]), dim=-1)
                total += lp.gather(1, real[:, level:level + 1]).squeeze(1)
            result.append(total)
        return torch.stack(result)


def test_beam_search_with_transformer_kv_cache_equals_brute_force():
    torch.manual_seed(8)
    codes = _random_codes(25, LEVELS, seed=8)
    trie = PrefixTrie(codes, LEVELS)
    model = TinySeq2Seq(LEVELS).eval()
    with torch.no_grad():
        for head in model.heads:  # sharper distributions than the 0.02 init
            head.weight.normal_(0, 1.0)
    B = 3
    memory = torch.randn(B, 6, 16)
    memory_mask = torch.arange(6)[None, :] < torch.tensor([6, 2, 4])[:, None]
    with torch.no_grad():
        brute = model.brute_force(memory, memory_mask, codes)
        cache = model.decoder.init_cache(memory, memory_mask)
        items, scores = constrained_beam_search(model.step_fn, cache, B, 25, trie, LEVELS)
        _check_against_brute(items, scores, brute, 25)
        small_items, small_scores = constrained_beam_search(model.step_fn, cache, B, 4, trie)
    _check_valid_distinct(small_items, small_scores, brute)
    assert not torch.equal(items[0], items[1])  # conditioning differs per user


# ------------------------------------------------------------------------------- excluded items


def test_count_items_matches_python_sets():
    codes = _random_codes(40, LEVELS, seed=11)
    trie = PrefixTrie(codes, LEVELS)
    real = codes[1:].tolist()
    for length in range(len(LEVELS) + 1):
        prefixes = list(itertools.product(*[range(s) for s in LEVELS[:length]]))
        keys = torch.tensor([_mixed_radix(p, LEVELS) for p in prefixes])
        expected = [sum(tuple(sid[:length]) == p for sid in real) for p in prefixes]
        assert trie.count_items(keys, length).tolist() == expected


@pytest.mark.parametrize("beam_size", [6, 45])
def test_beam_search_never_returns_excluded_items(beam_size):
    codes = _random_codes(30, LEVELS, seed=12)
    trie = PrefixTrie(codes, LEVELS)
    model = TableModel(n_users=3, sizes=LEVELS, seed=12)
    brute = model.brute_force(codes)
    best = brute.argsort(dim=1, descending=True) + 1
    # user 0: its 5 best items (one twice, plus padding); user 1: nothing; user 2: 28 of 30
    exclude = torch.zeros(3, 30, dtype=torch.long)
    exclude[0, :7] = torch.cat([best[0, :5], best[0, :1], torch.zeros(1, dtype=torch.long)])
    exclude[2, :28] = best[2, :28]
    items, scores = constrained_beam_search(model.step_fn, torch.arange(3), 3, beam_size, trie,
                                            exclude=exclude)
    for user in range(3):
        banned = set(exclude[user].tolist()) - {0}
        finite = torch.isfinite(scores[user])
        assert not banned & set(items[user][finite].tolist())
        assert int(finite.sum()) == min(beam_size, 30 - len(banned))
    _check_valid_distinct(items, scores, brute)
    if beam_size >= 30:  # exhaustive: the top of brute force once the excluded items are gone
        for user in range(3):
            allowed = brute[user].clone()
            allowed[exclude[user][exclude[user] > 0] - 1] = float("-inf")
            k = 30 - len(set(exclude[user].tolist()) - {0})
            top, order = allowed.topk(k)
            assert items[user, :k].tolist() == (order + 1).tolist()
            torch.testing.assert_close(scores[user, :k], top, atol=1e-5, rtol=0)


def test_exclusion_cuts_prefixes_whose_items_are_all_excluded():
    # every item under the first code 0 is excluded and the model strongly prefers that code:
    # cutting only at the last level would spend the beams on it and return no item at all
    sizes = [2, 3, 2]
    all_sids = torch.tensor(list(itertools.product(*[range(s) for s in sizes])))
    codes = torch.cat([torch.full((1, 3), -1), all_sids])
    trie = PrefixTrie(codes, sizes)
    model = TableModel(n_users=1, sizes=sizes, seed=13, boost=[[0, 0, 0]])
    under_zero = (all_sids[:, 0] == 0).nonzero().squeeze(1) + 1
    items, scores = constrained_beam_search(model.step_fn, torch.arange(1), 1, 2, trie,
                                            exclude=under_zero.view(1, -1))
    assert torch.isfinite(scores).all()
    assert (codes[items[0], 0] == 1).all()


def test_exclusion_rejects_bad_ids_and_row_counts():
    codes = _random_codes(10, LEVELS, seed=14)
    trie = PrefixTrie(codes, LEVELS)
    model = TableModel(n_users=2, sizes=LEVELS, seed=14)
    with pytest.raises(ValueError, match="excluded item ids"):
        constrained_beam_search(model.step_fn, torch.arange(2), 2, 3, trie,
                                exclude=torch.tensor([[11], [1]]))
    with pytest.raises(ValueError, match="rows"):
        constrained_beam_search(model.step_fn, torch.arange(2), 2, 3, trie,
                                exclude=torch.tensor([[1]]))
