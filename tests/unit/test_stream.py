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


def test_queued_batch_already_trained_is_dropped_as_duplicate() -> None:
    st = SoftLabelStream(["g"], max_inflight=4)
    a = st.publish(("ref-a",), np.array([0, 1, 2]), 1, 0, key=(0, 0))
    b = st.publish(("ref-b",), np.array([3, 4]), 1, 0, key=(1, 0))
    st.publish(("ref-c",), np.array([5]), 1, 0, key=(0, 1))
    item = st.next_for("g")
    assert item is a
    st.ledgers["g"].ack(item)
    st.ledgers["g"].trained[0].add(b.key, 2)  # as if a survivor had trained b
    assert st.next_for("g").refs == ("ref-c",)
    assert st.ledgers["g"].duplicates_dropped == 1
    assert st.ledgers["g"].examples_by_pass == {0: 5}
    assert st.ledgers["g"].books(1).examples == 0


def test_unack_takes_batches_off_the_books_and_queues_them_first_in_order() -> None:
    st = SoftLabelStream(["g"], max_inflight=8)
    items = [st.publish((f"r{i}",), np.arange(4 * i, 4 * i + 4), 3, 0, key=(0, i))
             for i in range(3)]
    for _ in range(3):
        st.ledgers["g"].ack(st.next_for("g"))
    assert st.ledgers["g"].books(0).marks[0].low == 3
    st.ledgers["g"].unack(items[1:])
    b = st.ledgers["g"]
    assert (b.acked, b.examples_by_pass[0], b.acked_by_version[3], b.redelivered) == \
        (1, 4, 1, 2)
    assert (b.books(0).marks[0].low, b.books(0).out_of_order) == (1, 0)
    assert SoftLabelStream(["g"], 8, audit=False).ledgers["g"].audit is None
    assert [st.next_for("g").refs for _ in range(2)] == [("r1",), ("r2",)]


def test_published_batches_are_not_published_twice() -> None:
    st = SoftLabelStream(["g"], max_inflight=8)
    st.publish(("a",), np.array([0, 1, 2, 3]), 1, 0, key=(0, 0))
    assert st.publish(("a2",), np.array([0, 1, 2, 3]), 1, 0, key=(0, 0)) is None
    assert st.publish(("b",), np.array([4, 5]), 1, 0, key=(1, 0)) is not None
    assert st.publish(("c",), np.array([0, 1]), 1, 1, key=(0, 0)).rows is None  # pass 2
    assert st.replayed_rows == 4 and st.produced == 3


def test_slices_of_a_labelled_batch_are_keyed_by_rank_and_seq() -> None:
    """A 10-row labelled batch cut into student batches of 4: slices 0, 1, 2 of labelled
    batch 5 are seqs 15, 16, 17 of the rank (3 slices per labelled batch)."""
    st = SoftLabelStream(["g"], max_inflight=8, slices=3)
    st.publish_slices(("x",), np.arange(10), 4, version=1, pass_index=0, rank=1, seq=5)
    items = [st.next_for("g") for _ in range(3)]
    assert [i.key for i in items] == [(1, 15), (1, 16), (1, 17)]
    assert [i.rows.tolist() for i in items] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="more than 3 student batches of 4"):
        st.publish_slices(("y",), np.arange(13), 4, 1, 0, rank=0, seq=0)


def test_skip_is_the_labelled_batches_every_group_trained_on_every_rank() -> None:
    st = SoftLabelStream(["g", "h"], max_inflight=64, slices=2)
    for seq in range(4):  # labelled batches 0-3 of each rank, 2 slices each, in lockstep
        for rank in (0, 1):
            ids = np.arange(8) + 8 * (2 * seq + rank)
            st.publish_slices((f"{rank}.{seq}",), ids, 4, 1, 0, rank, seq)
    g, h = st.ledgers["g"], st.ledgers["h"]
    for _ in range(16):
        g.ack(g.next_item())
    for _ in range(11):  # h: labelled batches 0-1 of both ranks, 2 of rank 0, half of 1's
        h.ack(h.next_item())
    # h's watermarks: rank 0 at seq 6 (3 labelled batches), rank 1 at 5 (2 and a half)
    assert st.skip(0, ranks=2) == 2 and st.skip(1, ranks=2) == 0
    h.queue.clear()  # (retired between passes: nothing queued)
    st.retire("h")
    assert st.skip(0, ranks=2) == 4
def test_idset_remove() -> None:
    s = IdSet()
    s.add(np.array([1, 2, 3, 9]))
    s.remove(np.array([2, 9, 50]))  # 50 was never there
    assert len(s) == 2 and s.to_array().tolist() == [1, 3]
