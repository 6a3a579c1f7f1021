# Mask R-CNN 1x, NAT-T backbone, COCO. Official recipe (SHI-Labs/Neighborhood-Attention-Transformer
# detection/configs/nat/mask_rcnn_nat_tiny_3x_coco.py, which trains 3x = 36 epochs; this is the 1x schedule): drop
# path 0.2, AdamW lr 1e-4 wd 0.05 with no decay on rpb and norms, 8 GPUs x 2 images. Official 3x result: box AP 47.7 /
# mask AP 42.6.
_base_ = [
    '_base_/models/mask-rcnn_fpn.py',
    '_base_/datasets/coco_instance.py',
    '_base_/schedules/schedule_1x.py',
    '_base_/default_runtime.py',
]

checkpoint = 'timm://nat_tiny.in1k'

model = dict(
    backbone=dict(
        model_name='nat_tiny',
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 128, 256, 512]))
