"""The pinning test of every frame and yaw convention: the ground truth of the synthetic val
split, read from the info file as box vectors and written by the result writer, scores
NDS >= 0.99 and mAP >= 0.99 in the official nuScenes ``DetectionEval``."""

import numpy as np

from bevformer.data.infos import create_infos, load_infos
from bevformer.evaluation import evaluate_nds, to_nusc_boxes, write_submission
from bevformer.structures.boxes import BOX_DIM, CLASSES

VERSION = "v1.0-mini"


def _gt_submission(infos):
    results = {}
    for info in infos:
        boxes = np.asarray(info["gt_boxes"], dtype=np.float64).reshape(-1, BOX_DIM)
        keep = [
            i
            for i, (name, valid) in enumerate(zip(info["gt_names"], info["valid_flag"]))
            if valid and name in CLASSES
        ]
        labels = np.array([CLASSES.index(info["gt_names"][i]) for i in keep], dtype=np.int64)
        attributes = [info["gt_attributes"][i] for i in keep]
        results[info["token"]] = to_nusc_boxes(
            boxes[keep], np.ones(len(keep)), labels, info, attributes=attributes
        )
    return results


def test_ground_truth_scores_full_nds(synthetic_dataroot, tmp_path):
    written = create_infos(str(synthetic_dataroot), VERSION, out_dir=str(tmp_path), progress=False)
    _, infos = load_infos(written["val"])
    results = _gt_submission(infos)
    assert sum(len(v) for v in results.values()) > 0
    path = write_submission(
        results, str(tmp_path / "results_nusc.json"), expected_tokens=[i["token"] for i in infos]
    )
    metrics = evaluate_nds(path, str(synthetic_dataroot), VERSION, output_dir=str(tmp_path))
    assert (tmp_path / "metrics_summary.json").is_file()
    assert metrics["mAP"] >= 0.99, metrics
    assert metrics["NDS"] >= 0.99, metrics
    assert metrics["mATE"] < 0.01 and metrics["mAOE"] < 0.01 and metrics["mAVE"] < 0.05, metrics


def test_shifted_boxes_lose_score(synthetic_dataroot, tmp_path):
    # the metric is not blind: the same GT moved 3 m along lidar x loses most of its AP
    written = create_infos(str(synthetic_dataroot), VERSION, out_dir=str(tmp_path), progress=False)
    _, infos = load_infos(written["val"])
    for info in infos:
        boxes = np.asarray(info["gt_boxes"], dtype=np.float64).reshape(-1, BOX_DIM)
        boxes[:, 0] += 3.0
        info["gt_boxes"] = boxes.tolist()
    path = write_submission(
        _gt_submission(infos),
        str(tmp_path / "shifted.json"),
        expected_tokens=[i["token"] for i in infos],
    )
    metrics = evaluate_nds(path, str(synthetic_dataroot), VERSION, output_dir=str(tmp_path))
    assert metrics["mAP"] < 0.8, metrics
