"""NAT/DiNAT-specific facts: parameter counts, checkpoint layout, dilation schedules, preprocessing, dense features."""

from __future__ import annotations

import functools

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_data_config
from timm.models._manipulate import group_parameters
from timm.optim import create_optimizer_v2

import vizattn  # noqa: F401

# Counted from the official constructors (SHI-Labs/Neighborhood-Attention-Transformer @ d334f5b), spec §1.1 / §6.
OFFICIAL = {
    "nat_mini": (19_984_174, 253),
    "nat_tiny": (27_901_582, 409),
    "nat_small": (50_743_297, 469),
    "nat_base": (89_769_652, 469),
    "dinat_mini": (19_984_174, 253),
    "dinat_tiny": (27_901_582, 409),
    "dinat_small": (50_719_681, 409),
    "dinat_base": (89_769_652, 469),
    "dinat_large": (200_943_514, 409),
    "dinat_large_384": (200_943_514, 409),
    "dinat_large_384_11x11": (201_144_250, 409),
}

SMALL = dict(embed_dim=16, depths=(1, 2, 2, 1), num_heads=(1, 2, 4, 8))
SMALL_DILATED = dict(SMALL, dilations=[[1], [1, 2], [1, 2], [1]])


@functools.cache
def _meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):  # structure only: no weight init, no memory
        return timm.create_model(name)


def _dilations(model) -> list[list[int]]:
    return [[blk.attn.dilation for blk in level.blocks] for level in model.levels]


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_parameter_and_key_counts_equal_official(name):
    model = _meta(name)
    params, keys = OFFICIAL[name]
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == keys


def test_official_key_names_and_layer_scale():
    sd = _meta("nat_small").state_dict()
    shapes = {
        "patch_embed.proj.0.weight": (48, 3, 3, 3),
        "patch_embed.proj.1.weight": (96, 48, 3, 3),
        "patch_embed.norm.bias": (96,),
        "levels.2.blocks.17.attn.qkv.weight": (1152, 384),
        "levels.2.blocks.17.attn.rpb": (12, 13, 13),
        "levels.2.blocks.17.attn.proj.bias": (384,),
        "levels.2.blocks.17.mlp.fc1.weight": (768, 384),
        "levels.2.blocks.17.mlp.fc2.weight": (384, 768),
        "levels.2.blocks.17.gamma1": (384,),
        "levels.2.blocks.17.gamma2": (384,),
        "levels.2.downsample.reduction.weight": (768, 384, 3, 3),
        "levels.2.downsample.norm.weight": (768,),
        "norm.weight": (768,),
        "head.weight": (1000, 768),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert "levels.0.downsample.reduction.bias" not in sd and "levels.3.downsample.norm.weight" not in sd
    assert not any("gamma" in k for k in _meta("dinat_small").state_dict())  # unlike nat_small
    assert any("gamma" in k for k in _meta("dinat_base").state_dict())
    gamma = timm.create_model("nat_small", **SMALL).levels[0].blocks[0].gamma1
    assert torch.equal(gamma, torch.full_like(gamma, 1e-5))


def test_dilation_schedules_and_kernel_sizes():
    ones = [[1] * 3, [1] * 4, [1] * 18, [1] * 5]
    for name in ("nat_tiny", "nat_small", "nat_base"):
        assert _dilations(_meta(name)) == ones
    assert _dilations(_meta("nat_mini")) == [[1] * 3, [1] * 4, [1] * 6, [1] * 5]
    assert _dilations(_meta("dinat_mini")) == [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 3, [1] * 5]
    for name in ("dinat_tiny", "dinat_small", "dinat_base", "dinat_large", "dinat_large_384_11x11"):
        assert _dilations(_meta(name)) == [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5], name
    assert _dilations(_meta("dinat_large_384")) == [[1, 13, 1], [1, 6, 1, 6], [1, 3] * 9, [1] * 5]
    assert _meta("dinat_large_384_11x11").levels[0].blocks[0].attn.rpb.shape == (6, 21, 21)
    assert _meta("dinat_large_384").levels[3].blocks[0].attn.kernel_size == 7


@pytest.mark.parametrize("name", ["dinat_large", "dinat_large_384", "dinat_large_384_11x11"])
def test_nominal_size_needs_no_padding(name):
    """k * d never exceeds the nominal feature maps (224: 56/28/14/7, 384: 96/48/24/12)."""
    model = _meta(name)
    side = model.pretrained_cfg["input_size"][1] // 4
    for i, level in enumerate(model.levels):
        for blk in level.blocks:
            assert blk.attn.kernel_size * blk.attn.dilation <= side >> i


def test_pretrained_cfg_preprocessing_and_urls():
    urls = set()
    for name in OFFICIAL:
        model = _meta(name)
        data = resolve_data_config({}, model=model)
        assert data["interpolation"] == "bicubic"
        assert data["mean"] == (0.485, 0.456, 0.406) and data["std"] == (0.229, 0.224, 0.225)
        url = model.pretrained_cfg["url"]
        assert url.startswith("https://shi-labs.com/projects/") and url.endswith(".pth")
        urls.add(url)
        if "384" in name:
            assert data["input_size"] == (3, 384, 384) and data["crop_pct"] == 1.0
            assert model.pretrained_cfg["pool_size"] == (12, 12)
        else:
            assert data["input_size"] == (3, 224, 224) and data["crop_pct"] == 0.875
    assert len(urls) == len(OFFICIAL)
    assert _meta("nat_base").pretrained_cfg["url"] == "https://shi-labs.com/projects/nat/checkpoints/CLS/nat_base.pth"
    assert _meta("dinat_large_384_11x11").pretrained_cfg["url"] == (
        "https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_large_in22k_in1k_384_11x11.pth"
    )
    in22k = _meta("dinat_large.in22k")
    assert in22k.num_classes == 21841 and in22k.pretrained_cfg["url"].endswith("imagenet22k/dinat_large_in22k_224.pth")


def test_rpb_is_resized_by_bicubic_interpolation_when_the_kernel_differs(tmp_path):
    """How the official 11x11 DiNAT-L weights were made from the 7x7 ones; everything else loads unchanged."""
    source = timm.create_model("dinat_mini", **SMALL_DILATED).eval()
    sd = source.state_dict()
    path = tmp_path / "k7.pth"
    torch.save(sd, path)  # bare state dict, as released
    model = timm.create_model(
        "dinat_mini", pretrained=True, kernel_size=11, pretrained_cfg_overlay=dict(file=str(path)), **SMALL_DILATED
    )
    for key, value in model.state_dict().items():
        if key.endswith("attn.rpb"):
            assert value.shape[1:] == (21, 21)
            expected = F.interpolate(sd[key][None], size=(21, 21), mode="bicubic", align_corners=False)[0]
            torch.testing.assert_close(value, expected)
        else:
            assert torch.equal(value, sd[key]), key


def test_dense_checkpoint_norms_are_dropped_and_any_dilation_loads(tmp_path):
    source = timm.create_model("nat_mini", **SMALL)
    sd = dict(source.state_dict())
    sd.update({f"norm{i}.weight": torch.ones(16 * 2**i) for i in range(4)})
    path = tmp_path / "dense.pth"
    torch.save({"state_dict": sd}, path)
    # rpb does not depend on the dilation: NAT weights load into a dilated model
    dilated = timm.create_model(
        "dinat_mini", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL_DILATED
    )
    for key, value in dilated.state_dict().items():
        assert torch.equal(value, sd[key]), key


def test_no_weight_decay_on_rpb_through_timm_optimizer_factory():
    model = timm.create_model("nat_mini", **SMALL)
    rpb = {name for name, _ in model.named_parameters() if name.endswith(".rpb")}
    assert model.no_weight_decay() == rpb and len(rpb) == 6
    opt = create_optimizer_v2(model, "adamw", weight_decay=0.05)
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert all(id(p) in no_decay for n, p in model.named_parameters() if n in rpb)
    assert id(model.levels[0].blocks[0].attn.qkv.weight) not in no_decay


def test_group_matcher_orders_downsamplers_after_their_level():
    model = timm.create_model("nat_mini", **SMALL)
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=False)
    order = {name: i for i, names in enumerate(groups.values()) for name in names}
    assert order["levels.1.blocks.1.attn.qkv.weight"] < order["levels.1.downsample.reduction.weight"]
    assert order["levels.1.downsample.reduction.weight"] < order["levels.2.blocks.0.norm1.weight"]
    assert order["patch_embed.proj.0.weight"] == 0
    assert order["norm.weight"] == order["levels.3.blocks.0.mlp.fc2.weight"]  # timm: (99999,) joins the last block


def test_drop_path_schedule():
    model = timm.create_model("nat_mini", drop_path_rate=0.3, **SMALL)
    rates = [getattr(blk.drop_path, "drop_prob", 0.0) for level in model.levels for blk in level.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.3, 6).tolist())


# DiNAT-Mini's COCO Mask R-CNN schedule (detection/configs/dinat/mask_rcnn_dinat_mini_3x_coco.py).
COCO_MINI = [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7], [1, 3, 1, 3, 1]]


def test_features_only_dense_size_with_coco_dilations():
    """A COCO multi-scale size (480x640): maps below k*d at levels 0-2 go through the small-input padding."""
    hw = (480, 640)
    model = timm.create_model(
        "dinat_mini", features_only=True, dilations=COCO_MINI, embed_dim=32, num_heads=(1, 2, 4, 8)
    ).eval()
    assert model.feature_info.channels() == [32, 64, 128, 256]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *hw))
    assert [tuple(f.shape) for f in feats] == [
        (1, c, -(-hw[0] // r), -(-hw[1] // r)) for c, r in zip((32, 64, 128, 256), (4, 8, 16, 32))
    ]
    assert all(torch.isfinite(f).all() for f in feats)


def test_forward_intermediates_nhwc_and_errors():
    model = timm.create_model("nat_mini", **SMALL).eval()
    x = torch.randn(1, 3, 100, 76)
    with torch.no_grad():
        nchw = model.forward_intermediates(x, intermediates_only=True)
        nhwc = model.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
    for a, b in zip(nchw, nhwc):
        assert torch.equal(a, b.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match=r"output_fmt must be 'NCHW' or 'NHWC', got 'NLC'"):
        model.forward_intermediates(x, output_fmt="NLC")
    with pytest.raises(ValueError, match=r"with 3 channels, got shape \(1, 1, 64, 64\)"):
        model(torch.randn(1, 1, 64, 64))


def test_bad_config_values():
    with pytest.raises(ValueError, match=r"dilations must give one value per layer"):
        timm.create_model("nat_mini", dilations=[[1, 2], [1], [1], [1]])
    with pytest.raises(ValueError, match=r"level 0 width 64 is not a multiple of num_heads\[0\]=3"):
        timm.create_model("nat_mini", num_heads=(3, 4, 8, 16))


def test_checkpoint_of_another_variant_is_refused(tmp_path):
    path = tmp_path / "nat_small_layout.pth"
    torch.save(timm.create_model("nat_small", **SMALL).state_dict(), path)  # has gamma1/gamma2
    with pytest.raises(ValueError, match=r"does not fit NAT \(NAT/DiNAT\).*unexpected keys"):
        timm.create_model("dinat_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **SMALL_DILATED)
