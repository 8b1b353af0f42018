"""fast_dropout: dropout masks from 16-bit random integers (recbole_semprune.model.layers)."""

import math

import pytest
import torch
from torch import nn

from recbole_semprune.model.layers import Dropout, MultiHeadAttention, fast_keep_mask
from tests.conftest import PRUNING_SMALL, REC2PM_SMALL, TINY_SID, build_tiny


@pytest.mark.parametrize("p", [0.1, 0.15, 0.5])
def test_keep_mask_drops_at_the_rate_asked(p):
    torch.manual_seed(0)
    keep, used = fast_keep_mask((1000, 1000), p)
    assert keep.dtype == torch.bool and keep.shape == (1000, 1000)
    assert used == round(p * 65536) / 65536 and abs(used - p) < 2 ** -16
    # 1e6 draws: the standard error of the rate is below 5e-4
    assert abs((~keep).float().mean().item() - used) < 2e-3
    # no structure along a row or a column (the four 16-bit parts of a draw are independent)
    for axis in (0, 1):
        rates = (~keep).float().mean(axis)
        assert abs(rates.mean().item() - used) < 2e-3 and rates.std().item() < 0.03
    torch.manual_seed(0)
    assert torch.equal(fast_keep_mask((1000, 1000), p)[0], keep)  # the seed fixes the mask


def test_fast_dropout_scales_kept_entries_and_masks_their_gradient():
    torch.manual_seed(1)
    x = torch.rand(300, 400) + 0.5
    x.requires_grad_(True)
    layer = Dropout(0.2, fast=True).train()
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.8) < 5e-3
    scale = 1 / (1 - round(0.2 * 65536) / 65536)
    torch.testing.assert_close(y[kept], x[kept] * scale)
    y.sum().backward()
    assert torch.all(x.grad[~kept] == 0)
    torch.testing.assert_close(x.grad[kept], torch.full_like(x.grad[kept], scale))
    assert torch.equal(layer.eval()(x), x)
    assert isinstance(layer, nn.Dropout) and "fast=True" in repr(layer)


@pytest.mark.parametrize("p, kept", [(1.0, 0.0), (1 - 2 ** -18, 0.0), (2 ** -18, 1.0)])
def test_fast_dropout_at_the_edges_of_the_rate(p, kept):
    """Rates that round to 1 drop everything (no division by zero), to 0 keep everything."""
    torch.manual_seed(0)
    x = torch.rand(100, 100) + 0.5
    y = Dropout(p, fast=True).train()(x)
    assert (y != 0).float().mean().item() == kept
    assert torch.isfinite(y).all()
    if kept:
        assert torch.equal(y, x)


def test_default_dropout_is_torchs():
    x = torch.randn(50, 60)
    torch.manual_seed(2)
    ours = Dropout(0.3).train()(x)
    torch.manual_seed(2)
    assert torch.equal(ours, nn.Dropout(0.3).train()(x))


def test_fast_attention_dropout_drops_probabilities():
    """Training with fast dropout: the attention output is softmax(QK^T / sqrt(d)) with the
    fast mask applied (then scaled), times V: the explicit path, the mask drawn first."""
    torch.manual_seed(3)
    mha = MultiHeadAttention(16, n_heads=2, head_size=8, attn_dropout_prob=0.3,
                             fast_dropout=True).train()
    x = torch.randn(4, 5, 16)
    torch.manual_seed(4)
    out, probs, (k, v) = mha(x, need_weights=True, weights_after_dropout=True)
    q = mha._heads(mha.q_proj(x))
    expected_probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    torch.manual_seed(4)
    keep, used = fast_keep_mask(expected_probs.shape, 0.3)
    torch.testing.assert_close(probs, expected_probs * keep / (1 - used))
    # the same draw without need_weights: the explicit path runs anyway, same output
    torch.manual_seed(4)
    again, none, _ = mha(x)
    assert none is None
    torch.testing.assert_close(again, out)


@pytest.mark.parametrize("model, small", [("TIGER", TINY_SID), ("STAMPSID", PRUNING_SMALL),
                                          ("DecoderOnlySID", TINY_SID), ("Rec2PM", REC2PM_SMALL)])
def test_fast_dropout_in_a_model_trains_reproducibly_and_evaluates_unchanged(tiny_data, model,
                                                                             small):
    sizes = {**tiny_data, **small, "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2}
    built = {fast: build_tiny(model, sizes, fast_dropout=fast) for fast in (False, True)}
    torch_model, fast_model = built[False].model, built[True].model
    fast_model.load_state_dict(torch_model.state_dict())
    assert all(m.fast for m in fast_model.modules() if isinstance(m, Dropout))
    assert not any(m.fast for m in torch_model.modules() if isinstance(m, Dropout))
    batch = next(iter(built[True].train))

    def loss(net, seed):
        torch.manual_seed(seed)
        losses = net.train().calculate_loss(batch)  # Rec2PM: a tuple, as RecBole sums it
        return sum(losses).item() if isinstance(losses, tuple) else losses.item()

    assert loss(fast_model, 5) == loss(fast_model, 5)
    assert loss(fast_model, 5) != loss(torch_model, 5)  # another random stream
    # evaluation has no dropout: the same weights score the same
    fast_model.eval(), torch_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast_model.full_sort_predict(batch),
                                   torch_model.full_sort_predict(batch))


def test_fast_dropout_must_be_a_bool(tiny_data):
    with pytest.raises(ValueError, match="fast_dropout must be True or False"):
        build_tiny("TIGER", {**tiny_data, **TINY_SID}, fast_dropout="yes")


def test_fast_dropkey_masks_keys_before_the_softmax():
    """DropKey with fast masks: the keys each query loses come from :func:`fast_keep_mask`."""
    from recbole_semprune.model.layers import masked_probs, open_empty_rows

    torch.manual_seed(6)
    mha = MultiHeadAttention(16, n_heads=2, head_size=8, attn_dropout_prob=0.3,
                             attn_dropout_mode="keys", fast_dropout=True).train()
    x = torch.randn(4, 5, 16)
    torch.manual_seed(7)
    out, _, (k, v) = mha(x)
    q = mha._heads(mha.q_proj(x))
    torch.manual_seed(7)
    keep, _ = fast_keep_mask((4, 2, 5, 5), 0.3)
    mask, row_ok = open_empty_rows(keep)
    probs = masked_probs(q @ k.transpose(-1, -2) / math.sqrt(8), mask, row_ok, q.dtype)
    expected = mha.out_proj((probs @ v).transpose(1, 2).reshape(4, 5, 16))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
