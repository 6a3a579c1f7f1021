"""timm CNNs with ELA / ULSAM: module positions, parameter deltas, host weights, identity-attention equivalence."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import vizattn  # noqa: F401
from vizattn.blocks import ELA, ULSAM

HOSTS = {
    "resnet18_ela_b": "resnet18",
    "resnet50_ela_b": "resnet50",
    "mobilenetv2_100_ela_s": "mobilenetv2_100",
    "mobilenetv1_100_ulsam": "mobilenetv1_100",
    "mobilenetv2_100_ulsam": "mobilenetv2_100",
}


def _attention_modules(model: nn.Module, cls: type) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, cls)}


def test_ela_sits_in_every_resnet_block_after_the_last_bn():
    model = timm.create_model("resnet50_ela_b")
    ela = _attention_modules(model, ELA)
    assert len(ela) == 16
    for i, layer in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
        for blk in layer:
            assert isinstance(blk.se, ELA) and blk.se.variant == "B"
            assert blk.se.channels == blk.bn3.num_features == 256 * 2**i
    # ELA-B: conv (C, 1, 7) + GroupNorm 2C -> 9C per block.
    host = sum(p.numel() for p in timm.create_model("resnet50").parameters())
    assert sum(p.numel() for p in model.parameters()) - host == 9 * (3 * 256 + 4 * 512 + 6 * 1024 + 3 * 2048)


def test_ela_s_sits_on_every_mobilenetv2_depthwise_output():
    model = timm.create_model("mobilenetv2_100_ela_s")
    widths = []
    for stage in model.blocks:
        for blk in stage:
            assert isinstance(blk.se, ELA) and blk.se.variant == "S"
            dw = blk.conv_dw
            assert blk.se.channels == dw.out_channels
            widths.append(dw.out_channels)
    assert widths == [32, 96, 144, 144, 192, 192, 192, 384, 384, 384, 384, 576, 576, 576, 960, 960, 960]


@pytest.mark.parametrize(
    "name,path,channels",
    [("mobilenetv1_100_ulsam", "blocks.3.6", 512), ("mobilenetv2_100_ulsam", "blocks.6.1", 320)],
)
def test_ulsam_is_appended_after_the_stage(name, path, channels):
    model = timm.create_model(name)
    modules = _attention_modules(model, ULSAM)
    assert list(modules) == [path]
    assert modules[path].channels == channels and modules[path].num_splits == 4
    host = timm.create_model(HOSTS[name])
    delta = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in host.parameters())
    assert delta == 4 * (5 * channels // 4 + 3)


@pytest.mark.parametrize("name", sorted(HOSTS))
def test_host_weights_load_and_identity_attention_gives_the_host(name, tmp_path):
    """Host keys are unchanged: a timm host checkpoint loads (attention at init), and with the attention modules
    replaced by identities the model computes exactly the host network."""
    torch.manual_seed(0)
    host = timm.create_model(HOSTS[name]).eval()
    with torch.no_grad():
        for m in host.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path / "host.pth"
    torch.save(host.state_dict(), path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    sd = model.state_dict()
    for k, v in host.state_dict().items():
        assert torch.equal(sd[k], v), k
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert not torch.allclose(model(x), host(x), rtol=1e-4, atol=1e-4)
        for parent in list(model.modules()):
            for child_name, child in list(parent.named_children()):
                if isinstance(child, (ELA, ULSAM)):
                    setattr(parent, child_name, nn.Identity())
        torch.testing.assert_close(model(x), host(x), rtol=1e-5, atol=1e-5)


def test_checkpoint_of_another_network_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet34").state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit AttentionResNet \(timm CNN \+ ELA/ULSAM\)"):
        timm.create_model("resnet18_ela_b", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_features_are_four_levels():
    model = timm.create_model("mobilenetv2_100_ela_s", features_only=True, out_indices=(0, 3)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 100, 70))
    assert [tuple(f.shape) for f in feats] == [(1, 24, 25, 18), (1, 320, 4, 3)]
