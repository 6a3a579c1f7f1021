# 160k iterations, AdamW lr 6e-5 wd 0.01, 1500-iteration linear warmup then linear (poly, power 1) decay to 0, fp16
# with loss scale 512 (the official BiFormer UperNet schedule). AmpOptimWrapper needs a GPU; on a CPU run pass
# --cfg-options optim_wrapper.type=OptimWrapper.
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, begin=1500, end=160000, by_epoch=False),
]

# Norm layers and relative position bias tables take no weight decay.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale=512.0,
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={
            'relative_position_bias_table': dict(decay_mult=0.0),
            '.rpb': dict(decay_mult=0.0),
        }))
