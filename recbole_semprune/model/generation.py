"""Constrained generation of semantic IDs: a tensor prefix trie and a batched beam search.

``codes`` is a LongTensor ``[n_items, L]``: row 0 is the padding item (ignored, conventionally
all -1) and every other row is the unique SID of that internal item id, with
``codes[:, l]`` in ``[0, level_sizes[l])``.

The trie stores, for every prefix length ``l`` (0..L), the sorted mixed-radix keys of the valid
prefixes of that length, plus for ``l < L`` a dense bool child mask ``[n_prefixes_l, level_sizes[l]]``
of which codes extend each prefix. Queries are a ``torch.searchsorted`` per call, no Python loop
over items.

Beam search loops in Python only over the ``L`` levels; users and beams are batched. The model
supplies ``step_fn(state, prefixes, level) -> (log_probs [N, level_sizes[level]], new_state)`` and
``reorder_state(state, flat_index)`` (default :func:`~recbole_semprune.model.layers.reorder_cache`,
an ``index_select`` along dim 0 of every tensor in the state).
"""

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from recbole_semprune.model.layers import reorder_cache

__all__ = ["PrefixTrie", "ExcludedItems", "constrained_beam_search", "scores_to_full"]


class PrefixTrie(nn.Module):
    """Valid SID prefixes as per-level sorted mixed-radix keys + dense child masks (buffers).

    Move it with ``.to(device)``. Buffers: ``keys_l`` (LongTensor [n_prefixes_l], sorted, for
    l = 0..L), ``child_l`` (BoolTensor [n_prefixes_l, level_sizes[l]], l = 0..L-1) and
    ``item_of_key`` (LongTensor [n_items - 1], item id of each sorted full key).
    """

    def __init__(self, codes: torch.Tensor, level_sizes: Sequence[int]):
        super().__init__()
        codes = torch.as_tensor(codes, dtype=torch.long).cpu()
        self.level_sizes = [int(s) for s in level_sizes]
        self.n_levels = len(self.level_sizes)
        if codes.dim() != 2 or codes.shape[1] != self.n_levels:
            raise ValueError(f"codes must be [n_items, {self.n_levels}], got {tuple(codes.shape)}")
        if min(self.level_sizes) < 1:
            raise ValueError("every level size must be >= 1")
        total = 1
        for size in self.level_sizes:
            total *= size
        if total >= 2**62:
            raise ValueError("the SID space is too large for int64 mixed-radix keys")
        self.n_items = codes.shape[0]
        real = codes[1:]
        if real.shape[0] == 0:
            raise ValueError("codes must hold at least one real item (row 0 is padding)")
        sizes = torch.tensor(self.level_sizes, dtype=torch.long)
        if real.numel() and ((real < 0) | (real >= sizes)).any():
            raise ValueError("codes of real items (rows >= 1) must lie in [0, level_sizes[l])")

        key = torch.zeros(real.shape[0], dtype=torch.long)
        for level in range(self.n_levels + 1):
            keys = torch.unique(key)  # sorted prefix keys of length `level`
            if level == 0:
                keys = torch.zeros(1, dtype=torch.long)
            self.register_buffer(f"keys_{level}", keys, persistent=False)
            if level == self.n_levels:
                break
            child = torch.zeros(keys.numel(), self.level_sizes[level], dtype=torch.bool)
            child[torch.searchsorted(keys, key), real[:, level]] = True
            self.register_buffer(f"child_{level}", child, persistent=False)
            key = key * self.level_sizes[level] + real[:, level]
        if torch.unique(key).numel() != key.numel():
            raise ValueError("semantic IDs must be unique across items")
        order = torch.argsort(key)
        self.register_buffer("item_of_key", order + 1, persistent=False)
        # full key of every item id (-1 for the padding item 0)
        self.register_buffer("key_of_item", torch.cat([key.new_full((1,), -1), key]), persistent=False)
        # radix[l] = number of full keys under one prefix of length l
        radix = [1] * (self.n_levels + 1)
        for level in reversed(range(self.n_levels)):
            radix[level] = radix[level + 1] * self.level_sizes[level]
        self.radix = radix

    def keys(self, level: int) -> torch.Tensor:
        """Sorted keys of the valid prefixes of length ``level``."""
        return getattr(self, f"keys_{level}")

    def num_prefixes(self, level: int) -> int:
        """Number of distinct valid prefixes of length ``level`` (``level = L``: number of items)."""
        return self.keys(level).numel()

    def _lookup(self, prefixes: torch.Tensor):
        """Row index in ``keys_l`` of each prefix [N, l] and whether it is a valid prefix."""
        prefixes = prefixes.long()
        length = prefixes.shape[1]
        keys = self.keys(length)
        found = torch.ones(prefixes.shape[0], dtype=torch.bool, device=keys.device)
        if length == 0:
            return torch.zeros_like(found, dtype=torch.long), found
        key = torch.zeros(prefixes.shape[0], dtype=torch.long, device=keys.device)
        for level in range(length):  # loop over levels only
            size = self.level_sizes[level]
            code = prefixes[:, level].to(keys.device)
            found &= (code >= 0) & (code < size)
            key = key * size + code.clamp(0, size - 1)
        index = torch.searchsorted(keys, key).clamp_max(keys.numel() - 1)
        found &= keys[index] == key
        return index, found

    def is_valid_prefix(self, prefixes: torch.Tensor) -> torch.Tensor:
        """BoolTensor [N]: whether each row of ``prefixes`` [N, l] starts some item's SID."""
        return self._lookup(prefixes)[1]

    def allowed(self, level: int, prefixes: torch.Tensor) -> torch.Tensor:
        """BoolTensor [N, level_sizes[level]]: codes that extend ``prefixes`` [N, level] validly.

        Rows whose prefix is itself invalid are all False.
        """
        if prefixes.shape[1] != level:
            raise ValueError(f"prefixes for level {level} must have {level} columns")
        index, found = self._lookup(prefixes)
        return getattr(self, f"child_{level}")[index] & found[:, None]

    def prefix_keys(self, prefixes: torch.Tensor) -> torch.Tensor:
        """Mixed-radix key [N] of each row of ``prefixes`` [N, l] (rows must be valid codes)."""
        key = torch.zeros(prefixes.shape[0], dtype=torch.long, device=prefixes.device)
        for level in range(prefixes.shape[1]):
            key = key * self.level_sizes[level] + prefixes[:, level].long()
        return key

    def count_items(self, keys: torch.Tensor, length: int) -> torch.Tensor:
        """Number of items whose SID starts with each prefix of ``length`` codes, given by its
        key (any shape; a key outside the trie counts 0)."""
        full = self.keys(self.n_levels)
        low = keys.clamp(min=0) * self.radix[length]
        flat = torch.stack([low, low + self.radix[length]]).view(2, -1)
        bounds = torch.searchsorted(full, flat)
        return (bounds[1] - bounds[0]).view(keys.shape)

    def item_ids(self, full_codes: torch.Tensor) -> torch.Tensor:
        """LongTensor [N]: internal item id of each SID row of ``full_codes`` [N, L] (0 if none)."""
        if full_codes.shape[1] != self.n_levels:
            raise ValueError(f"full_codes must have {self.n_levels} columns")
        index, found = self._lookup(full_codes)
        return torch.where(found, self.item_of_key[index], torch.zeros_like(index))


class ExcludedItems:
    """Items each user must not be recommended (e.g. the items of the history), as a per-user
    restriction of the trie: a continuation is cut when every item under it is excluded.

    ``exclude`` LongTensor [batch, n] of item ids (0 = padding; duplicates allowed). Cost per
    level: ``batch x beams x n`` comparisons; no per-user trie is built.
    """

    def __init__(self, trie: PrefixTrie, exclude: torch.Tensor):
        if exclude.dim() != 2:
            raise ValueError(f"exclude must be [users, n] item ids, got shape {tuple(exclude.shape)}")
        device = trie.key_of_item.device
        exclude = exclude.to(device=device, dtype=torch.long)
        if ((exclude < 0) | (exclude >= trie.n_items)).any():
            raise ValueError(f"excluded item ids must lie in [0, {trie.n_items}) (0 = padding)")
        exclude = exclude.sort(dim=1).values
        repeated = torch.zeros_like(exclude, dtype=torch.bool)
        repeated[:, 1:] = exclude[:, 1:] == exclude[:, :-1]
        self.trie = trie
        self.real = (exclude > 0) & ~repeated
        self.keys = trie.key_of_item[exclude]  # [batch, n] full keys

    def exhausted(self, level: int, prefixes: torch.Tensor) -> torch.Tensor:
        """BoolTensor [N, level_sizes[level]] (N = batch x beams rows of ``prefixes``
        [N, level]): continuations under which every item is excluded for the row's user."""
        trie, size = self.trie, self.trie.level_sizes[level]
        batch = self.keys.shape[0]
        beam_keys = trie.prefix_keys(prefixes).view(batch, -1)  # [B, beams]
        under = self.keys // trie.radix[level]  # excluded items' prefixes of length `level`
        match = (under[:, None, :] == beam_keys[:, :, None]) & self.real[:, None, :]
        code = (self.keys // trie.radix[level + 1]) % size  # their code at this level
        excluded = torch.zeros(batch, beam_keys.shape[1], size, dtype=torch.long, device=code.device)
        excluded.scatter_add_(2, code[:, None, :].expand_as(match), match.long())
        candidates = beam_keys[:, :, None] * size + torch.arange(size, device=code.device)
        total = trie.count_items(candidates, level + 1)
        return ((excluded >= total) & (total > 0)).view(-1, size)


def constrained_beam_search(
    step_fn: Callable,
    init_state,
    batch_size: int,
    beam_size: int,
    trie: PrefixTrie,
    level_sizes: Optional[Sequence[int]] = None,
    reorder_state: Optional[Callable] = None,
    exclude: Optional[torch.Tensor] = None,
):
    """Beam search over SIDs restricted to the trie, batched over ``batch_size`` users.

    ``init_state`` holds one row per user (dim 0 = ``batch_size``). At each level ``l``,
    ``step_fn(state, prefixes, l)`` gets ``prefixes`` LongTensor [N, l] (the codes chosen so far
    for each of the N = batch * beams rows; [batch_size, 0] at level 0, where there is one beam
    per user so beams never duplicate) and returns ``(log_probs [N, level_sizes[l]], new_state)``.
    ``reorder_state(state, flat_index)`` must re-gather the state rows (``flat_index`` LongTensor
    [batch * new_beams] of row indices into the current state); default :func:`reorder_cache`.

    ``exclude`` (LongTensor [batch_size, n], 0 = padding): item ids each user must not get
    (:class:`ExcludedItems`); prefixes that lead only to excluded items are cut at every level,
    so the beams go to items the user may get.

    Continuations outside the trie get -inf before the top-k. Returns ``(item_ids [B, beam_size],
    scores [B, beam_size])`` sorted by score descending, score = sum of the per-level log-probs.
    Beams beyond the number of valid SIDs carry score -inf and item id 0 (callers drop them);
    every finite-score item is a real, per-user distinct item.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    level_sizes = trie.level_sizes if level_sizes is None else [int(s) for s in level_sizes]
    if list(level_sizes) != trie.level_sizes:
        raise ValueError("level_sizes differ from the trie's")
    reorder_state = reorder_cache if reorder_state is None else reorder_state
    device = trie.keys(0).device

    excluded = None if exclude is None else ExcludedItems(trie, exclude)
    if excluded is not None and excluded.keys.shape[0] != batch_size:
        raise ValueError(f"exclude has {excluded.keys.shape[0]} rows for {batch_size} users")
    state = init_state
    prefixes = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
    beam_scores = torch.zeros(batch_size, 1, device=device)
    n_beams = 1
    for level, size in enumerate(level_sizes):
        log_probs, state = step_fn(state, prefixes, level)
        # scores add up in float32 at least (bf16 / fp16 under autocast), float64 if given
        dtype = torch.promote_types(log_probs.dtype, torch.float32)
        log_probs = log_probs.to(device=device, dtype=dtype)
        beam_scores = beam_scores.to(dtype)
        allowed = trie.allowed(level, prefixes)
        if excluded is not None:
            allowed &= ~excluded.exhausted(level, prefixes)
        log_probs = log_probs.masked_fill(~allowed, float("-inf"))
        candidates = (beam_scores[:, :, None] + log_probs.view(batch_size, n_beams, size))
        candidates = candidates.view(batch_size, n_beams * size)
        # No point keeping more beams than there are valid prefixes of the next length.
        k = min(beam_size, n_beams * size, trie.num_prefixes(level + 1))
        beam_scores, flat = candidates.topk(k, dim=1)  # sorted descending
        parent = flat // size
        token = flat % size
        flat_index = (torch.arange(batch_size, device=device)[:, None] * n_beams + parent).view(-1)
        prefixes = torch.cat([prefixes.index_select(0, flat_index), token.view(-1, 1)], dim=1)
        n_beams = k
        if level + 1 < len(level_sizes):
            state = reorder_state(state, flat_index)

    item_ids = trie.item_ids(prefixes).view(batch_size, n_beams)
    finite = torch.isfinite(beam_scores)
    item_ids = torch.where(finite, item_ids, torch.zeros_like(item_ids))
    beam_scores = torch.where(finite, beam_scores, torch.full_like(beam_scores, float("-inf")))
    if n_beams < beam_size:
        pad = beam_size - n_beams
        item_ids = torch.cat([item_ids, item_ids.new_zeros(batch_size, pad)], dim=1)
        beam_scores = torch.cat([beam_scores, beam_scores.new_full((batch_size, pad), float("-inf"))], dim=1)
    return item_ids, beam_scores


def scoring_steps(hidden_step: Callable, head, first: Optional[list] = None) -> Callable:
    """The ``step_fn`` of :func:`constrained_beam_search` from a backbone's ``hidden_step``
    (``(state, prefixes, level) -> (hidden [N, d], new_state)``): the hidden states' log-probs
    over the level's codes by ``head.level_log_probs``. With ``first`` (a list), level 0's
    hidden states (one row per user) are appended to it: the state that scored the first code,
    which dense retrieval reads without another pass of the history."""

    def step(state, prefixes, level):
        hidden, state = hidden_step(state, prefixes, level)
        if level == 0 and first is not None:
            first.append(hidden)
        return head.level_log_probs(hidden, level), state

    return step


def scores_to_full(item_ids: torch.Tensor, scores: torch.Tensor, n_items: int) -> torch.Tensor:
    """FloatTensor [B, n_items]: each beam item gets its score, every other item (and 0) -inf."""
    full = torch.full((item_ids.shape[0], n_items), float("-inf"), dtype=torch.float, device=scores.device)
    values = torch.where(item_ids > 0, scores.float(), torch.full_like(scores, float("-inf"), dtype=torch.float))
    return full.scatter(1, item_ids.long(), values)
