r"""DecoderOnlySID
################################################

A decoder-only (GPT-style) generative recommender over semantic IDs: the stream
``[history SID tokens; target SID tokens]`` under causal attention, as in the decoder-only
backbones of STAMP (a Qwen-style model) and of Rec2PM's SID variant in this package.
"""

from recbole_semprune.model.backbones import DecoderOnly
from recbole_semprune.model.sid_recommender import SIDRecommender


class DecoderOnlySID(SIDRecommender):
    r"""Causal transformer over ``[history tokens; target tokens]``
    (:class:`~recbole_semprune.model.backbones.DecoderOnly`).

    Histories are left-padded, so the last history token sits right before the target and
    predicts its first code (no separator token); each target token predicts the next one.
    The loss is on the target's ``L`` codes; with ``dense_loss: True`` every history token also
    predicts the token after it (next-token loss on the whole stream), which lets it train on
    one row per user (``train_rows: user``, see :mod:`recbole_semprune.data.dataset`).
    ``predict`` and ``full_sort_predict`` are
    :class:`~recbole_semprune.model.sid_recommender.SIDRecommender`'s.
    """

    backbones = ("decoder_only",)

    def __init__(self, config, dataset, semantic_ids=None):
        super().__init__(config, dataset, semantic_ids)
        self.backbone = DecoderOnly(self, config)
        self.init_parameters()

    def calculate_loss(self, interaction):
        return self.backbone.loss(self, interaction)
