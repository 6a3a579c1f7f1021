# RetinaNet 1x, BiFormer-S backbone, COCO. Official recipe (docs/dense.md): n_win 16 with auto_pad, drop path 0.2,
# BatchNorm in eval mode, AdamW lr 1e-4 wd 1e-4, fp16 with loss scale 512; 8 GPUs x 2 images. Target: box AP 45.9.
_base_ = [
    '_base_/models/retinanet_fpn.py',
    '_base_/datasets/coco_detection.py',
    '_base_/schedules/schedule_1x.py',
    '_base_/default_runtime.py',
]

checkpoint = 'timm://biformer_s.in1k'

model = dict(
    backbone=dict(
        model_name='biformer_s',
        n_win=16,
        auto_pad=True,
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[128, 256, 512]))

optim_wrapper = dict(loss_scale=512.0, optimizer=dict(weight_decay=1e-4))
