"""The ground-truth references the velocity results are read against: the previous-frame
velocity by hand, and the three references through DetectionEval on the synthetic val split
(only the velocity error changes; zero velocity is the mAVE floor, the previous-frame
difference far below it)."""

import math

import numpy as np
import pytest

from bevformer.data.infos import create_infos, load_infos
from bevformer.evaluation import evaluate_nds, write_submission
from bevformer.evaluation.references import (
    displaced_centres,
    previous_frame_velocity,
    reference_results,
)


def _keyframe(token, timestamp, yaw, boxes, instances):
    c, s = math.cos(yaw), math.sin(yaw)
    ego2global = [[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    return {
        "token": token,
        "timestamp": timestamp,
        "lidar2ego": np.eye(4).tolist(),
        "ego2global": ego2global,
        "gt_boxes": [[*xyz, 2, 4, 1.5, 0, 0, 0] for xyz in boxes],
        "instance_tokens": instances,
    }


def test_previous_frame_velocity_by_hand():
    # 0.5 s apart; the ego turned by 90 degrees in place. Instance a: global (10, 0) -> (11,
    # 0.5), i.e. (2, 1) m/s global = (1, -2) m/s in the turned lidar frame (x along global y).
    # Instance b is new: no velocity.
    prev = _keyframe("p", 0, 0.0, [(10, 0, 0)], ["a"])
    now = _keyframe("n", 500_000, math.pi / 2, [(0.5, -11, 0), (3, 3, 0)], ["a", "b"])
    assert np.allclose(previous_frame_velocity(now, prev), [[1.0, -2.0], [0.0, 0.0]])
    assert np.array_equal(previous_frame_velocity(now, None), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not later than"):
        previous_frame_velocity(prev, now)


def test_position_noise_of_the_previous_frame_velocity_by_hand():
    """Three keyframes 0.5 s apart, identity poses, 4000 static instances. With the centres
    placed off by N(0, 0.5^2) m per axis in each keyframe, the differenced velocity of a static
    box has per-axis standard deviation sqrt(2) x 0.5 / 0.5 = 1.414 m/s; each keyframe has one
    draw, so the two velocities of an instance telescope to its displacement over 1 s; the
    boxes themselves are not moved; sigma 0 is the exact reference."""
    n = 4000
    centres = [(x, y, 0.0) for x, y in np.random.default_rng(7).uniform(-40, 40, (n, 2))]
    names = [f"i{k}" for k in range(n)]
    infos = [_keyframe(f"k{t}", t * 500_000, 0.0, centres, names) for t in range(3)]
    for info, prev in zip(infos[1:], infos[:-1], strict=True):
        info["prev"] = prev["token"]
    for info in infos:
        info.update(
            gt_names=["car"] * n, valid_flag=[True] * n, gt_attributes=["vehicle.moving"] * n
        )
    noisy = displaced_centres(infos, 0.5, seed=3)
    v1 = previous_frame_velocity(noisy["k1"], noisy["k0"])
    v2 = previous_frame_velocity(noisy["k2"], noisy["k1"])
    assert np.allclose(v1.std(axis=0), math.sqrt(2) * 0.5 / 0.5, rtol=0.05)
    assert np.allclose(v1.mean(axis=0), 0.0, atol=0.1)
    xy = {t: np.asarray(noisy[f"k{t}"]["gt_boxes"])[:, :2] for t in (0, 2)}
    assert np.allclose((v1 + v2) * 0.5, xy[2] - xy[0])
    assert np.array_equal(np.asarray(infos[1]["gt_boxes"])[:, :3], np.asarray(centres))
    assert np.array_equal(previous_frame_velocity(infos[1], infos[0]), np.zeros((n, 2)))
    with pytest.raises(ValueError, match=">= 0 metres"):
        displaced_centres(infos, -0.1)
    with pytest.raises(ValueError, match="previous-frame reference only"):
        reference_results(infos, "zero-velocity", position_noise=0.5)


@pytest.fixture(scope="module")
def val_infos(synthetic_val_dataroot, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference_infos")
    written = create_infos(
        str(synthetic_val_dataroot), "v1.0-mini", out_dir=str(out), progress=False
    )
    return load_infos(written["val"])[1]


def test_the_references_differ_only_in_velocity(synthetic_val_dataroot, val_infos, tmp_path):
    metrics = {}
    for kind in ("gt", "zero-velocity", "previous-frame"):
        path = write_submission(
            reference_results(val_infos, kind),
            str(tmp_path / f"{kind}.json"),
            expected_tokens=[i["token"] for i in val_infos],
        )
        out = tmp_path / kind
        metrics[kind] = evaluate_nds(
            path, str(synthetic_val_dataroot), "v1.0-mini", output_dir=str(out)
        )
    for kind, m in metrics.items():
        assert m["mAP"] >= 0.99 and m["mATE"] < 0.01 and m["mAOE"] < 0.01, (kind, m)
    assert metrics["gt"]["mAVE"] < 0.05
    floor = metrics["zero-velocity"]["mAVE"]
    assert floor > 1.0  # the synthetic objects move: zero velocity is far off
    assert metrics["previous-frame"]["mAVE"] < 0.25 * floor
    assert metrics["zero-velocity"]["NDS"] < metrics["gt"]["NDS"] - 0.05
    with pytest.raises(ValueError, match="unknown reference"):
        reference_results(val_infos, "constant")


def test_the_velocity_targets_are_the_motion_between_keyframes(val_infos):
    """Frame and sign of the velocity the model learns (``gt_boxes`` VX, VY, lidar frame): for
    an instance seen in the previous keyframe, its displacement since then over the time
    between the keyframes (moved through the global frame) is its annotated velocity."""
    by_token = {info["token"]: info for info in val_infos}
    errors, speeds = [], []
    for info in val_infos:
        prev = by_token.get(info["prev"])
        if prev is None:
            continue
        seen = [i for i, t in enumerate(info["instance_tokens"]) if t in prev["instance_tokens"]]
        target = np.asarray(info["gt_boxes"]).reshape(-1, 9)[seen, 7:9]
        moved = previous_frame_velocity(info, prev)[seen]
        errors.append(np.linalg.norm(moved - target, axis=1))
        speeds.append(np.linalg.norm(target, axis=1))
    errors, speeds = np.concatenate(errors), np.concatenate(speeds)
    assert len(errors) > 100 and np.median(speeds) > 1.0
    assert np.median(errors) < 0.05 * np.median(speeds), (np.median(errors), np.median(speeds))


def test_the_velocity_report_of_the_references(val_infos, tmp_path):
    """Matched through the submission writer (global frame): the ground truth's velocities
    come back; zero velocity is static for every moving box."""
    import json

    from bevformer.evaluation.velocity import matched_velocities, velocity_summary

    summaries = {}
    for kind in ("gt", "zero-velocity"):
        path = write_submission(reference_results(val_infos, kind), str(tmp_path / f"{kind}.json"))
        results = json.loads(open(path).read())["results"]
        summaries[kind] = velocity_summary(*matched_velocities(results, val_infos))
    gt, zero = summaries["gt"], summaries["zero-velocity"]
    assert gt["matched"] == zero["matched"] > 100
    assert gt["mean_error"] < 0.01 and gt["speed_correlation"] > 0.999
    assert gt["mean_predicted_speed"] == pytest.approx(gt["mean_true_speed"], abs=0.01)
    assert zero["mean_predicted_speed"] == 0.0 and zero["moving_predicted_static"] == 1.0
    assert zero["mean_error"] == pytest.approx(gt["mean_true_speed"], abs=0.01)


def test_differenced_velocities_by_hand():
    """A car moved 2 m along x in 0.5 s: 4 m/s; a low-score past box and one of another class
    are not its past; a box with no past within reach keeps its own velocity; the first
    keyframe keeps all of its own."""
    from bevformer.evaluation.velocity import differenced_results

    def box(x, y, name, score, velocity=(9.0, 9.0)):
        return {"translation": [x, y, 0.0], "detection_name": name, "detection_score": score,
                "velocity": list(velocity)}  # fmt: skip

    infos = [{"token": "p", "timestamp": 0, "prev": ""},
             {"token": "n", "timestamp": 500_000, "prev": "p"}]  # fmt: skip
    results = {
        "p": [box(0, 0, "car", 0.9), box(1.5, 0, "car", 0.2), box(1.8, 0, "truck", 0.9)],
        "n": [box(2, 0, "car", 0.8), box(40, 0, "car", 0.7)],
    }
    out = differenced_results(results, infos)
    assert out["n"][0]["velocity"] == pytest.approx([4.0, 0.0])
    assert out["n"][1]["velocity"] == [9.0, 9.0]  # 38 m away: beyond 16 m/s x 0.5 s
    assert [b["velocity"] for b in out["p"]] == [[9.0, 9.0]] * 3
    assert results["n"][0]["velocity"] == [9.0, 9.0]  # the input is not changed
    with pytest.raises(ValueError, match="not later than"):
        differenced_results(results, [{**infos[0], "timestamp": 600_000}, infos[1]])


def test_differencing_the_ground_truth_recovers_its_motion(val_infos, tmp_path):
    """The ground-truth boxes differenced between keyframes by nearest neighbour give the
    motion of the previous-frame reference for nearly every box."""
    import json

    from bevformer.evaluation.velocity import differenced_results, matched_velocities

    path = write_submission(reference_results(val_infos, "gt"), str(tmp_path / "gt.json"))
    results = json.loads(open(path).read())["results"]
    true, differenced = matched_velocities(differenced_results(results, val_infos), val_infos)
    errors = np.linalg.norm(true - differenced, axis=1)
    assert len(errors) > 100 and np.median(errors) < 0.2, np.median(errors)
    assert np.mean(errors < 1.0) > 0.9


def test_reference_rows_tool_scores_either_split(synthetic_val_dataroot, tmp_path):
    """``tools/reference_rows.py --split train`` scores the train keyframes on the devkit's
    ``mini_train`` (each split's ground truth places every box: mAP 1 within rounding where
    the split has every class, mATE 0); an unknown version/split pair is refused by name."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    root = tmp_path / "nuscenes"
    root.mkdir()
    for name in ("v1.0-mini", "samples", "maps"):
        (root / name).symlink_to(Path(synthetic_val_dataroot) / name)
    create_infos(str(root), "v1.0-mini", out_dir=str(root), progress=False)
    rows, stdout = {}, {}
    for split in ("train", "val"):
        command = [sys.executable, "tools/reference_rows.py", str(root), "--split", split]
        command += ["--references", "zero-velocity", "--work-dir", str(tmp_path / split)]
        command += ["--position-noise", "0", "1"] if split == "val" else []
        done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        stdout[split] = done.stdout
        assert re.search(rf"\(v1\.0-mini, {split}: 12 keyframes\)", done.stdout), done.stdout
        row = re.search(r"\| zero-velocity \| ([0-9.| ]+) \|", done.stdout)
        assert row, done.stdout
        rows[split] = [float(v) for v in row.group(1).split("|")]  # NDS mAP mATE mAOE mAVE mAAE
    for split, (_, _, mate, _, mave, _) in rows.items():
        assert mate < 0.01 and mave > 1.0, (split, rows[split])
    assert rows["train"] != rows["val"]  # different keyframes scored
    noisy = {}
    for sigma in ("0", "1"):
        label = rf"previous-frame, centres off by N\(0, {sigma}\^2\) m"
        row = re.search(rf"\| {label} \| ([0-9.| ]+) \|", stdout["val"])
        assert row, stdout["val"]
        noisy[sigma] = [float(v) for v in row.group(1).split("|")]
    # the boxes stay in place; the velocity error grows with the placement error (sqrt(2) x
    # 1 m / 0.5 s = 2.8 m/s per axis at sigma 1), and sigma 0 is far below the floor
    assert noisy["0"][2] < 0.01 and noisy["1"][2] < 0.01
    assert noisy["0"][4] < 0.5 * rows["val"][4] < noisy["1"][4]
    command = [sys.executable, "tools/reference_rows.py", str(root), "--position-noise", "-0.5"]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "sigmas >= 0 (metres), got [-0.5]" in done.stderr
    command = [sys.executable, "tools/reference_rows.py", str(root), "--split", "test"]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "no devkit split for v1.0-mini test" in done.stderr
