"""VAN-specific facts: parameter and key counts, official key layout, preprocessing, URLs, checkpoint formats."""

from __future__ import annotations

import functools

import pytest
import timm
import torch
from timm.data import resolve_data_config

import vizattn  # noqa: F401
from vizattn.backbones.van import checkpoint_filter_fn

# Counted from the official constructors with 1000 classes (VAN-Classification @ e19779b models/van.py, by
# /work/golden/gen_van_fixtures.py); spec §1 / §4.1: 4.11M ... 199.83M, 402 ... 3062 keys.
OFFICIAL = {
    "van_b0": (4_105_800, 402),
    "van_b1": (13_861_800, 318),
    "van_b2": (26_578_472, 626),
    "van_b3": (44_765_608, 1102),
    "van_b4": (60_283_176, 1494),
    "van_b5": (89_967_688, 962),
    "van_b6": (199_829_416, 3062),
}
SMALL = dict(embed_dims=(8, 16, 24, 32), depths=(1, 2, 1, 1), num_classes=10)


@functools.cache
def _meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):  # structure only: no weight init, no memory
        return timm.create_model(name, **kwargs)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_parameter_and_key_counts_equal_official(name):
    model = _meta(name, num_classes=1000)
    params, keys = OFFICIAL[name]
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == keys


def test_official_key_names_and_shapes():
    sd = _meta("van_b2").state_dict()
    shapes = {
        "patch_embed1.proj.weight": (64, 3, 7, 7),
        "patch_embed3.proj.weight": (320, 128, 3, 3),
        "patch_embed3.norm.running_var": (320,),
        "block3.11.norm1.running_mean": (320,),
        "block3.11.attn.proj_1.weight": (320, 320, 1, 1),
        "block3.11.attn.spatial_gating_unit.conv0.weight": (320, 1, 5, 5),
        "block3.11.attn.spatial_gating_unit.conv_spatial.weight": (320, 1, 7, 7),
        "block3.11.attn.spatial_gating_unit.conv1.weight": (320, 320, 1, 1),
        "block3.11.attn.proj_2.bias": (320,),
        "block3.11.mlp.fc1.weight": (1280, 320, 1, 1),
        "block3.11.mlp.dwconv.dwconv.weight": (1280, 1, 3, 3),
        "block3.11.mlp.fc2.weight": (320, 1280, 1, 1),
        "block3.11.layer_scale_1": (320,),
        "block1.0.mlp.fc1.weight": (512, 64, 1, 1),
        "norm4.weight": (512,),
        "head.weight": (1000, 512),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert "block3.12.norm1.weight" not in sd


def test_init_layer_scale_and_norm_eps():
    model = timm.create_model("van_b0", **SMALL)
    blk = model.block2[1]
    assert torch.equal(blk.layer_scale_1, torch.full_like(blk.layer_scale_1, 1e-2))
    assert torch.equal(blk.layer_scale_2, torch.full_like(blk.layer_scale_2, 1e-2))
    assert all(getattr(model, f"norm{i}").eps == 1e-6 for i in range(1, 5))
    dw = blk.attn.spatial_gating_unit.conv_spatial
    assert dw.dilation == (3, 3) and dw.padding == (9, 9) and dw.groups == 16
    # Conv init N(0, 2 / fan_out), fan_out = k * k * out / groups: 2 / 49 for the 7x7 depthwise conv.
    big = timm.create_model("van_b2")
    w = big.block3[0].attn.spatial_gating_unit.conv_spatial.weight
    assert abs(w.std().item() - (2 / 49) ** 0.5) < 0.01


def test_drop_path_is_linear_over_all_blocks():
    model = timm.create_model("van_b0", drop_path_rate=0.3, **SMALL)
    rates = [
        blk.drop_path.drop_prob if hasattr(blk.drop_path, "drop_prob") else 0.0
        for i in range(1, 5)
        for blk in getattr(model, f"block{i}")
    ]
    assert rates == pytest.approx([0.0, 0.075, 0.15, 0.225, 0.3])


def test_pretrained_cfg_preprocessing_and_urls():
    for name in OFFICIAL:
        data = resolve_data_config({}, model=_meta(name))
        assert data["mean"] == (0.5, 0.5, 0.5) and data["std"] == (0.5, 0.5, 0.5)
        assert data["interpolation"] == "bicubic" and data["crop_pct"] == 0.9
        assert data["input_size"] == (3, 224, 224)
    assert _meta("van_b0").pretrained_cfg["url"] == (
        "https://huggingface.co/Visual-Attention-Network/VAN-Tiny-original/resolve/main/van_tiny_754.pth.tar"
    )
    assert _meta("van_b3").pretrained_cfg["url"].endswith("VAN-Large-original/resolve/main/van_large_839.pth.tar")
    assert _meta("van_b4").num_classes == 1000
    for name in ("van_b4.in22k", "van_b5", "van_b6"):
        model = _meta(name)
        assert model.num_classes == 21841 and model.pretrained_cfg["tag"] == "in22k", name
        assert model.pretrained_cfg["url"].startswith("https://download.openmmlab.com/mmclassification/v0/van/")
    assert set(timm.list_pretrained("van_*")) == {
        "van_b0.in1k",
        "van_b1.in1k",
        "van_b2.in1k",
        "van_b3.in1k",
        "van_b4.in1k",
        "van_b4.in22k",
        "van_b5.in22k",
        "van_b6.in22k",
    }


def test_in22k_checkpoint_loads_into_a_1000_class_model_without_its_head(tmp_path):
    source = timm.create_model("van_b0", **dict(SMALL, num_classes=21841))
    path = tmp_path / "in22k.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    model = timm.create_model(
        "van_b0", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **dict(SMALL, num_classes=1000)
    )
    assert model.head.out_features == 1000
    assert torch.equal(model.block4[0].mlp.fc2.weight, source.block4[0].mlp.fc2.weight)


def test_mmpretrain_keys_are_mapped_back():
    model = timm.create_model("van_b0", **SMALL)
    sd = model.state_dict()
    mm = {
        "backbone.blocks1.0.attn.spatial_gating_unit.DW_conv.weight": sd[
            "block1.0.attn.spatial_gating_unit.conv0.weight"
        ]
    }
    for k, v in sd.items():
        k = k.replace("patch_embed1.proj.", "patch_embed1.projection.").replace("mlp.dwconv.dwconv", "mlp.dwconv")
        k = k.replace("conv_spatial", "DW_D_conv").replace("conv0", "DW_conv")
        k = "head.fc." + k[5:] if k.startswith("head.") else "backbone." + k.replace("block", "blocks")
        mm[k] = v
    out = checkpoint_filter_fn({"meta": {}, "state_dict": mm}, model)
    assert set(out) == set(sd)
    assert all(torch.equal(out[k], sd[k]) for k in sd)


def test_another_variant_checkpoint_is_refused():
    sd = timm.create_model("van_b0", **SMALL).state_dict()
    other = timm.create_model("van_b0", **dict(SMALL, depths=(1, 1, 1, 1)))
    with pytest.raises(ValueError, match=r"does not fit VAN \(VAN\): 28 missing keys"):
        checkpoint_filter_fn({"state_dict": sd}, timm.create_model("van_b0", **dict(SMALL, depths=(1, 3, 1, 1))))
    with pytest.raises(ValueError, match="unexpected keys"):
        checkpoint_filter_fn({"state_dict": sd}, other)


@pytest.mark.parametrize("hw", [(33, 47), (1, 1), (800, 1333)])
def test_any_input_size_and_dense_features(hw):
    model = timm.create_model("van_b0", features_only=True, **SMALL).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *hw))
    assert [f.shape[1] for f in feats] == [8, 16, 24, 32]
    for f, r in zip(feats, (4, 8, 16, 32)):
        assert tuple(f.shape[2:]) == (-(-hw[0] // r), -(-hw[1] // r))


def test_bad_input_and_config_errors():
    model = timm.create_model("van_b0", **SMALL)
    with pytest.raises(ValueError, match=r"expects an NCHW image batch with 3 channels, got shape \(1, 1, 32, 32\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="need one entry per stage"):
        timm.create_model("van_b0", embed_dims=(8, 16, 24), depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW' or 'NHWC'"):
        model.forward_intermediates(torch.randn(1, 3, 32, 32), output_fmt="NLC")


@pytest.mark.parametrize("name,gflops", [("van_b0", 0.9), ("van_b1", 2.5)])
def test_gmacs_match_the_paper(name, gflops):
    """VAN-Classification README: 0.9 / 2.5 GFLOPs (MACs) at 224 for B0 / B1."""
    from vizattn.profile import count_gmacs

    assert round(count_gmacs(timm.create_model(name).eval(), (3, 224, 224)), 1) == gflops


def test_block_on_the_triton_kernels_matches_the_torch_path(monkeypatch):
    """A VAN block (in training) with every fast path on (the depthwise convs, the layer-scale residuals on Triton,
    interpreted without CUDA; the 1x1 convs as GEMMs) against the torch path on a channels_last map, as VAN runs its
    blocks: output, input and parameter gradients, kernel outputs NaN-poisoned. (A whole VAN is too slow for the
    interpreter; tests/backbones/test_fast_paths.py covers NAT and BiFormer.)"""
    from vizattn.backbones.van import VANBlock

    monkeypatch.setenv("VIZATTN_POISON_OUTPUTS", "1")
    # the torch path's 1x1 convs are cuDNN convs, which run float32 in TF32 unless told not to
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    ref = VANBlock(6, mlp_ratio=2.0, layer_scale_init_value=0.5, kernel_backend="torch").to(dev).train()
    ours = VANBlock(6, mlp_ratio=2.0, layer_scale_init_value=0.5, kernel_backend="triton").to(dev).train()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6, 9, 11, device=dev).contiguous(memory_format=torch.channels_last).requires_grad_()
    out, want = ours(x), ref(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(want)
    got = torch.autograd.grad(out, [x, *ours.parameters()], g)
    expected = torch.autograd.grad(want, [x, *ref.parameters()], g)
    for (name, _), a, b in zip(ref.named_parameters(), got[1:], expected[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
