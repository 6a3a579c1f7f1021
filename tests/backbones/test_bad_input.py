"""Errors a user can cause get one clear exception naming the value."""

from __future__ import annotations

import pytest
import timm
import torch

import vizattn  # noqa: F401


@pytest.fixture(scope="module")
def model():
    return timm.create_model("biformer_t", auto_pad=False).eval()


def test_wrong_channel_count(model):
    with pytest.raises(ValueError, match=r"with 3 channels, got shape \(1, 4, 224, 224\)"):
        model(torch.randn(1, 4, 224, 224))


def test_non_divisible_size_without_auto_pad(model):
    with pytest.raises(ValueError, match=r"64x64 is not a multiple of n_win=7.*auto_pad=True"):
        model(torch.randn(1, 3, 256, 256))


def test_non_divisible_size_with_auto_pad_runs():
    model = timm.create_model("biformer_t", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 256, 200)).shape == (1, 3)


def test_unknown_model_name():
    with pytest.raises(RuntimeError, match=r"Unknown model \(biformer_xl\)"):
        timm.create_model("biformer_xl")


def test_bad_config_values():
    with pytest.raises(ValueError, match=r"topks\[1\]=50 must be in \[1, n_win\^2 = 49\]"):
        timm.create_model("biformer_t", topks=(1, 50, 16, None))
    with pytest.raises(ValueError, match=r"one entry per stage"):
        timm.create_model("biformer_t", depths=(2, 2, 8))


def test_checkpoint_from_another_family(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save({"model": timm.create_model("resnet18").state_dict()}, path)
    with pytest.raises(ValueError, match=r"does not fit BiFormer.*missing keys"):
        timm.create_model("biformer_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_checkpoint_of_another_variant(tmp_path):
    path = tmp_path / "biformer_t.pth"
    torch.save({"model": timm.create_model("biformer_t").state_dict()}, path)
    with pytest.raises(ValueError, match=r"does not fit BiFormer.*missing keys"):
        timm.create_model("biformer_s", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
