# Mask R-CNN 1x, BiFormer-S backbone, COCO. Official recipe (docs/dense.md): n_win 16 with auto_pad, drop path 0.2,
# BatchNorm in eval mode, AdamW lr 1e-4 wd 0.05, fp16; 8 GPUs x 2 images. Target: box AP 47.8, mask AP 43.2.
_base_ = [
    '_base_/models/mask-rcnn_fpn.py',
    '_base_/datasets/coco_instance.py',
    '_base_/schedules/schedule_1x.py',
    '_base_/default_runtime.py',
]

# Official ImageNet-1k weights through timm (downloaded once), or the path of a local copy of the released
# biformer_small_in1k.pth.
checkpoint = 'timm://biformer_s.in1k'

model = dict(
    backbone=dict(
        model_name='biformer_s',
        n_win=16,
        auto_pad=True,
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 128, 256, 512]))
