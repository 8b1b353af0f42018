"""The recurrent preference memory of :class:`~recbole_semprune.model.rec2pm.Rec2PM`.

:class:`RecurrentMemory` is Rec2PM's backbone: one causal stack (``decoder``) that runs a
recurrent step ``[M; tail; S; Q]`` (memory, re-read tail, segment tokens, C query tokens whose
outputs are the next memory) and the global pass of training (:func:`global_attention_mask`),
plus the memory's own embeddings, and the serving of users' states (new, folded, recommended
from). Like the backbones of :mod:`~.backbones`, it holds no token embedding and answers the
same calls (``target_hidden``, ``generation_state``): the model passes itself (``model``) to
every call, and its settings (``segment_len``, ``mem_tokens``, ``tail_len``, ``memory_mode``)
are read from the model. :func:`memory_settings` reads and checks those keys once;
:class:`Rec2PMState` is what the model keeps per user between requests.
"""

import math
import numbers
from typing import NamedTuple

import torch
from recbole.utils import set_color
from torch import nn

from recbole_semprune import validate
from recbole_semprune.model.generation import constrained_beam_search, scoring_steps
from recbole_semprune.model.layers import TransformerStack, reorder_beams, share_cache

MEMORY_MODES = ("overwrite", "append")
INITIAL_MEMORIES = ("learned", "zeros")


def global_attention_mask(n_segments, segment_tokens, mem_tokens, device=None):
    """Bool mask ``[T, T]`` (True = may attend) of the global pass over the interleaved stream
    ``[S_1; Q_1; S_2; Q_2; ...]``, ``T = n_segments * (segment_tokens + mem_tokens)``.

    A raw (segment) token sees the raw tokens at or before it, of every segment, and no query
    token. A query token of block ``h`` sees every raw token of segments ``1..h`` and the query
    tokens of its own block at or before it (causal inside the block, as in the recurrent
    step), never those of another block.
    """
    block = segment_tokens + mem_tokens
    position = torch.arange(n_segments * block, device=device)
    segment = position // block
    is_query = position % block >= segment_tokens
    query_row, key_col = is_query[:, None], is_query[None, :]
    before = position[None, :] <= position[:, None]
    raw_to_raw = ~query_row & ~key_col & before
    query_to_raw = query_row & ~key_col & (segment[None, :] <= segment[:, None])
    query_to_query = query_row & key_col & (segment[None, :] == segment[:, None]) & before
    return raw_to_raw | query_to_raw | query_to_query


class Rec2PMState(NamedTuple):
    """What :class:`Rec2PM` keeps per user between requests (dim 0 = users).

    ``memory`` ``[B, S, d]`` float: the memory vectors, ``S = C`` in overwrite mode (C x d per
    user); in append mode ``S`` grows by C per segment. ``memory_mask`` ``[B, S]`` bool: which
    memory slots are real (append mode pads users with fewer segments). ``tail`` ``[B,
    tail_len]`` long: the last items of the last folded segment (all 0 before the first fold).
    ``pending`` ``[B, segment_len - 1]`` long: item ids of the segment not yet complete,
    right-padded with 0; ``pending_len`` ``[B]`` long: how many; ``n_segments`` ``[B]`` long:
    segments folded so far.
    """

    memory: torch.Tensor
    memory_mask: torch.Tensor
    tail: torch.Tensor
    pending: torch.Tensor
    pending_len: torch.Tensor
    n_segments: torch.Tensor

    def bytes_per_user(self):
        """Bytes of one user's state as stored: memory, its mask, tail and pending ids, and
        the counters."""
        users = max(self.memory.shape[0], 1)
        return sum(t.numel() * t.element_size() for t in self) // users

    def index_select(self, index):
        """The states of the users ``index`` (LongTensor)."""
        return Rec2PMState(*(t.index_select(0, index) for t in self))


def memory_settings(config):
    """The memory keys, checked: ``segment_len``, ``mem_tokens``, ``tail_len``,
    ``con_weight``, ``detach_reference``, ``memory_mode``, ``initial_memory``."""
    max_length = config["MAX_ITEM_LIST_LENGTH"]
    segment_len = validate.integer("segment_len", config["segment_len"], low=1,
                                   hint="(items per segment)")
    if segment_len > max_length:
        raise ValueError(
            f"segment_len={segment_len} exceeds MAX_ITEM_LIST_LENGTH={max_length}: no history "
            "could fill a segment. Use a smaller segment_len or a larger MAX_ITEM_LIST_LENGTH."
        )
    tail_len = validate.integer("tail_len", config["tail_len"], 0, segment_len,
                                "(items of the previous segment a step re-reads)")
    if tail_len + segment_len > max_length:
        raise ValueError(
            f"tail_len + segment_len = {tail_len + segment_len} exceeds "
            f"MAX_ITEM_LIST_LENGTH={max_length} (the positions of one step)"
        )
    return {
        "segment_len": segment_len, "tail_len": tail_len,
        "mem_tokens": validate.integer("mem_tokens", config["mem_tokens"], low=1,
                                       hint="(memory / query tokens)"),
        "con_weight": validate.number("con_weight", config["con_weight"], low=0),
        "detach_reference": validate.boolean("detach_reference", config["detach_reference"]),
        "memory_mode": validate.choice("memory_mode", config["memory_mode"], MEMORY_MODES),
        "initial_memory": validate.choice("initial_memory", config["initial_memory"],
                                          INITIAL_MEMORIES),
    }


def as_items(items, n_items, device, lengths=None):
    """Item ids as a LongTensor ``[B, n]`` on ``device`` (0 = padding); a list of lists is
    right-padded; ``lengths`` ``[B]`` cuts each row to its first items."""
    if not torch.is_tensor(items):
        rows = [list(row) for row in items]
        width = max((len(row) for row in rows), default=0)
        items = torch.tensor([row + [0] * (width - len(row)) for row in rows], dtype=torch.long)
        items = items.view(len(rows), width)
    items = items.to(device=device, dtype=torch.long)
    if items.dim() != 2:
        raise ValueError(f"items must be [users, n], got shape {tuple(items.shape)}")
    if lengths is not None:
        lengths = torch.as_tensor(lengths, device=device).view(-1, 1)
        items = items.masked_fill(torch.arange(items.shape[1], device=device) >= lengths, 0)
    if ((items < 0) | (items >= n_items)).any():
        raise ValueError(f"item ids must lie in [0, {n_items}) (0 = padding)")
    return items


class RecurrentMemory(nn.Module):
    """The causal stack of Rec2PM and the memory's embeddings: queries Q, memory slots, the
    projection of a memory entering a step, segment numbers (global pass), initial memory."""

    def __init__(self, model, config):
        super().__init__()
        d, c = model.hidden_size, model.mem_tokens
        self.decoder = TransformerStack.from_config(config, config["n_layers"],
                                                    fast_dropout=model.fast_dropout)
        self.query_embedding = nn.Embedding(c, d)
        self.memory_slot_embedding = nn.Embedding(c, d)
        self.memory_proj = nn.Linear(d, d)
        # training streams hold at most MAX_ITEM_LIST_LENGTH history items + the target
        self.max_train_segments = math.ceil((model.max_seq_length + 1) / model.segment_len)
        self.segment_embedding = nn.Embedding(self.max_train_segments, d)
        self.initial_memory = nn.Embedding(c, d)

    def training_stream(self, model, item_seq, item_seq_len, target):
        """The stream ``[history; target]`` ``[B, k*segment_len]`` (right-padded, trimmed to
        the longest in the batch) and its number of segments ``k``."""
        longest = int(item_seq_len.max())
        k = math.ceil((longest + 1) / model.segment_len)
        stream = item_seq.new_zeros(item_seq.shape[0], k * model.segment_len)
        width = min(longest, item_seq.shape[1])
        stream[:, :width] = item_seq[:, :width]
        stream.scatter_(1, item_seq_len.unsqueeze(1), target.unsqueeze(1))
        return stream, k

    def embed_segments(self, model, items):
        """Items ``[B, n]`` laid out from a segment start -> (embeddings ``[B, n*L, d]``,
        padding mask ``[B, n*L]``); an item's position is ``tail_len`` + its place in its
        segment (1..)."""
        n = items.shape[1]
        positions = 1 + model.tail_len + torch.arange(n, device=items.device) % model.segment_len
        return model.embed_items(items, positions * (items != 0))

    def embed_tail(self, model, tail):
        """Tail items ``[B, tail_len]`` (all 0 = no tail) -> embeddings at positions
        ``1..tail_len`` and their padding mask."""
        positions = 1 + torch.arange(tail.shape[1], device=tail.device)
        return model.embed_items(tail, positions * (tail != 0))

    def with_tail(self, model, tail, segment, segment_mask):
        """``[tail; segment]`` embeddings and mask, from the tail's item ids ``[N, tail_len]``
        and the segment's embeddings ``[N, T, d]`` and mask (unchanged if ``tail_len = 0``)."""
        if not model.tail_len:
            return segment, segment_mask
        tail, tail_mask = self.embed_tail(model, tail)
        return torch.cat([tail, segment], dim=1), torch.cat([tail_mask, segment_mask], dim=1)

    def previous_tails(self, model, stream, k):
        """The tail each segment of ``stream`` ``[B, k*segment_len]`` reads: the last
        ``tail_len`` items of the segment before it (0s for the first) -> ``[B*k, tail_len]``."""
        seg, r = model.segment_len, model.tail_len
        segments = stream.view(stream.shape[0], k, seg)
        first = segments.new_zeros(stream.shape[0], 1, r)
        return torch.cat([first, segments[:, :-1, seg - r :]], dim=1).reshape(stream.shape[0] * k, r)

    def embed_memory(self, model, memory):
        """Memory vectors ``[B, S, d]`` -> step inputs (projection + slot embedding)."""
        slots = torch.arange(memory.shape[1], device=memory.device) % model.mem_tokens
        return model.embedding_dropout(self.memory_proj(memory) + self.memory_slot_embedding(slots))

    def initial_state_memory(self, batch):
        return self.initial_memory.weight.unsqueeze(0).expand(batch, -1, -1)

    def new_state(self, model, users, lengths=None):
        """``Rec2PM.init_state``: the states of ``users`` (a number, or histories)."""
        if isinstance(users, numbers.Integral) and not isinstance(users, bool):
            return self.empty_state(model, int(users))
        histories = as_items(users, model.n_items, model.codes.device, lengths)
        return self.fold(model, self.empty_state(model, histories.shape[0]), histories)

    def empty_state(self, model, batch):
        """The :class:`Rec2PMState` of ``batch`` users with empty histories."""
        device = self.initial_memory.weight.device
        return Rec2PMState(
            memory=self.initial_state_memory(batch).detach().clone(),
            memory_mask=torch.ones(batch, model.mem_tokens, dtype=torch.bool, device=device),
            tail=torch.zeros(batch, model.tail_len, dtype=torch.long, device=device),
            pending=torch.zeros(batch, model.segment_len - 1, dtype=torch.long, device=device),
            pending_len=torch.zeros(batch, dtype=torch.long, device=device),
            n_segments=torch.zeros(batch, dtype=torch.long, device=device),
        )

    def step_hidden(self, model, memory, memory_mask, segment, segment_mask):
        """One recurrent step / local-pass row: ``[M; S; Q]`` under causal attention.

        ``memory`` ``[N, S_m, d]`` (memory vectors), ``segment`` ``[N, T, d]`` (embedded
        tokens, the tail's first if any: :meth:`with_tail`) with their masks; returns the
        hidden states ``[N, S_m + T + C, d]``.
        """
        n = memory.shape[0]
        queries = self.query_embedding.weight.unsqueeze(0).expand(n, -1, -1)
        x = torch.cat([self.embed_memory(model, memory), segment, queries], dim=1)
        ones = torch.ones(n, model.mem_tokens, dtype=torch.bool, device=x.device)
        mask = torch.cat([memory_mask, segment_mask, ones], dim=1)
        return self.decoder(x, padding_mask=mask, causal=True).hidden

    def reference_memories(self, model, raw, raw_mask, n_segments):
        """Global pass: raw token embeddings ``[B, k*T, d]`` (k segments of T tokens) ->
        reference memories ``[B, k, C, d]`` (outputs of the query block after each segment)."""
        batch, d, c, t = raw.shape[0], model.hidden_size, model.mem_tokens, model.segment_tokens
        number = torch.arange(n_segments, device=raw.device).clamp(max=self.max_train_segments - 1)
        segment_emb = self.segment_embedding(number)  # [k, d]
        queries = self.query_embedding.weight.unsqueeze(0) + segment_emb.unsqueeze(1)  # [k, C, d]
        raw = raw.view(batch, n_segments, t, d) + segment_emb.view(1, n_segments, 1, d)
        x = torch.cat([raw, queries.unsqueeze(0).expand(batch, -1, -1, -1)], dim=2)
        mask = torch.cat(
            [raw_mask.view(batch, n_segments, t),
             torch.ones(batch, n_segments, c, dtype=torch.bool, device=raw.device)], dim=2,
        )
        attn_mask = global_attention_mask(n_segments, t, c, device=raw.device)
        hidden = self.decoder(
            x.view(batch, -1, d), padding_mask=mask.view(batch, -1), attn_mask=attn_mask
        ).hidden
        return hidden.view(batch, n_segments, t + c, d)[:, :, t:]

    def fold(self, model, state, new_items, lengths=None):
        """The states after each user's new items ``[B, n]`` (see ``Rec2PM.update``)."""
        new_items = as_items(new_items, model.n_items, model.codes.device, lengths)
        if new_items.shape[0] != state.memory.shape[0]:
            raise ValueError(
                f"{new_items.shape[0]} rows of new items for {state.memory.shape[0]} users"
            )
        device, seg, c = new_items.device, model.segment_len, model.mem_tokens
        buffer = torch.cat([state.pending, new_items], dim=1)
        real = buffer != 0
        # real items first, in order (pending ones, then the new ones)
        buffer = buffer.gather(1, torch.sort((~real).long(), dim=1, stable=True).indices)
        total = real.sum(1)
        n_fold = total // seg
        memory, memory_mask, tail = state.memory, state.memory_mask, state.tail
        n_segments = state.n_segments
        for j in range(int(n_fold.max()) if len(n_fold) else 0):
            rows = (n_fold > j).nonzero().squeeze(1)
            items = buffer[rows, j * seg : (j + 1) * seg]
            segment = self.with_tail(model, tail[rows], *self.embed_segments(model, items))
            new = self.step_hidden(model, memory[rows], memory_mask[rows], *segment)[:, -c:]
            tail = tail.index_copy(0, rows, items[:, seg - model.tail_len :])
            if model.memory_mode == "overwrite":
                memory = memory.index_copy(0, rows, new)
            else:
                # the initial memory (the first C slots) stands only until a segment is folded
                memory_mask = memory_mask.clone()
                memory_mask[rows, :c] = False
                grown = memory.new_zeros(memory.shape[0], c, memory.shape[2])
                memory = torch.cat([memory, grown.index_copy(0, rows, new)], dim=1)
                slot = torch.zeros(memory.shape[0], c, dtype=torch.bool, device=device)
                slot[rows] = True
                memory_mask = torch.cat([memory_mask, slot], dim=1)
            n_segments = n_segments + (n_fold > j).long()
        rest = total - n_fold * seg
        index = n_fold.unsqueeze(1) * seg + torch.arange(seg - 1, device=device)
        pending = buffer.gather(1, index.clamp(max=buffer.shape[1] - 1))
        pending = pending.masked_fill(torch.arange(seg - 1, device=device) >= rest.unsqueeze(1), 0)
        return Rec2PMState(memory, memory_mask, tail, pending, rest, n_segments)

    def context(self, model, state):
        """Generation context of each user: embeddings ``[B, S, d]`` of ``[memory; tail;
        pending tokens]``, its mask, the index of its last real position and the position of
        the item to generate."""
        width = int(state.pending_len.max()) if len(state.pending_len) else 0
        pending = self.with_tail(model, state.tail, *self.embed_segments(model, state.pending[:, :width]))
        x = torch.cat([self.embed_memory(model, state.memory), pending[0]], dim=1)
        mask = torch.cat([state.memory_mask, pending[1]], dim=1)
        last = mask.shape[1] - 1 - mask.flip(1).long().argmax(1)
        return x, mask, last, 1 + model.tail_len + state.pending_len

    def target_hidden(self, model, item_seq, item_seq_len, target_tokens):
        """Teacher forcing from each history's state: row ``l`` predicts level ``l``."""
        x, mask, last, positions = self.context(model, model.init_state(item_seq, item_seq_len))
        target = model.embed_target(target_tokens[:, :-1], 0, positions)
        target_mask = torch.ones_like(target_tokens[:, :-1], dtype=torch.bool)
        hidden = self.decoder(
            torch.cat([x, target], dim=1), padding_mask=torch.cat([mask, target_mask], 1),
            causal=True,
        ).hidden
        first = hidden.gather(1, last.view(-1, 1, 1).expand(-1, 1, model.hidden_size))
        return torch.cat([first, hidden[:, x.shape[1] :]], dim=1)

    def generation_state(self, model, item_seq, item_seq_len):
        """Beam search from each history, read into a state first."""
        return self.generation_from_state(model, model.init_state(item_seq, item_seq_len))

    def recommend(self, model, state, k, exclude=None):
        """``Rec2PM.recommend``: the top ``k`` items of each state."""
        init, hidden_step, reorder = self.generation_from_state(model, state)
        step = scoring_steps(hidden_step, model.output)
        if exclude is not None:
            exclude = as_items(exclude, model.n_items, model.codes.device)
        items, scores = constrained_beam_search(
            step, init, state.memory.shape[0], max(k, model.beam_size), model.trie,
            reorder_state=reorder, exclude=exclude,
        )
        return items[:, :k], scores[:, :k]

    def generation_from_state(self, model, state):
        """``(init_state, hidden_step, reorder_state)`` of beam search from users' states
        (``hidden_step`` gives hidden states: :func:`~.generation.scoring_steps` scores them)."""
        x, mask, last, positions = self.context(model, state)

        def step(beam_state, prefixes, level):
            if level == 0:  # run the context once; its last real token predicts level 0
                out = self.decoder(
                    beam_state["x"], padding_mask=beam_state["mask"], causal=True,
                    cache=self.decoder.init_cache(),
                )
                index = beam_state["last"].view(-1, 1, 1).expand(-1, 1, model.hidden_size)
                hidden = out.hidden.gather(1, index).squeeze(1)
                out = out._replace(cache=share_cache(out.cache))  # one copy per user, not beam
                mask = beam_state["mask"]
            else:
                tokens = model.code_tokens(prefixes[:, -1:], level - 1)
                x = model.embed_target(tokens, level - 1, beam_state["positions"])
                mask = torch.cat([beam_state["mask"], torch.ones_like(tokens, dtype=torch.bool)], 1)
                out = self.decoder(x, padding_mask=mask, causal=True, cache=beam_state["cache"])
                hidden = out.hidden[:, -1]
            new_state = {"cache": out.cache, "mask": mask, "positions": beam_state["positions"]}
            return hidden, new_state

        return {"x": x, "mask": mask, "last": last, "positions": positions}, step, reorder_beams



class MemorySpread:
    """``memory_spread`` of the training batches since the last :meth:`pop`: the variance of
    the updated memories across the batch's segments (users and segment numbers), over their
    mean square, averaged over slots, dimensions and batches. Near 0, the memory is about the
    same for every history (it carries no information about the user)."""

    def __init__(self):
        self.total, self.batches = 0.0, 0

    @torch.no_grad()
    def record(self, memories):
        """Adds a training batch's updated memories ``[rows, C, d]`` to the epoch's spread."""
        if memories.shape[0] > 1:
            spread = memories.var(0, unbiased=False).mean() / memories.pow(2).mean().clamp(min=1e-12)
            self.total += float(spread)
            self.batches += 1

    def pop(self):
        stats = {"memory_spread": self.total / self.batches} if self.batches else {}
        self.total, self.batches = 0.0, 0
        return stats

    @staticmethod
    def describe(stats):
        spread = stats.get("memory_spread")
        return "" if spread is None else set_color("memory spread", "blue") + f": {spread:.4f}"
