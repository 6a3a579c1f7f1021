# 80k iterations, AdamW lr 2e-4 wd 1e-4, cosine decay to 0 (the official BiFormer Semantic FPN schedule).
train_cfg = dict(type='IterBasedTrainLoop', max_iters=80000, val_interval=8000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=80000, eta_min=0.0, begin=0, end=80000, by_epoch=False),
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
