import numpy as np
import pytest

from recdistill.data.movielens import HISTORY_LEN, load_movielens, movielens_dir


def _raw() -> np.ndarray:
    rows = [line.split("\t") for line in
            (movielens_dir() / "ml-100k.inter").read_text().splitlines()[1:]]
    return np.array(rows, dtype=np.float64)  # user, item, rating, ts


def test_counts_labels_and_ids(movielens) -> None:
    d = movielens
    raw = _raw()
    ids = np.concatenate([d.train.ids, d.valid.ids, d.test.ids])
    assert len(ids) == 100_000 == len(np.unique(ids))
    assert (len(d.train), len(d.valid), len(d.test)) == (79619, 9942, 10439)
    for t in (d.train, d.test):
        np.testing.assert_array_equal(t.labels[:, 0], raw[t.ids, 2] >= 4)
        np.testing.assert_array_equal(t.labels[:, 1], raw[t.ids, 2] == 5)
        np.testing.assert_array_equal(t.sparse["user_id"][1], raw[t.ids, 0])
        np.testing.assert_array_equal(t.sparse["item_id"][1], raw[t.ids, 1])
    assert d.spec.tasks == ("like", "love")
    assert d.spec.privileged == ("user_history",)
    assert "user_history" not in d.spec.student_view().sparse_names


def test_per_user_chronological_split(movielens) -> None:
    raw = _raw()
    user, ts = raw[:, 0], raw[:, 3]
    part = np.empty(len(raw), int)
    for k, t in enumerate((movielens.train, movielens.valid, movielens.test)):
        part[t.ids] = k
    u = 1  # user 1 rated 272 movies: 217 train, 27 valid, 28 test
    mine = np.flatnonzero(user == u)
    assert np.bincount(part[mine]).tolist() == [217, 27, 28]
    for uu in (1, 13, 405):
        rows = np.flatnonzero(user == uu)
        # every train rating is no later than any valid one, valid no later than test
        assert ts[rows[part[rows] == 0]].max() <= ts[rows[part[rows] == 1]].min()
        assert ts[rows[part[rows] == 1]].max() <= ts[rows[part[rows] == 2]].min()


def test_user_history_has_no_look_ahead(movielens) -> None:
    raw = _raw()
    t = movielens.test
    offsets, values = t.sparse["user_history"]
    rng = np.random.default_rng(0)
    for i in rng.choice(len(t), 200, replace=False):
        row = t.ids[i]
        user, ts = raw[row, 0], raw[row, 3]
        hist = values[offsets[i]:offsets[i + 1]]
        earlier = np.flatnonzero((raw[:, 0] == user) & (raw[:, 3] < ts))
        expect = min(len(earlier), HISTORY_LEN)
        assert len(hist) == expect
        # the history is the user's most recent earlier items
        order = earlier[np.lexsort((earlier, raw[earlier, 3]))]
        assert set(hist.tolist()) == set(raw[order[-expect:], 1].astype(int).tolist()) \
            or expect == 0


def test_global_time_split_orders_by_time_and_random_is_seeded() -> None:
    raw = _raw()
    g = load_movielens("global_time")
    assert raw[g.train.ids, 3].max() <= raw[g.test.ids, 3].min()
    cold = ~np.isin(raw[g.test.ids, 0], raw[g.train.ids, 0])
    assert cold.mean() > 0.5  # mostly users unseen in train
    a, b = load_movielens("random", seed=3), load_movielens("random", seed=3)
    np.testing.assert_array_equal(a.test.ids, b.test.ids)
    assert not np.array_equal(a.test.ids, load_movielens("random", seed=4).test.ids)


def test_dense_features_standardised_on_train(movielens) -> None:
    dense = movielens.train.dense.astype(np.float64)
    np.testing.assert_allclose(dense.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(dense.std(axis=0), 1.0, atol=1e-4)


def test_unknown_split_names_the_choices() -> None:
    with pytest.raises(ValueError, match="user_time"):
        load_movielens("weekly")
