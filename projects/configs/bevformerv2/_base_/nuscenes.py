# nuScenes data for BEVFormer v2 at the official settings (BEVFormer
# projects/configs/bevformerv2/bevformerv2-r50-t1-24ep.py): 1600x900 images cropped to the bottom
# 1600x640, resized by a random scale from {0.8, 0.85, ..., 1.2} with random flip in training,
# photometric distortion, BEV augmentation of the GT (rotation +-22.5 deg, scale 0.95-1.05, x/y
# flips), padding to a multiple of 32. Frames, box vector and batch layout: docs/CONVENTIONS.md.
point_cloud_range = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
class_names = [
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
]
# The dataroot and the nuScenes version it holds, set once here. Paths in the dataset and
# evaluator nodes are relative to data_root; the nodes do not name the dataroot or the version:
# bevformer.engine.launch.load_config writes the top-level data_root and version into them
# after inheritance, --cfg-options and --data-root, so a child config that sets data_root,
# --cfg-options data_root=DIR and --data-root DIR all move every path.
data_root = "data/nuscenes/full/"
version = "v1.0-trainval"
info_prefix = "nuscenes"
frames = (0,)
image_size = (640, 1600)  # (H, W) at scale 1
train_scales = (0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2)  # official resize 512..768
flip_prob = 0.5
# caffe-style BGR (ResNet-50 caffe); InternImage configs switch to ImageNet RGB
img_norm_cfg = dict(mean=[103.53, 116.28, 123.675], std=[1.0, 1.0, 1.0], to_rgb=False)

load_step = dict(type="LoadMultiViewImages", to_float32=True)
photometric_step = dict(type="PhotoMetricDistortionMultiViewImage")
bda_step = dict(
    type="GlobalRotScaleTransBEV",
    rot_range=(-22.5, 22.5),
    scale_range=(0.95, 1.05),
    flip_dx_prob=0.5,
    flip_dy_prob=0.5,
)
pad_step = dict(type="PadMultiViewImage", size_divisor=32)
train_pipeline = [
    load_step,
    photometric_step,
    bda_step,
    dict(
        type="CropResizeFlipImage",
        final_size=image_size,
        scale_choices=train_scales,
        flip_prob=flip_prob,
    ),
    dict(type="NormalizeMultiViewImage", **img_norm_cfg),
    pad_step,
]
test_pipeline = [
    load_step,
    dict(type="CropResizeFlipImage", final_size=image_size, test_scale=1.0),
    dict(type="NormalizeMultiViewImage", **img_norm_cfg),
    pad_step,
]
train_dataset = dict(
    type="NuScenesTemporalDataset",
    info_file=f"{info_prefix}_infos_temporal_train.json",
    expected_split="train",
    frames=frames,
    transforms=train_pipeline,
    classes=class_names,
    pc_range=point_cloud_range,
    with_mono=False,
)
val_dataset = dict(
    type="NuScenesTemporalDataset",
    info_file=f"{info_prefix}_infos_temporal_val.json",
    expected_split="val",
    frames=frames,
    transforms=test_pipeline,
    classes=class_names,
    pc_range=point_cloud_range,
    test_mode=True,
    with_mono=False,
)
train_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
    dataset=train_dataset,
)
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=val_dataset,
)
test_dataloader = val_dataloader
val_evaluator = dict(
    type="NuScenesMetric",
    ann_file=val_dataset["info_file"],
    eval_set="val",  # the devkit's name of the split of ann_file (v1.0-mini: mini_val)
    classes=class_names,
)
test_evaluator = val_evaluator
