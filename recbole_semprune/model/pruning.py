"""Token pruning inside a transformer stack, shared by every pruning model (RASTP, STAMP).

A pruned run of a :class:`~recbole_semprune.model.layers.TransformerStack` of ``n`` layers:

1. run layers ``[0, p)`` on all tokens (``p = prune_layer``); only layer ``p - 1`` computes its
   attention probabilities, and only when the scorer needs them, every other layer stays on
   the fused kernel;
2. score every history token with a registered *scorer* (:data:`SCORERS`);
3. keep the top tokens of each history (:func:`keep_counts`, :func:`select_tokens`): padding is
   never kept while a real token is dropped, protected tokens are always kept, and the kept
   tokens keep their original order;
4. gather the hidden states and the padding mask (:func:`gather_positions` gathers anything
   else aligned with the tokens) and run layers ``[p, n)`` on the shorter sequence.

The result's ``mask`` is the reduced padding mask: what the next consumer (TIGER's decoder
cross-attention, the rest of a causal stream) must use.

Layout of a pruned history: ``K = max`` kept count over the batch positions; a history that
keeps fewer tokens has masked *filler* slots, and they come **first** (the kept tokens are
right-aligned), so that the last position of a pruned history is its last kept token, which is
what a causal backbone reads. Fillers are masked everywhere, so for a bidirectional encoder the
alignment changes nothing.

A new score (STAMP's) plugs in with :func:`register_scorer`. A pruning model owns a
:class:`TokenPruner` (its keys, pruned runs, statistics and their log line) and hands it to its
backbone (:mod:`recbole_semprune.model.backbones`), which runs it where it reads the history.
"""

import math
from fractions import Fraction
from typing import Callable, NamedTuple, Optional

import torch
from recbole.utils import set_color

from recbole_semprune import validate

__all__ = [
    "Scorer",
    "SCORERS",
    "NO_PRUNING",
    "KEEP_RATIO_MODES",
    "register_scorer",
    "attention_received",
    "keep_counts",
    "select_tokens",
    "gather_positions",
    "Selection",
    "PrunedRun",
    "TokenPruner",
]

NO_PRUNING = "none"
KEEP_RATIO_MODES = ("fixed", "per_history", "batch")
SCORE_QUERIES = ("real", "all")


class Scorer(NamedTuple):
    """A token importance score: ``fn(hidden [B, T, d], received [B, T] or None, mask [B, T])
    -> scores [B, T]`` (higher = more important). ``received`` is the attention each token
    receives in the pruning layer (:func:`attention_received`); it is computed only for scorers
    with ``needs_attention``. Scores of padding are ignored (the mechanism masks them)."""

    fn: Callable
    needs_attention: bool


SCORERS = {}


def register_scorer(name: str, needs_attention: bool, replace: bool = False):
    """Decorator registering ``fn`` as the scorer ``name`` (the value of ``prune_scorer``)."""

    def decorator(fn):
        if name == NO_PRUNING:
            raise ValueError(f"'{NO_PRUNING}' is reserved: it switches pruning off")
        if name in SCORERS and not replace:
            raise ValueError(f"a scorer named '{name}' is already registered")
        SCORERS[name] = Scorer(fn, needs_attention)
        return fn

    return decorator


def attention_received(attn, query_mask, causal=False, normalize_by_visible_queries=False):
    """Attention each key receives, summed over heads and over the queries of ``query_mask``.

    ``attn`` [B, H, Tq, Tk] (probabilities of one layer), ``query_mask`` [B, Tq] bool (the real
    queries; every slot with ``prune_score_queries: all``). With
    ``normalize_by_visible_queries`` the sum is divided by how many real queries may attend to
    each key: all of them without ``causal``; those at or after the key with ``causal``
    (query and key index the same sequence), so early tokens of a causal stream are not
    favoured only because more queries see them.
    """
    weights = query_mask.to(attn.dtype)
    received = torch.einsum("bhqk,bq->bk", attn, weights)
    if normalize_by_visible_queries:
        if causal:
            visible = weights.flip(1).cumsum(1).flip(1)
        else:
            visible = weights.sum(1, keepdim=True).expand_as(received)
        received = received / visible.clamp(min=1)
    return received


@register_scorer("rastp", needs_attention=True)
def rastp_score(hidden, received, mask):
    """RASTP: attention received times the L1 norm of the token's hidden state."""
    return received * hidden.abs().sum(-1)


@register_scorer("attention", needs_attention=True)
def attention_score(hidden, received, mask):
    """Attention received only."""
    return received


@register_scorer("saliency_l1", needs_attention=False)
def saliency_l1_score(hidden, received, mask):
    """L1 norm of the hidden state only."""
    return hidden.abs().sum(-1)


@register_scorer("saliency_l2", needs_attention=False)
def saliency_l2_score(hidden, received, mask):
    """L2 norm of the hidden state only (an alternative left in the public RASTP code)."""
    return hidden.norm(dim=-1)


@register_scorer("random", needs_attention=False)
def random_score(hidden, received, mask):
    """Control: uniform random scores from torch's global RNG (seeded by RecBole's seed)."""
    return torch.rand(mask.shape, device=mask.device)


def parse_keep_ratio(value):
    """``keep_ratio`` as an exact :class:`~fractions.Fraction` in (0, 1]: a number, or a string
    ``"a/b"`` (``"1/3"`` keeps exactly a third, where 0.3333 keeps one token fewer whenever the
    length is a multiple of 3)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        ratio = Fraction(value) if isinstance(value, (int, str, Fraction)) else None
        if isinstance(value, float):  # 1/3 from the command line arrives as 0.333...: exact again
            ratio = Fraction(value).limit_denominator(10**6)
    except (TypeError, ValueError, ZeroDivisionError):
        ratio = None
    if ratio is None or not 0 < ratio <= 1:
        raise ValueError(f"keep_ratio={value!r} must be a number or a fraction 'a/b' in (0, 1]")
    return ratio


def keep_counts(mask, keep_ratio, mode, protect=None, max_tokens=None):
    """How many tokens each history keeps: LongTensor [B].

    ``fixed`` (the public RASTP code): ``floor(max_tokens * keep_ratio)`` for every history,
    ``max_tokens`` = the most tokens a history can have (the fixed length the public code pads
    every row to), so a history with fewer real tokens keeps them all; ``per_history``:
    ``floor(n_b * keep_ratio)`` of its own ``n_b`` real tokens; ``batch`` (this project's first
    reading of the public code, kept to reproduce earlier runs): ``floor(longest * keep_ratio)``
    with ``longest`` = the most real tokens of a history *in the batch*, so a history's count
    depends on its batch-mates. Never more than the real tokens, at least 1, and at least the
    protected tokens. ``keep_ratio`` is a number or a :class:`~fractions.Fraction` (exact).
    """
    if mode not in KEEP_RATIO_MODES:
        raise ValueError(f"keep_ratio_mode must be one of {KEEP_RATIO_MODES}, got {mode!r}")
    n_real = mask.sum(1)
    if mode == "fixed":
        if max_tokens is None:
            raise ValueError("keep_ratio_mode 'fixed' needs max_tokens (the longest possible history)")
        base = torch.full_like(n_real, int(max_tokens))
    elif mode == "batch":
        base = n_real.max().expand_as(n_real)
    else:
        base = n_real
    ratio = parse_keep_ratio(keep_ratio)
    # exact integer arithmetic: floor(base * p / q)
    counts = torch.minimum(base * ratio.numerator // ratio.denominator, n_real).clamp(min=1)
    if protect is not None:
        counts = torch.maximum(counts, (protect & mask).sum(1))
    return counts


class Selection(NamedTuple):
    index: torch.Tensor  # [B, K] source position of each slot; kept ones ascending, at the end
    mask: torch.Tensor  # [B, K] bool, True = a kept real token (False = masked filler)


def select_tokens(scores, mask, counts, protect=None):
    """Keep the ``counts[b]`` best-scoring real tokens of each row, in their original order.

    ``scores`` [B, T], ``mask`` [B, T] bool (True = real), ``counts`` [B], ``protect`` [B, T]
    bool (always kept). Padding is never kept while a real token is dropped (it scores below
    every real token, NaN included); when a row has fewer real tokens than its count, the
    missing slots are masked fillers. Returns a :class:`Selection` of ``K = max(counts)``
    slots (at most ``T``) with the fillers first.
    """
    length = scores.shape[1]
    lowest, highest = torch.finfo(torch.float32).min, torch.finfo(torch.float32).max
    scores = torch.nan_to_num(scores.detach().float(), nan=lowest, neginf=lowest, posinf=highest)
    scores = scores.masked_fill(~mask, float("-inf"))
    if protect is not None:
        scores = scores.masked_fill(protect & mask, float("inf"))
    k = min(int(counts.max()), length)
    top = scores.topk(k, dim=1).indices  # best first
    rank = torch.arange(k, device=scores.device)
    kept = (rank < counts.unsqueeze(1)) & mask.gather(1, top)
    # sort key: fillers (< length) first, then kept tokens by original position
    key = (top + length * kept).sort(dim=1).values
    kept = key >= length
    return Selection(key - length * kept, kept)


def gather_positions(x, index):
    """``x`` [B, T, ...] at positions ``index`` [B, K] -> [B, K, ...]."""
    index = index.view(*index.shape, *([1] * (x.dim() - 2)))
    return torch.take_along_dim(x, index, dim=1)


class PrunedRun(NamedTuple):
    """Result of :meth:`TokenPruner.run`."""

    hidden: torch.Tensor  # [B, K + T_rest, d] output of the whole stack
    mask: torch.Tensor  # [B, K + T_rest] reduced padding mask (True = real)
    index: torch.Tensor  # [B, K] source position of each history slot
    cache: Optional[list]  # KV cache: layers < p hold all tokens, layers >= p the kept ones


class TokenPruner:
    """The pruning settings of a model and the pruned run of its stack (see module doc).

    Also accumulates, while training, how many tokens the histories had and kept
    (:meth:`pop_stats`).
    """

    def __init__(self, n_layers, prune_layer, keep_ratio, scorer, keep_ratio_mode,
                 prune_at_eval, protect_last, normalize_by_visible_queries, max_tokens,
                 score_queries, attention_after_dropout):
        if scorer != NO_PRUNING and scorer not in SCORERS:
            raise ValueError(
                f"unknown prune_scorer {scorer!r}: choose one of "
                f"{', '.join(sorted(SCORERS) + [NO_PRUNING])}"
            )
        if scorer != NO_PRUNING:  # prune_layer means nothing to an unpruned stack
            validate.integer("prune_layer", prune_layer, 1, n_layers,
                             f"(the number of layers run before pruning, of the {n_layers} "
                             "layers of the pruned stack)")
        ratio = parse_keep_ratio(keep_ratio)
        validate.choice("keep_ratio_mode", keep_ratio_mode, KEEP_RATIO_MODES)
        if keep_ratio_mode == "fixed" and not (isinstance(max_tokens, int) and max_tokens > 0):
            raise ValueError("keep_ratio_mode=fixed needs the longest possible history in tokens")
        validate.choice("prune_score_queries", score_queries, SCORE_QUERIES)
        validate.integer("prune_protect_last", protect_last, low=0, hint="(items)")
        self.n_layers = n_layers
        self.prune_layer = prune_layer
        self.keep_ratio = ratio
        self.max_tokens = max_tokens
        self.score_queries = score_queries
        self.attention_after_dropout = validate.boolean("prune_attention_after_dropout",
                                                        attention_after_dropout)
        self.scorer_name = scorer
        self.scorer = SCORERS.get(scorer)
        self.keep_ratio_mode = keep_ratio_mode
        self.prune_at_eval = validate.boolean("prune_at_eval", prune_at_eval)
        self.protect_last = protect_last
        self.normalize_by_visible_queries = validate.boolean(
            "normalize_by_visible_queries", normalize_by_visible_queries)
        self.reset_stats()

    @classmethod
    def from_config(cls, config, max_tokens):
        """Settings from the config keys ``prune_layer`` (of the ``n_layers`` of the pruned
        stack), ``keep_ratio``, ``prune_scorer``, ``keep_ratio_mode``, ``prune_at_eval``,
        ``prune_protect_last``, ``normalize_by_visible_queries``, ``prune_score_queries``,
        ``prune_attention_after_dropout`` (defaults: the model's yaml); ``max_tokens``: the
        longest possible history in tokens (``keep_ratio_mode: fixed``).

        ``prune_score_queries: all`` sums the attention that padding queries pay too (the
        public code's), which depends on how far a row is padded: it needs ``padding_free:
        False``, where every row is padded to ``MAX_ITEM_LIST_LENGTH`` as in the public code.
        """
        if config["prune_score_queries"] == "all" and config["padding_free"]:
            raise ValueError(
                "prune_score_queries=all counts the attention paid by padding queries, so it "
                "depends on how far each row is padded: set padding_free=False (every row then "
                "has MAX_ITEM_LIST_LENGTH items, the public code's fixed padding)"
            )
        return cls(
            config["n_layers"], config["prune_layer"], config["keep_ratio"],
            config["prune_scorer"], config["keep_ratio_mode"], config["prune_at_eval"],
            config["prune_protect_last"], config["normalize_by_visible_queries"], max_tokens,
            config["prune_score_queries"], config["prune_attention_after_dropout"],
        )

    @classmethod
    def check_config(cls, config):
        """The pruning keys, checked before any data is loaded (ValueError on a bad one)."""
        # every level of the semantic IDs plus the de-duplication level, per history item
        cls.from_config(config, config["MAX_ITEM_LIST_LENGTH"] * (config["sid_levels"] + 1))

    @property
    def enabled(self):
        return self.scorer is not None

    def active(self, training):
        """Whether a forward pass in this mode prunes."""
        return self.enabled and (training or self.prune_at_eval)

    # ---- the mechanism ----------------------------------------------------------------
    def score(self, hidden, attn, mask, causal=False):
        """Scores [B, T] of the tokens ``hidden`` [B, T, d] from the pruning layer's ``attn``."""
        received = None
        if self.scorer.needs_attention:
            queries = mask if self.score_queries == "real" else torch.ones_like(mask)
            received = attention_received(attn, queries, causal, self.normalize_by_visible_queries)
        return self.scorer.fn(hidden, received, mask)

    def protected_tokens(self, positions, n_levels):
        """Tokens [B, N*L] of the ``protect_last`` most recent items, from item recency
        ``positions`` [B, N] (1 = most recent, 0 = padding), or None."""
        if not self.protect_last:
            return None
        recent = (positions > 0) & (positions <= self.protect_last)
        return recent.repeat_interleave(n_levels, dim=1)

    def run(self, stack, x, mask, causal=False, n_prunable=None, protect=None, cache=None):
        """Run ``stack`` on ``x`` [B, T, d], pruning the first ``n_prunable`` positions (the
        history; default all) after layer ``prune_layer``.

        ``mask`` [B, T] bool padding mask; positions after the history (e.g. a causal stream's
        target tokens) are always kept. ``protect`` [B, n_prunable] bool: history tokens never
        pruned. ``cache``: a fresh KV cache list to fill (incremental decoding).
        """
        n_prunable = x.shape[1] if n_prunable is None else n_prunable
        p = self.prune_layer
        weights_layer = p - 1 if self.scorer.needs_attention else None
        first = stack(x, padding_mask=mask, causal=causal, end=p, weights_layer=weights_layer,
                      apply_final_norm=False, cache=cache,
                      weights_after_dropout=self.attention_after_dropout)
        history, history_mask = first.hidden[:, :n_prunable], mask[:, :n_prunable]
        with torch.no_grad():
            attn = None if first.attn is None else first.attn[:, :, :n_prunable, :n_prunable]
            scores = self.score(history, attn, history_mask, causal)
        counts = keep_counts(history_mask, self.keep_ratio, self.keep_ratio_mode, protect,
                             self.max_tokens)
        selection = select_tokens(scores, history_mask, counts, protect)
        hidden = torch.cat([gather_positions(history, selection.index),
                            first.hidden[:, n_prunable:]], dim=1)
        reduced_mask = torch.cat([selection.mask, mask[:, n_prunable:]], dim=1)
        rest = stack(hidden, padding_mask=reduced_mask, causal=causal, start=p, cache=first.cache)
        if stack.training:
            self.record(history_mask, selection)
        return PrunedRun(rest.hidden, reduced_mask, selection.index, rest.cache)

    def decode_step(self, stack, x, full_mask, reduced_mask, cache, causal=True):
        """One incremental step after a pruned :meth:`run` with a cache: layers ``< p`` attend
        to every token (``full_mask``), layers ``>= p`` to the kept ones (``reduced_mask``); both
        masks cover the cached positions plus ``x``. Returns the stack's output."""
        p = self.prune_layer
        first = stack(x, padding_mask=full_mask, causal=causal, end=p, apply_final_norm=False,
                      cache=cache)
        return stack(first.hidden, padding_mask=reduced_mask, causal=causal, start=p,
                     cache=first.cache)

    # ---- statistics -------------------------------------------------------------------
    def reset_stats(self):
        self._histories = 0
        self._padded_tokens = 0
        self._pruned_slots = 0
        self._token_sums = None  # tensor [real tokens, kept tokens], summed on the device

    def record(self, mask, selection):
        """Add one pruned batch (history ``mask`` [B, T], its :class:`Selection`)."""
        sums = torch.stack([mask.sum(), selection.mask.sum()]).detach()
        self._token_sums = sums if self._token_sums is None else self._token_sums + sums
        self._histories += mask.shape[0]
        self._padded_tokens += mask.numel()
        self._pruned_slots += selection.mask.numel()

    def pop_stats(self):
        """Averages per history since the last call (``{}`` if nothing was pruned), then reset:
        ``tokens_per_history`` (real input tokens), ``kept_tokens_per_history``,
        ``kept_fraction``, ``padded_length`` / ``pruned_length`` (sequence length before /
        after pruning, the length layers ``>= prune_layer`` run on)."""
        if not self._histories:
            return {}
        real, kept = (float(v) for v in self._token_sums.cpu())
        n = self._histories
        stats = {
            "tokens_per_history": real / n,
            "kept_tokens_per_history": kept / n,
            "kept_fraction": kept / real if real else math.nan,
            "padded_length": self._padded_tokens / n,
            "pruned_length": self._pruned_slots / n,
        }
        self.reset_stats()
        return stats

    @staticmethod
    def describe(stats):
        """Text for the epoch log line from :meth:`pop_stats`'s dict."""
        return (
            set_color("token pruning", "blue")
            + f": kept {stats['kept_tokens_per_history']:.2f} of "
            f"{stats['tokens_per_history']:.2f} tokens per history "
            f"({100 * stats['kept_fraction']:.1f}%), sequence length "
            f"{stats['padded_length']:.1f} -> {stats['pruned_length']:.1f}"
        )

    def __repr__(self):
        return (
            f"TokenPruner(scorer={self.scorer_name}, prune_layer={self.prune_layer}/"
            f"{self.n_layers}, keep_ratio={self.keep_ratio}, mode={self.keep_ratio_mode}"
            + (f"(max {self.max_tokens} tokens)" if self.keep_ratio_mode == "fixed" else "")
            + f", score_queries={self.score_queries}, after_dropout={self.attention_after_dropout}, "
            f"prune_at_eval={self.prune_at_eval}, protect_last={self.protect_last}, "
            f"normalize_by_visible_queries={self.normalize_by_visible_queries})"
        )
