"""The driver loop, whole passes in-process against fake groups (tests/unit/fakes.py):
exactly-once books, the backpressure window, checkpoint and snapshot cadence, teacher
refresh, the KD guard, and every failure decision down to giving up.

The numbers: 640 rows, 2 label ranks of 320 rows each; 64-row batches, so 5 per rank
and 10 per pass. A labelling call asks each rank for 2 batches (``stream.batches_per_call``
= 2), so a pass takes 3 calls (2 + 2 + 1, the last one ending the pass)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from fakes import TASKS, FakeLabels, FakeRuntime, FakeStudents
from recdistill.cluster.config import (DistillConfig, GroupConfig, RunOptions, StreamConfig,
                                       TeacherGroupConfig)
from recdistill.cluster.contracts import StateDict
from recdistill.cluster.controller import Controller
from recdistill.cluster.evaluation import evaluate_teacher
from recdistill.cluster.recovery import ATTEMPTS, RunAborted
from recdistill.cluster.run_state import RunCheckpoint, share_layout
from recdistill.teacher.checkpoint import CheckpointError
from recdistill.cluster.state import Hooks
from recdistill.student.config import LossTerm, StudentConfig

ROWS = 640
CALLS_PER_PASS, BATCHES_PER_PASS = 3, 10


def _cfg(passes: int = 2, max_inflight: int = 8, snapshot_every: int = 4,
         probe: float = 0.0, **teacher_group: Any) -> DistillConfig:
    """Two groups (no KD guard probe unless asked: it cuts pass 1's calls at its point)."""
    groups = (GroupConfig(StudentConfig(name="baseline", losses=(LossTerm("hard_label"),)),
                          replicas=2, snapshot_every=0),
              GroupConfig(StudentConfig(name="kd", losses=(
                  LossTerm("hard_label", 0.5), LossTerm("prediction_kd", 0.5))),
                  replicas=2, snapshot_every=snapshot_every))
    return DistillConfig(passes=passes, groups=groups, kd_guard_probe=probe, stream=StreamConfig(
        max_inflight=max_inflight, batches_per_call=2), teacher_group=TeacherGroupConfig(
        ranks=2, batch_size=64, label_batch_size=64, checkpoint="unused", **teacher_group))


def _controller(cfg: DistillConfig, options: RunOptions = RunOptions(progress=False),
                hooks: Hooks = Hooks(), **fake: Any) -> tuple[Controller, FakeLabels,
                                                           dict[str, FakeStudents]]:
    labels = FakeLabels(cfg.teacher_group.ranks, cfg.label_rows)
    students = {g.name: FakeStudents(g) for g in cfg.groups}
    c = Controller(cfg, TASKS, options, labels, students, fake.get("runtime") or
                   FakeRuntime(ROWS), hooks, newest_teacher=fake.get("newest"))
    return c, labels, students


def _run(c: Controller) -> Controller:
    first = c.start()
    c.teacher_valid, _ = evaluate_teacher(c.executor, "valid", 1, 1024, TASKS)
    c.run_passes(first)
    return c


def _assert_exactly_once(c: Controller, passes: int) -> None:
    for name, g in c.groups.items():
        for p in range(passes):
            assert g.ledger.audit[p] == set(range(ROWS)), (name, p)
            assert g.ledger.examples_by_pass[p] == ROWS, (name, p)  # no id twice


def test_every_group_trains_every_id_once_per_pass() -> None:
    c, labels, students = _controller(_cfg(passes=2))
    _run(c)
    _assert_exactly_once(c, 2)
    counters = c.stream.counters()
    assert counters["produced"] == 2 * BATCHES_PER_PASS
    assert counters["acked"] == {"baseline": 20, "kd": 20}
    assert counters["redelivered"] == counters["duplicates_dropped"] == 0
    assert labels.requests == 2 * CALLS_PER_PASS
    assert labels.handed == [(0, 0), (1, 0)]  # each pass handed once, the next prefetched
    assert [len(g.history.curve) for g in c.groups.values()] == [2, 2]


def test_the_window_bounds_every_groups_queued_and_unacknowledged_batches() -> None:
    """Replicas that hold their calls until the loop has nothing else to wait on: the
    label source fills each group's window of 4 batches and waits."""
    runtime = FakeRuntime(ROWS)
    c, _, students = _controller(_cfg(passes=1, max_inflight=4), runtime=runtime)
    for s in students.values():
        s.hold = runtime.held
    _run(c)
    _assert_exactly_once(c, 1)
    assert c.stream.counters()["max_depth"] == {"baseline": 4, "kd": 4}


def test_a_mid_pass_checkpoint_resumes_only_with_the_same_batches(tmp_path: Path) -> None:
    """The books of an interrupted pass count batches (rank, seq): another number of
    ranks or batch size makes other batches, and the resume fails naming what differs;
    after a pass end there are no books to match."""
    cfg = _cfg()
    path = tmp_path / "driver_state.pt"
    RunCheckpoint(0, False, "t", "", {}, share_layout(cfg)).save(path)
    other = dataclasses.replace(cfg, teacher_group=dataclasses.replace(
        cfg.teacher_group, ranks=3))
    assert RunCheckpoint.load(path, [], "", share_layout(cfg)).layout == share_layout(cfg)
    with pytest.raises(CheckpointError, match="mid-pass with other batches than this "
                                              r"config makes \(ranks 2 -> 3\)"):
        RunCheckpoint.load(path, [], "", share_layout(other))
    RunCheckpoint(0, True, "t", "", {}, share_layout(cfg)).save(path)
    assert RunCheckpoint.load(path, [], "", share_layout(other)).pass_done


def test_checkpoints_at_pass_ends_and_every_n_labelling_calls(tmp_path: Path) -> None:
    options = RunOptions(progress=False, state_dir=str(tmp_path), checkpoint_every=2)
    c, _, _ = _controller(_cfg(passes=2), options)
    written: list[tuple[int, bool]] = []
    write = c.checkpoints.write
    c.checkpoints.write = lambda ex, p, pass_done: (  # type: ignore[method-assign]
        written.append((p, pass_done)), write(ex, p, pass_done))[1]
    _run(c)
    # labelling calls 2, 4 and 6 of 3 per pass, and both pass ends
    assert written == [(0, False), (0, True), (1, False), (1, False), (1, True)]
    saved = RunCheckpoint.load(tmp_path / "driver_state.pt", ["baseline", "kd"], "")
    assert (saved.pass_index, saved.pass_done) == (1, True)
    assert saved.groups["kd"].state == StateDict({"trained": 20})
    books = saved.groups["kd"].trained  # 320 rows per rank: 5 batches of 64 each
    assert books.examples == ROWS and {r: m.low for r, m in books.marks.items()} == \
        {0: 5, 1: 5} and books.out_of_order == 0


def test_snapshots_at_the_start_every_n_acknowledged_batches_and_pass_ends() -> None:
    c, _, students = _controller(_cfg(passes=2, snapshot_every=4))
    _run(c)
    # kd: one at the start; in each pass of 10 batches, after the 4th and 8th
    # acknowledged (the calls carry 2 each); one at each pass end. baseline: none.
    assert students["kd"].snapshots_taken == 1 + 2 * (2 + 1)
    assert students["baseline"].snapshots_taken == 0


def test_refresh_loads_a_newer_teacher_version_between_labelling_calls() -> None:
    c, labels, _ = _controller(_cfg(passes=2, refresh_every=2),
                               newest=lambda: "teacher/v2")
    _run(c)
    # call 2 looks and finds v2 (after call 1's 4 batches); call 4 finds it loaded
    assert c.labels.refreshes == [{"round": 2, "produced": 4, "version": 2}]
    assert c.stream.counters()["produced_by_version"] == {"1": 4, "2": 16}
    assert labels.source == "teacher/v2"
    _assert_exactly_once(c, 2)


def test_kd_guard_turns_kd_off_once_the_baseline_reaches_the_teacher() -> None:
    """The teacher's AUC comes from quality (2.0, 1.0); the baseline's reaches 1.0 on
    `like` in pass 2 (the same logits: the same AUC), never 2.0 on `click`."""
    kills: list[str] = []

    def kill_kd_in_pass_3(phase: str) -> None:
        if phase == "pass 3":
            students["kd"].fail_calls, _ = 1, kills.append(phase)

    c, _, students = _controller(_cfg(passes=3), hooks=Hooks(on_phase=kill_kd_in_pass_3))
    students["baseline"].quality = [(0.5, 0.5), (0.5, 1.0), (0.5, 0.2)]
    _run(c)
    kd = c.groups["kd"]
    assert (kd.kd_off, kd.guard_log) == (("like",), {"like": 2})
    # set once by the guard, and again on the group re-formed in pass 3
    assert students["kd"].guard_calls == [("like",), ("like",)] and kills == ["pass 3"]
    assert students["kd"].generation == 1
    assert c.groups["baseline"].kd_off == () and students["baseline"].guard_calls == []


def test_kd_guard_turns_off_a_trailing_groups_feature_terms_then_its_kd(
        tmp_path: Path) -> None:
    """The baseline improves in passes 1-2 and not in 3 or 4; a relation-KD group
    trails it all along. Not judged while the baseline improves; after pass 3 its
    feature term goes, after pass 4 (trailing still) its KD on both tasks. A resumed
    run starts with the same decisions."""
    base = _cfg(passes=4)
    feat = GroupConfig(StudentConfig(name="feat", losses=(
        LossTerm("hard_label"), LossTerm("relation_kd", 3.0))), replicas=2,
        snapshot_every=0)
    cfg = dataclasses.replace(base, groups=(*base.groups, feat))
    c, _, students = _controller(cfg, RunOptions(progress=False, state_dir=str(tmp_path)))
    students["baseline"].quality = [(0.5, 0.5), (0.8, 0.8), (0.6, 0.6), (0.7, 0.7)]
    students["feat"].quality = [(0.3, 0.3)]
    students["kd"].quality = [(0.5, 0.5), (0.9, 0.9)]  # ahead from pass 2: left alone
    _run(c)
    g = c.groups["feat"]
    assert g.guard_log == {"relation_kd": 3, "click": 4, "like": 4}
    assert (g.kd_off, g.terms_off) == (("click", "like"), ("relation_kd",))
    assert g.guard_why["relation_kd"] == "it trailed its baseline on ['click', 'like']"
    assert students["feat"].guard_calls == [("relation_kd",), ("click", "like", "relation_kd")]
    assert c.groups["kd"].guard_log == {} and students["kd"].guard_calls == []
    saved = RunCheckpoint.load(tmp_path / "driver_state.pt", ["baseline", "kd", "feat"], "")
    again, _, _ = _controller(cfg)
    saved.restore(again.groups)
    g = again.groups["feat"]
    assert (g.kd_off, g.terms_off, g.guard_log) == (("click", "like"), ("relation_kd",),
                                                    {"relation_kd": 3, "click": 4, "like": 4})
    assert g.guard_why["click"] == "it trailed its baseline on ['click', 'like']"


def test_kd_guard_probe_turns_kd_off_within_pass_1() -> None:
    """The baseline already reaches the teacher's `like` AUC when the probe evaluates
    it, a quarter into pass 1 (its only evaluation before pass 1 ends): KD is off there
    from then on (logged as pass 0). Every group waits at that point for the probe, so
    the KD group had trained exactly the batches up to it. Probing happens once, and
    not with the probe off."""
    c, _, students = _controller(_cfg(passes=2, probe=0.25))
    students["baseline"].quality = [(0.5, 1.0), (0.5, 0.5)]
    trained: list[int] = []
    ledger = c.groups["kd"].ledger
    students["kd"].set_kd_guard = lambda off, terms=(): trained.append(  # type: ignore
        ledger.books(0).examples + sum(len(i.ids) for i in ledger.in_flight.values()))
    _run(c)
    kd = c.groups["kd"]
    assert (kd.kd_off, kd.guard_log) == (("like",), {"like": 0})
    assert kd.guard_why["like"] == "the baseline reached the teacher's validation AUC"
    point = -(-ROWS // 4 // 64) * 64  # the first whole batch of 64 past a quarter
    assert trained == [point]
    assert students["baseline"].evaluations == 2 + 1  # probe, 2 passes; kd: no probe
    assert students["kd"].evaluations == 2
    _assert_exactly_once(c, 2)
    off, _, quiet = _controller(_cfg(passes=2))
    quiet["baseline"].quality = [(0.5, 1.0), (0.5, 0.5)]
    _run(off)
    assert off.groups["kd"].guard_log == {"like": 1}


def test_a_failed_training_call_reforms_the_group_from_a_survivor() -> None:
    c, _, students = _controller(_cfg(passes=1))
    students["baseline"].fail_calls = 1
    _run(c)
    _assert_exactly_once(c, 1)
    b = c.groups["baseline"]
    assert (students["baseline"].generation, b.restores, b.failed_in_a_row) == (1, 0, 0)
    # the survivor's state: the 2 batches of the call that finished beside the failed one
    assert students["baseline"].starts == [None, StateDict({"trained": 2})]
    assert c.stream.counters()["redelivered_by_group"] == {"baseline": 2, "kd": 0}


def test_a_group_without_survivors_restores_its_snapshot() -> None:
    """kd keeps a snapshot every 3 batches: one after batch 4 (the calls carry 2). Its
    replicas die while batch 5 is booked: the call of batches 7-8 fails, no replica
    survives (sharded), the snapshot's state is loaded and batches 5-8 go again."""
    died: list[int] = []

    def die_at_5(group: str, acked: int) -> None:
        if group == "kd" and acked == 5 and not died:
            died.append(acked)
            students["kd"].die()

    c, _, students = _controller(_cfg(passes=1, snapshot_every=3),
                                 hooks=Hooks(after_ack=die_at_5))
    students["kd"].sharded = True
    _run(c)
    _assert_exactly_once(c, 1)
    kd = c.groups["kd"]
    assert (students["kd"].generation, kd.restores) == (1, 1)
    assert students["kd"].starts == [None, StateDict({"trained": 4})]
    assert c.stream.counters()["redelivered_by_group"] == {"baseline": 0, "kd": 4}


def test_a_failed_labelling_call_reforms_the_label_source_and_replays_the_pass() -> None:
    def fail_label_call(group: str, acked: int) -> None:
        if group == "baseline" and acked == 3:
            labels.fail_call = 1

    c, labels, _ = _controller(_cfg(passes=2), hooks=Hooks(after_ack=fail_label_call))
    _run(c)
    _assert_exactly_once(c, 2)
    assert labels.generation == 1
    assert labels.handed[:3] == [(0, 0), (1, 0), (0, 1)]  # the new ranks get pass 1 again
    counters = c.stream.counters()
    # every group had trained the 4 labelled batches per rank published before the
    # failure: the replay starts after them (skips by seq), reading none again
    assert c.runtime.skipped == [0, 0, 4 * 64, 0]
    assert (counters["skipped_batches"], counters["replayed_rows"]) == (8, 0)
    assert counters["produced"] == 2 * BATCHES_PER_PASS


def test_a_group_whose_every_call_fails_gives_up() -> None:
    c, _, students = _controller(_cfg(passes=1))
    students["baseline"].fail_calls = 10 ** 6
    with pytest.raises(RunAborted, match=f"group baseline: {ATTEMPTS + 1} training calls "
                                         "in a row failed"):
        _run(c)
    assert students["baseline"].generation == ATTEMPTS  # re-formed 5 times, then no more


def test_a_label_source_whose_every_call_fails_gives_up() -> None:
    c, labels, _ = _controller(_cfg(passes=1))
    labels.fail_call = 10 ** 6
    with pytest.raises(RunAborted, match=f"the label source failed {ATTEMPTS + 1} times "
                                         "in a row, each time re-formed"):
        _run(c)
    assert labels.generation == ATTEMPTS  # re-formed 5 times, then no more


def test_no_survivor_and_no_snapshot_gives_up() -> None:
    c, _, students = _controller(_cfg(passes=1, snapshot_every=0))
    students["kd"].sharded, students["kd"].fail_calls = True, 1
    with pytest.raises(RunAborted, match="group kd: every replica died and it keeps no "
                                         r"snapshots \(snapshot_every = 0\)"):
        _run(c)


def test_a_replica_lost_in_evaluation_is_replaced_and_asked_again() -> None:
    def lose_kd(phase: str) -> None:
        if phase == "evaluate valid":
            students["kd"].alive = False

    c, _, students = _controller(_cfg(passes=1), hooks=Hooks(on_phase=lose_kd))
    _run(c)
    assert students["kd"].generation == 1
    assert c.groups["kd"].history.curve[0]["valid"]["like"]["auc"] == pytest.approx(
        c.groups["baseline"].history.curve[0]["valid"]["like"]["auc"])


def test_groups_of_another_config_keep_their_own_schedule() -> None:
    """snapshot_every lives in each group's schedule, not in the loop."""
    cfg = _cfg(passes=1, snapshot_every=2)
    cfg = dataclasses.replace(cfg, groups=(dataclasses.replace(cfg.groups[0], snapshot_every=5),
                                           cfg.groups[1]))
    c, _, students = _controller(cfg)
    _run(c)
    assert [g.snapshots.every for g in c.groups.values()] == [5, 2]
    # A snapshot holds the calls queued before it, so those batches do not count
    # towards the next. baseline: the start, after batch 6 (the first call boundary at
    # or past 5; it holds 7-8), the pass end.
    assert students["baseline"].snapshots_taken == 3
    # kd: the start; after batch 2 (holding 3-4), after 6 (holding 7-8) and after 10;
    # the pass end.
    assert students["kd"].snapshots_taken == 5


def _with_patience(cfg: DistillConfig, **patience: int) -> DistillConfig:
    return dataclasses.replace(cfg, groups=tuple(
        dataclasses.replace(g, patience=patience.get(g.name, 0)) for g in cfg.groups))


def test_a_group_out_of_patience_stops_and_the_others_go_on(tmp_path: Path) -> None:
    """kd's validation AUC (the first task's) is best in pass 1; with patience 2 it
    stops after pass 3, keeps its best pass, and trains nothing of passes 4-5."""
    cfg = _with_patience(_cfg(passes=5), kd=2)
    c, labels, students = _controller(cfg, RunOptions(progress=False,
                                                      state_dir=str(tmp_path)))
    students["kd"].quality = [(0.9, 0.5), (0.5, 0.5)]
    _run(c)
    kd, baseline = c.groups["kd"], c.groups["baseline"]
    assert (kd.stopped_after, kd.history.best_pass, len(kd.history.curve)) == (3, 1, 3)
    assert students["kd"].evaluations == 3  # validation of passes 1-3 only
    assert [kd.ledger.examples_by_pass.get(p, 0) for p in range(5)] == [ROWS] * 3 + [0, 0]
    for p in range(5):
        assert baseline.ledger.audit[p] == set(range(ROWS))
    assert c.stream.counters()["acked"] == {"baseline": 50, "kd": 30}
    assert baseline.stopped_after == 0 and labels.requests == 5 * CALLS_PER_PASS
    # a resumed run keeps it stopped
    saved = RunCheckpoint.load(tmp_path / "driver_state.pt", ["baseline", "kd"], "")
    assert (saved.groups["kd"].stopped_after, saved.groups["baseline"].stopped_after) == (3, 0)


def test_the_run_ends_once_every_group_stopped() -> None:
    """Both groups' validation never improves on pass 1: with patience 1 both stop
    after pass 2, and passes 3-6 are not labelled (pass 3 was handed ahead, unread)."""
    c, labels, _ = _controller(_with_patience(_cfg(passes=6), kd=1, baseline=1))
    _run(c)
    assert [g.stopped_after for g in c.groups.values()] == [2, 2]
    assert labels.requests == 2 * CALLS_PER_PASS
    assert labels.handed == [(0, 0), (1, 0), (2, 0)]
    _assert_exactly_once(c, 2)
