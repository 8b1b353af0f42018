r"""RASTP
################################################

Reference:
    Yuzhe Zhou et al. "RASTP: Representation-Aware Semantic Token Pruning for Generative
    Recommendation with Semantic Identifiers." TheWebConf 2026 (short), arXiv 2511.16943.
    Code: https://github.com/Yuzt-zju/RASTP

TIGER whose encoder prunes the history's SID tokens after ``prune_layer`` layers, keeping the
top ``keep_ratio`` by importance ``I_k = S_k * ||r_k||_1`` (attention received times the L1 norm
of the hidden state). The mechanism lives in :mod:`recbole_semprune.model.pruning`.
"""

import torch

from recbole_semprune.model.decoder_only import DecoderOnlySID
from recbole_semprune.model.layers import reorder_cache
from recbole_semprune.model.pruning import TokenPruningMixin, gather_positions
from recbole_semprune.model.tiger import TIGER

BACKBONES = ("tiger", "decoder_only")


class RASTP(TokenPruningMixin, TIGER):
    r"""TIGER with representation-aware token pruning in the encoder.

    The decoder's cross-attention reads the pruned memory with its reduced padding mask, in
    training and in beam search. ``backbone: decoder_only`` builds :class:`DecoderOnlyRASTP`
    instead (same keys, the pruning inside the causal stream).

    Differences from the paper / public code: see ``docs/rastp.md``. In short: any scorer of
    :data:`~recbole_semprune.model.pruning.SCORERS` (``prune_scorer``), ``keep_ratio_mode``
    ``batch`` (the public code's count, default) or ``per_history``, optional protection of the
    most recent items, and TIGER's own differences (pre-LN, learned recency positions).
    """

    def __new__(cls, config=None, dataset=None, semantic_ids=None):
        if config is None:  # copy.deepcopy / pickle re-create the object without arguments
            return super().__new__(cls)
        backbone = config["backbone"] or "tiger"
        if backbone not in BACKBONES:
            raise ValueError(f"backbone={backbone!r}: RASTP runs on one of {', '.join(BACKBONES)}")
        if cls is RASTP and backbone == "decoder_only":
            model = object.__new__(DecoderOnlyRASTP)
            model.__init__(config, dataset, semantic_ids)
            return model
        return super().__new__(cls)

    def encode(self, item_seq, item_seq_len):
        if not self.pruning:
            return super().encode(item_seq, item_seq_len)
        positions = self.recency_positions(item_seq, item_seq_len)
        x, mask = self.embed_items(item_seq, positions)
        run = self.pruner.run(self.encoder, x, mask, protect=self.protected_tokens(positions))
        return run.hidden, run.mask


class DecoderOnlyRASTP(TokenPruningMixin, DecoderOnlySID):
    r"""RASTP on the decoder-only backbone (``RASTP`` with ``backbone: decoder_only``).

    The causal stream ``[history; target]`` is pruned after ``prune_layer`` layers: only
    history tokens, scored by the attention they receive from real *history* queries (so
    training, where the target follows, and generation, where it does not yet exist, prune
    the same tokens), never the target tokens nor the last history token (it predicts the
    first code). Generation keeps a KV cache whose first ``prune_layer`` layers hold every
    history token and whose later layers hold the kept ones. ``dense_loss`` is refused with
    pruning: the next-token targets of a pruned stream are not defined.
    """

    def __init__(self, config, dataset, semantic_ids=None):
        super().__init__(config, dataset, semantic_ids)
        if self.dense_loss and self.pruner.enabled:
            raise ValueError(
                "dense_loss is not supported by RASTP on the decoder_only backbone: set "
                "dense_loss=False, or prune_scorer=none"
            )

    def pruned_history(self, item_seq, item_seq_len):
        """Left-padded history embeddings, padding mask, tokens and the tokens never pruned."""
        x, mask, tokens = self.embed_history(item_seq, item_seq_len)
        positions = self.left_pad(self.recency_positions(item_seq, item_seq_len), item_seq_len)
        protect = self.protected_tokens(positions)
        protect = torch.zeros_like(mask) if protect is None else protect
        protect[:, -1] |= mask[:, -1]
        return x, mask, tokens, protect

    def stream_hidden(self, item_seq, item_seq_len, target_tokens):
        if not self.pruning:
            return super().stream_hidden(item_seq, item_seq_len, target_tokens)
        history, mask, history_tokens, protect = self.pruned_history(item_seq, item_seq_len)
        target = self.embed_target(target_tokens[:, :-1], 0)
        run = self.pruner.run(
            self.decoder,
            torch.cat([history, target], dim=1),
            torch.cat([mask, torch.ones_like(target_tokens[:, :-1], dtype=torch.bool)], dim=1),
            causal=True, n_prunable=history.shape[1], protect=protect,
        )
        tokens = torch.cat([gather_positions(history_tokens, run.index), target_tokens[:, :-1]], 1)
        return run.hidden, tokens

    def generation_state(self, item_seq, item_seq_len):
        if not self.pruning:
            return super().generation_state(item_seq, item_seq_len)
        history, mask, _, protect = self.pruned_history(item_seq, item_seq_len)

        def step(state, prefixes, level):
            if level == 0:  # the history once: pruned exactly as in training
                run = self.pruner.run(self.decoder, history, mask, causal=True, protect=protect,
                                      cache=self.decoder.init_cache())
                hidden, cache, masks = run.hidden, run.cache, (mask, run.mask)
            else:
                x = self.embed_target(self.code_tokens(prefixes[:, -1:], level - 1), level - 1)
                new = torch.ones_like(prefixes[:, -1:], dtype=torch.bool)
                masks = tuple(torch.cat([m, new], dim=1) for m in state["masks"])
                out = self.pruner.decode_step(self.decoder, x, *masks, cache=state["cache"])
                hidden, cache = out.hidden, out.cache
            return self.level_log_probs(hidden[:, -1], level), {"cache": cache, "masks": masks}

        return None, step, reorder_cache
