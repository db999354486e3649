"""benchmarks/harness.py: the timing, ordering and ratio rules every benchmark script shares."""

import sys

import pytest
import torch

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(ROOT / "benchmarks"))
import harness  # noqa: E402


@pytest.mark.parametrize("names, repeats", [(["a", "b"], 4), (["a", "b", "c"], 6), (["a", "b", "c", "d"], 8)])
def test_round_orders_put_every_runner_first_equally_often(names, repeats):
    orders = list(harness.round_orders(names, repeats))
    assert len(orders) == repeats and all(sorted(o) == names for o in orders)
    firsts = [o[0] for o in orders]
    assert all(firsts.count(n) == repeats // len(names) for n in names)


def test_round_orders_of_two_alternate_who_goes_first():
    assert [o[0] for o in harness.round_orders(["a", "b"], 4)] == ["a", "b", "b", "a"]


def test_speed_ratio_is_ours_over_theirs_in_speed():
    best, paired = harness.speed_ratio([1.0, 2.0, 1.0], [2.0, 2.0, 4.0])  # ours twice as fast in rounds 1 and 3
    assert best == 2.0 and paired == 2.0
    assert harness.ratio_line({"x": [1.0, 2.0], "y": [1.0, 1.0]}, "x", "y") == \
        "ratio x/y: 1.000 (best runs), 0.750 (median of 2 rounds)"


def test_interleaved_warms_up_then_times_each_runner_once_per_round():
    calls = []
    times = harness.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                torch.device("cpu"), repeats=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "b", "a"]  # warm-up, then ab, ba, ba
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3} and min(times["a"] + times["b"]) >= 0


def test_timed_returns_the_result_and_needs_no_device():
    seconds, out = harness.timed(lambda: 42)
    assert out == 42 and seconds >= 0


def test_why_not_names_the_missing_module():
    assert harness.why_not("json") is None
    assert harness.why_not("no_such_module_xyz").startswith("ModuleNotFoundError")


def test_rate_line_gives_best_and_median():
    line = harness.rate_line("ours", 10, [1.0, 2.0, 4.0])
    assert line.strip() == "ours:      10.0 img/s (best of 3; median 5.0)"
