# The tiny BEVFormer v2 with the perspective head and hybrid object queries
# (bevformerv2_tiny_320x128_t1-hybrid_12ep.py) on two frames, the previous keyframe and the
# current one, fused by ResNetFusion as in bevformerv2_tiny_320x128_t2_12ep.py: the temporal
# variant of the CPU recipe, compared with the single-frame one on velocity (README "Results").
_base_ = ["./bevformerv2_tiny_320x128_t1-hybrid_12ep.py"]

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
