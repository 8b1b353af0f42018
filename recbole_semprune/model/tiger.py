r"""TIGER
################################################

Reference:
    Shashank Rajput et al. "Recommender Systems with Generative Retrieval." NeurIPS 2023.

Sizes and optimiser follow the GRID/RASTP configuration of TIGER (d_model 128, 6 heads of 64,
d_ff 1024, 4 + 4 layers, dropout 0.15).
"""

import torch

from recbole_semprune.model.layers import reorder_beams
from recbole_semprune.model.sid_recommender import SIDRecommender


class TIGER(SIDRecommender):
    r"""Encoder-decoder generative retrieval over semantic IDs.

    The encoder reads the history's SID tokens bidirectionally; the decoder starts from a BOS
    token and generates the next item's ``L`` codes with cross-attention to the encoder.

    Differences from the paper: pre-LayerNorm blocks with learned absolute (recency) positions
    instead of T5's relative position buckets; no user-id token; codes come from
    :mod:`recbole_semprune.sid` (residual k-means over TF-IDF item text by default, where the
    paper uses an RQ-VAE over Sentence-T5 embeddings: ``sid_quantizer: rqvae`` and
    ``sid_embedding: sentence`` are available).
    """

    def __init__(self, config, dataset, semantic_ids=None):
        super().__init__(config, dataset, semantic_ids)
        self.n_dec_layers = config["n_dec_layers"]
        self.encoder = self.transformer(self.n_layers)
        self.decoder = self.transformer(self.n_dec_layers, cross_attention=True)
        self.init_parameters()

    def encode(self, item_seq, item_seq_len):
        """Encoder memory ``[B, T, d]`` and its padding mask ``[B, T]`` for the histories."""
        x, mask = self.embed_items(item_seq, self.recency_positions(item_seq, item_seq_len))
        return self.encoder(x, padding_mask=mask).hidden, mask

    def decoder_input(self, tokens, levels):
        """Decoder input: tokens ``[B, T]`` (BOS or codes) at decoder steps ``levels`` ``[T]``."""
        return self.embedding_dropout(self.token_embedding(tokens) + self.level_embedding(levels))

    def teacher_forcing_input(self, target_tokens):
        """Decoder input ``[B, L, d]`` that predicts ``target_tokens`` ``[B, L]``: BOS, then the
        target's codes but the last."""
        bos = torch.full_like(target_tokens[:, :1], self.bos_token)
        inputs = torch.cat([bos, target_tokens[:, :-1]], dim=1)
        return self.decoder_input(inputs, torch.arange(self.n_levels, device=inputs.device))

    def target_hidden(self, item_seq, item_seq_len, target_tokens):
        memory, memory_mask = self.encode(item_seq, item_seq_len)
        return self.decoder(
            self.teacher_forcing_input(target_tokens), causal=True, memory=memory,
            memory_padding_mask=memory_mask,
        ).hidden

    def generation_state(self, item_seq, item_seq_len):
        memory, memory_mask = self.encode(item_seq, item_seq_len)
        # cross-attention keys/values stay one row per user, shared by its beams
        cache = self.decoder.init_cache(memory, memory_mask)

        def step(state, prefixes, level):
            if level == 0:
                tokens = torch.full((prefixes.shape[0], 1), self.bos_token, device=prefixes.device)
            else:
                tokens = self.code_tokens(prefixes[:, -1:], level - 1)
            x = self.decoder_input(tokens, torch.full_like(tokens[0], level))
            out = self.decoder(x, causal=True, cache=state)
            return self.level_log_probs(out.hidden[:, -1], level), out.cache

        return cache, step, reorder_beams
