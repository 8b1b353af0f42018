r"""Rec2PM
################################################

Reference:
    Rec2PM: recurrent preference memory for long user histories, arXiv 2602.11605.
    No public code; this implementation follows the method as summarised in
    ``../shared/docs/methods.md`` and documents its own choices in ``docs/rec2pm.md``.

A decoder-only SID recommender (the causal backbone of :class:`DecoderOnlySID`) that never
attends to a long history at once. The history is cut into segments of ``segment_len`` items;
``mem_tokens`` (C) vectors, the *memory*, stand for everything before the current segment. One
recurrent step reads ``[memory; segment tokens; C query tokens]`` under causal attention and its
outputs at the query positions are the next memory. Serving keeps C x d numbers per user
(plus the item ids of the segment not yet complete) instead of a KV cache.

Training is parallel (self-referential teacher forcing, no loop over segments):

1. a *global* pass over ``[S_1; Q; S_2; Q; ...; S_k; Q]`` under a block mask (raw tokens causal
   over raw tokens only, each query block sees the raw tokens of its own and earlier segments
   and never another query block) gives the reference memories ``m_h^ref``;
2. a *local* pass over every segment at once (the segments of the batch stacked as rows), each
   ``[m_{h-1}^ref; S_h; Q]``, gives the next-token loss on the segment tokens and the updated
   memories ``m_h^upd`` (outputs at Q);
3. ``loss = L_AR + con_weight * MSE(m_h^upd, m_h^ref)``.
"""

import math
import numbers
from typing import NamedTuple

import torch
from recbole.utils import set_color
from torch import nn

from recbole_semprune.model.decoder_only import DecoderOnlySID
from recbole_semprune.model.generation import constrained_beam_search
from recbole_semprune.model.layers import reorder_beams, share_cache

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


class Rec2PM(DecoderOnlySID):
    r"""Recurrent preference memory over SID token segments, trained in parallel.

    Layout of one recurrent step (and of one local-pass row): ``[M; S; Q]`` under causal
    attention, memory first, then the segment's ``segment_len x L`` SID tokens, then the C
    query tokens; the last memory slot predicts the segment's first token, every segment token
    predicts the next one, and the outputs at Q (after the final LayerNorm) are the new memory.
    A memory enters the next step as ``Linear(memory) + slot embedding``. Items carry their
    position inside their step (below), so a step never depends on how long the history
    before it was and the memory runs over histories of any length. The next item is generated
    from ``[M; the incomplete segment's tokens]``, its tokens at the position the item takes in
    that segment.

    With ``tail_len: r > 0`` (an extension, not in the paper) a step also re-reads the last
    ``r`` items of the previous segment, as plain context: ``[M; tail; S; Q]``, and the next
    item is generated from ``[M; tail; incomplete segment]``. The first items of a segment are
    then predicted from recent items and not from the memory alone. Tail items take positions
    ``1..r`` and segment items ``r + 1..r + segment_len`` (the first segment's tail is
    padding); the loss stays on the segment's tokens, and the state keeps ``r`` more item ids.

    Differences from the paper (arXiv 2602.11605; details from a secondary summary):

    - the backbone is this package's decoder-only SID transformer (the paper uses item-ID
      SASRec / HSTU): an item is ``L`` tokens, a segment ``segment_len x L`` tokens;
    - the loss is the dense next-token loss on every SID token of the stream (history and
      target), each predicted inside its own segment's step;
    - the global pass adds a learned embedding of the segment number to the raw tokens and
      queries (training only: the teacher needs the order of the segments it reads);
    - ``L_con`` is the mean squared error per element, over the memories that a later segment
      of the stream reads; ``detach_reference`` stops its gradient into the reference only
      (the reference still gets the next-token gradient as the next step's input);
    - the first step reads a learned initial memory (``initial_memory: learned``) or zeros;
    - ``memory_mode: append`` (memory = all segment memories so far) changes inference only:
      training always feeds the previous reference memory, as in the paper ("inference needs
      no extra training").
    """

    def __init__(self, config, dataset, semantic_ids=None):
        super().__init__(config, dataset, semantic_ids)
        self.dense_loss = True
        settings = self.memory_settings(config)
        self.segment_len, self.mem_tokens = settings["segment_len"], settings["mem_tokens"]
        self.tail_len, self.con_weight = settings["tail_len"], settings["con_weight"]
        self.detach_reference = bool(config["detach_reference"])
        self.memory_mode = settings["memory_mode"]
        self.initial_memory_mode = settings["initial_memory"]

        d, c = self.hidden_size, self.mem_tokens
        self.segment_tokens = self.segment_len * self.n_levels
        # training streams hold at most MAX_ITEM_LIST_LENGTH history items + the target
        self.max_train_segments = math.ceil((self.max_seq_length + 1) / self.segment_len)
        self.query_embedding = nn.Embedding(c, d)
        self.memory_slot_embedding = nn.Embedding(c, d)
        self.memory_proj = nn.Linear(d, d)
        self.segment_embedding = nn.Embedding(self.max_train_segments, d)
        self.initial_memory = nn.Embedding(c, d)
        self._spread_sum, self._spread_batches = 0.0, 0
        self.init_parameters()
        if self.initial_memory_mode == "zeros":
            nn.init.zeros_(self.initial_memory.weight)
            self.initial_memory.weight.requires_grad_(False)
        self.logger.info(
            set_color("Rec2PM", "blue")
            + f": segments of {self.segment_len} items ({self.segment_tokens} tokens), "
            + f"{c} memory tokens ({self.memory_mode}), tail of {self.tail_len} items, "
            + f"con_weight={self.con_weight}, "
            + f"detach_reference={self.detach_reference}, state per user: memory {c} x {d} "
            + f"floats + {self.tail_len} tail and up to {self.segment_len - 1} pending item ids"
        )

    @classmethod
    def dense_stream_loss(cls, config):
        return True

    @classmethod
    def check_config(cls, config):
        warnings = super().check_config(config)
        cls.memory_settings(config)
        return warnings

    @classmethod
    def memory_settings(cls, config):
        """The memory keys, checked: ``segment_len``, ``mem_tokens``, ``tail_len``,
        ``con_weight``, ``memory_mode``, ``initial_memory`` (ValueError on a bad one)."""
        max_length = config["MAX_ITEM_LIST_LENGTH"]
        segment_len = cls._positive_int(config, "segment_len", "items per segment")
        mem_tokens = cls._positive_int(config, "mem_tokens", "memory (query) tokens")
        if segment_len > max_length:
            raise ValueError(
                f"segment_len={segment_len} exceeds MAX_ITEM_LIST_LENGTH={max_length}: no "
                "history could fill a segment. Use a smaller segment_len or a larger "
                "MAX_ITEM_LIST_LENGTH."
            )
        tail_len = config["tail_len"] or 0
        if isinstance(tail_len, bool) or not isinstance(tail_len, int) or not (
            0 <= tail_len <= segment_len
        ):
            raise ValueError(
                f"tail_len (items of the previous segment a step re-reads) must be an integer "
                f"in [0, segment_len={segment_len}], got {config['tail_len']!r}"
            )
        if tail_len + segment_len > max_length:
            raise ValueError(
                f"tail_len + segment_len = {tail_len + segment_len} exceeds "
                f"MAX_ITEM_LIST_LENGTH={max_length} (the positions of one step)"
            )
        con_weight = float(1.0 if config["con_weight"] is None else config["con_weight"])
        if not con_weight >= 0:
            raise ValueError(f"con_weight must be >= 0, got {config['con_weight']}")
        memory_mode = config["memory_mode"] or "overwrite"
        if memory_mode not in MEMORY_MODES:
            raise ValueError(
                f"memory_mode must be one of {', '.join(MEMORY_MODES)}, got {memory_mode!r}"
            )
        initial_memory = config["initial_memory"] or "learned"
        if initial_memory not in INITIAL_MEMORIES:
            raise ValueError(
                f"initial_memory must be one of {', '.join(INITIAL_MEMORIES)}, "
                f"got {initial_memory!r}"
            )
        return {
            "segment_len": segment_len, "mem_tokens": mem_tokens, "tail_len": tail_len,
            "con_weight": con_weight, "memory_mode": memory_mode, "initial_memory": initial_memory,
        }

    @staticmethod
    def _positive_int(config, key, what):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} ({what}) must be a positive integer, got {value!r}")
        return value

    # ---- embeddings ---------------------------------------------------------------------
    def embed_segments(self, items):
        """Items ``[B, n]`` laid out from a segment start -> (embeddings ``[B, n*L, d]``,
        padding mask ``[B, n*L]``); an item's position is ``tail_len`` + its place in its
        segment (1..)."""
        n = items.shape[1]
        positions = 1 + self.tail_len + torch.arange(n, device=items.device) % self.segment_len
        return self.embed_items(items, positions * (items != 0))

    def embed_tail(self, tail):
        """Tail items ``[B, tail_len]`` (all 0 = no tail) -> embeddings at positions
        ``1..tail_len`` and their padding mask."""
        positions = 1 + torch.arange(tail.shape[1], device=tail.device)
        return self.embed_items(tail, positions * (tail != 0))

    def with_tail(self, tail, segment, segment_mask):
        """``[tail; segment]`` embeddings and mask, from the tail's item ids ``[N, tail_len]``
        and the segment's embeddings ``[N, T, d]`` and mask (unchanged if ``tail_len = 0``)."""
        if not self.tail_len:
            return segment, segment_mask
        tail, tail_mask = self.embed_tail(tail)
        return torch.cat([tail, segment], dim=1), torch.cat([tail_mask, segment_mask], dim=1)

    def previous_tails(self, stream, k):
        """The tail each segment of ``stream`` ``[B, k*segment_len]`` reads: the last
        ``tail_len`` items of the segment before it (0s for the first) -> ``[B*k, tail_len]``."""
        seg, r = self.segment_len, self.tail_len
        segments = stream.view(stream.shape[0], k, seg)
        first = segments.new_zeros(stream.shape[0], 1, r)
        return torch.cat([first, segments[:, :-1, seg - r :]], dim=1).reshape(stream.shape[0] * k, r)

    def embed_memory(self, memory):
        """Memory vectors ``[B, S, d]`` -> step inputs (projection + slot embedding)."""
        slots = torch.arange(memory.shape[1], device=memory.device) % self.mem_tokens
        return self.embedding_dropout(self.memory_proj(memory) + self.memory_slot_embedding(slots))

    def embed_target_tokens(self, tokens, first_level, positions):
        """Tokens ``[B, T]`` of levels ``first_level, ...`` of the item at segment position
        ``positions`` ``[B]`` (the item being generated)."""
        levels = torch.arange(first_level, first_level + tokens.shape[1], device=tokens.device)
        x = (
            self.token_embedding(tokens)
            + self.level_embedding(levels)
            + self.position_embedding(positions).unsqueeze(1)
        )
        return self.embedding_dropout(x)

    def initial_state_memory(self, batch):
        return self.initial_memory.weight.unsqueeze(0).expand(batch, -1, -1)

    # ---- the two passes -----------------------------------------------------------------
    def step_hidden(self, memory, memory_mask, segment, segment_mask):
        """One recurrent step / local-pass row: ``[M; S; Q]`` under causal attention.

        ``memory`` ``[N, S_m, d]`` (memory vectors), ``segment`` ``[N, T, d]`` (embedded
        tokens, the tail's first if any: :meth:`with_tail`) with their masks; returns the
        hidden states ``[N, S_m + T + C, d]``.
        """
        n = memory.shape[0]
        queries = self.query_embedding.weight.unsqueeze(0).expand(n, -1, -1)
        x = torch.cat([self.embed_memory(memory), segment, queries], dim=1)
        ones = torch.ones(n, self.mem_tokens, dtype=torch.bool, device=x.device)
        mask = torch.cat([memory_mask, segment_mask, ones], dim=1)
        return self.decoder(x, padding_mask=mask, causal=True).hidden

    def reference_memories(self, raw, raw_mask, n_segments):
        """Global pass: raw token embeddings ``[B, k*T, d]`` (k segments of T tokens) ->
        reference memories ``[B, k, C, d]`` (outputs of the query block after each segment)."""
        batch, d, c, t = raw.shape[0], self.hidden_size, self.mem_tokens, self.segment_tokens
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

    def training_stream(self, item_seq, item_seq_len, target):
        """The stream ``[history; target]`` ``[B, k*segment_len]`` (right-padded, trimmed to
        the longest in the batch) and its number of segments ``k``."""
        longest = int(item_seq_len.max())
        k = math.ceil((longest + 1) / self.segment_len)
        stream = item_seq.new_zeros(item_seq.shape[0], k * self.segment_len)
        width = min(longest, item_seq.shape[1])
        stream[:, :width] = item_seq[:, :width]
        stream.scatter_(1, item_seq_len.unsqueeze(1), target.unsqueeze(1))
        return stream, k

    def loss_terms(self, interaction):
        """``(L_AR, L_con)`` of a batch, by self-referential teacher forcing (module doc)."""
        stream, k = self.training_stream(*self.history(interaction), interaction[self.POS_ITEM_ID])
        batch, d, c, t = stream.shape[0], self.hidden_size, self.mem_tokens, self.segment_tokens
        raw, raw_mask = self.embed_segments(stream)  # [B, k*T, d]
        tokens = self.item_tokens(stream).view(batch * k, t)
        reference = self.reference_memories(raw, raw_mask, k)  # [B, k, C, d]

        # memory read by segment h: the initial memory for h = 0, else the reference after h-1
        previous = torch.cat([self.initial_state_memory(batch).unsqueeze(1), reference[:, :-1]], 1)
        # only segments that hold a token are run (a right-padded segment starts with a token)
        active = tokens[:, 0] != 0
        rows = active.nonzero().squeeze(1)
        tails = self.previous_tails(stream, k)[rows]
        hidden = self.step_hidden(
            previous.reshape(batch * k, c, d)[rows],
            torch.ones(len(rows), c, dtype=torch.bool, device=stream.device),
            *self.with_tail(tails, raw.view(batch * k, t, d)[rows], raw_mask.view(batch * k, t)[rows]),
        )
        # each segment token predicts the next one; the first is predicted by the last tail
        # token, or by the last memory slot where there is no tail
        start = c + self.tail_len * self.n_levels  # first segment token of a row
        predictors = hidden[:, start - 1 : start - 1 + t]
        if self.tail_len:
            no_tail = (tails[:, -1] == 0).view(-1, 1)
            first = torch.where(no_tail, hidden[:, c - 1], predictors[:, 0])
            predictors = torch.cat([first.unsqueeze(1), predictors[:, 1:]], dim=1)
        next_tokens = tokens[rows]
        valid = next_tokens != 0
        log_probs = self.token_log_probs(predictors, next_tokens)
        ar_loss = -(log_probs * valid).sum() / valid.sum()

        # consistency, on the memories that a later segment reads (segment h+1 not empty)
        read_later = torch.cat(
            [active.view(batch, k)[:, 1:], active.new_zeros(batch, 1)], dim=1
        ).view(-1)[rows]
        target = reference.reshape(batch * k, c, d)[rows]
        if self.training:
            self._record_memory_spread(hidden[:, -c:])
        if self.detach_reference:
            target = target.detach()
        error = (hidden[:, -c:] - target).pow(2).mean(dim=(1, 2))
        con_loss = (error * read_later).sum() / read_later.sum().clamp(min=1)
        return ar_loss, con_loss

    @torch.no_grad()
    def _record_memory_spread(self, memories):
        """Adds a training batch's updated memories ``[rows, C, d]`` to the epoch's spread."""
        if memories.shape[0] > 1:
            spread = memories.var(0, unbiased=False).mean() / memories.pow(2).mean().clamp(min=1e-12)
            self._spread_sum += float(spread)
            self._spread_batches += 1

    def pop_epoch_stats(self):
        """``memory_spread`` of the training batches since the last call: the variance of the
        updated memories across the batch's segments (users and segment numbers), over their
        mean square, averaged over slots, dimensions and batches. Near 0, the memory is about
        the same for every history (it carries no information about the user)."""
        stats = {}
        if self._spread_batches:
            stats["memory_spread"] = self._spread_sum / self._spread_batches
        self._spread_sum, self._spread_batches = 0.0, 0
        return stats

    def describe_epoch_stats(self, stats):
        spread = stats.get("memory_spread")
        return "" if spread is None else set_color("memory spread", "blue") + f": {spread:.4f}"

    def calculate_loss(self, interaction):
        """``(L_AR, con_weight * L_con)``: RecBole's trainer backpropagates their sum and logs
        each term per epoch (``train_loss1``, ``train_loss2``)."""
        ar_loss, con_loss = self.loss_terms(interaction)
        return ar_loss, self.con_weight * con_loss

    # ---- serving: state, update, recommend ----------------------------------------------
    def _as_items(self, items, lengths=None):
        """Item ids as a LongTensor ``[B, n]`` on the model's device (0 = padding); a list of
        lists is right-padded; ``lengths`` ``[B]`` cuts each row to its first items."""
        device = self.codes.device
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
        if ((items < 0) | (items >= self.n_items)).any():
            raise ValueError(f"item ids must lie in [0, {self.n_items}) (0 = padding)")
        return items

    @torch.no_grad()
    def init_state(self, users, lengths=None):
        """States of new users: ``users`` is a number of users (empty histories), or their
        histories ``[B, N]`` (tensor or list of lists of item ids, oldest first, 0 = padding;
        ``lengths`` optional), which are read as :meth:`update` reads new items."""
        device = self.codes.device
        if isinstance(users, numbers.Integral) and not isinstance(users, bool):
            batch, histories = users, None
        else:
            histories = self._as_items(users, lengths)
            batch = histories.shape[0]
        c = self.mem_tokens
        batch = int(batch)
        state = Rec2PMState(
            memory=self.initial_state_memory(batch).detach().clone(),
            memory_mask=torch.ones(batch, c, dtype=torch.bool, device=device),
            tail=torch.zeros(batch, self.tail_len, dtype=torch.long, device=device),
            pending=torch.zeros(batch, self.segment_len - 1, dtype=torch.long, device=device),
            pending_len=torch.zeros(batch, dtype=torch.long, device=device),
            n_segments=torch.zeros(batch, dtype=torch.long, device=device),
        )
        return state if histories is None else self.update(state, histories)

    @torch.no_grad()
    def update(self, state, new_items, lengths=None):
        """The states after each user's new items ``[B, n]`` (oldest first, 0 = padding; a
        user with nothing new gets a row of zeros). Every segment that fills up is folded into
        the memory by one recurrent step; the rest stays pending."""
        new_items = self._as_items(new_items, lengths)
        if new_items.shape[0] != state.memory.shape[0]:
            raise ValueError(
                f"{new_items.shape[0]} rows of new items for {state.memory.shape[0]} users"
            )
        device, seg, c = new_items.device, self.segment_len, self.mem_tokens
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
            segment = self.with_tail(tail[rows], *self.embed_segments(items))
            new = self.step_hidden(memory[rows], memory_mask[rows], *segment)[:, -c:]
            tail = tail.index_copy(0, rows, items[:, seg - self.tail_len :])
            if self.memory_mode == "overwrite":
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

    def context(self, state):
        """Generation context of each user: embeddings ``[B, S, d]`` of ``[memory; tail;
        pending tokens]``, its mask, the index of its last real position and the position of
        the item to generate."""
        width = int(state.pending_len.max()) if len(state.pending_len) else 0
        pending = self.with_tail(state.tail, *self.embed_segments(state.pending[:, :width]))
        x = torch.cat([self.embed_memory(state.memory), pending[0]], dim=1)
        mask = torch.cat([state.memory_mask, pending[1]], dim=1)
        last = mask.shape[1] - 1 - mask.flip(1).long().argmax(1)
        return x, mask, last, 1 + self.tail_len + state.pending_len

    def state_generation(self, state):
        """``(init_state, step_fn, reorder_state)`` of beam search from users' states."""
        x, mask, last, positions = self.context(state)

        def step(beam_state, prefixes, level):
            if level == 0:  # run the context once; its last real token predicts level 0
                out = self.decoder(
                    beam_state["x"], padding_mask=beam_state["mask"], causal=True,
                    cache=self.decoder.init_cache(),
                )
                index = beam_state["last"].view(-1, 1, 1).expand(-1, 1, self.hidden_size)
                hidden = out.hidden.gather(1, index).squeeze(1)
                out = out._replace(cache=share_cache(out.cache))  # one copy per user, not beam
                mask = beam_state["mask"]
            else:
                tokens = self.code_tokens(prefixes[:, -1:], level - 1)
                x = self.embed_target_tokens(tokens, level - 1, beam_state["positions"])
                mask = torch.cat([beam_state["mask"], torch.ones_like(tokens, dtype=torch.bool)], 1)
                out = self.decoder(x, padding_mask=mask, causal=True, cache=beam_state["cache"])
                hidden = out.hidden[:, -1]
            new_state = {"cache": out.cache, "mask": mask, "positions": beam_state["positions"]}
            return self.level_log_probs(hidden, level), new_state

        return {"x": x, "mask": mask, "last": last, "positions": positions}, step, reorder_beams

    @torch.no_grad()
    def recommend(self, state, k=10, exclude=None):
        """Top ``k`` next items of each user: ``(item_ids [B, k], log_probs [B, k])``, by the
        same trie-constrained beam search as evaluation (``max(k, beam_size)`` beams).
        ``exclude`` ``[B, n]`` (tensor or list of lists, 0 = padding): item ids a user must not
        get, e.g. those it has seen (the state does not keep them)."""
        init, step, reorder = self.state_generation(state)
        if exclude is not None:
            exclude = self._as_items(exclude)
        items, scores = constrained_beam_search(
            step, init, state.memory.shape[0], max(k, self.beam_size), self.trie,
            reorder_state=reorder, exclude=exclude,
        )
        return items[:, :k], scores[:, :k]

    # ---- RecBole evaluation -------------------------------------------------------------
    def generation_state(self, item_seq, item_seq_len):
        return self.state_generation(self.init_state(item_seq, item_seq_len))

    def target_hidden(self, item_seq, item_seq_len, target_tokens):
        x, mask, last, positions = self.context(self.init_state(item_seq, item_seq_len))
        target = self.embed_target_tokens(target_tokens[:, :-1], 0, positions)
        target_mask = torch.ones_like(target_tokens[:, :-1], dtype=torch.bool)
        hidden = self.decoder(
            torch.cat([x, target], dim=1), padding_mask=torch.cat([mask, target_mask], 1),
            causal=True,
        ).hidden
        first = hidden.gather(1, last.view(-1, 1, 1).expand(-1, 1, self.hidden_size))
        return torch.cat([first, hidden[:, x.shape[1] :]], dim=1)
