# The tiny CPU model with two frames (previous keyframe + current) fused by ResNetFusion.
# The recipe's temporal variant is bevformerv2_tiny_320x128_t2-hybrid_12ep.py (README "Results").
_base_ = ["./bevformerv2_tiny_320x128_t1_12ep.py"]

frames = (-1, 0)
model = dict(
    bev=dict(
        frames=frames,
        fusion=dict(
            _delete_=True,
            type="ResNetFusion",
            in_channels=len(frames) * _base_.embed_dims,
            out_channels=_base_.embed_dims,
            num_layers=3,
            norm=_base_.norm_layer,
        ),
    ),
)
train_dataloader = dict(dataset=dict(frames=frames))
val_dataloader = dict(dataset=dict(frames=frames))
test_dataloader = dict(dataset=dict(frames=frames))
