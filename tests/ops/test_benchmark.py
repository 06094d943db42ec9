"""The operator benchmark's bookkeeping: bytes counted, perf output parsing, timing of a call."""

from __future__ import annotations

import torch

from ops.benchmark import (
    _run_once,
    _traffic,
    measure,
    parse_perf_instructions,
    perf_instructions,
)


def test_traffic_counts_each_tensor_once():
    value, loc, weights = (
        torch.zeros(2, 10, 4, 8),
        torch.zeros(2, 5, 4, 1, 3, 2),
        torch.zeros(2, 5, 4, 1, 3),
    )
    out_numel = 2 * 5 * 4 * 8
    t = _traffic([value, loc, weights], out_numel, points=weights.numel(), channels=8)
    inputs = (value.numel() + loc.numel() + weights.numel()) * 4
    assert t.points == 120
    assert t.forward_bytes == inputs + out_numel * 4
    # inputs and grad_output read once, one gradient per input written once
    assert t.backward_bytes == 2 * inputs + out_numel * 4
    assert t.gather_forward_bytes == 120 * 4 * 8 * 4
    assert t.gather_backward_bytes == 3 * t.gather_forward_bytes


def test_parse_perf_instructions():
    counted = "1234567,,instructions:u,2000000,100.00,,\n"
    assert parse_perf_instructions(counted) == (1234567.0, "perf stat -e instructions:u")
    count, note = parse_perf_instructions("<not supported>,,instructions:u,0,100.00,,\n")
    assert count is None and "<not supported>" in note
    count, note = parse_perf_instructions("some error\n")
    assert count is None and "no instruction count" in note


def test_perf_instructions_counts_or_says_why():
    count, note = perf_instructions(lambda: sum(range(1000)), calls=1)
    assert (count is None and note) or (count is not None and count > 1000)


def test_measure_times_the_backward_inside_the_step():
    weight = torch.randn(64, 64)

    def fn(x):
        return (x @ weight).tanh()

    x = torch.randn(256, 64)
    assert _run_once(fn, [x], backward=False) == 0.0
    assert _run_once(fn, [x], backward=True) > 0.0
    timing = measure(fn, [x], backward=True, repeats=3, device=torch.device("cpu"))
    assert 0.0 < timing.backward < timing.wall
    assert timing.peak >= 0
