import numpy as np
import pytest

from recdistill.cluster.idset import IdSet
from recdistill.cluster.stream import SoftLabelStream


def test_idset_counts_membership_and_growth() -> None:
    s = IdSet()
    s.add(np.array([3, 5, 9, 8, 17]))  # 8 and 9 share a byte with nothing else; 3, 5 do
    assert len(s) == 5
    s.add(np.array([5, 6, 100, 100]))  # one old id, one repeated new id
    assert len(s) == 7
    assert s.to_array().tolist() == [3, 5, 6, 8, 9, 17, 100]
    assert s.contains(np.array([3, 4, 100, 101, 10_000])).tolist() == \
        [True, False, True, False, False]
    assert s.issuperset(np.array([6, 9])) and not s.issuperset(np.array([6, 7]))
    assert s == {3, 5, 6, 8, 9, 17, 100} and s != {3, 5}
    with pytest.raises(ValueError, match="ids must be >= 0"):
        s.add(np.array([-1, 2]))


def test_idset_matches_a_python_set_on_random_batches() -> None:
    rng = np.random.default_rng(0)
    s, ref = IdSet(), set()
    for _ in range(50):
        ids = rng.integers(0, 5000, size=rng.integers(1, 300))
        s.add(ids)
        ref.update(ids.tolist())
        assert len(s) == len(ref)
    assert s.to_array().tolist() == sorted(ref)
    assert len(s._bits) <= 2 * (5000 // 8 + 1)  # 1 bit per id, growth by doubling


def test_queued_batch_whose_ids_were_trained_is_dropped_as_duplicate() -> None:
    st = SoftLabelStream(["g"], max_inflight=4)
    a = st.publish(("ref-a",), np.array([0, 1, 2]), version=1, pass_index=0)
    st.publish(("ref-b",), np.array([3, 4]), version=1, pass_index=0)
    st.publish(("ref-c",), np.array([5]), version=1, pass_index=0)
    item = st.next_for("g")
    assert item is a
    st.ledgers["g"].ack(item)
    st.ledgers["g"].trained[0].add(np.array([3, 4]))  # as if a survivor had trained b
    assert st.next_for("g").refs == ("ref-c",)
    assert st.ledgers["g"].duplicates_dropped == 1
    assert len(st.trained_ids("g", 0)) == 5 and len(st.trained_ids("g", 1)) == 0


def test_unack_takes_batches_off_the_books_and_queues_them_first_in_order() -> None:
    st = SoftLabelStream(["g"], max_inflight=8)
    items = [st.publish((f"r{i}",), np.arange(4 * i, 4 * i + 4), version=3, pass_index=0)
             for i in range(3)]
    for _ in range(3):
        st.ledgers["g"].ack(st.next_for("g"))
    st.ledgers["g"].unack(items[1:])
    b = st.ledgers["g"]
    assert (b.acked, b.examples_by_pass[0], b.acked_by_version[3], b.redelivered) == \
        (1, 4, 1, 2)
    assert st.trained_ids("g", 0).to_array().tolist() == [0, 1, 2, 3]
    assert [st.next_for("g").refs for _ in range(2)] == [("r1",), ("r2",)]


def test_published_rows_are_not_published_twice() -> None:
    st = SoftLabelStream(["g"], max_inflight=8)
    st.publish(("a",), np.array([0, 1, 2, 3]), version=1, pass_index=0)
    assert st.publish(("a2",), np.array([2, 0]), version=1, pass_index=0) is None
    part = st.publish(("b",), np.array([3, 4, 5]), version=1, pass_index=0)
    assert part.rows.tolist() == [1, 2] and part.ids.tolist() == [4, 5]
    assert st.publish(("c",), np.array([0, 1]), version=1, pass_index=1).rows is None
    assert st.replayed_rows == 3 and st.produced == 3


def test_idset_remove() -> None:
    s = IdSet()
    s.add(np.array([1, 2, 3, 9]))
    s.remove(np.array([2, 9, 50]))  # 50 was never there
    assert len(s) == 2 and s.to_array().tolist() == [1, 3]
