"""Base class of every semantic-ID (SID) generative recommender in this package.

An item is a tuple of ``L`` codes (:mod:`recbole_semprune.sid`); a history of ``N`` items is a
stream of ``N x L`` tokens; the model generates the next item's ``L`` codes. The transformer is
a backbone component (:mod:`~.backbones`) a subclass sets as ``self.backbone``. What a model
needs from its data is declared here (:meth:`future_items`, :meth:`dense_stream_loss`, read by
``utils.create_dataset``), with defaults.
"""

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_semprune import validate
from recbole_semprune.checkpoint import rename_legacy_keys
from recbole_semprune.model.code_head import CodeHead
from recbole_semprune.model.generation import (
    PrefixTrie, constrained_beam_search, scores_to_full, scoring_steps,
)
from recbole_semprune.model.layers import Dropout, init_weights
from recbole_semprune.model.retrieval import DenseRetrieval
from recbole_semprune.model.sid_checks import (
    check_beam_size, check_item_count, check_sid_settings, fit_codebook,
)
from recbole_semprune.sid import SemanticIDs, build_semantic_ids


class SIDRecommender(SequentialRecommender):
    r"""A sequential recommender that reads and writes items as semantic IDs.

    Vocabulary: token 0 is padding; the code ``c`` of level ``l`` is token
    ``1 + offset[l] + c`` (one vocabulary, per-level offsets); token ``n_codes + 1`` is BOS;
    the output head (:class:`~.code_head.CodeHead`) scores the ``sum(level_sizes)`` codes and
    each prediction is a softmax over its level's codes only. Positions count items back from
    the target (1 = most recent history item, 0 = the target), so the same embedding always
    marks "the last item". Checkpoints written before the recomposition load too: their
    parameter names are renamed on loading (``checkpoint.LEGACY_PREFIXES``).
    """

    input_type = InputType.POINTWISE
    backbones = ("tiger", "decoder_only")  # values of the `backbone` key it runs on (TIGER: tiger)
    pruner = None  # a TokenPruner where the model prunes its history

    def __init__(self, config, dataset, semantic_ids=None):
        super().__init__(config, dataset)
        sids = semantic_ids if semantic_ids is not None else build_semantic_ids(config, dataset)
        check_item_count(sids, self.n_items)
        level_sizes = [int(size) for size in sids.level_sizes]
        self.n_levels, self.n_codes = len(level_sizes), sum(level_sizes)
        self.register_buffer("codes", sids.codes.long().clone())
        self.register_buffer("level_sizes", torch.tensor(level_sizes))
        offsets = torch.tensor([0] + level_sizes[:-1]).cumsum(0)
        self.register_buffer("level_offsets", offsets, persistent=False)
        self.trie = PrefixTrie(self.codes, level_sizes)

        # sizes, named as RecBole's SASRec names them
        for key in ("hidden_size", "inner_size", "n_heads", "head_size", "n_layers",
                    "hidden_dropout_prob", "attn_dropout_prob", "attn_dropout_mode",
                    "hidden_act", "layer_norm_eps", "initializer_range"):
            setattr(self, key, config[key])
        self.beam_size = check_beam_size(config)
        self.padding_free = validate.boolean("padding_free", config["padding_free"])
        self.fast_dropout = validate.boolean("fast_dropout", config["fast_dropout"])
        # generate only items that are not in the input history (for data without repeats)
        self.exclude_seen = bool(config["exclude_seen"])

        self.bos_token = self.n_codes + 1
        self.token_embedding = nn.Embedding(self.n_codes + 2, self.hidden_size, padding_idx=0)
        self.level_embedding = nn.Embedding(self.n_levels, self.hidden_size)
        self.position_embedding = nn.Embedding(self.max_seq_length + 1, self.hidden_size)
        self.embedding_dropout = Dropout(self.hidden_dropout_prob, self.fast_dropout)
        self.output = CodeHead(self.hidden_size, level_sizes)
        # dense scores of every item beside generation: None unless retrieval_weight > 0
        self.retrieval = DenseRetrieval.from_config(self, config)
        self._register_load_state_dict_pre_hook(rename_legacy_keys)

    # ---- what the model needs from its data and settings (class level) ----------------
    @classmethod
    def read_backbone(cls, config):
        """The ``backbone`` key, one of the class's ``backbones``."""
        return validate.choice("backbone", config["backbone"], cls.backbones,
                               f"(the backbones {cls.__name__} runs on)")

    @classmethod
    def future_items(cls, config):
        """Items after the target that each training row carries (``SIDSequentialDataset``)."""
        return 0

    @classmethod
    def dense_stream_loss(cls, config):
        """Whether training has a next-token loss on the whole stream (``train_rows: user``)."""
        return cls.read_backbone(config) == "decoder_only" and validate.boolean(
            "dense_loss", config["dense_loss"])

    @classmethod
    def check_config(cls, config):
        """This model's settings, checked before any data is loaded; returns warnings."""
        cls.read_backbone(config)
        return check_sid_settings(config)

    @classmethod
    def fit_to_dataset(cls, config, dataset):
        """Settings sized by the data, before the semantic IDs are built (log lines)."""
        return fit_codebook(config, dataset)

    @classmethod
    def checkpoint_init_kwargs(cls, state_dict):
        """Constructor arguments that let a checkpoint rebuild the model without re-tokenising."""
        codes, sizes = state_dict["codes"], state_dict["level_sizes"]
        return {"semantic_ids": SemanticIDs(codes, sizes.tolist(), {"source": "checkpoint"})}

    def init_parameters(self):
        self.apply(lambda module: init_weights(module, self.initializer_range))

    # ---- tokens and embeddings ----------------------------------------------------------
    def item_tokens(self, items):
        """``[...]`` item ids -> ``[..., L]`` token ids (0 for padding items)."""
        tokens = self.codes[items] + 1 + self.level_offsets
        return tokens.masked_fill((items == 0).unsqueeze(-1), 0)

    def code_tokens(self, codes, level):
        """Codes ``[...]`` of one level -> token ids."""
        return codes + 1 + self.level_offsets[level]

    def history(self, interaction):
        """``(item_seq [B, N], item_seq_len [B])`` of a batch; with ``padding_free`` the columns
        after the longest history are dropped, so no layer computes on them."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        if self.padding_free:
            item_seq = item_seq[:, : max(int(item_seq_len.max()), 1)]
        return item_seq, item_seq_len

    def embed_items(self, items, positions):
        """Items ``[B, N]`` at item positions ``[B, N]`` -> (embeddings ``[B, N*L, d]``,
        padding mask ``[B, N*L]``): token + level + position embeddings, then dropout."""
        tokens = self.item_tokens(items)
        levels = torch.arange(self.n_levels, device=items.device)
        x = self.token_embedding(tokens) + self.level_embedding(levels)
        x = x + self.position_embedding(positions).unsqueeze(-2)
        batch = items.shape[0]
        return self.embedding_dropout(x.view(batch, -1, self.hidden_size)), (tokens != 0).view(batch, -1)

    def embed_target(self, tokens, first_level, positions=None):
        """Tokens ``[B, T]`` of the item being predicted, of levels ``first_level, ...``, at
        item ``positions`` ``[B]`` (None: no position, an encoder-decoder's decoder)."""
        levels = torch.arange(first_level, first_level + tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.level_embedding(levels)
        if positions is not None:
            x = x + self.position_embedding(positions).unsqueeze(1)
        return self.embedding_dropout(x)

    # ---- scoring ------------------------------------------------------------------------
    def target_hidden(self, item_seq, item_seq_len, target_tokens):
        """Hidden states ``[B, L, d]`` whose row ``l`` predicts the target's level-``l`` code,
        by teacher forcing with ``target_tokens`` ``[B, L]``."""
        return self.backbone.target_hidden(self, item_seq, item_seq_len, target_tokens)

    def target_log_probs(self, interaction, items):
        """``(per-level log-probabilities [B, L] of items [B] given each history, the target
        rows [B, L, d] they come from)``."""
        target_tokens = self.item_tokens(items)
        hidden = self.target_hidden(*self.history(interaction), target_tokens)
        return self.output.token_log_probs(hidden, target_tokens), hidden

    def target_loss(self, hidden, target_tokens, items):
        """The loss of the target rows ``hidden`` ``[B, L, d]``: the codes' mean negative
        log-likelihood (+ the dense retrieval loss of ``items`` ``[B]``, if any)."""
        loss = -self.output.token_log_probs(hidden, target_tokens).mean()
        return loss if self.retrieval is None else loss + self.retrieval.loss(self, hidden, items)

    def predict(self, interaction):
        """Exact log-likelihood of each given item's SID (sum over levels), by teacher forcing
        (with dense retrieval, mixed with the item's dense score: :class:`DenseRetrieval`)."""
        items = interaction[self.ITEM_ID]
        log_probs, hidden = self.target_log_probs(interaction, items)
        sid = log_probs.sum(-1)
        return sid if self.retrieval is None else self.retrieval.score(self, hidden, items, sid)

    # ---- generation ---------------------------------------------------------------------
    def generation_state(self, item_seq, item_seq_len, first=None):
        """``(init_state, step_fn, reorder_state)`` for :func:`constrained_beam_search`: the
        backbone's hidden states scored by the output head (``first``: :func:`scoring_steps`)."""
        init, hidden_step, reorder = self.backbone.generation_state(self, item_seq, item_seq_len)
        return init, scoring_steps(hidden_step, self.output, first), reorder

    @torch.no_grad()
    def generate(self, item_seq, item_seq_len, beam_size=None, first=None):
        """Top ``beam_size`` valid items per history: ``(item_ids [B, K], log_probs [B, K])``;
        with ``exclude_seen``, none of them is an item of its history. ``first``, a list, gets
        the hidden states ``[B, d]`` that scored the first code."""
        init_state, step_fn, reorder_state = self.generation_state(item_seq, item_seq_len, first)
        return constrained_beam_search(
            step_fn, init_state, item_seq.shape[0], beam_size or self.beam_size, self.trie,
            reorder_state=reorder_state, exclude=item_seq if self.exclude_seen else None,
        )

    def full_sort_predict(self, interaction):
        """Scores ``[B, n_items]``: beam items carry their SID log-probability, others -inf
        (with dense retrieval, every item a mix: :meth:`DenseRetrieval.rank_all`)."""
        item_seq, item_seq_len = self.history(interaction)
        first = None if self.retrieval is None else []
        item_ids, scores = self.generate(item_seq, item_seq_len, first=first)
        if self.retrieval is not None:
            return self.retrieval.rank_all(self, first[0], item_ids, scores, item_seq)
        return scores_to_full(item_ids, scores, self.n_items)

    # ---- figures of the epoch (read by the plugin's Trainer) ----------------------------
    @property
    def pruning(self):
        """Whether the current mode (train / eval) prunes the history."""
        return self.pruner is not None and self.pruner.active(self.training)

    def pop_epoch_stats(self):
        """The model's figures of the training batches since the last call, then reset."""
        return self.pruner.pop_stats() if self.pruner is not None else {}

    def describe_epoch_stats(self, stats):
        """Text for the epoch log line from :meth:`pop_epoch_stats`'s dict."""
        return self.pruner.describe(stats) if "kept_fraction" in stats else ""

    def extra_repr(self):
        return "" if self.pruner is None else repr(self.pruner)
