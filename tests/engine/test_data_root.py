"""One ``data_root`` moves every path a run reads; info files of another version or split are
refused.

Each official-setting config and the tiny one is pointed at a synthetic dataroot in the three
ways a user can (``--cfg-options data_root=DIR``, ``--data-root DIR``, a child config that
inherits the config and sets ``data_root``); the datasets and metrics built from the result
must read only files under that dataroot. The synthetic data is ``v1.0-mini``, so the official
configs (``v1.0-trainval``, ``eval_set="val"``) are also told so, through the config keys a
user sets for ``v1.0-mini``.
"""

from __future__ import annotations

import json
import logging
import os
import os.path as osp
import warnings
from pathlib import Path

import pytest
from mmengine.logging import MMLogger

from bevformer.builder import build_dataset
from bevformer.data.dataset import NuScenesTemporalDataset
from bevformer.data.infos import check_info_metadata, load_infos, save_infos
from bevformer.engine.launch import _dataloader, build_metric, check_info_files, load_config
from bevformer.engine.metric import NuScenesMetric

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = "projects/configs/bevformerv2"
TINY_CONFIG = f"{CONFIG_DIR}/bevformerv2_tiny_320x128_t1_12ep.py"  # as tests/engine/conftest.py
OFFICIAL = [
    "bevformerv2_r50_1600x640_t1-base_24ep.py",
    "bevformerv2_internimage-xl_1600x640_t1_24ep.py",
    "bevformerv2_internimage-xl_1600x640_t2_24ep.py",
    "bevformerv2_internimage-xl_1600x640_t8_24ep.py",
]
TINY = osp.basename(TINY_CONFIG)
# what a user of the official configs sets for a v1.0-mini dataroot
MINI = {
    "version": "v1.0-mini",
    "val_evaluator.eval_set": "mini_val",
    "test_evaluator.eval_set": "mini_val",
}
LOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")
EVALUATORS = ("val_evaluator", "test_evaluator")


def _under(path: str, root: str | os.PathLike) -> bool:
    return osp.normpath(path).startswith(osp.normpath(str(root)) + os.sep)


def _child_config(tmp_path: Path, name: str, data_root: str, options: dict) -> str:
    """A config file that inherits ``name`` and sets ``data_root`` (and ``options``, written
    as the nested dicts a user would write)."""
    lines = [f"_base_ = [{str(REPO / CONFIG_DIR / name)!r}]", f"data_root = {data_root!r}"]
    for key, value in options.items():
        *nodes, leaf = key.split(".")
        text = f"{leaf}={value!r}"
        for node in nodes[1:][::-1]:
            text = f"{node}=dict({text})"
        lines.append(f"{nodes[0]} = dict({text})" if nodes else f"{leaf} = {value!r}")
    path = tmp_path / f"child_{name}"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _load(way: str, name: str, root: str, tmp_path: Path):
    options = {} if name == TINY else dict(MINI)
    if way == "cfg-options":
        return load_config(str(REPO / CONFIG_DIR / name), {"data_root": root, **options})
    if way == "data-root":
        return load_config(str(REPO / CONFIG_DIR / name), options, data_root=root)
    return load_config(_child_config(tmp_path, name, root, options))


def _assert_reads_only_under(cfg, root: str) -> None:
    """Datasets and metrics built from ``cfg`` read info files and images under ``root``."""
    check_info_files(cfg, LOADERS)
    for key in LOADERS:
        ds = build_dataset(cfg[key].dataset)
        assert ds.data_root == root, key
        assert _under(ds.info_file, root) and osp.isfile(ds.info_file), (key, ds.info_file)
        assert len(ds) > 0
        for idx in range(min(3, len(ds))):
            paths = [p for row in ds.image_paths(idx) for p in row]
            assert len(paths) == len(ds.frames) * len(ds.camera_names)
            for p in paths:
                assert _under(p, root) and osp.isfile(p), (key, p)
    for key in EVALUATORS:
        metric = build_metric(cfg[key]).metrics[0]
        assert metric.data_root == root, key
        assert _under(metric.ann_file, root) and osp.isfile(metric.ann_file), key


@pytest.mark.parametrize("way", ["cfg-options", "data-root", "child config"])
@pytest.mark.parametrize("name", [*OFFICIAL, TINY])
def test_one_data_root_moves_every_path(name, way, tiny_dataroot, tmp_path):
    default = load_config(str(REPO / CONFIG_DIR / name))
    root = str(tiny_dataroot)
    assert default.train_dataloader.dataset.data_root != root  # the override is what moves it
    cfg = _load(way, name, root, tmp_path)
    assert cfg.data_root == root
    _assert_reads_only_under(cfg, root)


def test_data_root_flag_beats_a_child_config_and_a_dumped_config(tiny_dataroot, tmp_path):
    """``--data-root`` works with a config that sets its own data_root, and with the config a
    run dumps into its work dir (whose nodes carry the values written by ``load_config``)."""
    moved = tmp_path / "moved"
    moved.symlink_to(tiny_dataroot, target_is_directory=True)
    name = OFFICIAL[1]
    child = _child_config(tmp_path, name, str(tiny_dataroot), MINI)
    _assert_reads_only_under(load_config(child, data_root=str(moved)), str(moved))

    dumped = tmp_path / "dumped.py"
    load_config(child).dump(str(dumped))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # equal node values: nothing to warn about
        cfg = load_config(str(dumped), data_root=str(moved))
    _assert_reads_only_under(cfg, str(moved))


def test_node_values_follow_the_top_level(tmp_path):
    path = tmp_path / "c.py"
    path.write_text(
        "data_root = 'data/a/'\n"
        "version = 'v1.0-mini'\n"
        "train_dataloader = dict(dataset=dict(info_file='x.json', data_root='data/b/'))\n"
        "val_evaluator = dict(ann_file='y.json')\n"
    )
    with pytest.warns(UserWarning, match="train_dataloader.dataset.data_root = 'data/b/' is "
                      "replaced by the top-level data_root = 'data/a/'"):  # fmt: skip
        cfg = load_config(str(path))
    assert cfg.train_dataloader.dataset.data_root == "data/a/"
    assert cfg.train_dataloader.dataset.expected_version == "v1.0-mini"
    assert cfg.val_evaluator.data_root == "data/a/" and cfg.val_evaluator.version == "v1.0-mini"
    assert cfg.train_dataloader.dataset.info_file == "x.json"  # stays relative

    with pytest.raises(KeyError, match=r"set that instead \(--cfg-options data_root=\.\.\. or "
                       r"--data-root DIR\)"):  # fmt: skip
        load_config(str(path), {"train_dataloader.dataset.data_root": "data/c/"})
    with pytest.raises(ValueError, match="disagree; give the dataroot once"):
        load_config(str(path), {"data_root": "data/c/"}, data_root="data/d/")
    with pytest.warns(UserWarning, match="'data/b/' is replaced"):  # the same root twice: fine
        assert load_config(str(path), {"data_root": "data/d"}, data_root="data/d/").data_root

    bare = tmp_path / "bare.py"
    bare.write_text("train_dataloader = dict(dataset=dict(info_file='x.json'))\n")
    with pytest.raises(KeyError, match="has no top-level data_root"):
        load_config(str(bare))
    cfg = load_config(str(bare), data_root="data/e")  # --data-root works with any config
    assert cfg.train_dataloader.dataset.data_root == "data/e"


def test_info_files_of_another_split_or_version_are_refused(tiny_dataroot, tmp_path):
    root = str(tiny_dataroot)
    train, val = "nuscenes_infos_temporal_train.json", "nuscenes_infos_temporal_val.json"
    ok = NuScenesTemporalDataset(train, root, expected_version="v1.0-mini", expected_split="train")
    assert ok.info_file == osp.join(root, train)
    with pytest.raises(ValueError, match="holds split 'train' but the config expects 'val'"):
        NuScenesTemporalDataset(train, root, expected_split="val", test_mode=True)
    with pytest.raises(ValueError, match="holds nuScenes version 'v1.0-mini' but the config "
                       "expects 'v1.0-trainval'.*version=v1.0-mini"):  # fmt: skip
        NuScenesTemporalDataset(val, root, expected_version="v1.0-trainval", test_mode=True)
    args = dict(data_root=root, classes=["car"], out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="holds devkit split 'mini_val' but the config expects "
                       "'val'.*eval_set = 'mini_val'"):  # fmt: skip
        NuScenesMetric(ann_file=val, version="v1.0-mini", eval_set="val", **args)
    with pytest.raises(ValueError, match="holds devkit split 'mini_train' but the config"):
        NuScenesMetric(ann_file=train, version="v1.0-mini", eval_set="mini_val", **args)
    with pytest.raises(ValueError, match="'v1.0-mini' but the config expects 'v1.0-trainval'"):
        NuScenesMetric(ann_file=val, version="v1.0-trainval", eval_set="mini_val", **args)

    # an official config on v1.0-mini data without saying so
    cfg = load_config(str(REPO / CONFIG_DIR / OFFICIAL[0]), data_root=root)
    with pytest.raises(ValueError, match="'v1.0-mini' but the config expects 'v1.0-trainval'"):
        build_dataset(cfg.train_dataloader.dataset)
    # a val dataloader pointed at the train infos
    cfg = load_config(
        str(REPO / TINY_CONFIG), {"val_dataloader.dataset.info_file": train}, data_root=root
    )
    with pytest.raises(ValueError, match="val_evaluator scores .*_val.json but val_dataloader "
                       "reads .*_train.json"):  # fmt: skip
        check_info_files(cfg, ["val_dataloader"])
    with pytest.raises(ValueError, match="holds split 'train' but the config expects 'val'"):
        build_dataset(cfg.val_dataloader.dataset)


def test_infos_without_version_or_split_ask_for_create_data(tiny_dataroot, tmp_path):
    metadata, infos = load_infos(str(tiny_dataroot / "nuscenes_infos_temporal_val.json"))
    for key in ("dataset_version", "split", "devkit_split"):
        old = {k: v for k, v in metadata.items() if k != key}
        path = tmp_path / f"no_{key}.json"
        save_infos(str(path), old, infos)
        with pytest.raises(ValueError, match=f"does not record its .*'{key}'.*re-run "
                           "tools/create_data.py"):  # fmt: skip
            check_info_metadata(
                str(path), old, version="v1.0-mini", split="val", devkit_split="mini_val"
            )
    old = {k: v for k, v in metadata.items() if k != "split"}
    save_infos(str(tmp_path / "old.json"), old, infos)
    with pytest.raises(ValueError, match="re-run tools/create_data.py"):
        NuScenesTemporalDataset("old.json", str(tmp_path), expected_split="val", test_mode=True)
    # without expectations (a dataset built by hand) the file still loads
    assert len(NuScenesTemporalDataset(str(tmp_path / "old.json"), str(tiny_dataroot))) > 0


def test_relative_info_file_with_the_root_prefix_gets_a_hint(tiny_dataroot, tmp_path):
    root = str(tiny_dataroot) + "/"
    cfg = load_config(
        str(REPO / TINY_CONFIG),
        {"train_dataloader.dataset.info_file": root + "nuscenes_infos_temporal_train.json"},
        data_root=root,
    )
    # an absolute info_file stays absolute
    check_info_files(cfg, ["train_dataloader"])
    rel_root = osp.relpath(root, os.getcwd()) + "/"
    cfg = load_config(
        str(REPO / TINY_CONFIG),
        {"train_dataloader.dataset.info_file": rel_root + "nuscenes_infos_temporal_train.json"},
        data_root=rel_root,
    )
    with pytest.raises(FileNotFoundError, match="already starts with the data_root"):
        check_info_files(cfg, ["train_dataloader"])


def test_a_run_logs_what_data_it_reads(tiny_cfg, tiny_dataroot):
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        loader = _dataloader(tiny_cfg().val_dataloader)
    finally:
        logger.removeHandler(handler)
    (line,) = [r for r in records if "info file" in r]
    info_file = tiny_dataroot / "nuscenes_infos_temporal_val.json"
    count = len(json.loads(info_file.read_text())["infos"])
    assert len(loader["dataset"]) == count
    assert f"data_root {tiny_dataroot}" in line and f"info file {info_file}" in line
    assert "(v1.0-mini, split val (mini_val))" in line and f": {count} samples" in line
