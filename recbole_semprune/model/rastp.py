r"""RASTP
################################################

Reference:
    Yuzhe Zhou et al. "RASTP: Representation-Aware Semantic Token Pruning for Generative
    Recommendation with Semantic Identifiers." TheWebConf 2026 (short), arXiv 2511.16943.
    Code: https://github.com/Yuzt-zju/RASTP

A SID backbone whose history is pruned after ``prune_layer`` layers, keeping the top
``keep_ratio`` by importance ``I_k = S_k * ||r_k||_1`` (attention received times the L1 norm
of the hidden state). The mechanism lives in :mod:`recbole_semprune.model.pruning`, where the
backbones run it in :mod:`recbole_semprune.model.backbones`.
"""

from recbole_semprune.model.backbones import build_backbone
from recbole_semprune.model.pruning import TokenPruner
from recbole_semprune.model.sid_recommender import SIDRecommender


class RASTP(SIDRecommender):
    r"""TIGER (or the decoder-only backbone) with representation-aware token pruning.

    ``backbone: tiger`` (the paper's) prunes in the encoder, whose pruned memory the decoder
    reads; ``backbone: decoder_only`` prunes the history inside the causal stream. The model
    owns its :class:`~recbole_semprune.model.pruning.TokenPruner` (statistics per epoch) and
    hands it to the backbone. The loss, ``predict`` and ``full_sort_predict`` are the base's.

    Differences from the paper / public code: see ``docs/rastp.md``. In short: any scorer of
    :data:`~recbole_semprune.model.pruning.SCORERS` (``prune_scorer``), ``keep_ratio_mode``
    ``fixed`` (the public code's, default), ``per_history`` or ``batch``, optional protection
    of the most recent items, and TIGER's own differences (pre-LN, learned recency positions).
    """

    def __init__(self, config, dataset, semantic_ids=None):
        super().__init__(config, dataset, semantic_ids)
        self.pruner = TokenPruner.from_config(config, self.max_seq_length * self.n_levels)
        self.backbone = build_backbone(self.read_backbone(config), self, config, self.pruner)
        self.init_parameters()

    @classmethod
    def check_config(cls, config):
        warnings = super().check_config(config)
        TokenPruner.check_config(config)
        return warnings

    def calculate_loss(self, interaction):
        return self.backbone.loss(self, interaction)
