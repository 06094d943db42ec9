# BEVFormer v2, InternImage-XL, 1600x640, eight frames (keyframes -7..0, 3.5 s), 24 epochs.
# ResNetFusion maps 8 x 256 channels to 512 inter channels (official bevformerv2-r50-t8-24ep).
# Result: not measured yet.
_base_ = ["./bevformerv2_internimage-xl_1600x640_t2_24ep.py"]

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
