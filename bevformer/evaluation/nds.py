"""nuScenes detection score (NDS) of a submission with the official devkit.

A thin wrapper around ``nuscenes.eval.detection.evaluate.DetectionEval`` with the
``detection_cvpr_2019`` configuration (the metric of the nuScenes leaderboard and of BEVFormer's
papers): it runs ``DetectionEval.main``, which writes ``metrics_summary.json`` and
``metrics_details.json`` to ``output_dir`` and prints the devkit's per-class table, adds
``metrics_table.txt`` (the same numbers as plain text) and returns the headline numbers as a
flat dict:

    NDS, mAP, mATE, mASE, mAOE, mAVE, mAAE, and "<class>_AP" for each of the 10 classes.

NDS = (5 mAP + sum over the five TP errors of (1 - min(1, err))) / 10 (nuScenes paper, eq. 3).
"""

from __future__ import annotations

import os
import os.path as osp

from bevformer.data.infos import load_nuscenes

__all__ = ["DEFAULT_EVAL_SET", "evaluate_nds", "format_metrics"]

# Split that the devkit evaluates for each version (``create_splits_scenes`` names).
DEFAULT_EVAL_SET = {"v1.0-mini": "mini_val", "v1.0-trainval": "val", "v1.0-test": "test"}

_TP_NAMES = {
    "trans_err": "mATE",
    "scale_err": "mASE",
    "orient_err": "mAOE",
    "vel_err": "mAVE",
    "attr_err": "mAAE",
}


def format_metrics(
    metrics: dict[str, float], class_errors: dict[str, dict[str, float]] | None = None
) -> str:
    """A printable table of :func:`evaluate_nds`'s result.

    ``class_errors`` (``metrics_summary.json``'s ``label_tp_errors``: class -> ``trans_err``,
    ...) adds the devkit's per-class ATE/ASE/AOE/AVE/AAE columns next to each class's AP.
    """
    lines = [f"{'NDS':<22}{metrics['NDS']:.4f}", f"{'mAP':<22}{metrics['mAP']:.4f}"]
    lines += [f"{name:<22}{metrics[name]:.4f}" for name in _TP_NAMES.values()]
    lines.append("")
    columns = [name[1:] for name in _TP_NAMES.values()] if class_errors else []
    lines.append(f"{'class':<22}" + "".join(f"{c:<8}" for c in ["AP", *columns]))
    for key, value in metrics.items():
        if key.endswith("_AP"):
            cls = key[:-3]
            errs = [class_errors[cls][k] for k in _TP_NAMES] if class_errors else []
            lines.append(f"{cls:<22}" + "".join(f"{v:<8.3f}" for v in [value, *errs]))
    return "\n".join(lines)


def evaluate_nds(
    result_path: str,
    dataroot: str,
    version: str,
    eval_set: str | None = None,
    output_dir: str | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """Score a submission JSON against the dataroot's ground truth.

    Args:
        result_path: submission written by :func:`bevformer.evaluation.results.write_submission`.
        dataroot, version: the nuScenes-format dataset (``v1.0-mini`` / ``v1.0-trainval``).
        eval_set: devkit split (``mini_val``, ``val``, ...); default from ``version``.
        output_dir: where the metric files go (default: next to ``result_path``).
        verbose: let the devkit print its progress.
    """
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    if eval_set is None:
        if version not in DEFAULT_EVAL_SET:
            raise ValueError(
                f"no default eval_set for version {version!r}; pass one of the devkit splits "
                "(mini_val, val, ...)"
            )
        eval_set = DEFAULT_EVAL_SET[version]
    if not osp.isfile(result_path):
        raise FileNotFoundError(f"submission {result_path} does not exist; write it first")
    output_dir = output_dir or osp.dirname(osp.abspath(result_path))
    os.makedirs(output_dir, exist_ok=True)

    nusc = load_nuscenes(dataroot, version, verbose=verbose)
    evaluator = DetectionEval(
        nusc,
        config=config_factory("detection_cvpr_2019"),
        result_path=result_path,
        eval_set=eval_set,
        output_dir=output_dir,
        verbose=verbose,
    )
    # the devkit's own entry point: metrics_summary.json, metrics_details.json and its
    # standard per-class table (AP, ATE, ASE, AOE, AVE, AAE) on stdout
    summary = evaluator.main(plot_examples=0, render_curves=False)

    flat = {"NDS": float(summary["nd_score"]), "mAP": float(summary["mean_ap"])}
    for key, name in _TP_NAMES.items():
        flat[name] = float(summary["tp_errors"][key])
    for cls, ap in summary["mean_dist_aps"].items():
        flat[f"{cls}_AP"] = float(ap)
    with open(osp.join(output_dir, "metrics_table.txt"), "w") as f:
        f.write(format_metrics(flat, summary["label_tp_errors"]) + "\n")
    return flat
