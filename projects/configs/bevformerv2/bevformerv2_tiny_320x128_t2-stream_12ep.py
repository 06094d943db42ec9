# The tiny CPU model with BEVFormer v1-style temporal self-attention instead of fusion: the
# encoder attends to the previous keyframe's BEV (computed without gradients in training; in
# streaming inference carried between calls as the returned TemporalState).
_base_ = ["./bevformerv2_tiny_320x128_t1_12ep.py"]

frames = (-1, 0)
model = dict(bev=dict(frames=frames, temporal="streaming"))
train_dataloader = dict(dataset=dict(frames=frames))
val_dataloader = dict(dataset=dict(frames=frames))
test_dataloader = dict(dataset=dict(frames=frames))
