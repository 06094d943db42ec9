# The CPU recipe (bevformerv2_tiny_320x128_t1-hybrid_12ep.py) with BEVFormer v1-style temporal
# self-attention on the previous keyframe, as bevformerv2_tiny_320x128_t2-stream_12ep.py: the
# encoder's BEV queries attend to the past BEV (eval mode, no gradients in training; carried
# between calls in streaming inference) instead of a fusion of the two BEVs. No encoder dropout,
# as the two-frame fusion recipe (..._t2-hybrid_12ep.py): the past BEV is encoded without it.
# The streaming ablation of README "Results".
_base_ = ["./bevformerv2_tiny_320x128_t1-hybrid_12ep.py"]

frames = (-1, 0)
model = dict(bev=dict(frames=frames, temporal="streaming", encoder=dict(dropout=0.0)))
train_dataloader = dict(dataset=dict(frames=frames))
val_dataloader = dict(dataset=dict(frames=frames))
test_dataloader = dict(dataset=dict(frames=frames))
