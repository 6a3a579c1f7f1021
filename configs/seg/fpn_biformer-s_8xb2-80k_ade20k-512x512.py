# Semantic FPN, BiFormer-S backbone, ADE20K 512x512, 80k iterations. Official recipe (docs/dense.md): n_win 8 with
# auto_pad, drop path 0.15, AdamW lr 2e-4 wd 1e-4, cosine; 8 GPUs. Target: mIoU 48.9 (single scale).
_base_ = [
    '_base_/models/fpn.py',
    '_base_/datasets/ade20k.py',
    '_base_/schedules/schedule_80k.py',
    '_base_/default_runtime.py',
]

# Official ImageNet-1k weights through timm (downloaded once), or the path of a local copy of the released
# biformer_small_in1k.pth.
checkpoint = 'timm://biformer_s.in1k'

model = dict(
    backbone=dict(
        model_name='biformer_s',
        n_win=8,
        auto_pad=True,
        drop_path_rate=0.15,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 128, 256, 512]))
