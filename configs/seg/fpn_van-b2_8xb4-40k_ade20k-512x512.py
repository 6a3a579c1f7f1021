# Semantic FPN, VAN-B2 backbone, ADE20K 512x512, 40k iterations. Official recipe (Visual-Attention-Network/
# VAN-Segmentation configs/sem_fpn/fpn_van_b2_ade20k_40k.py): drop path 0.2, AdamW lr 2e-4 wd 1e-4, poly 0.9, 8 GPUs x
# 4 images; the dense backbone's stage LayerNorms use eps 1e-5. Target: mIoU 46.7.
_base_ = [
    '_base_/models/fpn.py',
    '_base_/datasets/ade20k.py',
    '_base_/schedules/schedule_40k.py',
    '_base_/default_runtime.py',
]

checkpoint = 'timm://van_b2.in1k'

model = dict(
    backbone=dict(
        model_name='van_b2',
        norm_eps=1e-5,
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[64, 128, 320, 512]))

train_dataloader = dict(batch_size=4)
auto_scale_lr = dict(enable=False, base_batch_size=32)
