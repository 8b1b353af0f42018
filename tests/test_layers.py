"""Tests of recbole_semprune.model.layers: fused vs explicit attention, masks, KV cache, layer ranges."""

import pytest
import torch
from torch import nn

from recbole_semprune.model.layers import (
    MultiHeadAttention,
    StackOutput,
    TransformerLayer,
    TransformerStack,
    build_attention_mask,
    cache_length,
    fused_attention,
    init_weights,
    reorder_beams,
    reorder_cache,
    share_cache,
)

ATOL = 1e-5


def _padding(lengths, max_len):
    return torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]


def _stack(cross=False, n_layers=3, seed=0, **kwargs):
    torch.manual_seed(seed)
    stack = TransformerStack(n_layers, hidden_size=16, n_heads=3, head_size=8, inner_size=32,
                             cross_attention=cross, **kwargs)
    return stack.eval()


@pytest.mark.parametrize("causal", [False, True])
def test_fused_equals_explicit_and_probs_are_masked(causal):
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, n_heads=3, head_size=8).eval()
    assert mha.inner_size == 24 and mha.q_proj.out_features == 24 and mha.out_proj.in_features == 24
    x = torch.randn(3, 6, 16)
    pad = _padding([6, 4, 1], 6)
    fused, none_probs, _ = mha(x, key_padding_mask=pad, causal=causal)
    explicit, probs, _ = mha(x, key_padding_mask=pad, causal=causal, need_weights=True)
    assert none_probs is None
    assert probs.shape == (3, 3, 6, 6)
    torch.testing.assert_close(fused, explicit, atol=ATOL, rtol=0)

    allowed = pad[:, None, None, :].expand(3, 3, 6, 6)
    if causal:
        allowed = allowed & torch.ones(6, 6, dtype=torch.bool).tril()
    assert torch.all(probs[~allowed] == 0)  # exactly zero on padding / future keys
    assert torch.all(probs[allowed] > 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 3, 6), atol=ATOL, rtol=0)


def test_fused_attention_runs_half_precision_inputs_in_float32_on_cpu():
    """bf16 inputs on CPU: attended in float32, output cast back; the same figures as float32
    attention of the same (rounded) inputs, gradients flowing back in bf16."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    mask = _padding([5, 3], 5)[:, None, None, :]
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.equal(fused_attention(q, k, v, mask, 0.0, False), plain)  # float32: untouched
    half = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    out = fused_attention(*half, mask, 0.0, False)
    assert out.dtype == torch.bfloat16
    reference = torch.nn.functional.scaled_dot_product_attention(
        *(t.detach().float() for t in half), attn_mask=mask)
    assert torch.equal(out, reference.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_attention(*half, mask, 0.0, True)
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in half)


def test_cross_attention_and_general_mask():
    torch.manual_seed(1)
    mha = MultiHeadAttention(16, n_heads=2).eval()
    assert mha.head_size == 8
    q, mem = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    mem_pad = _padding([5, 2], 5)
    block = torch.rand(2, 1, 3, 5) > 0.3
    block[..., 0] = True  # every row keeps one key
    fused, _, (k, v) = mha(q, key_value=mem, key_padding_mask=mem_pad, attn_mask=block)
    explicit, probs, _ = mha(q, key_value=mem, key_padding_mask=mem_pad, attn_mask=block, need_weights=True)
    torch.testing.assert_close(fused, explicit, atol=ATOL, rtol=0)
    assert k.shape == v.shape == (2, 2, 5, 8)
    allowed = (mem_pad[:, None, None, :] & block).expand_as(probs)
    assert torch.all(probs[~allowed] == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 3), atol=ATOL, rtol=0)
    # precomputed keys/values give the same output
    again, _, _ = mha(q, kv=(k, v), key_padding_mask=mem_pad, attn_mask=block)
    torch.testing.assert_close(again, fused, atol=ATOL, rtol=0)


def test_build_attention_mask_causal_is_bottom_right_aligned():
    mask = build_attention_mask(2, 4, causal=True)
    expected = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected)
    assert build_attention_mask(1, 4, causal=True) is None
    assert build_attention_mask(3, 3) is None
    with pytest.raises(TypeError):
        build_attention_mask(2, 2, key_padding_mask=torch.ones(1, 2))


def test_fully_masked_rows_attend_to_nothing_without_nan():
    torch.manual_seed(2)
    stack = _stack(n_layers=2)
    x = torch.randn(3, 5, 16, requires_grad=True)
    pad = _padding([5, 2, 0], 5)  # last sequence is entirely padding
    block = torch.ones(3, 1, 5, 5, dtype=torch.bool)
    block[0, :, 1, :] = False  # a query row with no allowed key
    for need in (None, 1):
        out = stack(x, padding_mask=pad, causal=True, attn_mask=block, weights_layer=need)
        assert torch.isfinite(out.hidden).all()
        out.hidden.sum().backward()
        assert torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in stack.parameters() if p.grad is not None)
        x.grad = None
        stack.zero_grad()
    probs = out.attn
    assert torch.all(probs[2] == 0) and torch.all(probs[0, :, 1] == 0)

    # attending to nothing: the attention sub-layer output is exactly zero on those rows
    mha = stack.layers[0].self_attn
    h = torch.randn(3, 5, 16)
    for need in (False, True):
        att, _, _ = mha(h, key_padding_mask=pad, attn_mask=block, need_weights=need)
        bias = mha.out_proj.bias
        torch.testing.assert_close(att[2], bias.expand(5, 16), atol=0, rtol=0)
        torch.testing.assert_close(att[0, 1], bias, atol=0, rtol=0)


def test_padding_keys_do_not_influence_real_outputs():
    torch.manual_seed(3)
    for cross in (False, True):
        stack = _stack(cross=cross)
        x = torch.randn(2, 6, 16)
        pad = _padding([6, 3], 6)
        mem = torch.randn(2, 4, 16)
        mem_pad = _padding([4, 2], 4)
        kwargs = dict(memory=mem, memory_padding_mask=mem_pad) if cross else {}
        base = stack(x, padding_mask=pad, **kwargs).hidden
        x2 = x.clone()
        x2[1, 3:] = 100 * torch.randn(3, 16)
        if cross:
            mem2 = mem.clone()
            mem2[1, 2:] = 100 * torch.randn(2, 16)
            kwargs["memory"] = mem2
        changed = stack(x2, padding_mask=pad, **kwargs).hidden
        torch.testing.assert_close(changed[pad], base[pad], atol=ATOL, rtol=0)
        assert not torch.allclose(changed[~pad], base[~pad])


def test_split_layer_range_equals_full_run():
    stack = _stack(n_layers=4)
    x = torch.randn(2, 7, 16)
    pad = _padding([7, 5], 7)
    full = stack(x, padding_mask=pad)
    assert isinstance(full, StackOutput) and full.attn is None and full.cache is None
    for p in range(1, 4):
        first = stack(x, padding_mask=pad, end=p)
        assert first.attn is None
        rest = stack(first.hidden, padding_mask=pad, start=p)
        assert torch.equal(rest.hidden, full.hidden)  # bit exact
        # asking layer p-1 for its probabilities (explicit path there) changes nothing but rounding
        first = stack(x, padding_mask=pad, end=p, weights_layer=p - 1)
        assert first.attn.shape == (2, 3, 7, 7)
        rest = stack(first.hidden, padding_mask=pad, start=p)
        torch.testing.assert_close(rest.hidden, full.hidden, atol=ATOL, rtol=0)
        # final norm is explicit: the partial run does not apply it
        no_norm = stack(x, padding_mask=pad, apply_final_norm=False).hidden
        assert torch.equal(stack.norm(no_norm), full.hidden)
    # attention probs of layer p-1 equal the explicit attention at that layer in the full run
    h = stack(x, padding_mask=pad, end=1).hidden
    _, probs, _ = stack.layers[1].self_attn(stack.layers[1].self_norm(h), key_padding_mask=pad, need_weights=True)
    torch.testing.assert_close(stack(x, padding_mask=pad, end=2, weights_layer=1).attn, probs)
    # pruning: run the rest on a shorter sequence works
    keep = torch.tensor([[0, 2, 4], [1, 3, 4]])
    short = torch.gather(first.hidden, 1, keep[..., None].expand(-1, -1, 16))
    assert stack(short, start=3).hidden.shape == (2, 3, 16)
    with pytest.raises(ValueError):
        stack(x, start=2, end=1)
    with pytest.raises(ValueError):
        stack(x, end=2, weights_layer=2)


def test_kv_cache_incremental_equals_full_causal_decoding():
    torch.manual_seed(4)
    stack = _stack(cross=True, n_layers=2, seed=4)
    B, T = 3, 5
    x = torch.randn(B, T, 16)
    mem = torch.randn(B, 4, 16)
    mem_pad = _padding([4, 1, 3], 4)
    full = stack(x, causal=True, memory=mem, memory_padding_mask=mem_pad).hidden

    cache = stack.init_cache(mem, mem_pad)
    assert isinstance(cache, list) and len(cache) == 2 and cache_length(cache) == 0
    assert cache[0]["cross_k"].shape == (B, 3, 4, 8)
    for t in range(T):
        out = stack(x[:, t:t + 1], causal=True, cache=cache)
        torch.testing.assert_close(out.hidden[:, 0], full[:, t], atol=ATOL, rtol=0)
        cache = out.cache
        assert cache_length(cache) == t + 1
        assert cache[1]["self_k"].shape == (B, 3, t + 1, 8)

    # a multi-token chunk on top of a cache (prefill then step) is causal too
    cache = stack(x[:, :2], causal=True, cache=stack.init_cache(mem, mem_pad)).cache
    chunk = stack(x[:, 2:], causal=True, cache=cache).hidden
    torch.testing.assert_close(chunk, full[:, 2:], atol=ATOL, rtol=0)


def test_reorder_cache_gathers_beams():
    torch.manual_seed(5)
    stack = _stack(cross=True, n_layers=2, seed=5)
    B, T = 2, 4
    x = torch.randn(B, T, 16)
    mem = torch.randn(B, 3, 16)
    mem_pad = _padding([3, 2], 3)
    cache = stack(x[:, :2], causal=True, cache=stack.init_cache(mem, mem_pad)).cache
    index = torch.tensor([1, 1, 0, 1])  # expand / reorder like beam search
    re = reorder_cache(cache, index)
    assert re[0]["cross_mask"].shape == (4, 3) and torch.equal(re[0]["cross_mask"], mem_pad[index])
    step = stack(x[index, 2:3], causal=True, cache=re).hidden
    full = stack(x[index, :3], causal=True, memory=mem[index], memory_padding_mask=mem_pad[index]).hidden
    torch.testing.assert_close(step[:, 0], full[:, 2], atol=ATOL, rtol=0)
    nested = reorder_cache({"a": (torch.arange(2), None), "b": [torch.eye(2)], "n": 3}, torch.tensor([1]))
    assert nested["a"][0].tolist() == [1] and nested["a"][1] is None and nested["n"] == 3
    assert nested["b"][0].tolist() == [[0.0, 1.0]]


def test_shared_prompt_cache_equals_a_copy_per_beam():
    """Beams of a user attend to its prompt's keys held once (share_cache + reorder_beams) and
    get exactly what a full per-beam run gets, padding of the prompt included."""
    stack = _stack(n_layers=3, seed=7)
    B, T, G = 3, 6, 4
    prompt = torch.randn(B, T, 16)
    pad = _padding([6, 2, 4], T).flip(1)  # left-padded prompts, as the decoder-only model's
    steps = torch.randn(B * G, 3, 16)
    cache = share_cache(stack(prompt, padding_mask=pad, causal=True, cache=stack.init_cache()).cache)
    assert cache[0]["shared_k"].shape == (B, 3, T, 8) and cache[0].get("self_k") is None
    assert cache_length(cache) == T
    beams = torch.arange(B).repeat_interleave(G)  # user-major rows, G beams per user
    mask = pad[beams]
    for t in range(steps.shape[1]):
        # a beam-search-like reorder between steps: beams of a user swap rows, users never mix
        order = (beams * G + torch.randperm(G).repeat(B)) if t else torch.arange(B * G)
        steps, mask = steps[order], mask[order]
        if t:
            cache = reorder_beams(cache, order)
        mask = torch.cat([mask, torch.ones(B * G, 1, dtype=torch.bool)], dim=1)
        out = stack(steps[:, t:t + 1], padding_mask=mask, causal=True, cache=cache)
        full = stack(torch.cat([prompt[beams], steps[:, :t + 1]], dim=1), padding_mask=mask,
                     causal=True).hidden[:, -1]
        torch.testing.assert_close(out.hidden[:, 0], full, atol=ATOL, rtol=0)
        cache = out.cache
        assert cache[2]["shared_k"].shape[0] == B  # never copied per beam
        assert cache[2]["self_k"].shape == (B * G, 3, t + 1, 8)
        assert cache_length(cache) == T + t + 1
    with pytest.raises(ValueError, match="share a cache only once"):
        share_cache(cache)
    with pytest.raises(ValueError, match="cannot share"):
        stack(steps[:5, :1], padding_mask=mask[:5, : T + 1], causal=True, cache=share_cache(
            stack(prompt, padding_mask=pad, causal=True, cache=stack.init_cache()).cache))


def test_layer_options_and_init_weights():
    torch.manual_seed(6)
    layer = TransformerLayer(16, 2, inner_size=24, activation="relu", hidden_dropout_prob=0.5,
                             attn_dropout_prob=0.5, bias=False)
    assert layer.self_attn.q_proj.bias is None and layer.ffn.fc1.out_features == 24
    x = torch.randn(2, 3, 16)
    layer.train()
    a, _, _ = layer(x)
    b, probs, _ = layer(x, need_weights=True)
    assert not torch.allclose(a, b) and torch.isfinite(probs).all()
    layer.eval()
    torch.testing.assert_close(layer(x)[0], layer(x)[0])
    with pytest.raises(ValueError):
        TransformerLayer(16, 2, activation="tanh")
    with pytest.raises(ValueError):
        MultiHeadAttention(16, 3)

    model = nn.Sequential(nn.Embedding(500, 64, padding_idx=0), nn.Linear(64, 300), nn.LayerNorm(8))
    model.apply(init_weights)
    emb, lin, ln = model
    assert torch.all(emb.weight[0] == 0)
    assert abs(emb.weight[1:].std().item() - 0.02) < 2e-3
    assert abs(lin.weight.std().item() - 0.02) < 2e-3 and torch.all(lin.bias == 0)
    assert torch.all(ln.weight == 1) and torch.all(ln.bias == 0)
