# 1x schedule: 12 epochs, lr x0.1 after epochs 8 and 11, 500-iteration linear warmup; 8 GPUs x 2 images.
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]

# AdamW with mixed precision, as the official BiFormer runs. Norm layers (BatchNorm, LayerNorm, the output norms) and
# relative position bias tables take no weight decay. AmpOptimWrapper needs a GPU; on a CPU run pass
# --cfg-options optim_wrapper.type=OptimWrapper.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    loss_scale='dynamic',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={
            'relative_position_bias_table': dict(decay_mult=0.0),
            '.rpb': dict(decay_mult=0.0),
        }))

# Total batch the learning rate was set for (8 GPUs x 2 images); `--auto-scale-lr` rescales it for another batch.
auto_scale_lr = dict(enable=False, base_batch_size=16)
