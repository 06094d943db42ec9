# BEVFormer v2, ResNet-50, 1600x640, two frames (previous keyframe + current), 24 epochs: the
# official bevformerv2-r50-t2-24ep (ResNetFusion of 2 x 256 channels), into which official
# r50-t2 checkpoints load.
# Official result (fundamentalvision/BEVFormer, nuScenes val): mAP 0.4199, NDS 0.5182.
# Not yet reproduced with this code base.
_base_ = ["./bevformerv2_r50_1600x640_t1_24ep.py"]

frames = (-1, 0)
model = dict(
    bev=dict(
        frames=frames,
        fusion=dict(_delete_=True, **_base_.fusion, in_channels=len(frames) * _base_.embed_dims),
    ),
)
train_dataloader = dict(dataset=dict(frames=frames))
val_dataloader = dict(dataset=dict(frames=frames))
test_dataloader = dict(dataset=dict(frames=frames))
