# BEVFormer v2, InternImage-XL, 1600x640, two frames (previous keyframe + current), 24 epochs.
# The past frame's BEV is computed without gradients on the current grid and fused with the
# current one by ResNetFusion (inter channels = 2 x 256, official bevformerv2-r50-t2-24ep).
# Result: not measured yet.
_base_ = ["./bevformerv2_internimage-xl_1600x640_t1_24ep.py"]

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
