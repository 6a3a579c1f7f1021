# 40k iterations, AdamW lr 2e-4 wd 1e-4, poly decay (power 0.9) to 0: the PVT-style Semantic FPN schedule that the
# official VAN-Segmentation FPN configs use (lr 1e-4 x 2 and 80k / 2 iterations for 8 GPUs instead of 4).
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40000, val_interval=4000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=40000, by_epoch=False),
]

# Norm layers and relative position bias tables take no weight decay.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={
            'relative_position_bias_table': dict(decay_mult=0.0),
            '.rpb': dict(decay_mult=0.0),
        }))
