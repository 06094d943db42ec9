# BEVFormer v2 with an InternImage-XL backbone, 1600x640, current frame only, 24 epochs.
# Official nuScenes settings of BEVFormer v2 (bevformerv2-r50-t1-24ep) with the backbone of
# OpenGVLab/InternImage detection/configs/coco/cascade_internimage_xl_fpn_3x_coco.py: stages
# 2-4 (strides 8/16/32, 384/768/1536 channels) into the FPN, ImageNet RGB normalisation and
# layer-wise lr decay 0.9 over the 39 blocks (offsets x0.01).
# Weights: ImageNet-22k internimage_xl_22k_192to384.pth (huggingface.co/OpenGVLab/InternImage),
# loaded into img_backbone by its init_cfg before training (without the file:
# --cfg-options model.img_backbone.init_cfg=None trains from scratch).
# Result: not measured yet.
_base_ = ["./_base_/bevformerv2.py", "./_base_/schedule_24ep.py", "./_base_/default_runtime.py"]

img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
normalize_step = dict(type="NormalizeMultiViewImage", **img_norm_cfg)
train_pipeline = [
    normalize_step if step["type"] == "NormalizeMultiViewImage" else step
    for step in _base_.train_pipeline
]
test_pipeline = [
    normalize_step if step["type"] == "NormalizeMultiViewImage" else step
    for step in _base_.test_pipeline
]
train_dataloader = dict(dataset=dict(transforms=train_pipeline, with_mono=True))
val_dataloader = dict(dataset=dict(transforms=test_pipeline))
test_dataloader = dict(dataset=dict(transforms=test_pipeline))

backbone_channels = 192
backbone_depths = (5, 5, 24, 5)
backbone_out_indices = (1, 2, 3)
model = dict(
    img_backbone=dict(
        _delete_=True,
        type="InternImage",
        core_op="DCNv3",
        channels=backbone_channels,
        depths=backbone_depths,
        groups=(12, 24, 48, 96),
        mlp_ratio=4.0,
        drop_path_rate=0.6,
        norm_layer="LN",
        layer_scale=1.0,
        offset_scale=2.0,
        post_norm=True,
        with_cp=True,
        out_indices=backbone_out_indices,
        init_cfg=dict(type="Pretrained", checkpoint="ckpts/internimage_xl_22k_192to384.pth"),
    ),
    img_neck=dict(in_channels=[backbone_channels * 2**i for i in backbone_out_indices]),
    perspective={"_delete_": True, **_base_.perspective},  # official: on in every config
)
optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=_base_.optim_wrapper.optimizer,
    clip_grad=_base_.optim_wrapper.clip_grad,
    constructor="LayerDecayOptimWrapperConstructor",
    paramwise_cfg=dict(
        num_layers=sum(backbone_depths),
        layer_decay_rate=0.9,
        offset_lr_scale=0.01,
        backbone_prefix="img_backbone.",
    ),
)
