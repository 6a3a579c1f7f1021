"""BiFormer-specific facts: parameter counts, checkpoint layout, preprocessing, dense-prediction feature maps."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.data import resolve_data_config

import vizattn  # noqa: F401

# Counted from the official constructors (rayleizhu/BiFormer @ 1697bbb), see shared spec and fixtures README.
OFFICIAL = {
    "biformer_t": (13_142_760, 264),
    "biformer_s": (25_536_232, 518),
    "biformer_b": (56_804_968, 518),
    "biformer_stl": (28_372_552, 201),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_parameter_and_key_counts_equal_official(name):
    model = timm.create_model(name)
    params, keys = OFFICIAL[name]
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == keys


def test_official_key_names():
    sd = timm.create_model("biformer_s").state_dict()
    for key in (
        "downsample_layers.0.3.weight",
        "stages.0.3.pos_embed.weight",
        "stages.2.17.attn.qkv.qkv.weight",
        "stages.2.17.attn.wo.bias",
        "stages.2.17.mlp.3.weight",
        "stages.3.3.attn.proj.weight",
        "stages.3.3.attn.lepe.weight",
        "norm.running_var",
        "head.weight",
    ):
        assert key in sd, key
    assert "stages.3.0.attn.qkv.bias" not in sd  # stage-3 qkv has no bias
    assert sd["stages.0.0.attn.qkv.qkv.weight"].shape == (192, 64)  # rows q | k | v
    stl = timm.create_model("biformer_stl").state_dict()
    assert "stages.1.blocks.1.mlp.2.weight" in stl and "downsample_layers.1.1.weight" in stl


def test_stage3_has_eight_heads_for_every_variant():
    for name in OFFICIAL:
        attn = timm.create_model(name).stages[3][0].attn if name != "biformer_stl" else None
        attn = attn or timm.create_model(name).stages[3].blocks[0].attn
        assert attn.num_heads == 8


def test_pretrained_cfg_preprocessing_and_urls():
    files = set()
    for name in OFFICIAL:
        model = timm.create_model(name)
        data = resolve_data_config({}, model=model)
        assert data["crop_pct"] == 0.875 and data["interpolation"] == "bicubic"
        assert data["mean"] == (0.485, 0.456, 0.406) and data["std"] == (0.229, 0.224, 0.225)
        url, file_name = model.pretrained_cfg["url"]
        assert url.startswith("https://api.onedrive.com/") and file_name.endswith("_in1k.pth")
        files.add(file_name)
    assert len(files) == len(OFFICIAL)  # the cache files of the variants stay apart


def test_drop_path_schedule():
    model = timm.create_model("biformer_t", drop_path_rate=0.14)
    rates = [blk.drop_path.drop_prob if hasattr(blk.drop_path, "drop_prob") else 0.0 for s in model.stages for blk in s]
    expected = torch.linspace(0, 0.14, 14).tolist()
    assert rates == pytest.approx(expected)


# A detection-like size with mmdet's n_win 16: its 104x152 stride-4 map needs auto_pad on both sides (800x1216, the
# usual one, runs the same code four times slower on a CPU).
@pytest.mark.parametrize("hw,kwargs", [((224, 224), {}), ((416, 608), dict(n_win=16, auto_pad=True))])
def test_features_only_dense_sizes(hw, kwargs):
    model = timm.create_model("biformer_s", features_only=True, **kwargs).eval()
    assert model.feature_info.channels() == [64, 128, 256, 512]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *hw))
    assert [tuple(f.shape) for f in feats] == [
        (1, c, hw[0] // r, hw[1] // r) for c, r in zip((64, 128, 256, 512), (4, 8, 16, 32))
    ]
