# Runtime shared by every BEVFormer v2 config: hooks, logging, environment, seed.
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", interval=1, max_keep_ckpts=3),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)
visualizer = dict(
    type="Visualizer",
    vis_backends=[dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")],
)
log_processor = dict(type="LogProcessor", window_size=50, by_epoch=True)
log_level = "INFO"
randomness = dict(seed=0)
# Whole-model weights a new run starts from (tools/train.py --load-from overrides it; ignored on
# --resume); names and shapes that match are loaded and the rest is reported, unless
# load_from_strict = True, which makes any difference an error.
load_from = None
load_from_strict = False
# DDP: some parameters get no gradient in some configs (e.g. the FPN's last extra level when
# no perspective head reads it); DDP must then look for them every step.
find_unused_parameters = True
