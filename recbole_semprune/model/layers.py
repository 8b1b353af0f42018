"""Transformer layers shared by every semantic-ID model of the package.

Everything runs on :func:`torch.nn.functional.scaled_dot_product_attention` (the "fused" path);
the explicit ``softmax(QK^T / sqrt(d) + mask)`` path is taken only where the attention
probabilities are asked for (``need_weights=True``), e.g. by one chosen layer for token pruning,
or where fast dropout masks attention probabilities (:class:`Dropout`, ``fast_dropout``).

Conventions
-----------
* Padding masks are bool ``[B, T]`` with **True = real token** (RecBole's ``item_seq != 0``).
* ``attn_mask`` is a bool tensor broadcastable to ``[B, H, Tq, Tk]`` with **True = may attend**.
* ``causal=True`` lets query ``i`` see keys ``j <= i + (Tk - Tq)``, i.e. the mask is aligned to the
  bottom-right, which is what incremental decoding with cached keys needs.
* **Fully masked query rows** (a query that may attend to no key, e.g. every key is padding or a
  custom block mask leaves the row empty) *attend to nothing*: their attention output is exactly 0
  and their attention probabilities are all 0. Internally such a row is let to attend to every
  key (so the softmax stays finite) and the result is then multiplied by 0, so neither the forward
  nor the backward pass produces NaN.
* Normalisation is **pre-LayerNorm** (``x + sublayer(LayerNorm(x))``) with a final LayerNorm at
  the end of a :class:`TransformerStack`; that final norm is applied explicitly so that running
  layers ``[0, p)`` then ``[p, n)`` equals running all ``n`` layers bit for bit.

KV cache
--------
A cache is a plain Python ``list`` with one ``dict`` per layer of a :class:`TransformerStack`.
Each dict may hold ``"self_k"``, ``"self_v"`` (``[B, H, T_past, head_size]``, the self-attention
keys/values of every position decoded so far), and for cross-attention stacks ``"cross_k"``,
``"cross_v"`` (``[B, H, T_mem, head_size]``, the projected encoder memory, computed once) and
``"cross_mask"`` (``[B, T_mem]`` bool or ``None``). Every tensor has the batch on dim 0, so
:func:`reorder_cache` (``index_select`` on dim 0) re-gathers or expands it for beam search.
Create it with :meth:`TransformerStack.init_cache`, feed it to ``forward(..., cache=cache)`` and
use the returned ``StackOutput.cache`` for the next step (the input cache is not modified).

Beam search keeps what all beams of a user share at one row per user: the encoder memory
(``cross_*``) and, after :func:`share_cache`, the self-attention keys/values of the prompt (the
history of a decoder-only model) as ``"shared_k"`` / ``"shared_v"``. The ``B * G`` query rows of
the beams are grouped per user (rows user-major, ``G`` beams each) and attend to those keys
without copying them per beam; :func:`reorder_beams` re-gathers only the per-beam entries.
Padding masks still address every key of a row: ``[shared; self; new]``.
"""

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "init_weights",
    "reorder_cache",
    "reorder_beams",
    "share_cache",
    "cache_length",
    "build_attention_mask",
    "MultiHeadAttention",
    "FeedForward",
    "TransformerLayer",
    "StackOutput",
    "TransformerStack",
]


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """RecBole/SASRec initialisation: Linear and Embedding ~ N(0, std), biases 0, LayerNorm (1, 0).

    Use as ``model.apply(init_weights)``. The ``padding_idx`` row of an Embedding is reset to 0.
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def reorder_cache(cache, index: torch.Tensor):
    """Return ``cache`` with every tensor re-gathered along dim 0 by ``index`` (LongTensor [N']).

    Works on any nesting of list / tuple / dict; ``None`` and non-tensor leaves are kept as is.
    ``index`` may repeat rows (expanding a batch to beams) or drop rows.
    """
    if torch.is_tensor(cache):
        return cache.index_select(0, index.to(cache.device))
    if isinstance(cache, dict):
        return {key: reorder_cache(value, index) for key, value in cache.items()}
    if isinstance(cache, (list, tuple)):
        return type(cache)(reorder_cache(value, index) for value in cache)
    return cache


SHARED_PREFIXES = ("cross_", "shared_")
# attention dropout: `probs` zeroes attention probabilities after the softmax (the papers' T5
# setting; CPU's fused kernel cannot, so it runs the explicit path), `keys` masks random keys
# before it (DropKey, Li et al. CVPR 2023), which stays on the fused kernel
ATTN_DROPOUT_MODES = ("probs", "keys")


def reorder_beams(cache, index: torch.Tensor):
    """Like :func:`reorder_cache`, but entries shared by a user's beams (dict keys starting with
    ``cross_`` or ``shared_``) keep their one row per user (see the module doc)."""
    if isinstance(cache, dict):
        return {
            key: value if key.startswith(SHARED_PREFIXES) else reorder_beams(value, index)
            for key, value in cache.items()
        }
    if isinstance(cache, (list, tuple)):
        return type(cache)(reorder_beams(value, index) for value in cache)
    return reorder_cache(cache, index)


def share_cache(cache: list) -> list:
    """The cache of a prefilled prompt, its self-attention keys/values turned into shared ones:
    the beams of each user will attend to them without a copy per beam (module doc)."""
    shared = []
    for layer in cache:
        if layer.get("shared_k") is not None:
            raise ValueError("this cache already holds shared keys: share a cache only once")
        rest = {key: value for key, value in layer.items() if key not in ("self_k", "self_v")}
        shared.append(dict(rest, shared_k=layer.get("self_k"), shared_v=layer.get("self_v")))
    return shared


def cache_length(cache) -> int:
    """Number of positions already held in the self-attention cache, shared ones included (0
    for a fresh cache)."""
    if not cache:
        return 0
    return sum(
        0 if cache[0].get(key) is None else cache[0][key].shape[2] for key in ("shared_k", "self_k")
    )


def fold_groups(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``[rows * G, H, T, d]`` (rows user-major) -> ``[rows, H, G * T, d]``: the ``G`` query rows of
    one key row side by side, so they attend to that row's keys without a copy."""
    b, h, t, d = x.shape
    return x.view(rows, b // rows, h, t, d).transpose(1, 2).reshape(rows, h, b // rows * t, d)


def unfold_groups(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of :func:`fold_groups`: ``[rows, H, G * T, e]`` -> ``[batch = rows * G, H, T, e]``."""
    rows, h, gt, e = x.shape
    group = batch // rows
    return x.view(rows, h, group, gt // group, e).transpose(1, 2).reshape(batch, h, gt // group, e)


def build_attention_mask(
    q_len: int,
    k_len: int,
    key_padding_mask: Optional[torch.Tensor] = None,
    causal: bool = False,
    attn_mask: Optional[torch.Tensor] = None,
    device=None,
) -> Optional[torch.Tensor]:
    """Combine the masks into one bool mask broadcastable to [B, H, Tq, Tk] (True = may attend).

    Returns ``None`` when nothing is masked. ``causal`` is bottom-right aligned (query ``i`` sees
    keys ``j <= i + k_len - q_len``), so it is a no-op for a single query over a cache.
    """
    mask = None
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise TypeError("key_padding_mask must be a bool tensor (True = real token)")
        if key_padding_mask.shape[-1] != k_len:
            raise ValueError(f"key_padding_mask has {key_padding_mask.shape[-1]} keys, expected {k_len}")
        mask = key_padding_mask[:, None, None, :]
    if causal and not (q_len == 1 and k_len >= 1):
        tri = torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=k_len - q_len)
        mask = tri[None, None] if mask is None else mask & tri
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            raise TypeError("attn_mask must be a bool tensor (True = may attend)")
        while attn_mask.dim() < 4:
            attn_mask = attn_mask.unsqueeze(0)
        mask = attn_mask if mask is None else mask & attn_mask
    return mask


def open_empty_rows(mask: Optional[torch.Tensor]):
    """``(mask, row_ok)``: fully masked query rows let to attend to every key (so the softmax
    stays finite) and ``row_ok`` [..., Tq, 1] marking the others, by which outputs and
    probabilities are then multiplied (module doc); ``(None, None)`` without a mask."""
    if mask is None:
        return None, None
    row_ok = mask.any(dim=-1, keepdim=True)
    return mask | ~row_ok, row_ok


def fast_keep_mask(shape, p, device=None):
    """A bool mask of ``shape``, each entry False with probability ``p`` (rounded to a multiple
    of 2**-16), and the probability it used: 16-bit random integers, four from each 64-bit draw
    of torch's generator, compared with a threshold. On a CPU, torch's Bernoulli sampler draws
    once per entry, and its dropout costs about 40% of a TIGER training step
    (docs/benchmarks.md)."""
    n = math.prod(shape)
    bits = torch.randint(-2 ** 63, 2 ** 63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    dropped = round(p * 65536)
    keep = bits.view(torch.int16)[:n].view(shape) >= dropped - 32768
    return keep, dropped / 65536


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout`, or, with ``fast=True``, the same dropout (each entry zeroed with
    probability ``p``, the rest scaled by ``1 / (1 - p)``) with masks from
    :func:`fast_keep_mask`. Its own random stream: a run with ``fast`` differs from one
    without, and is reproducible for a seed. No parameters, so checkpoints are unchanged."""

    def __init__(self, p: float = 0.5, fast: bool = False):
        super().__init__(p)
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.fast)

    def extra_repr(self) -> str:
        return f"p={self.p}, fast={self.fast}"


def dropout(x: torch.Tensor, p: float, training: bool, fast: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)``; with ``fast``, its masks from :func:`fast_keep_mask`."""
    if not fast or not training or p == 0:
        return F.dropout(x, p, training)
    keep, p = fast_keep_mask(x.shape, p, x.device)
    if p >= 1.0:  # everything dropped (p rounded up to 1), as torch's dropout
        return x * 0.0
    return x * (keep.to(x.dtype) * (1.0 / (1.0 - p)))  # a float mask: the fastest product on CPU


def fused_attention(q, k, v, mask, dropout_p, is_causal):
    """torch's fused attention. On CPU, half-precision inputs (bf16 / fp16 autocast) are
    attended in float32 and the output cast back: torch's CPU flash-attention backward is so
    slow in bf16 that it made a TIGER training step under ``enable_amp`` slower than in float32
    (docs/benchmarks.md, mixed precision)."""
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                 dropout_p=dropout_p, is_causal=is_causal)
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                          is_causal=is_causal)


def masked_probs(scores, mask, row_ok, dtype):
    """Attention probabilities of ``scores`` under a mask from :func:`open_empty_rows`, rows that
    may attend to nothing all 0."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(dtype)
    return probs if row_ok is None else probs * row_ok


class MultiHeadAttention(nn.Module):
    """Multi-head (self- or cross-) attention with a separate ``head_size`` (T5 style).

    ``inner = n_heads * head_size`` may differ from ``hidden_size`` (e.g. 128 -> 6 x 64 = 384).
    ``head_size`` defaults to ``hidden_size // n_heads``.
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        head_size: Optional[int] = None,
        attn_dropout_prob: float = 0.0,
        hidden_dropout_prob: float = 0.0,
        bias: bool = True,
        attn_dropout_mode: str = "probs",
        fast_dropout: bool = False,
    ):
        super().__init__()
        if attn_dropout_mode not in ATTN_DROPOUT_MODES:
            raise ValueError(
                f"attn_dropout_mode={attn_dropout_mode!r} must be one of {', '.join(ATTN_DROPOUT_MODES)}"
            )
        if head_size is None:
            if hidden_size % n_heads != 0:
                raise ValueError(f"hidden_size {hidden_size} is not a multiple of n_heads {n_heads}")
            head_size = hidden_size // n_heads
        self.hidden_size = hidden_size
        self.n_heads = n_heads
        self.head_size = head_size
        self.inner_size = n_heads * head_size
        self.attn_dropout_prob = attn_dropout_prob
        self.attn_dropout_mode = attn_dropout_mode
        self.fast_dropout = fast_dropout
        self.q_proj = nn.Linear(hidden_size, self.inner_size, bias=bias)
        self.k_proj = nn.Linear(hidden_size, self.inner_size, bias=bias)
        self.v_proj = nn.Linear(hidden_size, self.inner_size, bias=bias)
        self.out_proj = nn.Linear(self.inner_size, hidden_size, bias=bias)
        self.dropout = Dropout(hidden_dropout_prob, fast_dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, inner] -> [B, H, T, head_size]."""
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_size).transpose(1, 2)

    def project_kv(self, x: torch.Tensor):
        """Keys and values of ``x`` [B, T, hidden], each [B, H, T, head_size] (cacheable)."""
        return self._heads(self.k_proj(x)), self._heads(self.v_proj(x))

    def forward(
        self,
        query: torch.Tensor,
        key_value: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        causal: bool = False,
        attn_mask: Optional[torch.Tensor] = None,
        need_weights: bool = False,
        past_kv=None,
        kv=None,
        shared_kv=None,
        weights_after_dropout: bool = False,
    ):
        """Attend from ``query`` [B, Tq, hidden] to keys/values.

        Keys/values come from, by priority: ``kv`` (precomputed ``(k, v)``, e.g. cached encoder
        memory), else ``key_value`` [B, Tk, hidden] (cross-attention), else ``query`` itself
        (self-attention). ``past_kv=(k, v)`` is prepended to them (incremental self-attention);
        masks then address the full key length ``T_past + Tk``. ``shared_kv=(k, v)``
        ``[B / G, H, T_shared, head_size]`` is prepended before those and is shared by ``G``
        consecutive query rows (beams of one user over its prompt, see the module doc); masks
        then address ``T_shared + T_past + Tk`` keys.

        Returns ``(output [B, Tq, hidden], probs [B, H, Tq, Tk] or None, (k, v))`` where ``(k, v)``
        are all keys/values attended to, shared ones excepted (the new self-attention cache).
        ``probs`` are taken before attention dropout, or after it with ``weights_after_dropout``
        (what the output was computed with; the same at evaluation).
        """
        q = self._heads(self.q_proj(query))
        if kv is not None:
            k, v = kv
        else:
            k, v = self.project_kv(query if key_value is None else key_value)
        if past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)
            v = torch.cat([past_kv[1], v], dim=2)
        if shared_kv is not None:
            out = self._attend_with_shared(q, k, v, shared_kv, key_padding_mask, causal, attn_mask)
            out = out.transpose(1, 2).reshape(query.shape[0], q.shape[2], self.inner_size)
            return self.dropout(self.out_proj(out)), None, (k, v)
        group = q.shape[0] // k.shape[0]
        if group > 1:
            # Several query rows per key row (the beams of one user attending to that user's
            # encoder memory, rows user-major): fold them into the query length, so the memory
            # is never copied per beam.
            if q.shape[0] != group * k.shape[0] or causal or need_weights or past_kv is not None:
                raise ValueError(
                    f"{q.shape[0]} query rows cannot share {k.shape[0]} key rows here"
                )
            q = fold_groups(q, k.shape[0])
        q_len, k_len = q.shape[2], k.shape[2]
        dropout_p = self.attn_dropout_prob if self.training else 0.0
        drop_keys = dropout_p > 0 and self.attn_dropout_mode == "keys" and not need_weights
        # torch's fused kernel draws its own masks: fast masks on the probabilities need the
        # explicit path (what the CPU kernel runs anyway when it has to drop probabilities)
        explicit = need_weights or (dropout_p > 0 and self.fast_dropout and not drop_keys)

        fast_causal = causal and attn_mask is None and key_padding_mask is None \
            and q_len == k_len and not drop_keys
        mask = None if fast_causal else build_attention_mask(
            q_len, k_len, key_padding_mask, causal, attn_mask, device=q.device
        )
        if drop_keys:
            # DropKey: each query loses each key with probability p before the softmax, which
            # renormalises over the keys left; the fused kernel takes it as part of the mask
            shape = (q.shape[0], q.shape[1], q_len, k_len)
            keep = fast_keep_mask(shape, dropout_p, q.device)[0] if self.fast_dropout \
                else torch.rand(shape, device=q.device) >= dropout_p
            mask = keep if mask is None else mask & keep
            dropout_p = 0.0
        mask, row_ok = open_empty_rows(mask)

        probs = None
        if explicit:
            scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_size))
            if fast_causal:
                mask = build_attention_mask(q_len, k_len, causal=True, device=q.device)
            probs = masked_probs(scores, mask, row_ok, q.dtype)
            dropped = dropout(probs, dropout_p, self.training, self.fast_dropout)
            out = torch.matmul(dropped, v)
            probs = (dropped if weights_after_dropout else probs) if need_weights else None
        else:
            out = fused_attention(q, k, v, mask, dropout_p, fast_causal)
            if row_ok is not None:
                out = out * row_ok
        if group > 1:
            out = unfold_groups(out, query.shape[0])
            q_len = out.shape[2]
        out = out.transpose(1, 2).reshape(query.shape[0], q_len, self.inner_size)
        return self.dropout(self.out_proj(out)), probs, (k, v)

    def _attend_with_shared(self, q, k, v, shared_kv, key_padding_mask, causal, attn_mask):
        """Attention output ``[B, H, Tq, head_size]`` over the keys ``[shared; k]``: one softmax,
        the shared keys/values (one row per group of query rows) never copied per row."""
        shared_k, shared_v = shared_kv
        rows, batch = shared_k.shape[0], q.shape[0]
        if batch % rows or k.shape[0] != batch:
            raise ValueError(
                f"{batch} query rows cannot share {rows} rows of prompt keys"
                f" (own keys: {k.shape[0]} rows)"
            )
        n_shared, q_len = shared_k.shape[2], q.shape[2]
        scores = torch.cat([
            unfold_groups(torch.matmul(fold_groups(q, rows), shared_k.transpose(-1, -2)), batch),
            torch.matmul(q, k.transpose(-1, -2)),
        ], dim=-1) * (1.0 / math.sqrt(self.head_size))
        mask, row_ok = open_empty_rows(build_attention_mask(
            q_len, n_shared + k.shape[2], key_padding_mask, causal, attn_mask, device=q.device
        ))
        probs = dropout(masked_probs(scores, mask, row_ok, q.dtype), self.attn_dropout_prob,
                        self.training, self.fast_dropout)
        shared_out = torch.matmul(fold_groups(probs[..., :n_shared], rows), shared_v)
        return unfold_groups(shared_out, batch) + torch.matmul(probs[..., n_shared:], v)


_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "swish": F.silu}


class FeedForward(nn.Module):
    """Position-wise feed-forward: Linear -> activation -> dropout -> Linear -> dropout."""

    def __init__(self, hidden_size: int, inner_size: int, hidden_dropout_prob: float = 0.0,
                 activation: str = "gelu", bias: bool = True, fast_dropout: bool = False):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.act = _ACTIVATIONS[activation]
        self.fc1 = nn.Linear(hidden_size, inner_size, bias=bias)
        self.fc2 = nn.Linear(inner_size, hidden_size, bias=bias)
        self.dropout = Dropout(hidden_dropout_prob, fast_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(self.act(self.fc1(x)))))


class TransformerLayer(nn.Module):
    """Pre-LayerNorm block: ``x += SelfAttn(LN(x))``; [``x += CrossAttn(LN(x), memory)``];
    ``x += FFN(LN(x))``. Dropout is applied on each sub-layer output before the residual add."""

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        head_size: Optional[int] = None,
        inner_size: Optional[int] = None,
        attn_dropout_prob: float = 0.0,
        hidden_dropout_prob: float = 0.0,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-6,
        cross_attention: bool = False,
        bias: bool = True,
        attn_dropout_mode: str = "probs",
        fast_dropout: bool = False,
    ):
        super().__init__()
        inner_size = 4 * hidden_size if inner_size is None else inner_size
        self.self_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.self_attn = MultiHeadAttention(
            hidden_size, n_heads, head_size, attn_dropout_prob, hidden_dropout_prob, bias,
            attn_dropout_mode, fast_dropout,
        )
        self.cross_norm = self.cross_attn = None
        if cross_attention:
            self.cross_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
            self.cross_attn = MultiHeadAttention(
                hidden_size, n_heads, head_size, attn_dropout_prob, hidden_dropout_prob, bias,
                attn_dropout_mode, fast_dropout,
            )
        self.ff_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.ffn = FeedForward(hidden_size, inner_size, hidden_dropout_prob, activation, bias,
                               fast_dropout)

    def init_cache(self, memory: Optional[torch.Tensor] = None,
                   memory_padding_mask: Optional[torch.Tensor] = None) -> dict:
        """A fresh cache dict; for a cross-attention layer the memory keys/values are projected now."""
        if self.cross_attn is None:
            return {}
        if memory is None:
            raise ValueError("a cross-attention layer needs the encoder memory to build its cache")
        cross_k, cross_v = self.cross_attn.project_kv(memory)
        return {"cross_k": cross_k, "cross_v": cross_v, "cross_mask": memory_padding_mask}

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
                causal: bool = False, attn_mask: Optional[torch.Tensor] = None,
                memory: Optional[torch.Tensor] = None,
                memory_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = False,
                cache: Optional[dict] = None, weights_after_dropout: bool = False):
        """Run the block on ``x`` [B, T, hidden].

        ``padding_mask`` [B, T_keys] masks self-attention keys (with a cache, T_keys = T_shared +
        T_past + T).
        With ``cache`` (a dict, see module doc) past self keys/values are reused and cross
        keys/values are taken from it when present. Returns ``(x, self-attention probs or None,
        new cache dict or None)``.
        """
        past = shared = None
        if cache is not None and cache.get("self_k") is not None:
            past = (cache["self_k"], cache["self_v"])
        if cache is not None and cache.get("shared_k") is not None:
            if need_weights:
                raise ValueError("need_weights is not available over shared prompt keys")
            shared = (cache["shared_k"], cache["shared_v"])
        h, probs, (self_k, self_v) = self.self_attn(
            self.self_norm(x), key_padding_mask=padding_mask, causal=causal, attn_mask=attn_mask,
            need_weights=need_weights, past_kv=past, shared_kv=shared,
            weights_after_dropout=weights_after_dropout,
        )
        x = x + h
        new_cache = None if cache is None else dict(cache, self_k=self_k, self_v=self_v)
        if self.cross_attn is not None:
            cross_kv = None
            if cache is not None and cache.get("cross_k") is not None:
                cross_kv = (cache["cross_k"], cache["cross_v"])
                if memory_padding_mask is None:
                    memory_padding_mask = cache.get("cross_mask")
            elif memory is None:
                raise ValueError("cross-attention needs `memory` (or a cache built from it)")
            h, _, (cross_k, cross_v) = self.cross_attn(
                self.cross_norm(x), key_value=memory, kv=cross_kv, key_padding_mask=memory_padding_mask
            )
            x = x + h
            if new_cache is not None:
                new_cache.update(cross_k=cross_k, cross_v=cross_v, cross_mask=memory_padding_mask)
        x = x + self.ffn(self.ff_norm(x))
        return x, probs, new_cache


class StackOutput(NamedTuple):
    """Result of :meth:`TransformerStack.forward`."""

    hidden: torch.Tensor  # [B, T, hidden]
    attn: Optional[torch.Tensor]  # [B, H, T, T_keys] self-attention probs of `weights_layer`, or None
    cache: Optional[list]  # updated per-layer cache list, or None when no cache was given


class TransformerStack(nn.Module):
    """``n_layers`` pre-LN :class:`TransformerLayer` blocks plus a final LayerNorm (``self.norm``).

    ``forward(..., start, end)`` runs only layers ``[start, end)``; the final norm is applied by
    default only when the range reaches the last layer, so ``run [0, p)`` then ``run [p, n)``
    equals ``run [0, n)`` exactly. ``weights_layer=i`` makes layer ``i`` (only) return its
    self-attention probabilities; all other layers stay on the fused kernel.
    """

    def __init__(self, n_layers: int, hidden_size: int, n_heads: int,
                 layer_norm_eps: float = 1e-6, cross_attention: bool = False, **layer_options):
        """``layer_options``: the other arguments of :class:`TransformerLayer` (head_size,
        inner_size, dropouts, activation, bias, attn_dropout_mode, fast_dropout)."""
        super().__init__()
        self.n_layers = n_layers
        self.cross_attention = cross_attention
        self.layers = nn.ModuleList(
            TransformerLayer(hidden_size, n_heads, layer_norm_eps=layer_norm_eps,
                             cross_attention=cross_attention, **layer_options)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.apply(init_weights)

    @classmethod
    def from_config(cls, config, n_layers, cross_attention=False, fast_dropout=False):
        """A stack of ``n_layers`` with the sizes of a model's config (SASRec's key names);
        ``fast_dropout``: the model's (:class:`Dropout`)."""
        return cls(
            n_layers, config["hidden_size"], config["n_heads"], config["layer_norm_eps"],
            cross_attention, head_size=config["head_size"], inner_size=config["inner_size"],
            attn_dropout_prob=config["attn_dropout_prob"],
            hidden_dropout_prob=config["hidden_dropout_prob"], activation=config["hidden_act"],
            attn_dropout_mode=config["attn_dropout_mode"], fast_dropout=fast_dropout,
        )

    def init_cache(self, memory: Optional[torch.Tensor] = None,
                   memory_padding_mask: Optional[torch.Tensor] = None) -> list:
        """A fresh KV cache (list of per-layer dicts); cross keys/values of ``memory`` precomputed."""
        return [layer.init_cache(memory, memory_padding_mask) for layer in self.layers]

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        causal: bool = False,
        attn_mask: Optional[torch.Tensor] = None,
        memory: Optional[torch.Tensor] = None,
        memory_padding_mask: Optional[torch.Tensor] = None,
        start: int = 0,
        end: Optional[int] = None,
        weights_layer: Optional[int] = None,
        apply_final_norm: Optional[bool] = None,
        cache: Optional[list] = None,
        weights_after_dropout: bool = False,
    ) -> StackOutput:
        """Run layers ``[start, end)`` (``end=None``: to the last) on ``x`` [B, T, hidden].

        Masks are as in :class:`TransformerLayer` and shared by all layers. ``weights_layer`` is an
        absolute layer index inside the range. ``apply_final_norm=None`` applies ``self.norm`` iff
        ``end == n_layers``. ``cache`` is the full per-layer list; only the run layers' entries are
        replaced in the returned copy. ``weights_after_dropout``: the returned probabilities are
        those after attention dropout (training only; see :class:`MultiHeadAttention`).
        """
        end = self.n_layers if end is None else end
        if not 0 <= start <= end <= self.n_layers:
            raise ValueError(f"invalid layer range [{start}, {end}) for {self.n_layers} layers")
        if weights_layer is not None and not start <= weights_layer < end:
            raise ValueError(f"weights_layer {weights_layer} is outside the range [{start}, {end})")
        new_cache = None if cache is None else list(cache)
        attn = None
        for i in range(start, end):
            x, probs, layer_cache = self.layers[i](
                x, padding_mask, causal, attn_mask, memory, memory_padding_mask,
                need_weights=(i == weights_layer),
                cache=None if cache is None else cache[i],
                weights_after_dropout=weights_after_dropout,
            )
            if i == weights_layer:
                attn = probs
            if new_cache is not None:
                new_cache[i] = layer_cache
        if apply_final_norm is None:
            apply_final_norm = end == self.n_layers
        if apply_final_norm:
            x = self.norm(x)
        return StackOutput(x, attn, new_cache)
