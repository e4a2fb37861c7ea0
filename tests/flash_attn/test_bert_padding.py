"""flash_attn.bert_padding against a per-sequence Python loop."""
from __future__ import annotations

import pytest
import torch

from flash_attn.bert_padding import index_first_axis, pad_input, unpad_input
from helpers import random_padding_mask


def _loop_unpad(x, mask):
    rows, lengths = [], []
    for b in range(x.shape[0]):
        n = int(mask[b].sum())
        rows.append(x[b][mask[b]])
        lengths.append(n)
    return torch.cat(rows), lengths


@pytest.mark.parametrize("mask_kind", ["random", "full", "with_empty"])
def test_unpad_input(device, mask_kind):
    b, s = 4, 23
    x = torch.randn(b, s, 3, 5, device=device)
    mask = random_padding_mask(b, s, device)
    if mask_kind == "full":
        mask[:] = True
    elif mask_kind == "with_empty":
        mask[1] = False
    x_unpad, indices, cu_seqlens, max_seqlen, used = unpad_input(x, mask)
    expected, lengths = _loop_unpad(x, mask)
    assert torch.equal(x_unpad, expected)
    assert cu_seqlens.dtype == torch.int32 and cu_seqlens.device == x.device
    assert cu_seqlens.tolist() == [0] + torch.tensor(lengths).cumsum(0).tolist()
    assert isinstance(max_seqlen, int) and max_seqlen == max(lengths)
    assert used.dtype == torch.int32 and used.tolist() == lengths
    assert torch.equal(indices, torch.nonzero(mask.flatten()).flatten())
    assert torch.equal(index_first_axis(x.reshape(b * s, 3, 5), indices), x_unpad)


def test_unused_mask_tokens_are_packed_but_not_counted_as_used(device):
    b, s = 3, 12
    x = torch.randn(b, s, 4, device=device)
    attn = random_padding_mask(b, s, device, min_len=2)
    lengths = attn.sum(1)
    unused = torch.zeros_like(attn)
    for i in range(b):  # two allocated-but-unused slots right after each sequence, if room
        unused[i, int(lengths[i]):int(lengths[i]) + 2] = True
    x_unpad, indices, cu, max_s, used = unpad_input(x, attn, unused)
    expected, all_lengths = _loop_unpad(x, attn | unused)
    assert torch.equal(x_unpad, expected)
    assert cu.tolist() == [0] + torch.tensor(all_lengths).cumsum(0).tolist()
    assert used.tolist() == lengths.tolist() and max_s == max(all_lengths)


def test_pad_input_inverts_unpad_and_zero_fills(device):
    b, s = 3, 17
    x = torch.randn(b, s, 2, 6, device=device)
    mask = random_padding_mask(b, s, device)
    x_unpad, indices, _, _, _ = unpad_input(x, mask)
    back = pad_input(x_unpad, indices, b, s)
    assert back.shape == x.shape
    assert torch.equal(back[mask], x[mask])
    assert torch.all(back[~mask] == 0)


def test_gradients_flow_through_unpad_and_pad(device):
    b, s = 2, 9
    x = torch.randn(b, s, 4, device=device, requires_grad=True)
    mask = random_padding_mask(b, s, device)
    x_unpad, indices, _, _, _ = unpad_input(x, mask)
    weight = torch.randn_like(x_unpad)
    y = pad_input(x_unpad * weight, indices, b, s)
    g = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, g)
    expected = torch.where(mask[..., None], g * pad_input(weight, indices, b, s), torch.zeros_like(g))
    torch.testing.assert_close(dx, expected)
