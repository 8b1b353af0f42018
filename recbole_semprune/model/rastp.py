r"""RASTP
################################################

Reference:
    Yuzhe Zhou et al. "RASTP: Representation-Aware Semantic Token Pruning for Generative
    Recommendation with Semantic Identifiers." TheWebConf 2026 (short), arXiv 2511.16943.
    Code: https://github.com/Yuzt-zju/RASTP

TIGER whose encoder prunes the history's SID tokens after ``prune_layer`` layers, keeping the
top ``keep_ratio`` by importance ``I_k = S_k * ||r_k||_1`` (attention received times the L1 norm
of the hidden state). The mechanism lives in :mod:`recbole_semprune.model.pruning`, the pruned
backbones in :mod:`recbole_semprune.model.pruned`.
"""

from recbole_semprune.model.pruned import PrunedDecoderOnly, PrunedTIGER
from recbole_semprune.model.sid_recommender import BackboneSwitch


class RASTP(BackboneSwitch, PrunedTIGER):
    r"""TIGER with representation-aware token pruning in the encoder.

    ``backbone: decoder_only`` builds :class:`DecoderOnlyRASTP` instead (same keys, the pruning
    inside the causal stream).

    Differences from the paper / public code: see ``docs/rastp.md``. In short: any scorer of
    :data:`~recbole_semprune.model.pruning.SCORERS` (``prune_scorer``), ``keep_ratio_mode``
    ``batch`` (the public code's count, default) or ``per_history``, optional protection of the
    most recent items, and TIGER's own differences (pre-LN, learned recency positions).
    """

    default_prune_scorer = "rastp"


class DecoderOnlyRASTP(PrunedDecoderOnly):
    r"""RASTP on the decoder-only backbone (``RASTP`` with ``backbone: decoder_only``)."""

    default_prune_scorer = "rastp"


RASTP.backbones = {"tiger": RASTP, "decoder_only": DecoderOnlyRASTP}
