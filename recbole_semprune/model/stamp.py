r"""STAMPSID
################################################

Reference:
    "STAMP: Semantic Trimming and Auxiliary Multi-step Prediction for Generative
    Recommendation" (semantic IDs), arXiv 2604.05329. No public code.

Registered as ``STAMPSID``: RecBole's ``STAMP`` is an unrelated session model (KDD 2018) and
keeps working under its own name.

Two ends of "semantic dilution" fixed together, on either SID backbone (``backbone`` key):

- SAP, input side: the shared token pruning (:mod:`recbole_semprune.model.pruning`, run by the
  backbones of :mod:`recbole_semprune.model.backbones`) with STAMP's score
  ``I_i = S_sem(i) * S_attn(i)`` (the ``stamp`` scorer below);
- MAP, output side: a multi-step auxiliary loss (:mod:`recbole_semprune.model.multistep`).
"""

from recbole_semprune.model.backbones import build_backbone
from recbole_semprune.model.multistep import MultiStep, MultiStepSettings
from recbole_semprune.model.pruning import TokenPruner, register_scorer
from recbole_semprune.model.sid_recommender import SIDRecommender


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


class STAMPSID(SIDRecommender):
    r"""STAMP on a SID backbone: SAP where the backbone reads the history, MAP on its output.

    ``backbone: tiger`` (the paper's GRID backbone): SAP prunes in the encoder; MAP has the
    decoder also learn the SIDs of the ``multistep_steps`` items after the target, from
    learned start tokens, in the decoder pass of the ordinary target; the future items come
    with the training rows (:meth:`future_items`), never a validation or test item.
    ``backbone: decoder_only``: SAP prunes inside the causal stream; MAP predicts the tokens
    ``2 .. multistep_steps + 1`` positions ahead (only the target item's tokens with SAP on).
    Both parts are components: ``self.pruner`` (run by ``self.backbone``) and
    ``self.multistep`` (:class:`~recbole_semprune.model.multistep.MultiStep`). Generation is
    the backbone's (next item only). Differences from the paper: see ``docs/stamp.md``.
    """

    def __init__(self, config, dataset, semantic_ids=None):
        super().__init__(config, dataset, semantic_ids)
        # SAP: the pruner that the backbone runs where it reads the history
        self.pruner = TokenPruner.from_config(config, self.max_seq_length * self.n_levels)
        self.backbone = build_backbone(self.read_backbone(config), self, config, self.pruner)
        self.init_parameters()
        # MAP: the multi-step heads and their loss (they initialise themselves)
        self.multistep = MultiStep(self, config)

    @classmethod
    def future_items(cls, config):
        """The items after the target that MAP learns on the tiger backbone."""
        settings = MultiStepSettings.from_config(config)
        on_tiger = cls.read_backbone(config) == "tiger"
        return settings.steps if on_tiger and settings.active else 0

    @classmethod
    def check_config(cls, config):
        warnings = super().check_config(config)
        TokenPruner.check_config(config)
        MultiStepSettings.from_config(config)
        return warnings

    def calculate_loss(self, interaction):
        if not self.multistep.settings.active:
            return self.backbone.loss(self, interaction)
        main, aux = self.multistep.losses(self, interaction)
        return main if aux is None else main + self.multistep.weight * aux
