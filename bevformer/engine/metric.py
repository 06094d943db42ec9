"""nuScenes detection metric for mmengine's evaluation loop.

Each rank turns the detector's lidar-frame boxes into nuScenes submission entries
(:mod:`bevformer.evaluation.results`); mmengine's ``collect_results`` gathers them in sampler
order and drops the padding that makes ranks equal in length. Rank 0 then de-duplicates by
sample token, checks that every sample of the split is present, writes the submission JSON and
scores it with the official ``DetectionEval`` (:mod:`bevformer.evaluation.nds`). Files in
``out_dir``: ``results_nusc.json`` (submission), and with ``run_eval`` the devkit's
``metrics_summary.json``, ``metrics_summary_flat.json`` (NDS, mAP, TP errors, per-class AP) and
``metrics_table.txt`` (the printed table).
"""

from __future__ import annotations

import json
import logging
import os.path as osp
import tempfile
from collections.abc import Sequence
from typing import Any

from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from bevformer.data.infos import check_info_metadata, load_infos, resolve_path
from bevformer.evaluation.nds import evaluate_nds
from bevformer.evaluation.results import to_nusc_boxes, write_submission

__all__ = ["NuScenesMetric", "merge_results"]


def merge_results(parts: Sequence[tuple[str, list[dict]]]) -> dict[str, list[dict]]:
    """Merge ``(sample_token, entries)`` pairs, keeping the first occurrence of each token.

    Distributed samplers repeat a few samples to give every rank the same length; the
    repeats carry the same boxes, so the first copy is kept.
    """
    merged: dict[str, list[dict]] = {}
    for token, entries in parts:
        merged.setdefault(token, entries)
    return merged


class NuScenesMetric(BaseMetric):
    """NDS / mAP of lidar-frame detections with the official nuScenes devkit.

    Args:
        ann_file: info file of the evaluated split (its tokens and poses), relative to
            ``data_root`` unless absolute.
        data_root: nuScenes dataroot (the devkit loads the ground truth from its tables).
        version: ``v1.0-mini`` / ``v1.0-trainval``; the info file must have been made from it.
        eval_set: devkit split name (``mini_val``, ``val``); the info file must hold it.
        classes: class names indexed by label.
        out_dir: where the submission JSON and the metric summary go (``tools/train.py`` and
            ``tools/test.py`` put it under the work dir; a new temporary directory when None).
        run_eval: score with ``DetectionEval``; when False only the submission is written.

    Raises ``ValueError`` when the info file was made from another version or split
    (:func:`bevformer.data.infos.check_info_metadata`).
    """

    default_prefix = "nuscenes"

    def __init__(
        self,
        ann_file: str,
        data_root: str,
        version: str,
        eval_set: str,
        classes: Sequence[str],
        out_dir: str | None = None,
        run_eval: bool = True,
        collect_device: str = "cpu",
        prefix: str | None = None,
    ) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.data_root = data_root
        self.ann_file = resolve_path(data_root, ann_file)
        self.version = version
        self.eval_set = eval_set
        self.classes = list(classes)
        self.out_dir = out_dir
        self.run_eval = run_eval
        metadata, infos = load_infos(self.ann_file)
        check_info_metadata(self.ann_file, metadata, version=version, devkit_split=eval_set)
        self._infos = {info["token"]: info for info in infos}

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for pred in data_samples:
            token = pred["token"]
            if token not in self._infos:
                raise KeyError(
                    f"prediction for sample {token!r}, which is not in {self.ann_file}; "
                    "evaluate with the info file the dataloader reads"
                )
            entries = to_nusc_boxes(
                pred["boxes"].detach().cpu().numpy(),
                pred["scores"].detach().cpu().numpy(),
                pred["labels"].detach().cpu().numpy(),
                self._infos[token],
                self.classes,
            )
            self.results.append((token, entries))

    def compute_metrics(self, results: list) -> dict[str, float]:
        by_token = merge_results(results)
        if self.out_dir is None:
            self.out_dir = tempfile.mkdtemp(prefix="nuscenes_eval_")
        out_dir = self.out_dir
        result_path = osp.join(out_dir, "results_nusc.json")
        try:
            write_submission(by_token, result_path, expected_tokens=list(self._infos))
        except OSError as err:
            # the predictions of the whole loop are in memory: keep them somewhere writable
            out_dir = self.out_dir = tempfile.mkdtemp(prefix="nuscenes_eval_")
            print_log(
                f"could not write the submission to {result_path} ({err.strerror}); writing it "
                f"and the metrics to {out_dir} instead",
                logger="current",
                level=logging.WARNING,
            )
            result_path = osp.join(out_dir, "results_nusc.json")
            write_submission(by_token, result_path, expected_tokens=list(self._infos))
        print_log(f"nuScenes submission written to {result_path}", logger="current")
        if not self.run_eval:
            return {"num_samples": float(len(by_token))}
        summary = evaluate_nds(
            result_path,
            dataroot=self.data_root,
            version=self.version,
            eval_set=self.eval_set,
            output_dir=out_dir,
            verbose=False,
        )
        print_log(f"nuScenes metrics written to {out_dir}", logger="current")
        with open(osp.join(out_dir, "metrics_summary_flat.json"), "w") as f:
            json.dump(summary, f, indent=2)
        return {k: float(v) for k, v in summary.items() if isinstance(v, int | float)}
