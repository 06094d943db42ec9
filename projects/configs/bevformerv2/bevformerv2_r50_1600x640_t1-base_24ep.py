# BEVFormer v2, ResNet-50 (caffe, BGR), 1600x640, current frame only, 24 epochs: the official
# "t1-base" comparison setting (one query group, resize 640 only, no flip, no BEV augmentation).
# Official result (fundamentalvision/BEVFormer bevformerv2-r50-t1-base-24ep, nuScenes val):
# mAP 0.3512, NDS 0.4257. Not yet reproduced with this code base.
_base_ = ["./_base_/bevformerv2.py", "./_base_/schedule_24ep.py", "./_base_/default_runtime.py"]

train_pipeline = [
    _base_.load_step,
    _base_.photometric_step,
    dict(
        type="CropResizeFlipImage",
        final_size=_base_.image_size,
        scale_choices=(1.0,),
        flip_prob=0.0,
    ),
    dict(type="NormalizeMultiViewImage", **_base_.img_norm_cfg),
    _base_.pad_step,
]
train_dataloader = dict(dataset=dict(transforms=train_pipeline, with_mono=True))
# Official initialisation (all official R50 configs): the FCOS R50 COCO weights converted to
# mmdet names, loaded into whatever fits (backbone, neck) before the first iteration. The file
# is the "R50" link of the fundamentalvision/BEVFormer README; without it, train from scratch
# with --cfg-options load_from=None.
load_from = "ckpts/fcos_r50_coco_2mmdet.pth"
model = dict(
    pts_bbox_head=dict(group_detr=1),
    perspective={"_delete_": True, **_base_.perspective},  # official: on in every config
)
