r"""DecoderOnlySID
################################################

A decoder-only (GPT-style) generative recommender over semantic IDs: the stream
``[history SID tokens; target SID tokens]`` under causal attention, as in the decoder-only
backbones of STAMP (a Qwen-style model) and of Rec2PM's SID variant in this package.
"""

import torch

from recbole_semprune.model.layers import reorder_cache
from recbole_semprune.model.sid_recommender import SIDRecommender


class DecoderOnlySID(SIDRecommender):
    r"""Causal transformer over ``[history tokens; target tokens]``.

    Histories are left-padded, so the last history token sits right before the target and
    predicts its first code (no separator token); each target token predicts the next one.
    The loss is on the target's ``L`` codes; with ``dense_loss: True`` every history token also
    predicts the token after it (next-token loss on the whole stream).
    """

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

    def stream_hidden(self, item_seq, item_seq_len, target_tokens):
        """Hidden states of the stream ``[history; target[:-1]]`` and the stream's tokens."""
        history, mask, history_tokens = self.embed_history(item_seq, item_seq_len)
        target = self.embed_target(target_tokens[:, :-1], 0)
        x = torch.cat([history, target], dim=1)
        mask = torch.cat([mask, torch.ones_like(target_tokens[:, :-1], dtype=torch.bool)], dim=1)
        hidden = self.decoder(x, padding_mask=mask, causal=True).hidden
        return hidden, torch.cat([history_tokens, target_tokens[:, :-1]], dim=1)

    def target_hidden(self, item_seq, item_seq_len, target_tokens):
        hidden, _ = self.stream_hidden(item_seq, item_seq_len, target_tokens)
        return hidden[:, -self.n_levels :]

    def calculate_loss(self, interaction):
        if not self.dense_loss:
            return super().calculate_loss(interaction)
        target_tokens = self.item_tokens(interaction[self.POS_ITEM_ID])
        hidden, tokens = self.stream_hidden(
            interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], target_tokens
        )
        next_tokens = torch.cat([tokens[:, 1:], target_tokens[:, -1:]], dim=1)
        valid = (tokens != 0) & (next_tokens != 0)
        log_probs = self.token_log_probs(hidden, next_tokens)
        return -(log_probs * valid).sum() / valid.sum()

    def generation_state(self, item_seq, item_seq_len):
        history, mask, _ = self.embed_history(item_seq, item_seq_len)

        def step(state, prefixes, level):
            if level == 0:  # run the whole history once; its last token predicts level 0
                out = self.decoder(
                    state["x"], padding_mask=state["mask"], causal=True,
                    cache=self.decoder.init_cache(),
                )
                mask = state["mask"]
            else:
                x = self.embed_target(self.code_tokens(prefixes[:, -1:], level - 1), level - 1)
                mask = torch.cat([state["mask"], torch.ones_like(prefixes[:, -1:], dtype=torch.bool)], 1)
                out = self.decoder(x, padding_mask=mask, causal=True, cache=state["cache"])
            return self.level_log_probs(out.hidden[:, -1], level), {"cache": out.cache, "mask": mask}

        return {"x": history, "mask": mask}, step, reorder_cache
