import math

import numpy as np
import pytest
import torch

from recdistill.student.metrics import MetricState, task_metrics


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


@pytest.mark.parametrize("shape", ["normal", "ties", "beyond_range", "one_bin"])
def test_streamed_auc_is_within_its_bound_of_the_exact_auc(shape: str) -> None:
    """Blocks merged give the whole split's state; the histogram AUC is within the
    reported ``auc_bound`` of TorchRec's exact AUC, on scores spread out, rounded to
    many ties, beyond the histogram's range, and all in one bin (bound 1/2)."""
    import numpy as np
    from torchrec.metrics.auc import compute_auc

    from recdistill.student.metrics import LOGIT_RANGE, MetricState
    rng = np.random.default_rng(3)
    n = 50_000
    x = rng.normal(size=(n, 2)) * 3
    if shape == "ties":
        x = np.round(x, 1)
    elif shape == "beyond_range":
        x = x * 2 * LOGIT_RANGE
    elif shape == "one_bin":
        x = np.full((n, 2), 0.3) + rng.normal(size=(n, 2)) * 1e-7
    y = (rng.random((n, 2)) < 1 / (1 + np.exp(-x))).astype(np.float32)
    whole = MetricState.of(x, y, ["a", "b"])
    merged = MetricState.empty(["a", "b"])
    for start in range(0, n, 7_777):
        merged.merge(MetricState.of(x[start:start + 7_777], y[start:start + 7_777],
                                    ["a", "b"]))
    np.testing.assert_array_equal(merged.pos, whole.pos)
    np.testing.assert_array_equal(merged.neg, whole.neg)
    np.testing.assert_allclose(merged.sums, whole.sums, rtol=1e-12)
    m = merged.compute()
    for i, task in enumerate(["a", "b"]):
        p = torch.tensor(x[:, i]).view(1, -1)  # the order of the scores: no rounding to 1
        exact = float(compute_auc(1, [p], [torch.tensor(y[:, i]).view(1, -1)],
                                  [torch.ones_like(p)])[0])
        assert abs(m[task]["auc"] - exact) <= m[task]["auc_bound"] + 1e-12
        bound = {"normal": 1e-4, "ties": 1e-2, "beyond_range": 1e-2, "one_bin": 0.5}[shape]
        assert m[task]["auc_bound"] <= bound + 1e-12
        if shape == "one_bin":
            assert m[task]["auc"] == 0.5


def test_the_state_holds_torchrecs_sums() -> None:
    """The NE and calibration sums a block adds (numpy, in every replica) are TorchRec's
    ``get_ne_states`` / ``get_calibration_states`` of the same scores."""
    import numpy as np
    from torchrec.metrics.calibration import get_calibration_states
    from torchrec.metrics.ne import get_ne_states

    from recdistill.student.metrics import MetricState
    rng = np.random.default_rng(4)
    x = rng.normal(size=(999, 2)) * 4
    y = (rng.random((999, 2)) < 0.3).astype(np.float64)
    s = MetricState.of(x, y, ["a", "b"]).sums
    p, t = torch.sigmoid(torch.tensor(x.T)), torch.tensor(y.T)
    cal = get_calibration_states(t, p, torch.ones_like(p))  # before NE clamps p in place
    ne = get_ne_states(t, p, torch.ones_like(p), 1e-12)
    want = torch.stack([ne["cross_entropy_sum"], ne["weighted_num_samples"],
                        ne["pos_labels"], ne["neg_labels"],
                        next(iter(cal.values()))], dim=1).numpy()
    np.testing.assert_allclose(s, want, rtol=1e-12)


def test_gauc_and_ndcg_match_hand_computation() -> None:
    """Two users, 0.1 and 0.2. User 1: scores 0.9 (y 0), 0.5 (y 1), 0.5 (y 0), 0.1 (y 1):
    pairs (pos, neg): (0.5, 0.9) 0, (0.5, 0.5) 1/2, (0.1, 0.9) 0, (0.1, 0.5) 0: AUC 1/8
    over 4 rows; user 2: 0.3 (y 1), 0.2 (y 0): AUC 1 over 2 rows; user 3: one positive
    only, no AUC. GAUC = (4/8 + 2) / 6. NDCG@10: user 1 ranks [0, 1, 0, 1] (the tie in
    row order: 0.5 y 1 first), DCG = 1/log2(3) + 1/log2(5), ideal 1 + 1/log2(3); user 2
    1; user 3 1."""
    from recdistill.student.ranking import gauc, ndcg_at, ranking_metrics
    keys = np.array([1, 1, 1, 1, 2, 2, 3])
    scores = np.array([0.9, 0.5, 0.5, 0.1, 0.3, 0.2, 0.4])
    labels = np.array([0, 1, 0, 1, 1, 0, 1], np.float64)
    assert gauc(keys, scores, labels) == (pytest.approx((4 / 8 + 2) / 6), 2)
    d = 1 / np.log2(np.arange(4) + 2)
    user1 = (d[1] + d[3]) / (d[0] + d[1])
    assert ndcg_at(keys, scores, labels) == (pytest.approx((user1 + 2) / 3), 3)
    assert ndcg_at(keys, scores, labels, k=1) == (pytest.approx(2 / 3), 3)
    # the order of the rows does not matter, but for the tie's
    perm = np.array([6, 3, 0, 5, 1, 2, 4])
    assert gauc(keys[perm], scores[perm], labels[perm])[0] == pytest.approx((4 / 8 + 2) / 6)
    # with the metric state, over two blocks; NaN labels leave rows out of their task
    state = MetricState.empty(("a", "b"))
    two = np.stack([labels, np.r_[labels[:6], np.nan]], axis=1)
    logits = np.log(np.stack([scores, scores], 1) / (1 - np.stack([scores, scores], 1)))
    state.update(logits[:3], two[:3], keys[:3])
    state.merge(_with_keys(logits[3:], two[3:], keys[3:]))
    got = state.compute()
    assert got["a"]["gauc"] == pytest.approx((4 / 8 + 2) / 6)
    assert got["a"]["ndcg@10"] == pytest.approx((user1 + 2) / 3)
    assert (got["b"]["ndcg_keys"], got["b"]["ndcg@10"]) == (2, pytest.approx((user1 + 1) / 2))
    assert "gauc" not in MetricState.of(logits, np.nan_to_num(two), ("a", "b")).compute()["a"]
    assert ranking_metrics(keys, logits, two, ("a", "b"))["b"]["gauc_keys"] == 2


def _with_keys(logits: np.ndarray, labels: np.ndarray, keys: np.ndarray) -> MetricState:
    state = MetricState.empty(("a", "b"))
    state.update(logits, labels, keys)
    return state


def test_group_keys_are_each_rows_first_id() -> None:
    from recdistill.data.spec import ExampleTable
    t = ExampleTable(np.zeros((3, 0), np.float32), np.zeros((3, 1), np.float32),
                     np.arange(3), {"u": (np.array([0, 2, 2, 3]), np.array([7, 8, 9]))})
    assert t.group_keys("u").tolist() == [7, -1, 9]
