# RetinaNet 1x, BiFormer-B backbone, COCO: the BiFormer-S recipe. The official repository states no drop path rate
# for this model; 0.3 is BiFormer-B's Mask R-CNN rate. Target: box AP 47.1.
_base_ = './retinanet_biformer-s_fpn_1x_coco.py'

checkpoint = 'timm://biformer_b.in1k'

model = dict(
    backbone=dict(
        model_name='biformer_b',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[192, 384, 768]))
