# Mask R-CNN 1x, DiNAT-T backbone, COCO. Official recipe (SHI-Labs/Neighborhood-Attention-Transformer
# detection/configs/dinat/mask_rcnn_dinat_tiny_3x_coco.py, which trains 3x = 36 epochs; this is the 1x schedule): drop
# path 0.2, AdamW lr 1e-4 wd 0.05 with no decay on rpb and norms, 8 GPUs x 2 images. Dilations per layer as the
# official config; maps smaller than kernel x dilation are padded as NATTEN <= 0.15 did. Official 3x result: box AP
# 48.6 / mask AP 43.5.
_base_ = [
    '_base_/models/mask-rcnn_fpn.py',
    '_base_/datasets/coco_instance.py',
    '_base_/schedules/schedule_1x.py',
    '_base_/default_runtime.py',
]

checkpoint = 'timm://dinat_tiny.in1k'

model = dict(
    backbone=dict(
        model_name='dinat_tiny',
        drop_path_rate=0.2,
        dilations=[[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]],
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 128, 256, 512]))
