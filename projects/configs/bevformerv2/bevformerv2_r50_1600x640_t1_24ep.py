# BEVFormer v2, ResNet-50 (caffe, BGR), 1600x640, current frame only, 24 epochs: the official
# bevformerv2-r50-t1-24ep (group-DETR with 11 query groups, resize 512..768 with flips, BEV
# augmentation, perspective head), the config that official r50-t1 checkpoints load into
# (tools/test.py CONFIG OFFICIAL.pth converts them on the fly).
# Official result (fundamentalvision/BEVFormer, nuScenes val): mAP 0.3805, NDS 0.4529.
# Not yet reproduced with this code base.
_base_ = ["./_base_/bevformerv2.py", "./_base_/schedule_24ep.py", "./_base_/default_runtime.py"]

train_dataloader = dict(dataset=dict(with_mono=True))
# Official initialisation (all official R50 configs): the FCOS R50 COCO weights converted to
# mmdet names, loaded into whatever fits (backbone, neck) before the first iteration. The file
# is the "R50" link of the fundamentalvision/BEVFormer README; without it, train from scratch
# with --cfg-options load_from=None.
load_from = "ckpts/fcos_r50_coco_2mmdet.pth"
model = dict(perspective={"_delete_": True, **_base_.perspective})  # official: always on
