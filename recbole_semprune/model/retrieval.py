"""Dense item retrieval beside generation: a SID model that also scores every item directly.

A SID model ranks the items its beam reaches; an item whose finer codes the decoder does not
favour is never ranked, however well its history fits it (docs/results.md: on amazon-beauty
TIGER is nearly blind to targets seen a few times in training, SASRec is not). This component
adds SASRec's scoring to the same transformer, trained with it from the first step, as LIGER
(Yang et al., arXiv 2411.18814) does with text vectors:

- the query is the hidden state that predicts the target's first code (the decoder's BOS
  position; the last history position of the decoder-only stream), through a linear map;
- an item's vector is a free vector per item (``retrieval_items: free``), the sum of its code
  token embeddings, shared with the model's input (``codes``: a rare item shares them with its
  siblings), or both (``both``);
- training adds ``retrieval_weight`` x the cross-entropy of the target over all items to the
  model's loss (every model loss that reads the target row calls :meth:`loss`);
- ranking (``full_sort_predict``) gives every item ``log p_dense(item) + retrieval_beam_weight
  x s(item)``, where ``s`` is the beam's SID log-probability for the items the beam found and
  the lowest of those for every other item: beam items keep their generative score, and an
  item outside the beam can still rank where the dense score puts it well ahead. ``predict``
  uses the exact SID log-likelihood of the given item instead of the beam's.

With ``retrieval_weight: 0`` (the default) the component does not exist: no parameter, no
change to any result.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from recbole_semprune import validate
from recbole_semprune.model.layers import init_weights

ITEM_VECTORS = ("both", "free", "codes")


class RetrievalSettings(NamedTuple):
    weight: float
    beam_weight: float
    items: str

    @property
    def active(self):
        return self.weight > 0

    @classmethod
    def from_config(cls, config):
        """``retrieval_weight`` (>= 0; 0: off), ``retrieval_beam_weight`` (>= 0),
        ``retrieval_items`` (one of :data:`ITEM_VECTORS`)."""
        return cls(
            validate.number("retrieval_weight", config["retrieval_weight"], low=0,
                            hint="(0 switches dense retrieval off)"),
            validate.number("retrieval_beam_weight", config["retrieval_beam_weight"], low=0),
            validate.choice("retrieval_items", config["retrieval_items"], ITEM_VECTORS),
        )


class DenseRetrieval(nn.Module):
    """Query map and item vectors of a SID model's dense scores; the model passes itself
    (``model``) to every call, whose token embeddings the ``codes`` vectors read."""

    def __init__(self, model, settings):
        super().__init__()
        self.weight, self.beam_weight = settings.weight, settings.beam_weight
        self.query = nn.Linear(model.hidden_size, model.hidden_size)
        self.item_embedding = (nn.Embedding(model.n_items, model.hidden_size, padding_idx=0)
                               if settings.items != "codes" else None)
        self.use_codes = settings.items != "free"
        self.apply(lambda module: init_weights(module, model.initializer_range))

    @classmethod
    def from_config(cls, model, config):
        """The component of ``model``, or None when ``retrieval_weight`` is 0."""
        settings = RetrievalSettings.from_config(config)
        return cls(model, settings) if settings.active else None

    def item_vectors(self, model):
        """``[n_items, d]``: each item's vector (row 0, the padding item, is never ranked)."""
        vectors = 0
        if self.item_embedding is not None:
            vectors = self.item_embedding.weight
        if self.use_codes:
            items = torch.arange(model.n_items, device=model.codes.device)
            vectors = vectors + model.token_embedding(model.item_tokens(items)).sum(-2)
        return vectors

    def log_probs(self, model, hidden):
        """Log-probabilities ``[B, n_items]`` over the items (item 0: -inf) of the query
        states ``hidden`` ``[B, d]``."""
        logits = self.query(hidden) @ self.item_vectors(model).t()
        logits[:, 0] = float("-inf")
        return logits.float().log_softmax(-1)

    def loss(self, model, target_rows, items):
        """``retrieval_weight`` x the mean cross-entropy of ``items`` ``[B]``, from the target
        rows ``[B, L, d]`` (row 0 predicts the first code: the query)."""
        return self.weight * F.nll_loss(self.log_probs(model, target_rows[:, 0]), items)

    def score(self, model, target_rows, items, sid_log_likelihood):
        """``predict``: each item's dense log-probability + ``beam_weight`` (the key
        ``retrieval_beam_weight``) x its exact SID log-likelihood ``[B]``."""
        dense = self.log_probs(model, target_rows[:, 0]).gather(1, items.unsqueeze(1)).squeeze(1)
        return dense + self.beam_weight * sid_log_likelihood

    @torch.no_grad()
    def rank_all(self, model, query, beam_items, beam_scores, item_seq):
        """``full_sort_predict``: :meth:`rank` of every item from the ``query`` ``[B, d]`` that
        scored the beam's first code (no other pass of the history) and the beam."""
        return self.rank(self.log_probs(model, query), beam_items, beam_scores, self.beam_weight,
                         item_seq if model.exclude_seen else None)

    @staticmethod
    def rank(log_probs, beam_items, beam_scores, beam_weight, exclude=None):
        """Scores ``[B, n_items]`` of every item: ``log_probs + beam_weight x s`` with ``s`` the
        beam's score of a beam item and the lowest finite beam score of the others (0 where
        the beam found nothing); items in ``exclude`` ``[B, n]`` and item 0 get -inf."""
        finite = torch.isfinite(beam_scores)
        floor = beam_scores.masked_fill(~finite, float("inf")).min(1, keepdim=True).values
        floor = torch.where(torch.isfinite(floor), floor, torch.zeros_like(floor))
        found = torch.where(finite, beam_scores, floor).to(log_probs.dtype)
        sid = floor.to(log_probs.dtype).expand_as(log_probs).scatter(1, beam_items, found)
        scores = log_probs + beam_weight * sid
        if exclude is not None:
            scores = scores.scatter(1, exclude, float("-inf"))  # padding 0 is item 0: -inf anyway
        scores[:, 0] = float("-inf")
        return scores
