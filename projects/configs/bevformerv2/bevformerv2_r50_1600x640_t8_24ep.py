# BEVFormer v2, ResNet-50, 1600x640, eight frames (keyframes -7..0, 3.5 s), 24 epochs: the
# official bevformerv2-r50-t8-24ep (ResNetFusion of 8 x 256 channels through 512 inter
# channels), into which official r50-t8 checkpoints load.
# Official result (fundamentalvision/BEVFormer, nuScenes val): mAP 0.4600, NDS 0.5528.
# Not yet reproduced with this code base.
_base_ = ["./bevformerv2_r50_1600x640_t2_24ep.py"]

frames = tuple(range(-7, 1))
model = dict(
    bev=dict(
        frames=frames,
        fusion=dict(
            in_channels=len(frames) * _base_.embed_dims, inter_channels=2 * _base_.embed_dims
        ),
    ),
)
train_dataloader = dict(dataset=dict(frames=frames))
val_dataloader = dict(dataset=dict(frames=frames))
test_dataloader = dict(dataset=dict(frames=frames))
