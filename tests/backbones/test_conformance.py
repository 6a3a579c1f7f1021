"""timm's model test matrix, run over every model vizattn registers (each new family is checked for free).

Modelled on timm's tests/test_models.py: forward at the pretrained size and at a small size, backward with a
gradient on every parameter, default-cfg consistency, features_only, forward_intermediates, grad checkpointing,
and loading an official-layout checkpoint file through ``pretrained_cfg_overlay``.

Building a model (weight init) is the slowest part on a CPU for the 200M-parameter ones, so each worker keeps the
last models it built and hands out copies; tests are grouped per model (``xdist_group``) so one worker builds each.
"""

from __future__ import annotations

import copy
import re
from collections import OrderedDict

import pytest
import timm
import torch

import vizattn
from vizattn.backbones import FAMILIES

MODELS = vizattn.list_models()
SMALL = 96  # a small input: feature maps that no window count divides, so padding paths run
# The checkpoint-container variants exercise the family's checkpoint_filter_fn: one model per family is enough, its
# smallest (test_every_family_has_a_container_model keeps this list complete).
CONTAINER_MODELS = {"biformer_t", "nat_mini", "van_b0", "mobilenetv1_100_ulsam"}
_BUILT: OrderedDict[str, torch.nn.Module] = OrderedDict()


def _create(name: str) -> torch.nn.Module:
    """A fresh copy of ``timm.create_model(name)`` with the weights of seed 0 (the default cfg, train mode)."""
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = timm.create_model(name)
        while len(_BUILT) > 2:
            _BUILT.popitem(last=False)
    _BUILT.move_to_end(name)
    return copy.deepcopy(_BUILT[name])


def _by_model(names):
    return [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in names]


def test_every_family_has_a_container_model():
    for family in FAMILIES:
        assert len(CONTAINER_MODELS & set(timm.list_models(module=family))) == 1, family


def test_models_are_registered():
    assert {"biformer_t", "biformer_s", "biformer_b", "biformer_stl"} <= set(MODELS)
    for name in MODELS:
        assert timm.is_model(name)


@pytest.mark.parametrize("name", _by_model(MODELS))
def test_forward(name):
    """At the pretrained size, one image (the 200M-parameter models at 384 px are CI's slowest tests); the forward at
    a small size, batch of two, is in test_default_cfg."""
    model = _create(name).eval()
    cfg = model.pretrained_cfg
    with torch.no_grad():
        out = model(torch.randn(1, *cfg["input_size"]))
    assert out.shape == (1, cfg["num_classes"])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", _by_model(MODELS))
def test_default_cfg(name):
    model = _create(name).eval()
    cfg = model.pretrained_cfg
    for key in ("input_size", "pool_size", "crop_pct", "interpolation", "mean", "std", "first_conv", "classifier"):
        assert key in cfg, key
    x = torch.randn(1, *cfg["input_size"])
    state_dict = model.state_dict()
    assert f"{cfg['classifier']}.weight" in state_dict
    assert f"{cfg['first_conv']}.weight" in state_dict
    # The forward and the head's values at a small input, batch of two (the pretrained size's feature shapes are
    # checked on the meta device below).
    small = torch.randn(2, cfg["input_size"][0], SMALL, SMALL + 32)
    with torch.no_grad():
        feats = model.forward_features(small)
        assert feats.shape[1] == model.num_features
        out = model.forward_head(feats)
        assert out.shape == (2, cfg["num_classes"]) and torch.isfinite(out).all()
        assert torch.equal(model.forward_head(feats, pre_logits=True), feats.mean((2, 3)))

        # The head after reset_classifier.
        model.reset_classifier(0)
        assert model.forward_head(feats).shape == (2, model.num_features)
        model.reset_classifier(0, "")
        out = model.forward_head(feats)
        assert out.dim() == 4 and out.shape[2:] == feats.shape[2:]
        model.reset_classifier(5, "avg")
        assert model.forward_head(feats).shape == (2, 5)
        assert model.get_classifier().out_features == 5

    # The pretrained size's feature map, and classifier and pooling removed through __init__: built on the meta
    # device (shapes only, no weight init).
    with torch.device("meta"):
        full = timm.create_model(name).eval()
        feats = full.forward_features(x.to("meta"))
        bare = timm.create_model(name, num_classes=0, global_pool="").eval()
        out = bare(x.to("meta"))
    assert feats.shape[1] == full.num_features and tuple(feats.shape[2:]) == tuple(cfg["pool_size"])
    assert out.dim() == 4 and out.shape[1] == bare.num_features
    assert tuple(out.shape[2:]) == tuple(cfg["pool_size"])


@pytest.mark.parametrize("name", _by_model(MODELS))
def test_features_only(name):
    # The features_only construction path and output shapes at two sizes, on the meta device (no weight init); the
    # values of the intermediates are checked in test_forward_intermediates and the families' own tests.
    with torch.device("meta"):
        model = timm.create_model(name, features_only=True).eval()
        picked = timm.create_model(name, features_only=True, out_indices=(1, 3)).eval()
        reference = timm.create_model(name)
    channels = [info["num_chs"] for info in reference.feature_info]
    reductions = [info["reduction"] for info in reference.feature_info]
    assert model.feature_info.channels() == channels
    assert model.feature_info.reduction() == reductions
    assert picked.feature_info.channels() == [channels[1], channels[3]]
    for hw in [(224, 224), (SMALL, 128)]:
        feats = model(torch.randn(1, 3, *hw, device="meta"))
        assert len(feats) == len(channels)
        for f, c, r in zip(feats, channels, reductions):
            assert f.shape[1] == c
            assert f.shape[2] == -(-hw[0] // r) and f.shape[3] == -(-hw[1] // r), (hw, r, tuple(f.shape))
    # out_indices picks those features (at the small size, whose sides no reduction divides)
    sides = [tuple(f.shape[2:]) for f in picked(torch.randn(1, 3, *hw, device="meta"))]
    assert sides == [tuple(feats[1].shape[2:]), tuple(feats[3].shape[2:])]


@pytest.mark.parametrize("name", _by_model(MODELS))
def test_forward_intermediates(name):
    model = _create(name).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        expected = model.forward_features(x)
        assert torch.allclose(final, expected, rtol=1e-5, atol=1e-5)
        assert [t.shape[1] for t in inter] == [i["num_chs"] for i in model.feature_info]
        only = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
        assert len(only) == 2 and torch.allclose(only[1], inter[2], rtol=1e-5, atol=1e-5)
        early = model.forward_intermediates(x, indices=1, stop_early=True, intermediates_only=True)
        assert len(early) == 1 and torch.allclose(early[0], inter[3], rtol=1e-5, atol=1e-5)
    kept = model.prune_intermediate_layers(indices=(0, 1), prune_head=True)
    assert kept == [0, 1] and len(model.stages) == 2
    with torch.no_grad():
        side = 128 // model.feature_info[1]["reduction"]
        assert model(x).shape == (1, model.feature_info[1]["num_chs"], side, side)


# Biases that a train-mode BatchNorm follows directly (it subtracts the batch mean, so their gradient is zero in exact
# arithmetic, float rounding aside): ULSAM's conv_dws (then bn_dws) and conv_point (then bn_point), as official.
_ZERO_GRAD_IN_TRAIN = re.compile(r"\.subspaces\.\d+\.conv_(dws|point)\.bias$")


@pytest.mark.parametrize("name", _by_model(MODELS))
def test_backward_and_grad_checkpointing(name):
    """In train mode: the backward reaches every parameter with a finite gradient, nonzero but where it is exactly zero
    in exact arithmetic, and grad checkpointing gives the same output and gradients (no dropout or drop path by
    default; BatchNorm uses the batch's statistics in both runs)."""
    model = _create(name).train()
    model.reset_classifier(7)
    x = torch.randn(1, 3, 112, 112)
    out = model(x)
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    zero = [n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0 and not _ZERO_GRAD_IN_TRAIN.search(n)]
    assert not zero, f"parameters with an all-zero gradient: {zero[:5]}"
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out_cp = model(x)
    out_cp.square().mean().backward()
    assert torch.allclose(out, out_cp, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], rtol=1e-4, atol=1e-6), n


@pytest.mark.parametrize("name", _by_model(MODELS))
def test_group_matcher_covers_every_parameter(name):
    from timm.models._manipulate import group_parameters

    model = _create(name)
    groups = group_parameters(model, model.group_matcher(coarse=False))
    assert sum(len(v) for v in groups.values()) == len(list(model.parameters()))


CONTAINERS = ["model", "state_dict", "module_prefix", "raw"]
LOAD_CASES = [
    pytest.param(n, c, marks=pytest.mark.xdist_group(n))
    for n in MODELS
    for c in (CONTAINERS if n in CONTAINER_MODELS else CONTAINERS[:1])
]


@pytest.mark.parametrize("name,container", LOAD_CASES)
def test_official_layout_checkpoint_loads(name, container, tmp_path):
    source = _create(name).eval()
    with torch.no_grad():  # give BatchNorm non-trivial statistics so that a wrong load shows
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    sd = source.state_dict()
    if container == "model":
        # Released files hold the weights under 'model'; an EMA copy beside them must not be picked instead. The
        # decoy has the same keys; it is full-size (zeros) for the container models and empty tensors for the rest,
        # which a wrong pick fails on just as well, without writing and reading back up to 0.8 GB more per model.
        if name in CONTAINER_MODELS:
            ema = {k: torch.zeros_like(v) for k, v in sd.items()}
        else:
            ema = {k: v.new_zeros(0) for k, v in sd.items()}
        payload = {"model": sd, "model_ema": ema, "epoch": 299}
    elif container == "state_dict":
        payload = {"state_dict": sd}
    elif container == "module_prefix":
        payload = {"model": {f"module.{k}": v for k, v in sd.items()}}
    else:
        payload = sd
    path = tmp_path / "official.pth"
    torch.save(payload, path)

    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    path.unlink()  # full-size files (up to 1.5 GB): do not let them pile up over a run
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, sd[k]), k
    x = torch.randn(1, 3, SMALL, SMALL + 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


@pytest.mark.parametrize("name", MODELS[:1])
def test_checkpoint_adapts_classifier_and_input_channels(name, tmp_path):
    source = _create(name)
    path = tmp_path / "official.pth"
    torch.save({"model": source.state_dict()}, path)
    model = timm.create_model(name, pretrained=True, num_classes=10, pretrained_cfg_overlay=dict(file=str(path)))
    assert model.get_classifier().out_features == 10
    first = model.pretrained_cfg["first_conv"] + ".weight"
    assert torch.equal(model.state_dict()[first], source.state_dict()[first])
    gray = timm.create_model(name, pretrained=True, in_chans=1, pretrained_cfg_overlay=dict(file=str(path)))
    assert gray.state_dict()[first].shape[1] == 1
    with torch.no_grad():
        assert gray.eval()(torch.randn(1, 1, 224, 224)).shape == (1, 1000)
