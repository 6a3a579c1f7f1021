"""Official NAT / DiNAT weights give the official outputs.

The fixtures in tests/fixtures/nat/ were produced by running the official code (SHI-Labs/Neighborhood-Attention-
Transformer with a CPU build of NATTEN, see tests/fixtures/README.md) on reduced configurations with seeded weights
saved as bare state dicts, the layout of the released classification files. Here the checkpoint goes through timm's
pretrained path (``pretrained_cfg_overlay=dict(file=...)``, i.e. our ``checkpoint_filter_fn``) and the logits, the
final features and every level output are compared in float32. Input ``a`` needs no padding at levels 0-2 (k * d equals
the map at every dilated level) and pads level 3; input ``b`` has odd, non-square maps, pads several levels (dilated
ones included) and has uneven dilation groups.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

import vizattn  # noqa: F401
from vizattn.kernels.na2d import na2d

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nat"
RTOL = 1e-5  # max |ours - official| / max |official|
VARIANTS = {"nat": "nat_mini", "dinat": "dinat_mini"}


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def _load(case: str, **kwargs) -> torch.nn.Module:
    config = json.loads((FIXTURES / case / "config.json").read_text())
    model = timm.create_model(
        VARIANTS[case],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(FIXTURES / case / "checkpoint.pth")),
        **{**config["constructor_kwargs"], **kwargs},
    )
    return model.eval()


CASES = [(case, tag) for case in VARIANTS for tag in ("a", "b")]


@pytest.mark.parametrize("case,tag", CASES, ids=[f"{c}-{t}" for c, t in CASES])
def test_official_outputs(case, tag):
    io = torch.load(FIXTURES / case / "io.pt", map_location="cpu", weights_only=True)
    model = _load(case)
    x = io[f"input_{tag}"]
    with torch.no_grad():
        final, stages = model.forward_intermediates(x)
        logits = model.forward_head(final)
    assert _rel_err(logits, io[f"logits_{tag}"]) < RTOL
    assert _rel_err(final, io[f"features_{tag}"]) < RTOL
    for i, feat in enumerate(stages):
        assert _rel_err(feat, io[f"stage{i}_{tag}"]) < RTOL, f"level {i}"
    with torch.no_grad():
        assert _rel_err(model(x), io[f"logits_{tag}"]) < RTOL


def test_checkpoint_is_a_bare_state_dict_with_official_keys():
    sd = torch.load(FIXTURES / "dinat" / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert "levels.0.blocks.1.attn.rpb" in sd and "levels.0.blocks.1.gamma1" in sd
    assert set(sd) == set(_load("dinat").state_dict())


def test_without_auto_pad_small_maps_are_refused():
    io = torch.load(FIXTURES / "nat" / "io.pt", map_location="cpu", weights_only=True)
    model = _load("nat", auto_pad=False)
    with pytest.raises(ValueError, match=r"the map is 4x4 but kernel_size \* dilation = 7 \* 1 = 7"):
        model(io["input_a"])


OP_CASES = torch.load(FIXTURES / "op" / "na2d_natten.pt", map_location="cpu", weights_only=True)


def _op_id(c: dict) -> str:
    b, h, w, heads, dim = c["q"].shape
    return f"B{b}-H{heads}-{h}x{w}-k{c['kernel_size']}-d{c['dilation']}-hd{dim}"


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("case", OP_CASES, ids=[_op_id(c) for c in OP_CASES])
def test_op_matches_natten_forward_and_gradients(case, backend):
    """NATTEN 0.17.5's unfused CPU ops (computed in float64): output and every gradient, d(rpb) included."""
    from vizattn.kernels.na2d.reference import na2d_reference

    leaves = [case[n].clone().requires_grad_() for n in ("q", "k", "v", "rpb")]
    args = (case["kernel_size"], case["dilation"], leaves[3], case["scale"])
    if backend == "reference":
        out = na2d_reference(*leaves[:3], *args)
    else:
        out = na2d(*leaves[:3], *args, backend="torch")
    out.backward(case["grad_out"])
    assert _rel_err(out.detach(), case["out"]) < RTOL
    for name, leaf in zip(("dq", "dk", "dv", "drpb"), leaves):
        assert _rel_err(leaf.grad, case[name]) < 1e-4, name
