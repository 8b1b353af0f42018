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

import torch
from recbole.utils import set_color

from recbole_semprune.model.memory import (  # noqa: F401 (Rec2PMState, the mask: public here)
    MEMORY_MODES, MemorySpread, Rec2PMState, RecurrentMemory, global_attention_mask,
    memory_settings,
)
from recbole_semprune.model.retrieval import RetrievalSettings
from recbole_semprune.model.sid_recommender import SIDRecommender


class Rec2PM(SIDRecommender):
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

    backbones = ("decoder_only",)

    def __init__(self, config, dataset, semantic_ids=None):
        super().__init__(config, dataset, semantic_ids)
        settings = memory_settings(config)
        self.segment_len, self.mem_tokens = settings["segment_len"], settings["mem_tokens"]
        self.tail_len, self.con_weight = settings["tail_len"], settings["con_weight"]
        self.detach_reference = settings["detach_reference"]
        self.memory_mode = settings["memory_mode"]
        self.segment_tokens = self.segment_len * self.n_levels
        self.backbone = RecurrentMemory(self, config)
        self.spread = MemorySpread()
        self.init_parameters()
        if settings["initial_memory"] == "zeros":
            torch.nn.init.zeros_(self.backbone.initial_memory.weight)
            self.backbone.initial_memory.weight.requires_grad_(False)
        c, d = self.mem_tokens, self.hidden_size
        self.logger.info(
            set_color("Rec2PM", "blue") + f": segments of {self.segment_len} items "
            f"({self.segment_tokens} tokens), {c} memory tokens ({self.memory_mode}), tail of "
            f"{self.tail_len} items, con_weight={self.con_weight}, detach_reference="
            f"{self.detach_reference}, state per user: memory {c} x {d} floats + "
            f"{self.tail_len} tail and up to {self.segment_len - 1} pending item ids"
        )

    @classmethod
    def dense_stream_loss(cls, config):
        return True

    @classmethod
    def check_config(cls, config):
        warnings = super().check_config(config)
        memory_settings(config)
        if RetrievalSettings.from_config(config).active:
            raise ValueError("retrieval_weight must be 0 for Rec2PM: its recommendations come "
                             "from the memory state, which has no dense retrieval path")
        return warnings

    def calculate_loss(self, interaction):
        """``(L_AR, con_weight * L_con)``: RecBole's trainer backpropagates their sum and logs
        each term per epoch (``train_loss1``, ``train_loss2``)."""
        ar_loss, con_loss = self.loss_terms(interaction)
        return ar_loss, self.con_weight * con_loss

    def loss_terms(self, interaction):
        """``(L_AR, L_con)`` of a batch, by self-referential teacher forcing (module doc)."""
        stream, k = self.backbone.training_stream(self, *self.history(interaction),
                                                  interaction[self.POS_ITEM_ID])
        batch, d, c, t = stream.shape[0], self.hidden_size, self.mem_tokens, self.segment_tokens
        raw, raw_mask = self.backbone.embed_segments(self, stream)  # [B, k*T, d]
        tokens = self.item_tokens(stream).view(batch * k, t)
        reference = self.backbone.reference_memories(self, raw, raw_mask, k)  # [B, k, C, d]

        # memory read by segment h: the initial memory for h = 0, else the reference after h-1
        previous = torch.cat([self.backbone.initial_state_memory(batch).unsqueeze(1), reference[:, :-1]], 1)
        # only segments that hold a token are run (a right-padded segment starts with a token)
        active = tokens[:, 0] != 0
        rows = active.nonzero().squeeze(1)
        tails = self.backbone.previous_tails(self, stream, k)[rows]
        hidden = self.backbone.step_hidden(self, 
            previous.reshape(batch * k, c, d)[rows],
            torch.ones(len(rows), c, dtype=torch.bool, device=stream.device),
            *self.backbone.with_tail(self, tails, raw.view(batch * k, t, d)[rows], raw_mask.view(batch * k, t)[rows]),
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
        log_probs = self.output.token_log_probs(predictors, next_tokens)
        ar_loss = -(log_probs * valid).sum() / valid.sum()

        # consistency, on the memories that a later segment reads (segment h+1 not empty)
        read_later = torch.cat(
            [active.view(batch, k)[:, 1:], active.new_zeros(batch, 1)], dim=1
        ).view(-1)[rows]
        target = reference.reshape(batch * k, c, d)[rows]
        if self.training:
            self.spread.record(hidden[:, -c:])
        if self.detach_reference:
            target = target.detach()
        error = (hidden[:, -c:] - target).pow(2).mean(dim=(1, 2))
        con_loss = (error * read_later).sum() / read_later.sum().clamp(min=1)
        return ar_loss, con_loss

    def pop_epoch_stats(self):
        return self.spread.pop()

    def describe_epoch_stats(self, stats):
        return self.spread.describe(stats)

    # predict and full_sort_predict are SIDRecommender's: the backbone reads each history as
    # a state (init_state) and scores or generates from it

    # ---- serving: state, update, recommend ----------------------------------------------
    @torch.no_grad()
    def init_state(self, users, lengths=None):
        """States of new users: ``users`` is a number of users (empty histories), or their
        histories ``[B, N]`` (tensor or list of lists of item ids, oldest first, 0 = padding;
        ``lengths`` optional), which are read as :meth:`update` reads new items."""
        return self.backbone.new_state(self, users, lengths)

    @torch.no_grad()
    def update(self, state, new_items, lengths=None):
        """The states after each user's new items ``[B, n]`` (oldest first, 0 = padding; a
        user with nothing new gets a row of zeros). Every segment that fills up is folded into
        the memory by one recurrent step; the rest stays pending."""
        return self.backbone.fold(self, state, new_items, lengths)

    @torch.no_grad()
    def recommend(self, state, k=10, exclude=None):
        """Top ``k`` next items of each user: ``(item_ids [B, k], log_probs [B, k])``, by the
        same trie-constrained beam search as evaluation (``max(k, beam_size)`` beams).
        ``exclude`` ``[B, n]`` (tensor or list of lists, 0 = padding): item ids a user must not
        get, e.g. those it has seen (the state does not keep them)."""
        return self.backbone.recommend(self, state, k, exclude)
