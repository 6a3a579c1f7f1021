"""Official BiFormer weights give the official outputs.

The fixtures in tests/fixtures/biformer/ were produced by running the official code (rayleizhu/BiFormer) on reduced
configurations with seeded weights saved in the official checkpoint layout (see tests/fixtures/README.md). Here the
checkpoint goes through timm's pretrained path (``pretrained_cfg_overlay=dict(file=...)``, i.e. our
``checkpoint_filter_fn``) and the logits and every stage output are compared in float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

import vizattn  # noqa: F401

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "biformer"
RTOL = 1e-5  # max |ours - official| / max |official|

# official family constructor -> (vizattn model whose layout it is, how to translate its kwargs)
VARIANTS = {"tsb": "biformer_t", "stl": "biformer_stl"}


def _kwargs(official: dict) -> dict:
    n_win = official.get("n_win", official.get("n_wins", [7])[0])
    assert all(n == n_win for n in official.get("n_wins", [n_win])), "one n_win for all stages"
    assert official.get("head_dim", 32) == 32 and official.get("side_dwconv", 5) == 5
    return dict(
        depths=tuple(official["depth"]),
        embed_dims=tuple(official["embed_dim"]),
        mlp_ratios=tuple(official["mlp_ratios"]),
        topks=tuple(None if t == -2 else t for t in official["topks"]),
        n_win=n_win,
        num_classes=official["num_classes"],
        auto_pad=official.get("auto_pad", False),
    )


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def _load(case: str, kwargs_key: str) -> torch.nn.Module:
    config = json.loads((FIXTURES / case / "config.json").read_text())
    model = timm.create_model(
        VARIANTS[case],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(FIXTURES / case / "checkpoint.pth")),
        **_kwargs(config[kwargs_key]),
    )
    return model.eval()


CASES = [
    ("tsb", "constructor_kwargs", "224"),
    ("tsb", "constructor_kwargs_pad", "pad"),
    ("stl", "constructor_kwargs", "224"),
]


@pytest.mark.parametrize("case,kwargs_key,tag", CASES, ids=[f"{c}-{t}" for c, _, t in CASES])
def test_official_outputs(case, kwargs_key, tag):
    io = torch.load(FIXTURES / case / "io.pt", map_location="cpu", weights_only=True)
    model = _load(case, kwargs_key)
    x = io[f"input_{tag}"]
    with torch.no_grad():
        final, stages = model.forward_intermediates(x)
        logits = model.forward_head(final)
    assert _rel_err(logits, io[f"logits_{tag}"]) < RTOL
    assert _rel_err(final, io[f"features_{tag}"]) < RTOL
    for i, feat in enumerate(stages):
        assert _rel_err(feat, io[f"stage{i}_{tag}"]) < RTOL, f"stage {i}"
    with torch.no_grad():
        assert _rel_err(model(x), io[f"logits_{tag}"]) < RTOL


def test_padded_model_refuses_nothing_the_official_pads_and_matches_at_224():
    """auto_pad changes nothing at a size that divides: the padded model reproduces the unpadded official logits."""
    io = torch.load(FIXTURES / "tsb" / "io.pt", map_location="cpu", weights_only=True)
    model = _load("tsb", "constructor_kwargs_pad")
    with torch.no_grad():
        assert _rel_err(model(io["input_224"]), io["logits_224"]) < RTOL


def test_unpadded_model_rejects_non_divisible_input():
    io = torch.load(FIXTURES / "tsb" / "io.pt", map_location="cpu", weights_only=True)
    model = _load("tsb", "constructor_kwargs")
    with pytest.raises(ValueError, match=r"50x66 is not a multiple of n_win=7"):
        model(io["input_pad"])


def test_checkpoint_of_the_other_layout_is_refused():
    """An STL checkpoint into the T/S/B layout (same widths) fails with one clear message."""
    config = json.loads((FIXTURES / "tsb" / "config.json").read_text())
    with pytest.raises(ValueError, match=r"does not fit BiFormer"):
        timm.create_model(
            "biformer_t",
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(FIXTURES / "stl" / "checkpoint.pth")),
            **_kwargs(config["constructor_kwargs"]),
        )
