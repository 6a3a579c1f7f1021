"""Whole small NAT and BiFormer models on vizattn's Triton paths (interpreted without CUDA) against the same models on
PyTorch's (``kernel_backend='torch'``): the fast layers (LayerNorm, Linear, depthwise convs) and the attention kernels
together must give the same logits and parameter gradients, and 'torch' must keep PyTorch's modules. (VAN's block is
checked the same way in tests/backbones/test_van.py.)"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import vizattn  # noqa: F401
from vizattn.blocks.layers import LayerNorm, Linear

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SMALL = {
    "nat_mini": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), kernel_size=3, num_classes=7),
    # every region routed (topk = n_win^2): which of two near-equal regions the top-k picks may differ between the
    # paths by rounding, and a different pick is a different model
    "biformer_t": dict(depths=(1, 1, 1, 1), embed_dims=(32, 32, 64, 64), n_win=2, topks=(4, 4, 4, None),
                       num_classes=7),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_triton_paths_match_the_torch_paths(name, monkeypatch):
    monkeypatch.setenv("VIZATTN_POISON_OUTPUTS", "1")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    ref = timm.create_model(name, kernel_backend="torch", **SMALL[name]).to(DEVICE).train()
    ours = timm.create_model(name, kernel_backend="triton", **SMALL[name]).to(DEVICE).train()
    with torch.no_grad():  # away from the initialisation's zeros (heads, layer scales), so every gradient is live
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours.load_state_dict(ref.state_dict())
    assert not any(isinstance(m, (LayerNorm, Linear)) for m in ref.modules())
    assert any(type(m) is LayerNorm for m in ours.modules()) and any(type(m) is Linear for m in ours.modules())
    assert not any(type(m) in (nn.LayerNorm, nn.Linear) for m in ours.modules())
    x = torch.randn(2, 3, 32, 32, device=DEVICE)  # stage maps 8x8 down to 1x1 (padded where a window needs it)
    out, want = ours(x), ref(x)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    r = torch.randn_like(want)
    (out * r).sum().backward()
    (want * r).sum().backward()
    pairs = list(zip(ours.named_parameters(), ref.named_parameters(), strict=True))
    assert all((a.grad is None) == (b.grad is None) for (_, a), (_, b) in pairs)
    # each gradient against its own size, floored at 1e-2 of the largest: a bias before a BatchNorm has a gradient
    # that is zero but for rounding
    top = max(b.grad.abs().max().item() for _, (_, b) in pairs if b.grad is not None)
    for (key, a), (_, b) in pairs:
        if b.grad is not None:
            scale = max(b.grad.abs().max().item(), 1e-2 * top)
            assert (a.grad - b.grad).abs().max().item() < 1e-4 * scale, key
