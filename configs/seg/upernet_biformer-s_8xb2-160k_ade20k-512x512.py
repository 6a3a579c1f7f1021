# UperNet, BiFormer-S backbone, ADE20K 512x512, 160k iterations. Official recipe (docs/dense.md): n_win 8 with
# auto_pad, drop path 0.3, AdamW lr 6e-5 wd 0.01, warmup 1500 then poly, fp16; 8 GPUs x 2 images.
# Target: mIoU 49.8 single scale, 50.8 multi-scale + flip.
_base_ = [
    '_base_/models/upernet.py',
    '_base_/datasets/ade20k.py',
    '_base_/schedules/schedule_160k.py',
    '_base_/default_runtime.py',
]

checkpoint = 'timm://biformer_s.in1k'

model = dict(
    backbone=dict(
        model_name='biformer_s',
        n_win=8,
        auto_pad=True,
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
