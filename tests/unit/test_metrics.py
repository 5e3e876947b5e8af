import math

import pytest
import torch

from recdistill.student.metrics import task_metrics


def test_metrics_match_hand_computation() -> None:
    p = torch.tensor([0.1, 0.4, 0.35, 0.8], dtype=torch.float64)
    y = torch.tensor([0.0, 0.0, 1.0, 1.0])
    logits = torch.log(p / (1 - p)).float().unsqueeze(1)
    m = task_metrics(logits, y.unsqueeze(1), ["click"])["click"]
    # positives {0.35, 0.8} beat negatives {0.1, 0.4} in 3 of 4 pairs
    assert m["auc"] == pytest.approx(0.75, abs=1e-6)
    logloss = -(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4
    assert m["logloss"] == pytest.approx(logloss, rel=1e-5)  # 0.472288 nats
    assert m["ne"] == pytest.approx(logloss / math.log(2), rel=1e-5)  # base rate 0.5
    assert m["calibration"] == pytest.approx(1.65 / 2, rel=1e-5)
    assert m["positive_rate"] == 0.5 and m["n"] == 4


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"must both be \[N, 2\]"):
        task_metrics(torch.zeros(3, 1), torch.zeros(3, 1), ["a", "b"])
