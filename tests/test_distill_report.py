import pytest

from jobs.distill import gains, table


def _m(auc: float) -> dict:
    return {"auc": auc, "logloss": 0.5, "ne": 0.9, "calibration": 1.0}


def test_gain_and_share_of_gap_recovered() -> None:
    report = {"teacher": {"test": {"a": _m(0.80), "b": _m(0.70)}, "parameters": 1000},
              "students": {"baseline": {"test": {"a": _m(0.78), "b": _m(0.72)},
                                        "parameters": 100},
                           "kd": {"test": {"a": _m(0.79), "b": _m(0.73)},
                                  "parameters": 100}}}
    g = gains(report)
    assert g["kd"]["a"]["auc_gain_vs_baseline"] == pytest.approx(0.01)
    assert g["kd"]["a"]["gap_recovered"] == pytest.approx(0.5)  # 0.01 of a 0.02 gap
    assert g["kd"]["b"]["gap_recovered"] is None  # teacher worse than baseline: undefined
    report["gains"] = g
    text = table(report)
    assert "+0.0100       50%" in text and "n/a" in text
