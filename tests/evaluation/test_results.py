"""Result writer: lidar-frame box vectors -> nuScenes submission entries and file."""

import json
import math

import numpy as np
import pytest
from nuscenes.eval.common.data_classes import EvalBoxes
from nuscenes.eval.detection.data_classes import DetectionBox
from pyquaternion import Quaternion

from bevformer.evaluation.results import default_attribute, to_nusc_boxes, write_submission
from bevformer.structures.frames import transform_from

PI = math.pi

# lidar x right / y forward; ego turned 90 deg left and placed at (100, 200, 0)
INFO = {
    "token": "tok0",
    "lidar2ego": transform_from(Quaternion(axis=[0, 0, 1], angle=-PI / 2).elements, [1, 0, 2]),
    "ego2global": transform_from(Quaternion(axis=[0, 0, 1], angle=PI / 2).elements, [100, 200, 0]),
}


def test_default_attribute_as_mmdet3d():
    assert default_attribute("car", 0.0) == "vehicle.parked"
    assert default_attribute("car", 1.0) == "vehicle.moving"
    assert default_attribute("bus", 0.1) == "vehicle.stopped"
    assert default_attribute("pedestrian", 0.1) == "pedestrian.standing"
    assert default_attribute("pedestrian", 1.5) == "pedestrian.moving"
    assert default_attribute("bicycle", 3.0) == "cycle.with_rider"
    assert default_attribute("motorcycle", 0.0) == "cycle.without_rider"
    assert default_attribute("barrier", 5.0) == ""
    assert default_attribute("traffic_cone", 0.0) == ""


def test_entries_in_global_frame():
    # 10 m ahead of the lidar (lidar +y), heading forward (YAW = -pi), moving forward 5 m/s;
    # a cone to the right with unknown (NaN) velocity.
    boxes = np.array(
        [
            [0.0, 10.0, -1.0, 2.0, 4.5, 1.6, -PI, 0.0, 5.0],
            [3.0, 0.0, -1.5, 0.4, 0.4, 1.0, -PI / 2, np.nan, np.nan],
        ]
    )
    entries = to_nusc_boxes(boxes, np.array([0.9, 0.3]), np.array([0, 9]), INFO)
    car, cone = entries
    # ego: (10 + 1, 0, 1) heading +x; global: turned 90 deg -> (100, 211, 1) heading +y
    np.testing.assert_allclose(car["translation"], [100.0, 211.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(car["size"], [2.0, 4.5, 1.6])
    yaw = Quaternion(car["rotation"]).yaw_pitch_roll[0]
    np.testing.assert_allclose(yaw, PI / 2, atol=1e-9)
    np.testing.assert_allclose(car["velocity"], [0.0, 5.0], atol=1e-9)
    assert car["detection_name"] == "car" and car["attribute_name"] == "vehicle.moving"
    assert car["sample_token"] == "tok0" and isinstance(car["detection_score"], float)
    # lidar (3, 0) is 3 m to the right: ego (1, -3) -> global (100 + 3, 200 + 1)
    np.testing.assert_allclose(cone["translation"][:2], [103.0, 201.0], atol=1e-9)
    assert cone["velocity"] == [0.0, 0.0] and cone["attribute_name"] == ""
    # every entry is a valid devkit DetectionBox
    for e in entries:
        DetectionBox.deserialize(e)


def test_given_attributes_and_class_range():
    boxes = np.array([[0.0, 60.0, 0.0, 2.0, 4.5, 1.6, -PI, 0.0, 0.0]] * 2)
    entries = to_nusc_boxes(
        boxes, np.ones(2), np.array([0, 8]), INFO, attributes=["vehicle.stopped", None]
    )
    assert [e["attribute_name"] for e in entries] == ["vehicle.stopped", "pedestrian.standing"]
    # 61 m from the ego (lidar y 60 + 1 m lidar offset): kept within 70 m, dropped beyond 40 m
    kept = to_nusc_boxes(
        boxes, np.ones(2), np.array([0, 8]), INFO, class_range={"car": 70.0, "pedestrian": 40.0}
    )
    assert [e["detection_name"] for e in kept] == ["car"]
    with pytest.raises(ValueError, match="labels must index"):
        to_nusc_boxes(boxes, np.ones(2), np.array([0, 10]), INFO)
    with pytest.raises(ValueError, match="same length"):
        to_nusc_boxes(boxes, np.ones(3), np.array([0, 1]), INFO)
    assert to_nusc_boxes(np.zeros((0, 9)), np.zeros(0), np.zeros(0), INFO) == []


def test_write_submission(tmp_path):
    boxes = np.array([[0.0, 10.0, -1.0, 2.0, 4.5, 1.6, -PI, 0.0, 5.0]])
    results = {"tok0": to_nusc_boxes(boxes, np.ones(1), np.zeros(1), INFO), "tok1": []}
    path = write_submission(results, str(tmp_path / "sub" / "results.json"), {"use_map": True})
    data = json.loads(open(path).read())
    assert data["meta"] == {
        "use_camera": True,
        "use_lidar": False,
        "use_radar": False,
        "use_map": True,
        "use_external": False,
    }
    loaded = EvalBoxes.deserialize(data["results"], DetectionBox)
    assert len(loaded["tok0"]) == 1 and len(loaded["tok1"]) == 0
    write_submission(results, str(tmp_path / "ok.json"), expected_tokens=["tok0", "tok1"])
    with pytest.raises(ValueError, match="lacks 1 .*tok2"):
        write_submission(results, str(tmp_path / "x.json"), expected_tokens=[*results, "tok2"])
    with pytest.raises(ValueError, match="not in the split: tok1"):
        write_submission(results, str(tmp_path / "x.json"), expected_tokens=["tok0"])
    with pytest.raises(ValueError, match="at most 500"):
        write_submission({"tok0": results["tok0"] * 501}, str(tmp_path / "x.json"))


def _car(x: float) -> list[float]:
    return [x, 10.0, -1.0, 1.9, 4.5, 1.6, -PI, 0.0, 5.0]


def test_non_finite_and_degenerate_boxes_are_dropped_or_clamped_with_a_warning():
    """Every entry must pass the devkit's own checks (DetectionBox), whatever the model gave."""
    boxes = np.array([_car(0.0), _car(1.0), _car(2.0), _car(3.0), _car(4.0), _car(5.0)])
    boxes[1, 0] = np.nan  # centre
    boxes[2, 3] = 0.0  # size 0: exp of an underflowed log-size
    boxes[3, 6] = np.inf  # yaw
    boxes[5, 8] = np.nan  # velocity: unknown -> 0
    scores = np.array([0.9, 0.8, 0.7, 0.6, np.nan, 0.4])
    with pytest.warns(UserWarning, match=r"sample tok0: dropped 3 boxes with non-finite center "
                      r"\(1\), yaw \(1\), score \(1\); clamped 1 sizes below 0.001 m; set 1 "
                      r"non-finite velocities to 0"):  # fmt: skip
        entries = to_nusc_boxes(boxes, scores, np.zeros(6, int), INFO)
    assert [e["detection_score"] for e in entries] == [0.9, 0.7, 0.4]
    assert entries[1]["size"][0] == pytest.approx(1e-3)  # w of the clamped box
    assert entries[2]["velocity"] == [0.0, 0.0]
    for entry in entries:  # the devkit's constructor asserts finiteness and sizes > 0
        DetectionBox.deserialize(entry)


def test_a_submission_without_any_box_fails_before_the_evaluation(tmp_path):
    path = tmp_path / "results.json"
    with pytest.raises(ValueError, match="the model produced no finite boxes .* diverged"):
        write_submission({"tok0": [], "tok1": []}, str(path), expected_tokens=["tok0", "tok1"])
    assert not path.exists()
