"""VizAttnBackbone: registry, outputs, output norms, frozen_stages, norm_eval, with_cp, checkpoint loading."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from mm_helpers import build_model, config, load_tiny_config

import vizattn  # noqa: F401

TINY = dict(model_name="biformer_s", depths=(1, 1, 1, 1), n_win=4)
# Per family: a small model, its output norms' names and eps in the official dense backbone.
FAMILIES = {
    "biformer": (dict(model_name="biformer_s", depths=(1, 1, 1, 1), n_win=4), "extra_norms.{i}", 1e-6),
    "nat": (dict(model_name="nat_mini", depths=(1, 1, 1, 1)), "norm{i}", 1e-5),
}


def backbone(**kwargs):
    from vizattn.mm import VizAttnBackbone

    return VizAttnBackbone(**(kwargs if "model_name" in kwargs else {**TINY, **kwargs}))


def official_checkpoint(path, seed=0, model_name="biformer_s"):
    """A classification checkpoint in the official release layout of the family, with random weights.

    BiFormer: ``{'model': state_dict, 'args': Namespace, ...}``; NAT/DiNAT: a bare state dict.
    """
    torch.manual_seed(seed)
    model = timm.create_model(model_name, depths=(1, 1, 1, 1))
    for p in model.parameters():
        torch.nn.init.normal_(p)
    for name, buf in model.named_buffers():  # non-default BatchNorm statistics, so that loading them is visible
        if name.endswith(("running_mean", "running_var")):
            buf.uniform_(0.5, 1.5)
    state_dict = model.state_dict()
    if model_name.startswith("biformer"):
        torch.save({"model": state_dict, "args": argparse.Namespace(model="biformer_small"), "epoch": 299}, path)
    else:
        torch.save(state_dict, path)
    return state_dict


def test_registered_for_mmdet_and_mmseg():
    from mmdet.registry import MODELS as DET
    from mmengine.registry import MODELS
    from mmseg.registry import MODELS as SEG

    from vizattn.mm import VizAttnBackbone

    assert MODELS.get("VizAttnBackbone") is VizAttnBackbone
    assert DET.get("VizAttnBackbone") is VizAttnBackbone
    assert SEG.get("VizAttnBackbone") is VizAttnBackbone


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3), (1, 2, 3), (0, 2)])
@pytest.mark.parametrize("family", FAMILIES)
def test_outputs_are_normalised_copies_of_the_stage_outputs(family, out_indices):
    kwargs, norm_name, eps = FAMILIES[family]
    model = backbone(**kwargs, out_indices=out_indices).eval()
    for name in model._out_norm_names:  # make the norms' affine parameters visible in the outputs
        torch.nn.init.normal_(model.get_submodule(name).weight)
        torch.nn.init.normal_(model.get_submodule(name).bias)
    x = torch.randn(2, 3, 70, 100)  # not a multiple of 32 nor of n_win: auto_pad
    with torch.no_grad():
        outs = model(x)
        # The timm model's intermediates are the un-normalised stage outputs, each feeding the next stage.
        raw = model.body.model.forward_intermediates(x, indices=list(out_indices), intermediates_only=True)
    channels = [64, 128, 256, 512]
    assert model.out_channels == tuple(channels[i] for i in out_indices)
    assert [tuple(o.shape) for o in outs] == [
        (2, channels[i], -(-70 // 2 ** (i + 2)), -(-100 // 2 ** (i + 2))) for i in out_indices
    ]
    state = model.state_dict()
    for i, out, feat in zip(out_indices, outs, raw):
        # Official layout: a channel LayerNorm per output under the official names (extra_norms.{i}, norm{i}).
        weight, bias = state[f"{norm_name.format(i=i)}.weight"], state[f"{norm_name.format(i=i)}.bias"]
        want = F.layer_norm(feat.permute(0, 2, 3, 1), (feat.shape[1],), weight, bias, eps=eps).permute(0, 3, 1, 2)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert not any(k.startswith(("body.model.norm.", "body.model.head.")) for k in state)
    from vizattn.mm import DENSE_FAMILIES

    for i in range(max(out_indices) + 1, 4):  # later stages are not built
        for name in DENSE_FAMILIES[family].stage:
            with pytest.raises(AttributeError):
                model.body.model.get_submodule(name.format(i=i))


def test_frozen_stages():
    x = torch.randn(2, 3, 64, 64)
    model = backbone(frozen_stages=2).train()
    frozen = ("body.model.downsample_layers.0.", "body.model.downsample_layers.1.", "body.model.stages.0.",
              "body.model.stages.1.", "extra_norms.0.", "extra_norms.1.")
    for name, p in model.named_parameters():
        assert p.requires_grad != name.startswith(frozen), name
    # Frozen modules stay in eval mode through train(): their BatchNorm statistics do not move.
    stem_bn = model.body.model.downsample_layers[1][1]
    live_bn = model.body.model.downsample_layers[2][1]
    stem_mean, live_mean = stem_bn.running_mean.clone(), live_bn.running_mean.clone()
    assert not stem_bn.training and live_bn.training
    sum(o.sum() for o in model(x)).backward()
    assert torch.equal(stem_bn.running_mean, stem_mean) and not torch.equal(live_bn.running_mean, live_mean)
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith(frozen))

    stem_only = backbone(frozen_stages=0)
    assert {n for n, p in stem_only.named_parameters() if not p.requires_grad} == {
        n for n, _ in stem_only.named_parameters() if n.startswith("body.model.downsample_layers.0.")
    }
    assert all(p.requires_grad for p in backbone(frozen_stages=-1).parameters())
    nat = backbone(**FAMILIES["nat"][0], frozen_stages=2)
    frozen = ("body.model.patch_embed.", "body.model.levels.0.", "body.model.levels.1.", "norm0.", "norm1.")
    for name, p in nat.named_parameters():
        assert p.requires_grad != name.startswith(frozen), name
    with pytest.raises(ValueError, match=r"frozen_stages=5 must be in \[-1, 4\]"):
        backbone(frozen_stages=5)


def test_norm_eval_keeps_batchnorm_statistics():
    model = backbone(norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert model.body.model.stages[0][0].norm1.training  # LayerNorm and the rest train
    means = [m.running_mean.clone() for m in bns]
    sum(o.sum() for o in model(torch.randn(2, 3, 64, 64))).backward()
    assert all(torch.equal(m.running_mean, mean) for m, mean in zip(bns, means))
    assert all(m.weight.grad is not None for m in bns)  # affine parameters still train
    assert all(m.training for m in backbone(norm_eval=False).train().modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_with_cp_gives_the_same_gradients():
    # Stage 0 frozen: the checkpointed stage 1 gets an input that needs no gradient, its weights still get theirs.
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for with_cp in (False, True):
        torch.manual_seed(0)
        model = backbone(with_cp=with_cp, frozen_stages=1).train()
        assert model.body.model.grad_checkpointing == with_cp
        sum((o**2).mean() for o in model(x)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, grad in grads[0].items():
        assert grad is not None, name
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown model 'biformer_xl'"):
        backbone(model_name="biformer_xl")
    with pytest.raises(ValueError, match="give one checkpoint"):
        backbone(pretrained="a.pth", init_cfg=dict(type="Pretrained", checkpoint="b.pth"))
    with pytest.raises(FileNotFoundError, match="is not a file"):
        backbone(init_cfg=dict(type="Pretrained", checkpoint="/nonexistent.pth")).init_weights()
    with pytest.raises(ValueError, match="for another model"):
        backbone().load_checkpoint("timm://biformer_b.in1k")


@pytest.mark.parametrize("stem", ["mask-rcnn_biformer-s_fpn_1x_coco", "upernet_biformer-s_8xb2-160k_ade20k-512x512"])
def test_official_checkpoint_through_init_cfg(tmp_path, stem):
    """The official classification file loads through the config's init_cfg and survives mmengine's init order."""
    ckpt = tmp_path / "biformer_small_in1k.pth"
    want = official_checkpoint(ckpt)
    # Another init_cfg entry touching the same layers runs first: the checkpoint must win.
    init_cfg = [dict(type="TruncNormal", layer="Linear", std=0.5), dict(type="Pretrained", checkpoint=str(ckpt))]
    cfg = load_tiny_config(config(stem))
    cfg.model.backbone.init_cfg = init_cfg
    model = build_model(cfg)  # builds and runs model.init_weights(), as the Runner does before training
    got = model.backbone.body.model.state_dict()
    assert sorted(got) == sorted(k for k in want if not k.startswith(("norm.", "head.")))
    for key, value in got.items():
        assert torch.equal(value, want[key]), key
    model.init_weights()  # a second call (the Runner's) changes nothing
    assert all(torch.equal(v, want[k]) for k, v in model.backbone.body.model.state_dict().items())


@pytest.mark.parametrize("family", FAMILIES)
def test_official_checkpoint_of_each_family(tmp_path, family):
    kwargs = FAMILIES[family][0]
    ckpt = tmp_path / "official.pth"
    want = official_checkpoint(ckpt, model_name=kwargs["model_name"])
    model = backbone(**kwargs, out_indices=(1, 2), init_cfg=dict(type="Pretrained", checkpoint=str(ckpt)))
    model.init_weights()
    got = model.body.model.state_dict()
    assert got and all(torch.equal(v, want[k]) for k, v in got.items())


def test_mmseg_pretrained_argument(tmp_path):
    ckpt = tmp_path / "official.pth"
    want = official_checkpoint(ckpt, seed=1)
    cfg = load_tiny_config(config("fpn_biformer-s_8xb2-80k_ade20k-512x512"))
    cfg.model.pretrained = str(ckpt)  # mmseg's segmentor hands this to the backbone
    model = build_model(cfg)
    assert all(torch.equal(v, want[k]) for k, v in model.backbone.body.model.state_dict().items())


def test_checkpoint_of_another_variant_is_rejected(tmp_path):
    ckpt = tmp_path / "other.pth"
    torch.save({"model": timm.create_model("biformer_s", depths=(1, 1, 2, 1)).state_dict()}, ckpt)
    with pytest.raises(ValueError, match="does not fit"):
        backbone(init_cfg=dict(type="Pretrained", checkpoint=str(ckpt))).init_weights()


def test_backbone_weights_from_a_detector_checkpoint(tmp_path):
    """init_cfg with prefix='backbone.' takes the backbone out of a Runner checkpoint (with its pickled extras)."""
    source = backbone()
    for p in source.parameters():
        torch.nn.init.normal_(p)
    state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    state["neck.conv.weight"] = torch.zeros(1)
    ckpt = tmp_path / "epoch_12.pth"
    torch.save({"state_dict": state, "meta": {"epoch": 12}, "message_hub": {"x": np.arange(3)}}, ckpt)
    model = backbone(init_cfg=dict(type="Pretrained", checkpoint=str(ckpt), prefix="backbone."))
    model.init_weights()
    for key, value in model.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


def test_timm_pretrained_weights(tmp_path, monkeypatch):
    """'timm://biformer_s.in1k' (and pretrained=True) load timm's release file; here a copy already in the cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    want = official_checkpoint(cache / "biformer_small_in1k.pth", seed=2)
    for kwargs in (dict(init_cfg=dict(type="Pretrained", checkpoint="timm://biformer_s.in1k")), dict(pretrained=True)):
        model = backbone(**kwargs)
        model.init_weights()
        assert all(torch.equal(v, want[k]) for k, v in model.body.model.state_dict().items())


def test_van_family_has_no_extra_norms_and_freezes_by_official_names(tmp_path):
    """VAN's dense outputs are its stage norms' outputs; frozen_stages follows its 1-based module names."""
    kwargs = dict(model_name="van_b2", depths=(1, 1, 1, 1), norm_eps=1e-5)
    model = backbone(**kwargs, frozen_stages=2).train()
    assert model._out_norm_names == [None] * 4
    frozen = tuple(f"body.model.{m}{i}." for i in (1, 2) for m in ("patch_embed", "block", "norm"))
    for name, p in model.named_parameters():
        assert p.requires_grad != name.startswith(frozen), name
    x = torch.randn(1, 3, 70, 100)
    model.eval()
    with torch.no_grad():
        outs = model(x)
        raw = model.body.model.forward_intermediates(x, intermediates_only=True)
    assert model.out_channels == (64, 128, 320, 512)
    for out, feat in zip(outs, raw):
        torch.testing.assert_close(out, feat)
    assert model.body.model.norm1.eps == 1e-5

    # An official classification checkpoint ({'state_dict': ...}, 1e-6 norms in the file's model) loads fully.
    torch.manual_seed(0)
    source = timm.create_model("van_b2", depths=(1, 1, 1, 1))
    for p in source.parameters():
        torch.nn.init.normal_(p)
    ckpt = tmp_path / "van_b2.pth"
    torch.save({"state_dict": source.state_dict()}, ckpt)
    loaded = backbone(**kwargs, init_cfg=dict(type="Pretrained", checkpoint=str(ckpt)))
    loaded.init_weights()
    want = source.state_dict()
    got = loaded.body.model.state_dict()
    assert got and all(torch.equal(v, want[k]) for k, v in got.items())
