r"""STAMPSID
################################################

Reference:
    "STAMP: Semantic Trimming and Auxiliary Multi-step Prediction for Generative
    Recommendation" (semantic IDs), arXiv 2604.05329. No public code.

Registered as ``STAMPSID``: RecBole's ``STAMP`` is an unrelated session model (KDD 2018) and
keeps working under its own name.

Two ends of "semantic dilution" fixed together, on either SID backbone (``backbone`` key):

- SAP, input side: the shared token pruning (:mod:`recbole_semprune.model.pruning`, the pruned
  backbones of :mod:`recbole_semprune.model.pruned`) with STAMP's score
  ``I_i = S_sem(i) * S_attn(i)`` (the ``stamp`` scorer below);
- MAP, output side: a multi-step auxiliary loss (:mod:`recbole_semprune.model.multistep`).
"""

import torch

from recbole_semprune.data.dataset import SIDSequentialDataset, future_field
from recbole_semprune.model.multistep import MultiStepMixin, MultiStepSettings, masked_mean_nll
from recbole_semprune.model.pruned import PrunedDecoderOnly, PrunedTIGER
from recbole_semprune.model.pruning import register_scorer
from recbole_semprune.model.sid_recommender import BackboneSwitch


@register_scorer("stamp", needs_attention=True)
def stamp_score(hidden, received, mask):
    """STAMP's SAP: semantic saliency x attention received.

    The paper does not spell out ``S_sem``; here it is the L2 distance of the token's hidden
    state from the mean hidden state of its history's real tokens: a token that says what the
    rest of the history already says (the shared coarse code of many items of one category)
    sits near the mean and is the redundancy SAP removes, while a plain norm (RASTP's) cannot
    tell redundant from distinctive tokens.
    """
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)
    return received * (hidden - mean).norm(dim=-1)


class STAMPSID(BackboneSwitch, MultiStepMixin, PrunedTIGER):
    r"""STAMP on TIGER: SAP in the encoder, MAP in the decoder.

    MAP here: the decoder also learns the SIDs of the ``map_steps`` items after the target. For
    step ``k`` it starts from a learned start token ``k`` (instead of BOS) and is teacher-forced
    on the codes of the ``k``-th next item; all steps share one decoder pass with the ordinary
    target (rows grouped per user, the encoder memory is not copied). The future items come
    from :class:`~recbole_semprune.data.dataset.SIDSequentialDataset`: training rows only, so a
    validation or test item is never an auxiliary target, and a step past the end of the user's
    training sequence is masked. Generation is TIGER's (BOS, next item only).

    ``backbone: decoder_only`` builds :class:`DecoderOnlySTAMP`. Differences from the paper:
    see ``docs/stamp.md``.
    """

    default_prune_scorer = "stamp"
    dataset_class = SIDSequentialDataset

    def __init__(self, config, dataset, semantic_ids=None):
        super().__init__(config, dataset, semantic_ids)
        self.FUTURE_ITEMS = future_field(config)
        self.map_start = None
        if self.map.active:
            self.map_start = torch.nn.Parameter(
                torch.randn(self.map.steps, self.hidden_size) * self.initializer_range
            )

    @classmethod
    def future_items(cls, config):
        """Items after the target each training row needs (read by the dataset)."""
        settings = MultiStepSettings.from_config(config)
        on_tiger = (config["backbone"] or cls.default_backbone) == "tiger"
        return settings.steps if on_tiger and settings.active else 0

    def map_losses(self, interaction):
        if self.FUTURE_ITEMS not in interaction:  # not a training batch: the ordinary loss only
            return PrunedTIGER.calculate_loss(self, interaction), None
        target_tokens = self.item_tokens(interaction[self.POS_ITEM_ID])  # [B, L]
        future = interaction[self.FUTURE_ITEMS]  # [B, D], 0 = no such training item
        future_tokens = self.item_tokens(future)  # [B, D, L]
        memory, memory_mask = self.encode(*self.history(interaction))
        main_input = self.teacher_forcing_input(target_tokens)
        levels = torch.arange(self.n_levels, device=target_tokens.device)
        starts = self.map_start + self.level_embedding.weight[0]  # [D, d]
        rest = self.token_embedding(future_tokens[..., :-1]) + self.level_embedding(levels[1:])
        starts = starts.unsqueeze(1).expand(len(future), -1, -1, -1)  # [B, D, 1, d]
        aux_input = self.embedding_dropout(torch.cat([starts, rest], dim=2))
        x = torch.cat([main_input.unsqueeze(1), aux_input], dim=1)  # [B, 1 + D, L, d]
        batch, rows = x.shape[:2]
        hidden = self.decoder(
            x.flatten(0, 1), causal=True, memory=memory, memory_padding_mask=memory_mask
        ).hidden.view(batch, rows, self.n_levels, -1)
        main = -self.token_log_probs(hidden[:, 0], target_tokens).mean()
        log_probs = torch.stack([
            self.step_log_probs(hidden[:, 1 + step], future_tokens[:, step], step)
            for step in range(self.map.steps)
        ], dim=1)  # [B, D, L]
        valid = (future != 0).unsqueeze(-1).expand_as(log_probs)
        aux, _ = masked_mean_nll(log_probs, valid)
        return main, aux


class DecoderOnlySTAMP(MultiStepMixin, PrunedDecoderOnly):
    r"""STAMP on the decoder-only backbone (``STAMPSID`` with ``backbone: decoder_only``).

    MAP here is multi-token prediction on the stream ``[history; target]``: besides its
    ordinary target, every position also predicts the tokens ``2 .. map_steps + 1`` positions
    ahead. With SAP on, the pruning selection has seen every history token (it uses the
    attention of the whole history), so only the target item's tokens may be auxiliary targets
    (:meth:`~recbole_semprune.model.pruned.PrunedDecoderOnly.leaks`); without pruning every
    later token of the stream may.
    """

    default_prune_scorer = "stamp"

    def map_targets(self, stream):
        """Per step ``k`` (0-based): ``(tokens, valid)`` ``[B, T]``, the stream token
        ``k + 2`` positions after each position, valid where it exists, is real and does not
        leak."""
        targets = []
        for step in range(self.map.steps):
            tokens, valid = stream.tokens_ahead(step + 2)
            valid = valid & ~self.leaks(stream, stream.source + step + 2)
            targets.append((tokens, valid))
        return targets

    def map_losses(self, interaction):
        main, stream = self.stream_loss(interaction)
        # only the positions that have a target: the heads and the output layer skip the rest
        log_probs = torch.cat([
            self.step_log_probs(stream.hidden[valid], tokens[valid], step)
            for step, (tokens, valid) in enumerate(self.map_targets(stream))
        ])
        aux, _ = masked_mean_nll(log_probs, torch.ones_like(log_probs, dtype=torch.bool))
        return main, aux


STAMPSID.backbones = {"tiger": STAMPSID, "decoder_only": DecoderOnlySTAMP}
