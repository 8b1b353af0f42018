"""Multi-step auxiliary prediction (STAMP's MAP): predicting further ahead than the next step.

A model adds an auxiliary loss ``map_weight * L_aux`` to its ordinary one, where ``L_aux`` is
the mean negative log-likelihood of targets ``1..map_steps`` steps beyond the usual one. What a
"step" is depends on the backbone (the model says; see :mod:`recbole_semprune.model.stamp`).
Inference never uses the auxiliary heads.

:class:`MultiStepHeads` turns a hidden state into the hidden state of step ``k``; the model's
own output layer (the code unembedding) then scores the codes, as in multi-token prediction
with a shared unembedding:

- ``map_heads: shared``: one residual feed-forward block for every step, told the step by a
  learned step embedding added to its input;
- ``map_heads: separate``: one residual feed-forward block per step.
"""

from typing import NamedTuple

import torch
from torch import nn

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
        """``map_steps`` (int >= 0), ``map_weight`` (>= 0), ``map_heads`` (shared / separate)."""
        steps = 0 if config["map_steps"] is None else config["map_steps"]
        weight = 0.0 if config["map_weight"] is None else config["map_weight"]
        heads = config["map_heads"] or "shared"
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"map_steps={steps!r} must be an int >= 0 (0 switches MAP off)")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"map_weight={weight!r} must be a number >= 0 (0 switches MAP off)")
        if heads not in HEAD_MODES:
            raise ValueError(f"map_heads={heads!r} must be one of {', '.join(HEAD_MODES)}")
        return cls(steps, float(weight), heads)


class MultiStepHeads(nn.Module):
    """The step transforms of MAP: ``forward(hidden [..., d], step) -> [..., d]``, ``step`` in
    ``[0, steps)`` (0 = the first step beyond the ordinary target)."""

    def __init__(self, steps, hidden_size, shared, dropout, activation, layer_norm_eps,
                 initializer_range):
        super().__init__()
        self.shared = shared
        n_blocks = 1 if shared else steps
        self.step_embedding = nn.Embedding(steps, hidden_size) if shared else None
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size, eps=layer_norm_eps)
                                   for _ in range(n_blocks))
        self.blocks = nn.ModuleList(FeedForward(hidden_size, hidden_size, dropout, activation)
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


class MultiStepMixin:
    """MAP for a :class:`~recbole_semprune.model.sid_recommender.SIDRecommender`: put it first
    among the bases. The subclass implements :meth:`map_losses`; this mixin reads the keys,
    owns the heads and adds ``map_weight * aux`` to the loss. With MAP off (``map_steps: 0``
    or ``map_weight: 0``) the model has no MAP parameter and its loss is the backbone's."""

    def __init__(self, config, dataset, semantic_ids=None):
        super().__init__(config, dataset, semantic_ids)
        self.map = MultiStepSettings.from_config(config)
        self.map_heads = None
        if self.map.active:
            self.map_heads = MultiStepHeads(
                self.map.steps, self.hidden_size, self.map.heads == "shared",
                self.hidden_dropout_prob, self.hidden_act, self.layer_norm_eps,
                self.initializer_range,
            )

    @classmethod
    def check_config(cls, config):
        """The backbone's checks, then the MAP keys (before any data is loaded)."""
        warnings = super().check_config(config)
        MultiStepSettings.from_config(config)
        return warnings

    def step_log_probs(self, hidden, next_tokens, step):
        """Log-probabilities of ``next_tokens`` ``step`` steps beyond the ordinary target."""
        return self.token_log_probs(self.map_heads(hidden, step), next_tokens)

    def map_losses(self, interaction):
        """``(main loss, auxiliary loss or None)`` of a batch (called with MAP on)."""
        raise NotImplementedError

    def calculate_loss(self, interaction):
        if not self.map.active:
            return super().calculate_loss(interaction)
        main, aux = self.map_losses(interaction)
        return main if aux is None else main + self.map.weight * aux
