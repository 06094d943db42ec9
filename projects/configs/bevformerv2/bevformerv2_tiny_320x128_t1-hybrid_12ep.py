# The tiny BEVFormer v2 with the perspective head and hybrid object queries (the BEVFormer v2
# paper's two-stage design, docs/ARCHITECTURE.md "Hybrid object queries"): the perspective
# head's top-k detections, lifted to the lidar frame, become k extra decoder queries beside
# the 100 learned ones, in training and at test time. Result (README "Results"): NDS 0.156,
# mAP 0.145, mATE 0.92 m vs 0.104, 0.067, 1.14 m with the perspective head alone.
_base_ = ["./bevformerv2_tiny_320x128_t1-mono_12ep.py"]

num_hybrid_queries = 30
model = dict(
    pts_bbox_head=dict(num_hybrid_queries=num_hybrid_queries),
    hybrid_queries=dict(
        type="HybridQueries",
        num_queries=num_hybrid_queries,
        embed_dims=_base_.embed_dims,
        num_classes=len(_base_.class_names),
        pc_range=_base_.point_cloud_range,
    ),
)
