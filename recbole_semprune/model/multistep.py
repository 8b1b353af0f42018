"""Multi-step auxiliary prediction (STAMP's MAP): predicting further ahead than the next step.

A model adds an auxiliary loss ``multistep_weight * L_aux`` to its ordinary one, where
``L_aux`` is the mean negative log-likelihood of targets ``1..multistep_steps`` steps beyond
the usual one. What a "step" is depends on the backbone (:class:`MultiStep`); inference never
uses the auxiliary heads.

:class:`MultiStepHeads` turns a hidden state into the hidden state of step ``k``; the model's
own output layer (the code unembedding) then scores the codes, as in multi-token prediction
with a shared unembedding:

- ``multistep_heads: shared``: one residual feed-forward block for every step, told the step
  by a learned step embedding added to its input;
- ``multistep_heads: separate``: one residual feed-forward block per step.
"""

from typing import NamedTuple

import torch
from torch import nn

from recbole_semprune import validate
from recbole_semprune.data.dataset import future_field
from recbole_semprune.model.backbones import DecoderOnly
from recbole_semprune.model.layers import FeedForward, init_weights

HEAD_MODES = ("shared", "separate")


class MultiStepSettings(NamedTuple):
    steps: int
    weight: float
    heads: str

    @property
    def active(self):
        """Whether the auxiliary loss is computed at all (``steps > 0`` and ``weight > 0``)."""
        return self.steps > 0 and self.weight > 0

    @classmethod
    def from_config(cls, config):
        """``multistep_steps`` (int >= 0), ``multistep_weight`` (>= 0), ``multistep_heads``."""
        off = "(0 switches MAP off)"
        return cls(
            validate.integer("multistep_steps", config["multistep_steps"], low=0, hint=off),
            validate.number("multistep_weight", config["multistep_weight"], low=0, hint=off),
            validate.choice("multistep_heads", config["multistep_heads"], HEAD_MODES),
        )


class MultiStepHeads(nn.Module):
    """The step transforms of MAP: ``forward(hidden [..., d], step) -> [..., d]``, ``step`` in
    ``[0, steps)`` (0 = the first step beyond the ordinary target)."""

    def __init__(self, steps, hidden_size, shared, dropout, activation, layer_norm_eps,
                 initializer_range, fast_dropout=False):
        super().__init__()
        self.shared = shared
        n_blocks = 1 if shared else steps
        self.step_embedding = nn.Embedding(steps, hidden_size) if shared else None
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size, eps=layer_norm_eps)
                                   for _ in range(n_blocks))
        self.blocks = nn.ModuleList(FeedForward(hidden_size, hidden_size, dropout, activation,
                                                fast_dropout=fast_dropout)
                                    for _ in range(n_blocks))
        self.apply(lambda module: init_weights(module, initializer_range))

    def forward(self, hidden, step):
        if self.shared:
            hidden = hidden + self.step_embedding.weight[step]
            step = 0
        return hidden + self.blocks[step](self.norms[step](hidden))


def masked_mean_nll(log_probs, valid):
    """Mean of ``-log_probs`` over ``valid`` entries, and their count (0 -> a zero loss)."""
    count = valid.sum()
    total = -(log_probs * valid).sum()
    return total / count.clamp(min=1), count


class MultiStep(nn.Module):
    """MAP of a SID model, on the model's backbone (built first). With MAP off
    (``multistep_steps: 0`` or ``multistep_weight: 0``) it has no parameter and is not called.

    - encoder-decoder: the decoder also learns the SIDs of the ``steps`` items after the
      target. Step ``k`` starts from a learned start token ``k`` (``start``, instead of BOS)
      and is teacher-forced on the codes of the ``k``-th next item; all steps share one decoder
      pass with the ordinary target (rows grouped per user, the encoder memory is not
      copied). The future items are a field of the training batches
      (:class:`~recbole_semprune.data.dataset.SIDSequentialDataset`: training rows only; a step
      past the end of the user's training sequence is masked).
    - decoder-only: multi-token prediction on the stream ``[history; target]``: every position
      also predicts the tokens ``2 .. steps + 1`` positions ahead, except those the pruning
      selection has seen (:meth:`~recbole_semprune.model.backbones.DecoderOnly.leaks`).
    """

    def __init__(self, model, config):
        super().__init__()
        self.settings = MultiStepSettings.from_config(config)
        self.steps, self.weight = self.settings.steps, self.settings.weight
        self.on_stream = isinstance(model.backbone, DecoderOnly)
        self.future_field = future_field(config)
        self.heads = self.start = None
        if self.settings.active:
            self.heads = MultiStepHeads(
                self.steps, model.hidden_size, self.settings.heads == "shared",
                model.hidden_dropout_prob, model.hidden_act, model.layer_norm_eps,
                model.initializer_range, model.fast_dropout,
            )
        if self.settings.active and not self.on_stream:
            self.start = nn.Parameter(torch.randn(self.steps, model.hidden_size)
                                      * model.initializer_range)

    def step_log_probs(self, model, hidden, next_tokens, step):
        """Log-probabilities of ``next_tokens`` ``step`` steps beyond the ordinary target."""
        return model.output.token_log_probs(self.heads(hidden, step), next_tokens)

    def losses(self, model, interaction):
        """``(main loss, auxiliary loss or None)`` of a batch."""
        if self.on_stream:
            return self.stream_losses(model, interaction)
        return self.decoder_losses(model, interaction)

    def decoder_losses(self, model, interaction):
        """Encoder-decoder: the target and the future items in one decoder pass."""
        backbone = model.backbone
        if self.future_field not in interaction:  # not a training batch: the ordinary loss only
            return backbone.loss(model, interaction), None
        items = interaction[model.POS_ITEM_ID]
        target_tokens = model.item_tokens(items)  # [B, L]
        future = interaction[self.future_field]  # [B, D], 0 = no such training item
        future_tokens = model.item_tokens(future)  # [B, D, L]
        memory, memory_mask = backbone.encode(model, *model.history(interaction))
        main_input = backbone.teacher_forcing_input(model, target_tokens)
        levels = torch.arange(model.n_levels, device=target_tokens.device)
        starts = self.start + model.level_embedding.weight[0]  # [D, d]
        rest = model.token_embedding(future_tokens[..., :-1]) + model.level_embedding(levels[1:])
        starts = starts.unsqueeze(1).expand(len(future), -1, -1, -1)  # [B, D, 1, d]
        aux_input = model.embedding_dropout(torch.cat([starts, rest], dim=2))
        x = torch.cat([main_input.unsqueeze(1), aux_input], dim=1)  # [B, 1 + D, L, d]
        batch, rows = x.shape[:2]
        hidden = backbone.decoder(
            x.flatten(0, 1), causal=True, memory=memory, memory_padding_mask=memory_mask
        ).hidden.view(batch, rows, model.n_levels, -1)
        main = model.target_loss(hidden[:, 0], target_tokens, items)
        log_probs = torch.stack([
            self.step_log_probs(model, hidden[:, 1 + step], future_tokens[:, step], step)
            for step in range(self.steps)
        ], dim=1)  # [B, D, L]
        valid = (future != 0).unsqueeze(-1).expand_as(log_probs)
        return main, masked_mean_nll(log_probs, valid)[0]

    def stream_targets(self, model, stream):
        """Per step ``k`` (0-based): ``(tokens, valid)`` ``[B, T]``, the stream token ``k + 2``
        positions after each position, valid where it exists, is real and does not leak."""
        targets = []
        for step in range(self.steps):
            tokens, valid = stream.tokens_ahead(step + 2)
            valid = valid & ~model.backbone.leaks(model, stream, stream.source + step + 2)
            targets.append((tokens, valid))
        return targets

    def stream_losses(self, model, interaction):
        """Decoder-only: multi-token prediction on the stream of the ordinary loss."""
        main, stream = model.backbone.stream_loss(model, interaction)
        # only the positions that have a target: the heads and the output layer skip the rest
        log_probs = torch.cat([
            self.step_log_probs(model, stream.hidden[valid], tokens[valid], step)
            for step, (tokens, valid) in enumerate(self.stream_targets(model, stream))
        ])
        return main, masked_mean_nll(log_probs, torch.ones_like(log_probs, dtype=torch.bool))[0]
