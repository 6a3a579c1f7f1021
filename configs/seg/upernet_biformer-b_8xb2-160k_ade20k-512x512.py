# UperNet, BiFormer-B backbone, ADE20K: the BiFormer-S recipe with drop path 0.4. Target: mIoU 51.0 single scale,
# 51.7 multi-scale + flip.
_base_ = './upernet_biformer-s_8xb2-160k_ade20k-512x512.py'

checkpoint = 'timm://biformer_b.in1k'

model = dict(
    backbone=dict(
        model_name='biformer_b',
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
