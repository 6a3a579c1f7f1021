# Semantic FPN, BiFormer-B backbone, ADE20K: the BiFormer-S recipe with drop path 0.3. Target: mIoU 49.9.
_base_ = './fpn_biformer-s_8xb2-80k_ade20k-512x512.py'

checkpoint = 'timm://biformer_b.in1k'

model = dict(
    backbone=dict(
        model_name='biformer_b',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[96, 192, 384, 768]))
