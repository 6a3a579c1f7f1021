"""End to end with mmengine's Runner: tools/mm_train.py trains 2 iterations and validates with the real metric (COCO
box/mask AP, ADE20K mIoU), then tools/mm_test.py evaluates the checkpoint it wrote.

The datasets are generated in a temporary folder in the COCO and ADE20K layouts. The config each run uses is a
small file that inherits a real config (``_base_``) and only shrinks the backbone, the images and the schedule.
"""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
from mm_helpers import REPO, config


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_image(path, image) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def make_coco(root, n_images: int = 2, size=(96, 128)) -> None:
    """root/images/*.jpg and root/annotations.json: two boxes with polygon masks per image, COCO's 80 class names."""
    from mmdet.datasets import CocoDataset

    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(n_images):
        _write_image(root / "images" / f"{i}.jpg", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        images.append(dict(id=i, file_name=f"{i}.jpg", height=size[0], width=size[1]))
        for j in range(2):
            x, y, w, h = 8 + 40 * j, 10 + 30 * j, 44, 36
            annotations.append(
                dict(id=len(annotations) + 1, image_id=i, category_id=j + 1, bbox=[x, y, w, h], area=w * h,
                     iscrowd=0, segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]])
            )
    categories = [dict(id=k + 1, name=name) for k, name in enumerate(CocoDataset.METAINFO["classes"])]
    (root / "annotations.json").write_text(json.dumps(dict(images=images, annotations=annotations,
                                                           categories=categories)))


def make_ade(root, n_images: int = 2, size=(64, 80)) -> None:
    """root/{images,annotations}/{training,validation}: jpg images and png label maps (0 = ignore, 1-150)."""
    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        for i in range(n_images):
            _write_image(root / "images" / split / f"{i}.jpg", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
            labels = np.zeros(size, np.uint8)
            labels[:, : size[1] // 2] = 1 + i
            labels[size[0] // 2 :, :] = 7
            _write_image(root / "annotations" / split / f"{i}.png", labels)


DET_OVERRIDES = """
_base_ = ['{base}']
data_root = '{data}/'
# A tiny backbone, fewer RoIs, and every detection kept (an untrained model scores below the usual 0.05).
model = dict(
    backbone=dict(depths=(1, 1, 1, 1), init_cfg=None),
    train_cfg=dict(rpn_proposal=dict(max_per_img=100), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(max_per_img=100), rcnn=dict(score_thr=0.0, max_per_img=20)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 96), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
_data = dict(data_root=data_root, ann_file='annotations.json', data_prefix=dict(img='images/'))
train_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline, filter_cfg=dict(min_size=0), **_data))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=test_pipeline, **_data))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(save_optimizer=False))
"""

SEG_OVERRIDES = """
_base_ = ['{base}']
model = dict(backbone=dict(depths=(1, 1, 1, 1), init_cfg=None), data_preprocessor=dict(size=(64, 64)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(80, 64), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(64, 64), cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(80, 64), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root='{data}', pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root='{data}', pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=2, val_interval=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2, save_optimizer=False))
"""


def _run(tmp_path, capsys, base, overrides, metric_keys):
    cfg = tmp_path / f"tiny_{base.name}"
    cfg.write_text(overrides.format(base=base, data=tmp_path / "data"))
    work = tmp_path / "work"
    assert _tool("mm_train").main([str(cfg), "--work-dir", str(work)]) == 0
    logged = [json.loads(line) for p in work.glob("*/vis_data/scalars.json") for line in p.read_text().splitlines()]
    validation = [entry for entry in logged if metric_keys[0] in entry]
    assert validation, f"no validation metrics logged: {logged}"
    checkpoint = (work / "last_checkpoint").read_text().strip()

    capsys.readouterr()
    assert _tool("mm_test").main([str(cfg), checkpoint, "--work-dir", str(work)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    metrics = dict(re.findall(r"(\S+)=(\S+?)(?:,|$)", line.split(": ", 1)[1]))
    for key in metric_keys:
        assert 0.0 <= float(metrics[key]) <= 100.0, line
    return validation[-1], metrics


def test_detection_end_to_end(tmp_path, capsys):
    make_coco(tmp_path / "data")
    val, metrics = _run(tmp_path, capsys, config("mask-rcnn_biformer-s_fpn_1x_coco"), DET_OVERRIDES,
                        ["coco/bbox_mAP", "coco/segm_mAP"])
    assert val["step"] == 1  # validated after the one training epoch (2 iterations of 1 image)


def test_segmentation_end_to_end(tmp_path, capsys):
    make_ade(tmp_path / "data")
    # UperNet: fp16 in the config, float32 here (no GPU), aux head, iteration-based schedule.
    val, metrics = _run(tmp_path, capsys, config("upernet_biformer-s_8xb2-160k_ade20k-512x512"), SEG_OVERRIDES,
                        ["mIoU", "aAcc"])
    assert val["step"] == 2
