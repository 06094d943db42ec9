# BEVFormer v2 model at the official nuScenes settings (BEVFormer
# projects/configs/bevformerv2/bevformerv2-r50-t1-24ep.py): ResNet-50 (caffe) -> FPN P3-P7 (256
# channels) -> BEV encoder on P3-P6 (6 layers, 200x200 BEV at 0.512 m, 4 z-anchors per pillar,
# spatial cross-attention 8 heads x 4 levels x 8 points, self-attention 1 level x 4 points, FFN
# 512) -> detection head (900 queries, 6 decoder layers, box refinement, group-DETR with 11
# groups in training). Experiment configs swap the backbone and set the frames.
_base_ = ["./nuscenes.py"]

point_cloud_range = _base_.point_cloud_range
frames = _base_.frames
embed_dims = 256
ffn_dims = 512
bev_h = 200
bev_w = 200
num_levels = 4  # FPN maps the BEV encoder reads (P3-P6)
num_mono_levels = 5  # FPN maps of the perspective head (P3-P7)
group_detr = 11
# The cameras the model is built for, in the order of its camera embeddings (cams_embeds row n
# is camera n; official nuScenes order). The number of cameras is len(camera_names). The
# launcher writes model.bev.encoder.camera_names into every dataset node, which stacks the info
# file's images by these names; a model for fewer cameras sets model.bev.encoder.camera_names
# (in a child config or with --cfg-options) to those only.
camera_names = [
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
]
# BatchNorm of the backbone, the fusion and the perspective head's towers. Built as plain
# BatchNorm; ``sync_bn = "torch"`` has the training launcher convert every BatchNorm to
# torch.nn.SyncBatchNorm in multi-GPU runs (official: SyncBN in all three; one process or CPU
# processes keep plain BatchNorm, bevformer/engine/sync_bn.py).
norm_layer = "BN"
sync_bn = "torch"

model = dict(
    type="BEVFormerV2",
    num_levels=num_levels,
    use_grid_mask=True,
    # Submodules to keep fixed in training (requires_grad off, eval mode), e.g. ["img_backbone",
    # "img_neck", "bev.encoder", "perspective.mono_head"] to fine-tune only the fusion and the
    # head of a model loaded with --load-from. Not in the official configs (which train all).
    frozen=[],
    img_backbone=dict(
        type="ResNetBackbone",
        depth=50,
        out_indices=(1, 2, 3),
        style="caffe",
        norm_layer=norm_layer,
    ),
    img_neck=dict(
        type="FPN",
        in_channels=[512, 1024, 2048],
        out_channels=embed_dims,
        num_outs=num_mono_levels,
        start_level=0,
        add_extra_convs="on_output",
        relu_before_extra_convs=True,
    ),
    # the BEV stage (TemporalBEV): the encoder, the frames of a sample (keyframe offsets, 0 =
    # current) and how they are combined ("fusion": ResNetFusion of the T BEVs; "streaming":
    # v1-style temporal self-attention on the previous BEV)
    bev=dict(
        type="TemporalBEV",
        frames=frames,
        temporal="fusion",
        encoder=dict(
            type="BEVEncoder",
            embed_dims=embed_dims,
            num_layers=6,
            # the BEV grid of the whole model: the encoder builds it; the detector hands it to
            # the head, the hybrid queries, the BEV augmentation and the temporal alignment
            grid=dict(type="BEVGrid", bev_h=bev_h, bev_w=bev_w, pc_range=point_cloud_range),
            num_points_in_pillar=4,
            num_levels=num_levels,
            camera_names=camera_names,
            num_heads=8,
            self_attn_points=4,
            cross_attn_points=8,
            ffn_dims=ffn_dims,
            dropout=0.1,
        ),
        fusion=None,
    ),
    pts_bbox_head=dict(
        type="BEVFormerHead",
        num_classes=len(_base_.class_names),
        embed_dims=embed_dims,
        num_query=900,
        group_detr=group_detr,
        num_decoder_layers=6,
        num_heads=8,
        num_points=4,
        ffn_dims=ffn_dims,
        dropout=0.1,
        with_box_refine=True,
    ),
    # the head's losses: Hungarian matching per query group, focal + smooth-L1 (official
    # FocalLoss 2.0, SmoothL1Loss 0.75, HungarianAssigner3D with the same cost weights)
    criterion=dict(
        type="SetCriterion3D",
        code_weights=[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2],
        loss_cls_weight=2.0,
        loss_bbox_weight=0.75,
        cls_cost_weight=2.0,
        reg_cost_weight=0.75,
    ),
    # test-time decoding: top max_num (query, class) pairs, centres inside post_center_range
    post_processor=dict(
        type="NMSFreeCoder",
        num_classes=len(_base_.class_names),
        max_num=300,
        post_center_range=[-61.2, -61.2, -10.0, 61.2, 61.2, 10.0],
    ),
    # the perspective stage (PerspectiveStage: FCOS3D head, optional hybrid queries); off here,
    # on in every official config through ``perspective`` below
    perspective=None,
)

# Perspective head (BEVFormer v2's DD3D ``fcos3d_bbox_head``, on in every official config):
# FCOS2D + FCOS3D on P3-P7 with the official settings, which are PerspectiveHead's defaults
# (4-conv towers, depth prior per level, canonical sizes, radius 1.5, loss weights 2/1/0.2;
# the 3D-box corner loss with DD3D's own smooth-L1, 0.5 x^2 below beta = 0.05 without the
# division by beta, the speed loss with the standard one).
# Configs switch it on with ``model = dict(perspective=perspective)`` and the training
# dataset's ``with_mono=True``; its losses are multiplied by ``model.perspective.loss_weight``.
perspective = dict(
    type="PerspectiveStage",
    mono_head=dict(
        type="PerspectiveHead",
        num_classes=len(_base_.class_names),
        in_channels=embed_dims,
        strides=(8, 16, 32, 64, 128),
        # target assignment and losses (PerspectiveTrainCfg; test_cfg: the inference thresholds)
        train_cfg=dict(box3d_smooth_l1_form="official"),
    ),
    hybrid=None,
    num_levels=num_mono_levels,  # FPN maps the head reads (P3-P7)
    # official ``forward_mono_train``: the head sees only the cameras with boxes
    cameras="annotated",
    loss_weight=1.0,
)

# Temporal fusion of the T BEVs (official ``ResNetFusion``, modules/transformerV2.py) for the
# configs with more than one frame: ``bev=dict(fusion=dict(fusion, in_channels=T *
# embed_dims))``; the inter channels default to in_channels (official), t8 sets 2 x embed_dims.
fusion = dict(type="ResNetFusion", out_channels=embed_dims, num_layers=3, norm=norm_layer)
