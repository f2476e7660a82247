"""`python -m tools.bench.compare`: before and after, the ratio taken pair by pair."""

from __future__ import annotations

from tools.bench.compare import compare


def result(sustainable: float, p50: float | None) -> dict[str, object]:
    return {"sustainable_sagas_per_s": sustainable, "sequential_latency_ms": {"p50": p50}}


def test_the_ratio_is_the_median_of_the_pairs_ratios_not_the_ratio_of_the_medians() -> None:
    # The machine got twice as slow between the first pair and the other two: each pair shares
    # its machine, and after is 1.5x before in each.
    before = [result(100, 20), result(50, 40), result(50, 40)]
    after = [result(150, 10), result(75, 20), result(75, None)]

    rows = {row["figure"]: row for row in compare(before, after)}

    assert rows["sustainable sagas/s"] == {
        "figure": "sustainable sagas/s",
        "before": 50,
        "after": 75,
        "after_vs_before": 1.5,
        "pairs": 3,
    }
    assert rows["sequential p50 ms"]["after_vs_before"] == 0.5
    assert rows["sequential p50 ms"]["pairs"] == 2  # a figure missing on one side is no pair
    assert rows["deadlocks"]["pairs"] == 0
