"""Pictures of samples, clips and interactive recordings.

- :mod:`.draw`: class colours, labels, boxes projected into cameras, the BEV panel, the legend.
- :mod:`.render`: one picture per sample (cameras, BEV, optional BEV feature heat map, legend)
  and :func:`render_results`, which draws a selection of an info file with predictions.
- :mod:`.video`: H.264 MP4 and GIF clips, one per scene.
- :mod:`.recording`: a Rerun recording (``.rrd``) of the same samples.
"""

from bevformer.visualization.draw import (
    CLASS_COLORS,
    Primitive,
    class_color,
    draw_bev,
    draw_bev_heatmap,
    draw_camera,
)
from bevformer.visualization.render import (
    AUTO_THRESHOLD,
    CAMERA_GRID,
    SampleView,
    camera_tiles,
    detector_bev_heatmap,
    ego_trajectory,
    load_lidar_points,
    parse_score_threshold,
    render_results,
    render_sample,
    sample_view,
    select_infos,
)
from bevformer.visualization.video import mp4_video_codec, write_gif, write_mp4

__all__ = [
    "AUTO_THRESHOLD",
    "CAMERA_GRID",
    "CLASS_COLORS",
    "Primitive",
    "SampleView",
    "camera_tiles",
    "class_color",
    "detector_bev_heatmap",
    "draw_bev",
    "draw_bev_heatmap",
    "draw_camera",
    "ego_trajectory",
    "load_lidar_points",
    "mp4_video_codec",
    "parse_score_threshold",
    "render_results",
    "render_sample",
    "sample_view",
    "select_infos",
    "write_gif",
    "write_mp4",
]
