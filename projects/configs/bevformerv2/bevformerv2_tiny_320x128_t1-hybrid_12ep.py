# The tiny BEVFormer v2 with the perspective head and hybrid object queries (the BEVFormer v2
# paper's two-stage design, docs/ARCHITECTURE.md "Hybrid object queries"): the perspective
# head's top-k detections, lifted to the lidar frame, become k extra decoder queries beside
# the 100 learned ones, in training and at test time. The CPU learning recipe (`make recipe`):
# NDS 0.357, mAP 0.217 on the held-out synthetic scenes after 28 minutes of training on two
# cores (README "Results").
_base_ = ["./bevformerv2_tiny_320x128_t1-mono_12ep.py"]

num_hybrid_queries = 30
model = dict(
    pts_bbox_head=dict(num_hybrid_queries=num_hybrid_queries),
    perspective=dict(
        hybrid=dict(
            _delete_=True,
            type="HybridQueries",
            num_queries=num_hybrid_queries,
            embed_dims=_base_.embed_dims,
            num_classes=len(_base_.class_names),
        ),
    ),
)
