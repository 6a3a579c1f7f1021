# UperNet, NAT-T backbone, ADE20K 512x512, 160k iterations. Official recipe (SHI-Labs/Neighborhood-Attention-
# Transformer segmentation/configs/nat/upernet_nat_tiny_512x512_160k_ade20k.py): drop path 0.3, AdamW lr 6e-5 wd 0.01,
# warmup 1500 then poly, 8 GPUs x 2 images. Official result: mIoU 47.1 single scale, 48.4 multi-scale + flip.
_base_ = [
    '_base_/models/upernet.py',
    '_base_/datasets/ade20k.py',
    '_base_/schedules/schedule_160k.py',
    '_base_/default_runtime.py',
]

checkpoint = 'timm://nat_tiny.in1k'

model = dict(
    backbone=dict(
        model_name='nat_tiny',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
