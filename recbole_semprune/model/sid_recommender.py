"""Base class of every semantic-ID (SID) generative recommender in this package.

An item is a tuple of ``L`` codes (:mod:`recbole_semprune.sid`); a history of ``N`` items is a
stream of ``N x L`` tokens; the model generates the next item's ``L`` codes. This class holds
what all SID models share: the codes (a buffer, so checkpoints carry them), the token, level
and position embeddings, the per-level output head, the loss, the exact teacher-forced score
used by :meth:`predict`, and trie-constrained beam search for :meth:`full_sort_predict`.

A subclass provides :meth:`target_hidden` (teacher forcing: the hidden states that predict the
target's ``L`` codes) and :meth:`generation_state` (what beam search needs), and may add to
:meth:`calculate_loss`.
"""

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_semprune.data.protocol import item_text_fields
from recbole_semprune.model.generation import PrefixTrie, constrained_beam_search, scores_to_full
from recbole_semprune.model.layers import TransformerStack, init_weights
from recbole_semprune.sid import SemanticIDs, build_semantic_ids
from recbole_semprune.sid.settings import read_settings
from recbole_semprune.sid.tokenizer import check_sizes, fitted_codebook_size


class SIDRecommender(SequentialRecommender):
    r"""A sequential recommender that reads and writes items as semantic IDs.

    Vocabulary: token 0 is padding; the code ``c`` of level ``l`` is token
    ``1 + offset[l] + c`` (one vocabulary, per-level offsets); the output head scores the
    ``sum(level_sizes)`` codes and each prediction is a softmax over its level's codes only.
    Positions count items back from the target (1 = most recent history item, 0 = the target),
    so the same embedding always marks "the last item" whatever the history length.
    """

    input_type = InputType.POINTWISE
    # batches are trimmed to their longest history (`history`), so the loaders bucket rows by
    # length when `padding_free` is on (recbole_semprune.data.batching)
    padding_free_batches = True

    def __init__(self, config, dataset, semantic_ids=None):
        super().__init__(config, dataset)
        sids = semantic_ids if semantic_ids is not None else build_semantic_ids(config, dataset)
        if sids.codes.shape[0] != self.n_items:
            raise ValueError(
                f"semantic IDs cover {sids.codes.shape[0]} items but the dataset has {self.n_items}"
            )
        level_sizes = [int(size) for size in sids.level_sizes]
        self.n_levels = len(level_sizes)
        self.n_codes = sum(level_sizes)
        self.register_buffer("codes", sids.codes.long().clone())
        self.register_buffer("level_sizes", torch.tensor(level_sizes))
        offsets = torch.tensor([0] + level_sizes[:-1]).cumsum(0)
        self.register_buffer("level_offsets", offsets, persistent=False)
        self.register_buffer(
            "code_level", torch.repeat_interleave(torch.arange(self.n_levels), self.level_sizes),
            persistent=False,
        )
        self.trie = PrefixTrie(self.codes, level_sizes)

        # sizes, named as RecBole's SASRec names them
        self.hidden_size = config["hidden_size"]
        self.inner_size = config["inner_size"]
        self.n_heads = config["n_heads"]
        self.head_size = config["head_size"]
        self.n_layers = config["n_layers"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.attn_dropout_mode = config["attn_dropout_mode"] or "probs"
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.beam_size = config["beam_size"]
        self.padding_free = bool(config["padding_free"])
        # generate only items that are not in the input history (for data without repeats)
        self.exclude_seen = bool(config["exclude_seen"])
        self.check_beam_size(config)

        # tokens 1..n_codes are codes; n_codes + 1 is BOS (used by encoder-decoder models)
        self.bos_token = self.n_codes + 1
        self.token_embedding = nn.Embedding(self.n_codes + 2, self.hidden_size, padding_idx=0)
        self.level_embedding = nn.Embedding(self.n_levels, self.hidden_size)
        self.position_embedding = nn.Embedding(self.max_seq_length + 1, self.hidden_size)
        self.embedding_dropout = nn.Dropout(self.hidden_dropout_prob)
        self.output = nn.Linear(self.hidden_size, self.n_codes, bias=False)

    @staticmethod
    def check_beam_size(config):
        """``beam_size`` is at least the largest ``topk`` (ValueError otherwise)."""
        beam_size, topk = config["beam_size"], config["topk"] or []
        topk = [topk] if isinstance(topk, int) else topk
        if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
            raise ValueError(f"beam_size must be a positive integer, got {beam_size!r}.")
        if topk and beam_size < max(topk):
            raise ValueError(
                f"beam_size={beam_size} is smaller than the largest topk={max(topk)}: beam "
                f"search returns beam_size items, so metrics @{max(topk)} would be wrong. "
                f"Set --beam_size={max(topk)} or more."
            )

    @classmethod
    def check_config(cls, config):
        """Check this model's settings before any data is loaded (``quick_start.check_run``):
        the ``sid_*`` keys, ``beam_size`` against ``topk`` and, for a text backend, that the
        ``sid_text_fields`` are loaded. Subclasses add their own keys. Raises ValueError;
        returns warnings (item text in the ``.item`` file that ``load_col`` leaves out)."""
        settings = read_settings(config)
        cls.check_beam_size(config)
        if settings["sid_embedding"] not in ("tfidf", "sentence"):
            return []
        loaded, left_out = item_text_fields(config)
        missing = [f for f in settings["sid_text_fields"] or [] if f not in loaded]
        if missing:
            raise ValueError(
                f"sid_text_fields names {missing}, which load_col does not load from "
                f"{config['dataset']}.item (its loaded text fields: {loaded}): add them to "
                f"load_col: {{item: [{config['ITEM_ID_FIELD']}, ...]}} or drop them from "
                "sid_text_fields."
            )
        if left_out and settings["sid_text_fields"] is None:
            return [
                f"{config['dataset']}.item has text fields {left_out} that load_col does not "
                "load, so the semantic IDs do not read them: add them to load_col: {item: "
                "[...]} to use them."
            ]
        return []

    @classmethod
    def fit_to_dataset(cls, config, dataset):
        """Settings sized by the data, before the semantic IDs are built: a default
        ``sid_codebook_size`` larger than the dataset's items is lowered to fit (returns the
        log line); one the user set raises ValueError."""
        settings, num_items = read_settings(config), dataset.item_num - 1
        try:
            check_sizes(settings, num_items, dataset.dataset_name)
        except ValueError:
            if "sid_codebook_size" in getattr(config, "external_config_dict", {}):
                raise
            size = fitted_codebook_size(num_items)
            config["sid_codebook_size"] = size
            return [
                f"sid_codebook_size: the default {settings['sid_codebook_size']} is larger than "
                f"the {num_items} items of '{dataset.dataset_name}': using {size} (set "
                "sid_codebook_size to choose)"
            ]
        return []

    @classmethod
    def checkpoint_init_kwargs(cls, state_dict):
        """Constructor arguments that let a checkpoint rebuild the model without re-tokenising."""
        codes, sizes = state_dict["codes"], state_dict["level_sizes"]
        return {"semantic_ids": SemanticIDs(codes, sizes.tolist(), {"source": "checkpoint"})}

    def init_parameters(self):
        self.apply(lambda module: init_weights(module, self.initializer_range))

    def transformer(self, n_layers, cross_attention=False):
        """A :class:`TransformerStack` with this model's sizes."""
        return TransformerStack(
            n_layers, self.hidden_size, self.n_heads, self.head_size, self.inner_size,
            self.attn_dropout_prob, self.hidden_dropout_prob, self.hidden_act,
            self.layer_norm_eps, cross_attention=cross_attention,
            attn_dropout_mode=self.attn_dropout_mode,
        )

    # ---- tokens -------------------------------------------------------------------------
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

    def count_input_tokens(self, interaction):
        """Input SID tokens of a batch (history items x levels), for throughput logs."""
        return interaction[self.ITEM_SEQ_LEN].sum() * self.n_levels

    def count_token_slots(self, interaction):
        """History token slots the model computes for a batch, padding included."""
        return self.history(interaction)[0].numel() * self.n_levels

    def embed_items(self, items, positions):
        """Items ``[B, N]`` at item positions ``[B, N]`` -> (embeddings ``[B, N*L, d]``,
        padding mask ``[B, N*L]``): token + level + position embeddings, then dropout."""
        tokens = self.item_tokens(items)
        levels = torch.arange(self.n_levels, device=items.device)
        x = (
            self.token_embedding(tokens)
            + self.level_embedding(levels)
            + self.position_embedding(positions).unsqueeze(-2)
        )
        batch = items.shape[0]
        mask = (tokens != 0).view(batch, -1)
        return self.embedding_dropout(x.view(batch, -1, self.hidden_size)), mask

    def recency_positions(self, item_seq, item_seq_len):
        """Position of each history slot counted back from the target (1 = most recent)."""
        slots = torch.arange(item_seq.shape[1], device=item_seq.device)
        return (item_seq_len.unsqueeze(1) - slots).clamp(min=0)

    # ---- scoring ------------------------------------------------------------------------
    def level_log_probs(self, hidden, level):
        """Log-probabilities ``[..., level_sizes[level]]`` of the codes of one level."""
        start = int(self.level_offsets[level])
        weight = self.output.weight[start : start + int(self.level_sizes[level])]
        return F.log_softmax(hidden @ weight.t(), dim=-1)

    def token_log_probs(self, hidden, next_tokens, output=None):
        """Log-probability of each next token (softmax over its own level's codes).

        ``hidden`` ``[..., d]`` predicts ``next_tokens`` ``[...]`` through ``output`` (a
        ``Linear(d, n_codes)``, default the model's head); positions whose next token is padding
        get a meaningless value and must be masked by the caller.
        """
        code = (next_tokens - 1).clamp(min=0)
        level = self.code_level[code]
        logits = (self.output if output is None else output)(hidden)
        logits = logits.masked_fill(self.code_level != level.unsqueeze(-1), float("-inf"))
        return logits.log_softmax(-1).gather(-1, code.unsqueeze(-1)).squeeze(-1)

    def target_hidden(self, item_seq, item_seq_len, target_tokens):
        """Hidden states ``[B, L, d]`` whose row ``l`` predicts the target's level-``l`` code,
        by teacher forcing with ``target_tokens`` ``[B, L]``."""
        raise NotImplementedError

    def target_log_probs(self, interaction, items):
        """Per-level log-probabilities ``[B, L]`` of ``items`` ``[B]`` given each history."""
        target_tokens = self.item_tokens(items)
        hidden = self.target_hidden(*self.history(interaction), target_tokens)
        return self.token_log_probs(hidden, target_tokens)

    def calculate_loss(self, interaction):
        return -self.target_log_probs(interaction, interaction[self.POS_ITEM_ID]).mean()

    def predict(self, interaction):
        """Exact log-likelihood of each given item's SID (sum over levels), by teacher forcing."""
        return self.target_log_probs(interaction, interaction[self.ITEM_ID]).sum(-1)

    # ---- generation ---------------------------------------------------------------------
    def generation_state(self, item_seq, item_seq_len):
        """``(init_state, step_fn, reorder_state)`` for :func:`constrained_beam_search`."""
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, item_seq, item_seq_len, beam_size=None):
        """Top ``beam_size`` valid items per history: ``(item_ids [B, K], log_probs [B, K])``;
        with ``exclude_seen``, none of them is an item of its history."""
        init_state, step_fn, reorder_state = self.generation_state(item_seq, item_seq_len)
        return constrained_beam_search(
            step_fn, init_state, item_seq.shape[0], beam_size or self.beam_size, self.trie,
            reorder_state=reorder_state, exclude=item_seq if self.exclude_seen else None,
        )

    def full_sort_predict(self, interaction):
        """Scores ``[B, n_items]``: beam items carry their SID log-probability, others -inf."""
        item_ids, scores = self.generate(*self.history(interaction))
        return scores_to_full(item_ids, scores, self.n_items)


class BackboneSwitch:
    """For a model name available on several backbones, chosen by the ``backbone`` key.

    The class that carries the model name is the ``default_backbone`` variant; ``backbones``
    maps every backbone name to its class (set after the classes exist). Building the model
    name with another ``backbone`` returns that class's instance instead, so
    ``get_model(name)(config, dataset)``, checkpoints and RecBole's tools all work unchanged.
    """

    default_backbone = "tiger"
    backbones = {}

    @classmethod
    def backbone_class(cls, config):
        """The class that ``config``'s ``backbone`` builds (ValueError for an unknown one)."""
        backbone = config["backbone"] or cls.default_backbone
        if backbone not in cls.backbones:
            raise ValueError(
                f"backbone={backbone!r}: {cls.__name__} runs on one of {', '.join(cls.backbones)}"
            )
        return cls.backbones[backbone]

    @classmethod
    def check_config(cls, config):
        target = cls.backbone_class(config)
        if target is cls:
            return super().check_config(config)
        return target.check_config(config)

    def __new__(cls, config=None, dataset=None, semantic_ids=None):
        if config is None:  # copy.deepcopy / pickle re-create the object without arguments
            return super().__new__(cls)
        target = cls.backbone_class(config)
        if target is cls:
            return super().__new__(cls)
        model = object.__new__(target)
        model.__init__(config, dataset, semantic_ids)
        return model
