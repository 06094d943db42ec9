# Official BEVFormer v2 optimisation (projects/configs/bevformerv2/*.py of
# fundamentalvision/BEVFormer): AdamW lr 4e-4, weight decay 0.01, backbone lr x0.5, grad clip 35,
# 2000-iteration linear warmup from lr/3, lr x0.1 at epoch 20 of 24. The official global batch is
# 8 GPUs x 1 sample; tools/train.py rescales lr and warmup for other global batch sizes.
max_epochs = 24
lr_step_epoch = max_epochs - 4
base_batch_size = 8
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=4e-4, weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={"img_backbone": dict(lr_mult=0.5)}),
    clip_grad=dict(max_norm=35, norm_type=2),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1.0 / 3, by_epoch=False, begin=0, end=2000),
    dict(
        type="MultiStepLR",
        by_epoch=True,
        begin=0,
        end=max_epochs,
        milestones=[lr_step_epoch],
        gamma=0.1,
    ),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=4)
val_cfg = dict()
test_cfg = dict()
