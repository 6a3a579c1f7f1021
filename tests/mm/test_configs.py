"""Every config under configs/det and configs/seg builds, trains one step and predicts, on the CPU.

The model comes from the config file itself; only the backbone depth is cut to one block per stage (the widths, and
so the necks and heads, stay) and the inputs are 64-96 px.
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from mm_helpers import DET_CONFIGS, SEG_CONFIGS, build_model, det_batch, load_tiny_config, seg_batch

# What each config must say (spec section 8 / the official configs): model, family-specific backbone arguments, drop
# path, and the optimiser.
BIFORMER_COCO, BIFORMER_ADE = dict(n_win=16, auto_pad=True), dict(n_win=8, auto_pad=True)
DINAT_COCO = dict(dilations=[[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]])
DINAT_ADE = dict(dilations=[[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2, 1, 2, 1]])
OFFICIAL = {
    "mask-rcnn_biformer-s_fpn_1x_coco": ("biformer_s", BIFORMER_COCO, 0.2, "AdamW", 1e-4, 0.05),
    "mask-rcnn_biformer-b_fpn_1x_coco": ("biformer_b", BIFORMER_COCO, 0.3, "AdamW", 1e-4, 0.05),
    "retinanet_biformer-s_fpn_1x_coco": ("biformer_s", BIFORMER_COCO, 0.2, "AdamW", 1e-4, 1e-4),
    "retinanet_biformer-b_fpn_1x_coco": ("biformer_b", BIFORMER_COCO, 0.3, "AdamW", 1e-4, 1e-4),
    "fpn_biformer-s_8xb2-80k_ade20k-512x512": ("biformer_s", BIFORMER_ADE, 0.15, "AdamW", 2e-4, 1e-4),
    "fpn_biformer-b_8xb2-80k_ade20k-512x512": ("biformer_b", BIFORMER_ADE, 0.3, "AdamW", 2e-4, 1e-4),
    "upernet_biformer-s_8xb2-160k_ade20k-512x512": ("biformer_s", BIFORMER_ADE, 0.3, "AdamW", 6e-5, 0.01),
    "upernet_biformer-b_8xb2-160k_ade20k-512x512": ("biformer_b", BIFORMER_ADE, 0.4, "AdamW", 6e-5, 0.01),
    "mask-rcnn_nat-t_fpn_1x_coco": ("nat_tiny", {}, 0.2, "AdamW", 1e-4, 0.05),
    "mask-rcnn_nat-s_fpn_1x_coco": ("nat_small", {}, 0.35, "AdamW", 1e-4, 0.05),
    "mask-rcnn_dinat-t_fpn_1x_coco": ("dinat_tiny", DINAT_COCO, 0.2, "AdamW", 1e-4, 0.05),
    "upernet_nat-t_8xb2-160k_ade20k-512x512": ("nat_tiny", {}, 0.3, "AdamW", 6e-5, 0.01),
    "upernet_dinat-t_8xb2-160k_ade20k-512x512": ("dinat_tiny", DINAT_ADE, 0.3, "AdamW", 6e-5, 0.01),
    "fpn_van-b2_8xb4-40k_ade20k-512x512": ("van_b2", dict(norm_eps=1e-5), 0.2, "AdamW", 2e-4, 1e-4),
    "upernet_van-b2_8xb2-160k_ade20k-512x512": ("van_b2", dict(norm_eps=1e-5), 0.1, "AdamW", 6e-5, 0.01),
}
CONFIGS = DET_CONFIGS + SEG_CONFIGS


def test_every_config_is_covered():
    assert sorted(p.stem for p in CONFIGS) == sorted(OFFICIAL)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_values(path):
    from mmengine.config import Config

    cfg = Config.fromfile(str(path))
    name, family_kwargs, drop_path, optimizer, lr, wd = OFFICIAL[path.stem]
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.model_name) == ("VizAttnBackbone", name)
    for key, value in family_kwargs.items():
        assert backbone[key] == value, key
    assert backbone.drop_path_rate == drop_path
    assert backbone.init_cfg == dict(type="Pretrained", checkpoint=f"timm://{name}.in1k")
    assert cfg.custom_imports.imports == ["vizattn.mm"]
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == (optimizer, lr, wd)
    assert cfg.optim_wrapper.paramwise_cfg.norm_decay_mult == 0.0
    if path.stem.startswith(("mask-rcnn", "retinanet")):
        assert backbone.norm_eval and cfg.train_cfg.max_epochs == 12
    else:
        iters = int(re.search(r"(\d+)k", path.stem).group(1)) * 1000
        assert not backbone.norm_eval and cfg.train_cfg.max_iters == iters


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_train_step_and_inference(path):
    from mmengine.optim import build_optim_wrapper

    cfg = load_tiny_config(path)
    model = build_model(cfg)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    detection = cfg.default_scope == "mmdet"
    data = det_batch(with_mask="mask" in path.stem) if detection else seg_batch()

    # Norm layers (the backbone's BatchNorm, LayerNorm and output LayerNorm2d included) take no weight decay.
    decay = {id(p): g["weight_decay"] for g in optim_wrapper.optimizer.param_groups for p in g["params"]}
    for name, module in model.backbone.named_modules():
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.modules.batchnorm._BatchNorm)):
            assert all(decay[id(p)] == 0.0 for p in module.parameters()), name
    named = dict(model.backbone.named_parameters())
    # Convolution and linear weights keep their decay (bias tables are not weights).
    weights = [n for n, p in named.items() if p.dim() >= 2 and not n.endswith(".rpb")]
    assert weights and all(decay[id(named[n])] > 0 for n in weights)
    assert all(decay[id(p)] == 0.0 for n, p in named.items() if n.endswith(".rpb"))  # bias tables: no decay

    # One real training step; the gradients are read just before the optimizer uses them.
    grads = {}
    params = {id(p): n for n, p in model.named_parameters() if p.requires_grad}

    def record(optimizer, args, kwargs):
        for group in optimizer.param_groups:
            for p in group["params"]:
                grads[params[id(p)]] = None if p.grad is None else p.grad.detach().clone()

    handle = optim_wrapper.optimizer.register_step_pre_hook(record)
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    model.train()
    losses = model.train_step(copy.deepcopy(data), optim_wrapper)
    handle.remove()
    assert all(math.isfinite(float(torch.as_tensor(v).detach())) for v in losses.values()), losses
    no_grad = sorted(n for n, g in grads.items() if g is None or not torch.isfinite(g).all() or not g.any())
    assert not no_grad, f"parameters the loss does not reach: {no_grad[:5]}"
    assert all(not torch.equal(before[n], p) for n, p in model.backbone.named_parameters()), "backbone not updated"

    model.eval()
    with torch.no_grad():
        results = model.test_step(copy.deepcopy(data))
    assert len(results) == 2
    for result, image in zip(results, data["inputs"]):
        if detection:
            pred = result.pred_instances
            assert pred.bboxes.shape[1] == 4 and len(pred.scores) == len(pred.labels) == len(pred.bboxes)
            if "mask" in path.stem:
                assert pred.masks.shape[1:] == image.shape[1:]
        else:
            assert result.pred_sem_seg.data.shape == (1, *image.shape[1:])
