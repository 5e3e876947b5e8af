import pytest

from cluster.report import gains, table


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


def test_report_json_keeps_its_keys_and_derives_gains() -> None:
    from cluster.report import DistillReport, DriverTiming
    students = {"baseline": {"test": {"a": _m(0.78)}, "parameters": 100},
                "kd": {"test": {"a": _m(0.79)}, "parameters": 100}}
    report = DistillReport(teacher={"test": {"a": _m(0.80)}, "parameters": 1000},
                           students=students, stream={},
                           timing=DriverTiming(run_wall_s=3.0, train_wall_s=2.0,
                                               busy_s=0.5, driver_cpu_s=0.25,
                                               driver_loop_cpu_s=0.125))
    doc = report.to_json()
    assert set(doc) == {"teacher", "students", "stream", "resumed", "dataset",
                        "data_skipped", "wall_s", "config", "soft_labels", "gains",
                        "run_wall_s", "train_wall_s", "driver_busy_s", "driver_cpu_s",
                        "driver_loop_cpu_s"}
    assert (doc["train_wall_s"], doc["driver_busy_s"], doc["driver_loop_cpu_s"]) == \
        (2.0, 0.5, 0.125)
    assert doc["gains"]["kd"]["a"]["gap_recovered"] == pytest.approx(0.5)
    assert report.table() == table(doc)
