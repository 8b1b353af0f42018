r"""DecoderOnlySID
################################################

A decoder-only (GPT-style) generative recommender over semantic IDs: the stream
``[history SID tokens; target SID tokens]`` under causal attention, as in the decoder-only
backbones of STAMP (a Qwen-style model) and of Rec2PM's SID variant in this package.
"""

from typing import NamedTuple

import torch

from recbole_semprune.data.dataset import SIDSequentialDataset
from recbole_semprune.model.layers import reorder_beams, share_cache
from recbole_semprune.model.sid_recommender import SIDRecommender


class Stream(NamedTuple):
    """A teacher-forced run of the causal stream (:meth:`DecoderOnlySID.stream_hidden`)."""

    hidden: torch.Tensor  # [B, T, d] output at each position run
    mask: torch.Tensor  # [B, T] bool, True = a real token
    source: torch.Tensor  # [B, T] index of each position in `tokens`
    tokens: torch.Tensor  # [B, N*L + L] the whole stream [history; target] (left-padded)

    def tokens_ahead(self, steps):
        """``(tokens [B, T], valid [B, T])``: the stream token ``steps`` positions after each
        position run (``steps=1``: the next token); invalid where that runs past the stream's
        end, lands on padding, or the position itself is not a real token."""
        where = self.source + steps
        inside = where < self.tokens.shape[1]
        ahead = self.tokens.gather(1, where.clamp(max=self.tokens.shape[1] - 1))
        return ahead, self.mask & inside & (ahead != 0)


class DecoderOnlySID(SIDRecommender):
    r"""Causal transformer over ``[history tokens; target tokens]``.

    Histories are left-padded, so the last history token sits right before the target and
    predicts its first code (no separator token); each target token predicts the next one.
    The loss is on the target's ``L`` codes; with ``dense_loss: True`` every history token also
    predicts the token after it (next-token loss on the whole stream), which lets it train on
    one row per user (``train_rows: user``, see :mod:`recbole_semprune.data.dataset`).
    """

    dataset_class = SIDSequentialDataset

    @classmethod
    def dense_stream_loss(cls, config):
        """Whether training has a next-token loss on the whole stream (``train_rows: user``)."""
        return bool(config["dense_loss"])

    def __init__(self, config, dataset, semantic_ids=None):
        super().__init__(config, dataset, semantic_ids)
        self.dense_loss = config["dense_loss"]
        self.decoder = self.transformer(self.n_layers)
        self.init_parameters()

    @staticmethod
    def left_pad(item_seq, item_seq_len):
        """RecBole's right-padded histories ``[B, N]`` -> left-padded (last item at the end)."""
        n = item_seq.shape[1]
        source = torch.arange(n, device=item_seq.device) - (n - item_seq_len).unsqueeze(1)
        shifted = item_seq.gather(1, source.clamp(min=0))
        return shifted.masked_fill(source < 0, 0)

    def embed_history(self, item_seq, item_seq_len):
        """Left-padded history embeddings ``[B, N*L, d]``, padding mask, and its tokens."""
        items = self.left_pad(item_seq, item_seq_len)
        n = items.shape[1]
        positions = (n - torch.arange(n, device=items.device)).expand_as(items)
        x, mask = self.embed_items(items, positions * (items != 0))
        return x, mask, self.item_tokens(items).flatten(1)

    def embed_target(self, tokens, first_level):
        """Target tokens ``[B, T]`` of levels ``first_level, first_level+1, ...`` (position 0)."""
        levels = torch.arange(first_level, first_level + tokens.shape[1], device=tokens.device)
        x = (
            self.token_embedding(tokens)
            + self.level_embedding(levels)
            + self.position_embedding.weight[0]
        )
        return self.embedding_dropout(x)

    def stream_input(self, item_seq, item_seq_len, target_tokens):
        """Embeddings ``[B, T, d]`` and padding mask of the stream ``[history; target[:-1]]``,
        the history's length ``N*L`` and the whole stream's tokens ``[history; target]``."""
        history, mask, history_tokens = self.embed_history(item_seq, item_seq_len)
        target = self.embed_target(target_tokens[:, :-1], 0)
        x = torch.cat([history, target], dim=1)
        mask = torch.cat([mask, torch.ones_like(target_tokens[:, :-1], dtype=torch.bool)], dim=1)
        return x, mask, history.shape[1], torch.cat([history_tokens, target_tokens], dim=1)

    def stream_hidden(self, item_seq, item_seq_len, target_tokens):
        """Teacher-forced run of the stream ``[history; target[:-1]]``: a :class:`Stream`."""
        x, mask, _, tokens = self.stream_input(item_seq, item_seq_len, target_tokens)
        hidden = self.decoder(x, padding_mask=mask, causal=True).hidden
        source = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        return Stream(hidden, mask, source, tokens)

    def target_hidden(self, item_seq, item_seq_len, target_tokens):
        return self.stream_hidden(item_seq, item_seq_len, target_tokens).hidden[:, -self.n_levels :]

    def stream_loss(self, interaction):
        """``(loss, stream)``: the training loss (target codes, or every next token with
        ``dense_loss``) and the :class:`Stream` it came from."""
        target_tokens = self.item_tokens(interaction[self.POS_ITEM_ID])
        stream = self.stream_hidden(*self.history(interaction), target_tokens)
        if not self.dense_loss:
            hidden = stream.hidden[:, -self.n_levels :]
            return -self.token_log_probs(hidden, target_tokens).mean(), stream
        next_tokens, valid = stream.tokens_ahead(1)
        log_probs = self.token_log_probs(stream.hidden, next_tokens)
        return -(log_probs * valid).sum() / valid.sum(), stream

    def calculate_loss(self, interaction):
        return self.stream_loss(interaction)[0]

    def generation_state(self, item_seq, item_seq_len):
        history, mask, _ = self.embed_history(item_seq, item_seq_len)

        def step(state, prefixes, level):
            if level == 0:  # run the whole history once; its last token predicts level 0
                out = self.decoder(
                    state["x"], padding_mask=state["mask"], causal=True,
                    cache=self.decoder.init_cache(),
                )
                out = out._replace(cache=share_cache(out.cache))  # one copy per user, not beam
                mask = state["mask"]
            else:
                x = self.embed_target(self.code_tokens(prefixes[:, -1:], level - 1), level - 1)
                mask = torch.cat([state["mask"], torch.ones_like(prefixes[:, -1:], dtype=torch.bool)], 1)
                out = self.decoder(x, padding_mask=mask, causal=True, cache=state["cache"])
            return self.level_log_probs(out.hidden[:, -1], level), {"cache": out.cache, "mask": mask}

        return {"x": history, "mask": mask}, step, reorder_beams
