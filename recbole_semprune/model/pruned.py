"""The two SID backbones with token pruning (:mod:`recbole_semprune.model.pruning`) inside.

:class:`PrunedTIGER` prunes the history in TIGER's encoder; :class:`PrunedDecoderOnly` prunes
the history inside the causal stream of :class:`DecoderOnlySID`. The scorer and every pruning
option come from the config (``prune_scorer``, default the class's ``default_prune_scorer``),
so a pruning method (RASTP, STAMP's SAP) is one of these classes with its own scorer and, at
most, an objective of its own. Neither is registered as a model.
"""

import torch

from recbole_semprune.model.decoder_only import DecoderOnlySID, Stream
from recbole_semprune.model.layers import reorder_beams, share_cache
from recbole_semprune.model.pruning import TokenPruningMixin
from recbole_semprune.model.tiger import TIGER


class PrunedTIGER(TokenPruningMixin, TIGER):
    r"""TIGER whose encoder prunes the history's SID tokens after ``prune_layer`` layers.

    The decoder's cross-attention reads the pruned memory with its reduced padding mask, in
    training and in beam search (its cross-attention cache holds the kept tokens only).
    """

    def encode(self, item_seq, item_seq_len):
        if not self.pruning:
            return super().encode(item_seq, item_seq_len)
        positions = self.recency_positions(item_seq, item_seq_len)
        x, mask = self.embed_items(item_seq, positions)
        run = self.pruner.run(self.encoder, x, mask, protect=self.protected_tokens(positions))
        return run.hidden, run.mask


class PrunedDecoderOnly(TokenPruningMixin, DecoderOnlySID):
    r"""The decoder-only backbone pruning its history inside the causal stream.

    The stream ``[history; target]`` is pruned after ``prune_layer`` layers: only history
    tokens, scored by the attention they receive from real *history* queries (so training,
    where the target follows, and generation, where it does not yet exist, prune the same
    tokens), never the target tokens nor the last history token (it predicts the first code).
    Generation keeps a KV cache whose first ``prune_layer`` layers hold every history token and
    whose later layers hold the kept ones.

    No history token is ever a training target of a pruned stream (:meth:`leaks`): which
    tokens are kept depends on the attention *every* history token pays, so the kept set
    before a history position carries information about the tokens after it. Hence
    ``dense_loss`` is refused with pruning, and multi-step targets are restricted.
    """

    def __init__(self, config, dataset, semantic_ids=None):
        super().__init__(config, dataset, semantic_ids)
        if self.dense_loss and self.pruner.enabled:
            raise ValueError(
                "dense_loss cannot be used with pruning on the decoder_only backbone: the kept "
                "tokens are chosen with the attention of the whole history, so a history "
                "token would be predicted from a selection that depended on it. Set "
                "dense_loss=False, or prune_scorer=none"
            )

    def leaks(self, stream, targets):
        """Bool ``[B, T]``: stream positions whose ``targets`` (indices into ``stream.tokens``)
        the pruning selection has seen, i.e. history tokens of a pruned stream."""
        if not self.pruning:
            return torch.zeros_like(targets, dtype=torch.bool)
        return targets < stream.tokens.shape[1] - self.n_levels

    def history_protection(self, item_seq, item_seq_len, mask):
        """History tokens ``[B, N*L]`` never pruned: those of the ``prune_protect_last`` most
        recent items, and always the last one (left-padded: the last column)."""
        positions = self.left_pad(self.recency_positions(item_seq, item_seq_len), item_seq_len)
        protect = self.protected_tokens(positions)
        protect = torch.zeros_like(mask) if protect is None else protect
        protect[:, -1] |= mask[:, -1]
        return protect

    def stream_hidden(self, item_seq, item_seq_len, target_tokens):
        if not self.pruning:
            return super().stream_hidden(item_seq, item_seq_len, target_tokens)
        x, mask, n_history, tokens = self.stream_input(item_seq, item_seq_len, target_tokens)
        protect = self.history_protection(item_seq, item_seq_len, mask[:, :n_history])
        run = self.pruner.run(self.decoder, x, mask, causal=True, n_prunable=n_history,
                              protect=protect)
        after = torch.arange(n_history, x.shape[1], device=x.device).expand(x.shape[0], -1)
        return Stream(run.hidden, run.mask, torch.cat([run.index, after], dim=1), tokens)

    def generation_state(self, item_seq, item_seq_len):
        if not self.pruning:
            return super().generation_state(item_seq, item_seq_len)
        history, mask, _ = self.embed_history(item_seq, item_seq_len)
        protect = self.history_protection(item_seq, item_seq_len, mask)

        def step(state, prefixes, level):
            if level == 0:  # the history once: pruned exactly as in training
                run = self.pruner.run(self.decoder, history, mask, causal=True, protect=protect,
                                      cache=self.decoder.init_cache())
                hidden, cache, masks = run.hidden, share_cache(run.cache), (mask, run.mask)
            else:
                x = self.embed_target(self.code_tokens(prefixes[:, -1:], level - 1), level - 1)
                new = torch.ones_like(prefixes[:, -1:], dtype=torch.bool)
                masks = tuple(torch.cat([m, new], dim=1) for m in state["masks"])
                out = self.pruner.decode_step(self.decoder, x, *masks, cache=state["cache"])
                hidden, cache = out.hidden, out.cache
            return self.level_log_probs(hidden[:, -1], level), {"cache": cache, "masks": masks}

        return None, step, reorder_beams
