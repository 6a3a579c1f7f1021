"""Helpers of the OpenMMLab tests (imported inside tests: OpenMMLab is imported lazily, see conftest.py)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DET_CONFIGS = sorted((REPO / "configs" / "det").glob("*.py"))
SEG_CONFIGS = sorted((REPO / "configs" / "seg").glob("*.py"))



def config(stem: str) -> Path:
    """The config file named ``stem`` (under configs/det or configs/seg)."""
    return next(p for p in DET_CONFIGS + SEG_CONFIGS if p.stem == stem)


# Every config is built with this backbone depth: the real widths (so the necks and heads of the config fit), one
# block per stage, no drop path (deterministic gradients), no checkpoint.
TINY_BACKBONE = {"model.backbone.depths": (1, 1, 1, 1), "model.backbone.drop_path_rate": 0.0}
FEW_ROIS = {
    "model.train_cfg.rpn_proposal.max_per_img": 100,
    "model.train_cfg.rcnn.sampler.num": 64,
    "model.test_cfg.rpn.max_per_img": 100,
    "model.test_cfg.rcnn.max_per_img": 20,
}


def load_tiny_config(path: Path, overrides: dict | None = None):
    """The config file as mm_train.py reads it (float32), with the tiny backbone, no pretrained checkpoint."""
    from vizattn.mm.runner import load_config

    cfg = load_config(str(path), fp32=True, cfg_options={**TINY_BACKBONE, **(overrides or {})})
    if cfg.model.type == "MaskRCNN":  # fewer RoIs: the RoI heads, not the backbone, dominate a CPU step
        cfg.merge_from_dict(FEW_ROIS)
    cfg.model.backbone.pop("init_cfg", None)
    if "dilations" in cfg.model.backbone:  # one layer per level: keep each level's largest dilation
        cfg.model.backbone.dilations = [[max(level)] for level in cfg.model.backbone.dilations]
    if cfg.default_scope == "mmseg":
        cfg.model.data_preprocessor.size = (64, 64)
    return cfg


def build_model(cfg):
    """Build and initialise ``cfg.model`` in the config's scope, single-process (SyncBN -> BN), as the Runner does."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope

    init_default_scope(cfg.default_scope)
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    model.init_weights()
    return model


def det_batch(with_mask: bool, num_classes: int = 80) -> dict:
    """Two images of different sizes with 3 and 2 boxes (and masks), as a detection dataloader yields them."""
    from mmdet.testing import demo_mm_inputs

    return demo_mm_inputs(
        batch_size=2, image_shapes=[(3, 64, 64), (3, 64, 96)], num_items=[3, 2], num_classes=num_classes,
        with_mask=with_mask,
    )


def seg_batch(num_classes: int = 150, size: tuple[int, int] = (64, 64)) -> dict:
    """Two images with random label maps, as a segmentation dataloader yields them."""
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g))
        sample = SegDataSample(metainfo=dict(img_shape=size, ori_shape=size))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, *size), generator=g))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)
