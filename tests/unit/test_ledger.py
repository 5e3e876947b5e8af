"""The ledger and the settlement of rounds, without Ray: hand-built rounds and outcomes,
exact counts."""

import numpy as np
import pytest

from recdistill.cluster.contracts import StepResult, TrainResult
from recdistill.cluster.ledger import GroupLedger, VersionCount
from recdistill.cluster.settlement import ReplicaOutcome, settle
from recdistill.cluster.stream import SoftLabelStream
from recdistill.cluster.watermark import PassBooks, Watermark


def _step(ids, loss: float = 0.5) -> StepResult:
    return StepResult(ids=np.asarray(ids), loss={"loss": loss}, version=3, kd_scale=1.0,
                      timing={"prepare_s": 0.1, "step_s": 0.2})


def _stream(n: int, size: int = 4, groups=("g",)) -> tuple[SoftLabelStream, list]:
    st = SoftLabelStream(list(groups), max_inflight=16)
    items = [st.publish((f"r{i}",), np.arange(size * i, size * i + size), version=3,
                        pass_index=0, key=(0, i)) for i in range(n)]
    return st, items


def test_failed_call_books_the_prefix_of_steps_done_and_redelivers_the_rest() -> None:
    st, _ = _stream(3)
    led = st.ledgers["g"]
    a, b, c = led.take_call(8)
    # replica 0 did a and b (2 ids each: its half), then its all-reduce failed on c;
    # replica 1 died in the call
    done = TrainResult([_step([0, 1], 0.25), _step([4, 5], 0.75)], error="RuntimeError: gloo")
    s = settle("g", [a, b, c], [ReplicaOutcome(done), ReplicaOutcome()])
    assert [i.seq for i, _ in s.trained] == [a.seq, b.seq]
    assert [i.seq for i in s.redeliver] == [c.seq] and s.replica_failed
    st.apply("g", s)
    assert (led.acked, led.acked_rows, led.redelivered, led.depth) == (2, 8, 1, 1)
    assert (led.books(0).marks[0].low, led.examples_by_pass[0]) == (2, 8)
    assert led.stats.steps == 2 and led.stats.end_pass() == {"loss": 0.5}
    assert led.next_item() is c  # first again


def test_every_replica_done_checks_the_ids_add_up() -> None:
    st, _ = _stream(1)
    (a,) = st.ledgers["g"].take_call(8)
    halves = [ReplicaOutcome(TrainResult([_step([0, 1])])),
              ReplicaOutcome(TrainResult([_step([2, 3])]))]
    assert settle("g", [a], halves).trained[0][0] is a
    wrong = [ReplicaOutcome(TrainResult([_step([0, 1])])),
             ReplicaOutcome(TrainResult([_step([2, 9])]))]
    with pytest.raises(RuntimeError, match="do not match batch 0"):
        settle("g", [a], wrong)


def test_a_lost_batch_among_several_is_retried_one_per_call() -> None:
    st, _ = _stream(5)
    led = st.ledgers["g"]
    first = led.take_call(3)
    lost = [ReplicaOutcome(lost_input=True)] * 2
    s = settle("g", first, lost)
    assert (s.retry_singly, len(s.redeliver), s.replica_failed) == (3, 3, False)
    st.apply("g", s)
    singles = [led.take_call(3) for _ in range(3)]
    assert [[i.seq for i in r] for r in singles] == [[0], [1], [2]]
    assert [i.seq for i in led.take_call(3)] == [3, 4]  # back to full rounds
    # the single round holding the lost batch: its ids go back to be labelled again
    s = settle("g", singles[1], lost)
    assert [i.seq for i in s.relabel] == [1]
    st.apply("g", s)
    assert led.relabelled == 1 and led.acked == 0
    again = st.publish(("r1-again",), np.arange(4, 8), version=3, pass_index=0, key=(0, 1))
    assert again is not None and again.key == (0, 1)  # published again, not a replay


def test_snapshot_restore_takes_what_was_trained_since_off_the_books() -> None:
    st, items = _stream(5)
    led = st.ledgers["g"]
    for item in led.take_call(2):  # 0, 1
        led.ack(item, _step(item.ids))
    in_flight = led.take_call(1)  # 2: queued to the replicas before the snapshot
    led.snapshot_taken(in_flight)
    led.ack(in_flight[0], _step(in_flight[0].ids))  # in the snapshot already
    for item in led.take_call(2):  # 3, 4: trained after it
        led.ack(item, _step(item.ids))
    assert [i.seq for i in led.since_snapshot] == [3, 4]
    led.rollback_to_snapshot()
    assert (led.acked, led.acked_rows, led.redelivered) == (3, 12, 2)
    assert (led.books(0).marks[0].low, led.examples_by_pass[0]) == (3, 12)
    assert [i.seq for i in led.take_call(8)] == [3, 4]  # first, in order
    assert led.stats.steps == 5  # the optimizer's work: undone steps still happened


def test_report_counters_are_derived_from_the_ledger() -> None:
    st, items = _stream(4, groups=("g", "h"))
    led = st.ledgers["g"]
    for item in led.take_call(3):
        led.ack(item, _step(item.ids))
    st.publish(("r0-replayed",), np.arange(0, 4), version=3, pass_index=0, key=(0, 0))
    c = st.counters()
    assert c["produced"] == 4 and c["produced_by_version"] == {"3": 4}
    assert c["acked"] == {"g": 3, "h": 0} and c["acked_rows"] == {"g": 12, "h": 0}
    assert c["acked_by_version"] == {"g": {"3": 3}, "h": {}}
    assert c["delivered"] == {"g": 3, "h": 0} and c["max_depth"] == {"g": 4, "h": 4}
    assert c["replayed_rows"] == 4
    assert led.examples_by_pass == {0: 12} and led.examples_by_version == {3: 12}
    # a resumed run: counts per version carry over, acked counts start from the resume
    fresh = GroupLedger()
    books = PassBooks()
    for seq in range(3):
        books.add((0, seq), 4)
    fresh.restore({3: VersionCount(3, 12)}, pass_index=0, books=books)
    assert (fresh.acked, fresh.acked_rows, fresh.examples_by_version) == (0, 0, {3: 12})
    assert fresh.examples_by_pass == {0: 12}


def test_training_an_example_twice_in_a_pass_fails() -> None:
    st, items = _stream(1)
    led = st.ledgers["g"]
    (a,) = led.take_call(1)
    led.ack(a)
    led.in_flight[a.seq] = a  # a bug that delivered it again
    with pytest.raises(RuntimeError, match="trained twice in pass 1"):
        led.ack(a)


def test_training_a_batch_twice_is_caught_by_the_audit_by_example_too() -> None:
    """The audit (RECDISTILL_AUDIT_IDS=1 in the tests) books ids beside the batches: two batches of
    different keys holding one example fail there."""
    st = SoftLabelStream(["g"], max_inflight=4, audit=True)
    st.publish(("a",), np.array([0, 1]), 1, 0, key=(0, 0))
    st.publish(("b",), np.array([1, 2]), 1, 0, key=(1, 0))  # a bug: a row in two shares
    led = st.ledgers["g"]
    led.ack(led.next_item())
    with pytest.raises(RuntimeError, match="examples trained twice in pass 1"):
        led.ack(led.next_item())


def test_watermark_holds_only_what_is_done_out_of_order() -> None:
    w = Watermark()
    for seq in (0, 2, 3, 1, 5):
        w.add(seq)
    assert (w.low, w.above) == (4, {5})
    assert [s in w for s in range(7)] == [True] * 4 + [False, True, False]
    w.remove(5)
    w.remove(1)  # below the watermark: it comes down, what is above stays done
    assert (w.low, w.above) == (1, {2, 3})
    w.add(1)
    assert (w.low, w.above) == (4, set())
    books = PassBooks()
    for rank, seq in ((0, 0), (0, 1), (1, 0), (1, 2)):
        books.add((rank, seq), 10)
    assert (books.floor(2), books.floor(3), books.examples, books.out_of_order) == \
        (1, 0, 40, 1)
    assert PassBooks.from_json(books.to_json()) == books
    with pytest.raises(ValueError, match=r"batch \(1, 2\) is booked already"):
        books.add((1, 2), 10)


def test_books_of_a_long_pass_stay_a_few_ints() -> None:
    """1e5 batches trained nearly in order (each window of 8 in flight finished in a
    random order): the books hold the watermark and less than the window above it."""
    rng = np.random.default_rng(0)
    books, most = PassBooks(), 0
    for start in range(0, 100_000, 8):
        for seq in start + rng.permutation(8):
            books.add((0, int(seq)), 1)
            most = max(most, books.out_of_order)
    assert books.marks[0].low == 100_000 and books.examples == 100_000
    assert books.out_of_order == 0 and most == 7
