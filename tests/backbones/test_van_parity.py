"""Official VAN weights give the official outputs.

The fixtures in tests/fixtures/van/ were produced by running the official code (Visual-Attention-Network/
VAN-Classification ``models/van.py``, see tests/fixtures/README.md) on a reduced configuration with seeded weights
(BatchNorm statistics included) saved in the released ``{'state_dict': ...}`` layout, and in mmpretrain's layout as
its converter writes it. Here each checkpoint goes through timm's pretrained path
(``pretrained_cfg_overlay=dict(file=...)``, i.e. our ``checkpoint_filter_fn``) and the logits, the final features and
every stage output are compared in float32. Input ``a`` is square (maps 32/16/8/4, smaller than LKA's 23-pixel field
at the last stages); input ``b`` has odd, non-square maps (18x25, 9x13, 5x7, 3x4) and a batch of two.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

import vizattn  # noqa: F401

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "van"
RTOL = 1e-5  # max |ours - official| / max |official|
CONFIG = json.loads((FIXTURES / "config.json").read_text())


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def _load(checkpoint: str) -> torch.nn.Module:
    model = timm.create_model(
        "van_b0",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(FIXTURES / checkpoint)),
        **CONFIG["constructor_kwargs"],
    )
    return model.eval()


@pytest.mark.parametrize("checkpoint", ["checkpoint.pth", "checkpoint_mmpretrain.pth"])
@pytest.mark.parametrize("tag", ["a", "b"])
def test_official_outputs(checkpoint, tag):
    io = torch.load(FIXTURES / "io.pt", map_location="cpu", weights_only=True)
    model = _load(checkpoint)
    x = io[f"input_{tag}"]
    with torch.no_grad():
        final, stages = model.forward_intermediates(x)
        logits = model.forward_head(final)
        assert _rel_err(logits, io[f"logits_{tag}"]) < RTOL
        assert _rel_err(final, io[f"features_{tag}"]) < RTOL
        assert len(stages) == 4
        for i, feat in enumerate(stages):
            assert _rel_err(feat, io[f"stage{i}_{tag}"]) < RTOL, f"stage {i}"
        assert _rel_err(model(x), io[f"logits_{tag}"]) < RTOL


def test_features_only_gives_the_official_stage_outputs():
    io = torch.load(FIXTURES / "io.pt", map_location="cpu", weights_only=True)
    model = timm.create_model(
        "van_b0",
        pretrained=True,
        features_only=True,
        out_indices=(1, 3),
        pretrained_cfg_overlay=dict(file=str(FIXTURES / "checkpoint.pth")),
        **CONFIG["constructor_kwargs"],
    ).eval()
    with torch.no_grad():
        feats = model(io["input_b"])
    assert _rel_err(feats[0], io["stage1_b"]) < RTOL
    assert _rel_err(feats[1], io["stage3_b"]) < RTOL


def test_checkpoints_hold_the_official_and_mmpretrain_keys():
    sd = torch.load(FIXTURES / "checkpoint.pth", map_location="cpu", weights_only=True)["state_dict"]
    assert "block1.0.attn.spatial_gating_unit.conv_spatial.weight" in sd
    assert "block1.0.mlp.dwconv.dwconv.weight" in sd and "patch_embed1.proj.weight" in sd
    assert set(sd) == set(_load("checkpoint.pth").state_dict())
    mm = torch.load(FIXTURES / "checkpoint_mmpretrain.pth", map_location="cpu", weights_only=True)["state_dict"]
    assert "backbone.blocks1.0.attn.spatial_gating_unit.DW_D_conv.weight" in mm and "head.fc.weight" in mm
    assert "backbone.patch_embed1.projection.weight" in mm and "backbone.blocks1.0.mlp.dwconv.weight" in mm
    assert len(mm) == len(sd) == CONFIG["num_keys"]
