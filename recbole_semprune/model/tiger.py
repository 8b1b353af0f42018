r"""TIGER
################################################

Reference:
    Shashank Rajput et al. "Recommender Systems with Generative Retrieval." NeurIPS 2023.

Sizes and optimiser follow the GRID/RASTP configuration of TIGER (d_model 128, 6 heads of 64,
d_ff 1024, 4 + 4 layers, dropout 0.15).
"""

from recbole_semprune.model.backbones import EncoderDecoder
from recbole_semprune.model.sid_recommender import SIDRecommender


class TIGER(SIDRecommender):
    r"""Encoder-decoder generative retrieval over semantic IDs.

    The encoder reads the history's SID tokens bidirectionally; the decoder starts from a BOS
    token and generates the next item's ``L`` codes with cross-attention to the encoder
    (:class:`~recbole_semprune.model.backbones.EncoderDecoder`). The loss, ``predict`` (exact
    teacher-forced log-likelihood) and ``full_sort_predict`` (trie-constrained beam search)
    are :class:`~recbole_semprune.model.sid_recommender.SIDRecommender`'s.

    Differences from the paper: pre-LayerNorm blocks with learned absolute (recency) positions
    instead of T5's relative position buckets; no user-id token; codes come from
    :mod:`recbole_semprune.sid` (residual k-means over TF-IDF item text by default, where the
    paper uses an RQ-VAE over Sentence-T5 embeddings: ``sid_quantizer: rqvae`` and
    ``sid_embedding: sentence`` are available).
    """

    backbones = ("tiger",)

    def __init__(self, config, dataset, semantic_ids=None):
        super().__init__(config, dataset, semantic_ids)
        self.backbone = EncoderDecoder(self, config)
        self.init_parameters()

    def calculate_loss(self, interaction):
        return self.backbone.loss(self, interaction)
