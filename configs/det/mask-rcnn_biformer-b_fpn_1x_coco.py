# Mask R-CNN 1x, BiFormer-B backbone, COCO: the BiFormer-S recipe with drop path 0.3. Target: box AP 48.6, mask AP 43.7.
_base_ = './mask-rcnn_biformer-s_fpn_1x_coco.py'

checkpoint = 'timm://biformer_b.in1k'

model = dict(
    backbone=dict(
        model_name='biformer_b',
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint)),
    neck=dict(in_channels=[96, 192, 384, 768]))
