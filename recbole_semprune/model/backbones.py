"""The two transformer backbones of the SID models, chosen by the ``backbone`` key.

A backbone holds the transformer stacks; the token embeddings and the output head are the
model's (:class:`~recbole_semprune.model.sid_recommender.SIDRecommender`), which it passes
to every call as ``model``. Each backbone optionally gets a
:class:`~recbole_semprune.model.pruning.TokenPruner` and prunes the history where it reads it:

- :class:`EncoderDecoder` (``tiger``, TIGER's): the encoder reads the history
  bidirectionally (pruned after ``prune_layer`` layers); the decoder starts from BOS and
  cross-attends to the (pruned) memory, in training and in beam search.
- :class:`DecoderOnly` (``decoder_only``): one causal stream ``[history; target]``, the
  history left-padded so that its last token predicts the target's first code. Pruning acts
  on history tokens only, scored by the attention of real *history* queries, so training and
  generation (where no target exists yet) prune the same tokens; generation keeps a KV cache
  whose first ``prune_layer`` layers hold every history token and later layers the kept ones.

A backbone's ``generation_state`` returns ``(init_state, hidden_step, reorder_state)``: its
steps give hidden states, which the model scores with its output head
(:func:`~recbole_semprune.model.generation.scoring_steps`).
"""

from typing import NamedTuple

import torch
from torch import nn

from recbole_semprune import validate
from recbole_semprune.model.layers import TransformerStack, reorder_beams, share_cache


def recency_positions(item_seq, item_seq_len):
    """Position of each history slot counted back from the target (1 = most recent)."""
    slots = torch.arange(item_seq.shape[1], device=item_seq.device)
    return (item_seq_len.unsqueeze(1) - slots).clamp(min=0)


def build_backbone(name, model, config, pruner=None):
    """The backbone ``name`` (a value of the ``backbone`` key) for ``model``."""
    return {"tiger": EncoderDecoder, "decoder_only": DecoderOnly}[name](model, config, pruner)


class EncoderDecoder(nn.Module):
    """TIGER's encoder (``n_layers``) and decoder (``n_dec_layers``, cross-attention)."""

    def __init__(self, model, config, pruner=None):
        super().__init__()
        self.encoder = TransformerStack.from_config(config, config["n_layers"],
                                                    fast_dropout=model.fast_dropout)
        n_dec_layers = validate.integer("n_dec_layers", config["n_dec_layers"], low=1)
        self.decoder = TransformerStack.from_config(config, n_dec_layers, cross_attention=True,
                                                    fast_dropout=model.fast_dropout)
        self.pruner = pruner

    def encode(self, model, item_seq, item_seq_len):
        """Encoder memory ``[B, T, d]`` and its padding mask ``[B, T]`` (pruned: the kept
        tokens and the reduced mask)."""
        positions = recency_positions(item_seq, item_seq_len)
        x, mask = model.embed_items(item_seq, positions)
        if not model.pruning:
            return self.encoder(x, padding_mask=mask).hidden, mask
        protect = self.pruner.protected_tokens(positions, model.n_levels)
        run = self.pruner.run(self.encoder, x, mask, protect=protect)
        return run.hidden, run.mask

    def teacher_forcing_input(self, model, target_tokens):
        """Decoder input ``[B, L, d]`` that predicts ``target_tokens`` ``[B, L]``: BOS, then the
        target's codes but the last."""
        bos = torch.full_like(target_tokens[:, :1], model.bos_token)
        return model.embed_target(torch.cat([bos, target_tokens[:, :-1]], dim=1), 0)

    def target_hidden(self, model, item_seq, item_seq_len, target_tokens):
        memory, memory_mask = self.encode(model, item_seq, item_seq_len)
        return self.decoder(
            self.teacher_forcing_input(model, target_tokens), causal=True, memory=memory,
            memory_padding_mask=memory_mask,
        ).hidden

    def loss(self, model, interaction):
        """The model's loss of the target rows (:meth:`SIDRecommender.target_loss`)."""
        items = interaction[model.POS_ITEM_ID]
        target_tokens = model.item_tokens(items)
        hidden = self.target_hidden(model, *model.history(interaction), target_tokens)
        return model.target_loss(hidden, target_tokens, items)

    def generation_state(self, model, item_seq, item_seq_len):
        memory, memory_mask = self.encode(model, item_seq, item_seq_len)
        # cross-attention keys/values stay one row per user, shared by its beams
        cache = self.decoder.init_cache(memory, memory_mask)

        def step(state, prefixes, level):
            if level == 0:
                tokens = torch.full((prefixes.shape[0], 1), model.bos_token, device=prefixes.device)
            else:
                tokens = model.code_tokens(prefixes[:, -1:], level - 1)
            out = self.decoder(model.embed_target(tokens, level), causal=True, cache=state)
            return out.hidden[:, -1], out.cache

        return cache, step, reorder_beams


class Stream(NamedTuple):
    """A teacher-forced run of the causal stream (:meth:`DecoderOnly.stream_hidden`)."""

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


class DecoderOnly(nn.Module):
    """A causal stack of ``n_layers`` over ``[history; target]``; with ``dense_loss`` every
    history token also predicts the next one (refused with pruning: :meth:`leaks`)."""

    def __init__(self, model, config, pruner=None):
        super().__init__()
        self.dense_loss = validate.boolean("dense_loss", config["dense_loss"])
        if self.dense_loss and pruner is not None and pruner.enabled:
            raise ValueError(
                "dense_loss cannot be used with pruning on the decoder_only backbone: the kept "
                "tokens are chosen with the attention of the whole history, so a history "
                "token would be predicted from a selection that depended on it. Set "
                "dense_loss=False, or prune_scorer=none"
            )
        self.decoder = TransformerStack.from_config(config, config["n_layers"],
                                                    fast_dropout=model.fast_dropout)
        self.pruner = pruner

    @staticmethod
    def left_pad(item_seq, item_seq_len):
        """RecBole's right-padded histories ``[B, N]`` -> left-padded (last item at the end)."""
        n = item_seq.shape[1]
        source = torch.arange(n, device=item_seq.device) - (n - item_seq_len).unsqueeze(1)
        shifted = item_seq.gather(1, source.clamp(min=0))
        return shifted.masked_fill(source < 0, 0)

    def embed_history(self, model, item_seq, item_seq_len):
        """Left-padded history embeddings ``[B, N*L, d]``, padding mask, and its tokens."""
        items = self.left_pad(item_seq, item_seq_len)
        n = items.shape[1]
        positions = (n - torch.arange(n, device=items.device)).expand_as(items)
        x, mask = model.embed_items(items, positions * (items != 0))
        return x, mask, model.item_tokens(items).flatten(1)

    def history_protection(self, model, item_seq, item_seq_len, mask):
        """History tokens ``[B, N*L]`` never pruned: those of the ``prune_protect_last`` most
        recent items, and always the last one (left-padded: the last column)."""
        positions = self.left_pad(recency_positions(item_seq, item_seq_len), item_seq_len)
        protect = self.pruner.protected_tokens(positions, model.n_levels)
        protect = torch.zeros_like(mask) if protect is None else protect
        protect[:, -1] |= mask[:, -1]
        return protect

    def stream_hidden(self, model, item_seq, item_seq_len, target_tokens):
        """Teacher-forced run of the stream ``[history; target[:-1]]``: a :class:`Stream`."""
        history, mask, history_tokens = self.embed_history(model, item_seq, item_seq_len)
        target = model.embed_target(target_tokens[:, :-1], 0, target_tokens.new_zeros(len(target_tokens)))
        x, n_history = torch.cat([history, target], dim=1), history.shape[1]
        mask = torch.cat([mask, torch.ones_like(target_tokens[:, :-1], dtype=torch.bool)], dim=1)
        tokens = torch.cat([history_tokens, target_tokens], dim=1)
        source = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        if not model.pruning:
            return Stream(self.decoder(x, padding_mask=mask, causal=True).hidden, mask, source, tokens)
        protect = self.history_protection(model, item_seq, item_seq_len, mask[:, :n_history])
        run = self.pruner.run(self.decoder, x, mask, causal=True, n_prunable=n_history,
                              protect=protect)
        source = torch.cat([run.index, source[:, n_history:]], dim=1)
        return Stream(run.hidden, run.mask, source, tokens)

    def target_hidden(self, model, item_seq, item_seq_len, target_tokens):
        stream = self.stream_hidden(model, item_seq, item_seq_len, target_tokens)
        return stream.hidden[:, -model.n_levels :]

    def leaks(self, model, stream, targets):
        """Bool ``[B, T]``: stream positions whose ``targets`` (indices into ``stream.tokens``)
        the pruning selection has seen, i.e. history tokens of a pruned stream: the kept set
        before a history position depends on the attention every history token pays."""
        if not model.pruning:
            return torch.zeros_like(targets, dtype=torch.bool)
        return targets < stream.tokens.shape[1] - model.n_levels

    def stream_loss(self, model, interaction):
        """``(loss, stream)``: the training loss (target codes, or every next token with
        ``dense_loss``) and the :class:`Stream` it came from."""
        items = interaction[model.POS_ITEM_ID]
        target_tokens = model.item_tokens(items)
        stream = self.stream_hidden(model, *model.history(interaction), target_tokens)
        target_rows = stream.hidden[:, -model.n_levels :]
        if not self.dense_loss:
            return model.target_loss(target_rows, target_tokens, items), stream
        next_tokens, valid = stream.tokens_ahead(1)
        log_probs = model.output.token_log_probs(stream.hidden, next_tokens)
        loss = -(log_probs * valid).sum() / valid.sum()
        if model.retrieval is not None:  # the target row's dense loss (not every item's)
            loss = loss + model.retrieval.loss(model, target_rows, items)
        return loss, stream

    def loss(self, model, interaction):
        return self.stream_loss(model, interaction)[0]

    def generation_state(self, model, item_seq, item_seq_len):
        history, mask, _ = self.embed_history(model, item_seq, item_seq_len)
        pruning = model.pruning
        protect = self.history_protection(model, item_seq, item_seq_len, mask) if pruning else None

        def step(state, prefixes, level):
            if level == 0:  # the whole history once (pruned as in training); its last token
                cache = self.decoder.init_cache()  # predicts level 0
                if pruning:
                    run = self.pruner.run(self.decoder, history, mask, causal=True,
                                          protect=protect, cache=cache)
                else:
                    run = self.decoder(history, padding_mask=mask, causal=True, cache=cache)
                masks = (mask, run.mask) if pruning else (mask, mask)
                # one copy of the history cache per user, not per beam
                return run.hidden[:, -1], {"cache": share_cache(run.cache), "masks": masks}
            tokens = model.code_tokens(prefixes[:, -1:], level - 1)
            x = model.embed_target(tokens, level - 1, tokens.new_zeros(len(tokens)))
            new = torch.ones_like(tokens, dtype=torch.bool)
            masks = tuple(torch.cat([m, new], dim=1) for m in state["masks"])
            if pruning:
                out = self.pruner.decode_step(self.decoder, x, *masks, cache=state["cache"])
            else:
                out = self.decoder(x, padding_mask=masks[0], causal=True, cache=state["cache"])
            return out.hidden[:, -1], {"cache": out.cache, "masks": masks}

        return None, step, reorder_beams
