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


def test_norms_that_feed_linear_layers_are_marked():
    """NAT's two norms per block feed the qkv and the MLP's first linear layer; BiFormer's first norm also feeds
    LePE's conv, so only its second is marked; the final norms are not; 'torch' keeps plain, unmarked nn.LayerNorm."""
    nat = timm.create_model("nat_mini", kernel_backend="triton", **SMALL["nat_mini"])
    block = nat.levels[0].blocks[0]
    assert block.norm1.autocast_output and block.norm2.autocast_output and not nat.norm.autocast_output
    bif = timm.create_model("biformer_t", kernel_backend="triton", **SMALL["biformer_t"])
    blocks = [m for m in bif.modules() if hasattr(m, "norm2") and hasattr(m, "mlp")]
    assert blocks and all(b.norm2.autocast_output and not b.norm1.autocast_output for b in blocks)
    plain = timm.create_model("nat_mini", kernel_backend="torch", **SMALL["nat_mini"])
    assert not any(getattr(m, "autocast_output", False) for m in plain.modules())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA autocast needs a GPU (CPU autocast runs nn.LayerNorm)")
@pytest.mark.parametrize("name", sorted(SMALL))
def test_norms_feeding_linear_layers_change_nothing_under_autocast(name):
    """Under bf16 CUDA autocast the marked norms return bf16, which the linear layers would have cast their float32
    output to: the logits are bitwise those of the same model with no norm marked, and so are the gradients up to
    the order of float32 sums (the norm's backward then reads a bf16 gradient, whose load layout, and with it the
    order of the kernel's row and column sums, can differ: seen on the H200 at 16 channels, 2e-7 of the largest)."""
    torch.manual_seed(0)
    ours = timm.create_model(name, kernel_backend="triton", **SMALL[name]).to(DEVICE).train()
    ref = timm.create_model(name, kernel_backend="triton", **SMALL[name]).to(DEVICE).train()
    ref.load_state_dict(ours.state_dict())
    marked = [m for m in ref.modules() if type(m) is LayerNorm and m.autocast_output]
    assert marked
    for m in marked:
        m.autocast_output = False
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    outs = []
    for model in (ours, ref):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
        out.float().square().sum().backward()
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    for (key, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        assert (a.grad is None) == (b.grad is None), key
        if b.grad is not None:  # float32 sums in another order: a few units of float32 rounding of the largest
            assert (a.grad - b.grad).abs().max().item() <= 1e-5 * b.grad.abs().max().item(), key
