# UperNet, VAN-B2 backbone, ADE20K 512x512, 160k iterations. Official recipe (Visual-Attention-Network/
# VAN-Segmentation configs/upernet/1k_pretrained/upernet_van_b2_512x512_160k_ade20k.py): drop path 0.1, AdamW lr 6e-5
# wd 0.01, warmup 1500 then poly, 8 GPUs x 2 images; the dense backbone's stage LayerNorms use eps 1e-5.
# Target: mIoU 50.1 (multi-scale).
_base_ = [
    '_base_/models/upernet.py',
    '_base_/datasets/ade20k.py',
    '_base_/schedules/schedule_160k.py',
    '_base_/default_runtime.py',
]

checkpoint = 'timm://van_b2.in1k'

model = dict(
    backbone=dict(
        model_name='van_b2',
        norm_eps=1e-5,
        drop_path_rate=0.1,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320))
