"""The tiny model learns: a few AdamW steps on two synthetic samples lower the loss; and the
benchmark helpers of ``bevformer.benchmark`` return sane numbers.

Data: a synthetic dataroot (2 scenes x 4 samples, 160 x 90 images; the first scene is the
train split) and its info files. Model: the tiny config with a 25 x 25 BEV grid and 50
queries, images cropped and resized to 64 x 160 by the test pipeline (no random augmentation),
so the same two samples are overfitted.

Measured (3 model seeds, 20 steps, lr 1e-3): the mean total loss of the last 5 steps is
0.53-0.58 x that of the first 5; the test asks for < 0.8 x.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bevformer.benchmark import (
    bench_data,
    benchmark_dataset,
    count_parameters,
    format_data_table,
    format_model_table,
    load_config,
    measure_model,
    model_batch,
    synthetic_dataroot,
)
from bevformer.builder import build_model
from bevformer.data.collate import collate

IMAGE_HW = (64, 160)
BEV = 25


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory):
    return synthetic_dataroot(
        tmp_path_factory.mktemp("synthetic"),
        scenes=2,
        samples_per_scene=4,
        image_size=(160, 90),
        seed=0,
    )


def small_tiny_config():
    cfg = load_config("tiny")
    cfg.model.bev.encoder.grid.update(bev_h=BEV, bev_w=BEV)
    cfg.model.pts_bbox_head.num_query = 50
    return cfg


@pytest.mark.slow
def test_tiny_model_overfits_two_samples(dataroot):
    cfg = small_tiny_config()
    dataset = benchmark_dataset(cfg, dataroot, image_size=IMAGE_HW, train_pipeline=False)
    batch = collate([dataset[0], dataset[1]])
    assert batch["img"].shape == (2, 1, 6, 3, *IMAGE_HW)
    assert all(len(b) > 0 for b in batch["gt_boxes"])  # something to detect

    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    history = []
    for _ in range(20):
        optimizer.zero_grad(set_to_none=True)
        losses = model(**batch, mode="loss")
        total = sum(v for k, v in losses.items() if "loss" in k)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
        optimizer.step()
        history.append(float(total.detach()))
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.8 * first, f"loss did not decrease enough: {history}"


def test_model_batch_has_the_conventions_layout(dataroot):
    cfg = load_config("tiny")
    batch = model_batch(cfg, dataroot, IMAGE_HW, batch_size=2)
    assert batch["img"].shape == (2, 1, 6, 3, 64, 160)
    assert batch["lidar2img"].shape == (2, 1, 6, 4, 4)
    assert batch["frame_valid"].all()
    assert len(batch["gt_boxes"]) == 2 and batch["gt_boxes"][0].shape[-1] == 9


def test_model_batch_takes_a_relative_dataroot(dataroot, monkeypatch):
    # `tools/benchmark.py model --dataroot data/nuscenes/...`: paths relative to the cwd
    monkeypatch.chdir(Path(dataroot).parent)
    batch = model_batch(load_config("tiny"), Path(dataroot).name, IMAGE_HW)
    assert batch["img"].shape == (1, 1, 6, 3, *IMAGE_HW)


def test_model_measurement_runs_in_its_subprocess(dataroot):
    # `python -m bevformer.benchmark SPEC`, as `tools/benchmark.py model` runs it
    result = measure_model("tiny", "forward", False, IMAGE_HW, dataroot, threads=1, repeats=1)
    assert result["ops"] == "kernel" and result["seconds"] > 0 and result["peak_bytes"] > 0
    assert result["params"] == count_parameters(build_model(load_config("tiny").model))


def test_data_benchmark_on_four_samples(dataroot):
    rows = bench_data(dataroot, workers=[0], config="tiny", samples=4, batch_size=2)
    assert [r["workers"] for r in rows] == [0]
    (row,) = rows
    assert row["samples"] == 2  # the first batch of 2 is not timed
    assert row["seconds"] > 0 and row["samples_per_s"] > 0
    assert row["ratio"] == pytest.approx(1.0)
    table = format_data_table(rows)
    assert "vs 0 workers" in table.splitlines()[0]
    assert table.splitlines()[-1].split()[-1] == "1.00x"


def test_data_benchmark_needs_two_batches(dataroot):
    with pytest.raises(ValueError, match="at least two batches"):
        bench_data(dataroot, workers=[0], samples=3, batch_size=2)


def test_model_table_prints_reference_over_kernel_ratios():
    row = {
        "config": "tiny",
        "mode": "forward",
        "image_size": (128, 320),
        "params": 2_289_389,
        "kernel": {"seconds": 0.5, "peak_bytes": 100 * 2**20},
        "reference": {"seconds": 1.5, "peak_bytes": 250 * 2**20},
    }
    header, _, line = format_model_table([row]).splitlines()
    assert "ref/kernel" in header and "mem ref/kernel" in header
    cells = line.split()
    assert cells[:4] == ["tiny", "128x320", "2.3M", "forward"]
    assert cells[4:] == ["0.500", "1.500", "3.00x", "100", "250", "2.50x"]


def test_model_table_prints_the_float32_over_bfloat16_train_step():
    def row(mode: str, seconds: float) -> dict:
        kernel = {"seconds": seconds, "peak_bytes": 2**20}
        return {
            "config": "tiny-hybrid",
            "mode": mode,
            "image_size": (128, 320),
            "params": 3e6,
            "kernel": kernel,
            "reference": dict(kernel, seconds=2 * seconds),
        }

    lines = format_model_table([row("train", 1.2), row("train-bf16", 0.8)]).splitlines()
    assert lines[-1] == "tiny-hybrid: train step float32 / bfloat16 autocast (kernels) = 1.50x"
    assert "bfloat16" not in format_model_table([row("train", 1.2)])


def test_model_table_marks_a_failed_measurement():
    row = {
        "config": "xl",
        "mode": "train",
        "image_size": (128, 320),
        "params": 370e6,
        "kernel": {"seconds": 80.0, "peak_bytes": 2**30},
        "reference": {"error": "killed"},
    }
    cells = format_model_table([row]).splitlines()[-1].split()
    assert cells[4:] == ["80.000", "failed", "n/a", "1024", "failed", "n/a"]
