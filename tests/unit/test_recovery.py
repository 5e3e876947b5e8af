"""The failure policy, the executor's give-up and the retry helper, without a cluster."""

from types import SimpleNamespace

import numpy as np
import pytest
from ray.exceptions import RayActorError

from recdistill.cluster.contracts import StepResult
from recdistill.cluster.settlement import Settlement, StreamItem
from recdistill.cluster.config import GroupConfig
from recdistill.cluster.contracts import StateDict
from recdistill.cluster.ledger import GroupLedger
from recdistill.cluster.recovery import (ATTEMPTS, Action, Decision, Executor, FailurePolicy,
                                         RunAborted, _retry)
from recdistill.cluster.state import GroupState, SnapshotSchedule
from recdistill.cluster.stream import SoftLabelStream
from recdistill.student.config import StudentConfig

ITEM = StreamItem(0, ("ref",), np.arange(4), 1, 0)
STEP = StepResult(np.arange(4), {"loss": 0.1}, 1, 1.0, {})


def _group(failed_in_a_row: int = 0) -> GroupState:
    cfg = GroupConfig(StudentConfig(name="g"))
    return GroupState(SimpleNamespace(cfg=cfg), GroupLedger(), SnapshotSchedule(0),
                      failed_in_a_row=failed_in_a_row)


def test_a_training_calls_outcome_maps_to_a_decision() -> None:
    policy = FailurePolicy()
    ok = policy.after_call(_group(3), Settlement(trained=((ITEM, (STEP,)),)))
    assert (ok.action, ok.failed_in_a_row) == (Action.CONTINUE, 0)
    # a lost batch is not a failure: the ledger re-delivers (one per call) or relabels
    assert policy.after_call(_group(), Settlement(redeliver=(ITEM, ITEM), retry_singly=2)
                             ).action is Action.CONTINUE
    assert policy.after_call(_group(), Settlement(relabel=(ITEM,))).action is Action.CONTINUE
    failed = Settlement(trained=((ITEM, (STEP,)),), replica_failed=True)
    d = policy.after_call(_group(2), failed)
    assert (d.action, d.group, d.failed_in_a_row) == (Action.REFORM_GROUP, "g", 3)
    assert policy.after_call(_group(ATTEMPTS - 1), failed).action is Action.REFORM_GROUP
    d = policy.after_call(_group(ATTEMPTS), failed)
    assert d.action is Action.GIVE_UP
    assert d.reason.startswith(f"group g: {ATTEMPTS + 1} training calls in a row failed")


def test_a_lost_group_restarts_from_a_survivor_else_its_snapshot() -> None:
    state = StateDict({"model": {}})
    d = FailurePolicy().group_lost("g", state, snapshot=True)
    assert (d.action, d.state) == (Action.REFORM_FROM_SURVIVOR, state)
    assert FailurePolicy().group_lost("g", None, snapshot=True).action \
        is Action.RESTORE_SNAPSHOT
    d = FailurePolicy().group_lost("g", None, snapshot=False)
    assert d.action is Action.GIVE_UP and d.reason.startswith("group g: every replica died")


def test_one_failed_rank_reforms_the_label_source() -> None:
    policy = FailurePolicy(attempts=2)
    assert policy.label_calls([True, None]).action is Action.CONTINUE
    d = policy.label_calls([True, False, None])
    assert (d.action, d.failed_in_a_row) == (Action.REFORM_LABELS, 1)
    assert policy.label_calls([False], failed_in_a_row=1).failed_in_a_row == 2
    assert policy.label_calls([False], failed_in_a_row=2).action is Action.GIVE_UP


def test_the_executor_gives_up_with_the_policys_reason() -> None:
    ex = Executor(FailurePolicy(), SoftLabelStream(["g"], 4), None, {"g": _group()},
                  lambda refs, t: None, lambda g, n: None, lambda: None)
    with pytest.raises(RunAborted, match="^group g: why$"):
        ex.execute(Decision(Action.GIVE_UP, "g", failed_in_a_row=6, reason="group g: why"))
    assert ex.groups["g"].failed_in_a_row == 6
    ex.execute(Decision(Action.CONTINUE, "g", failed_in_a_row=0))
    assert ex.groups["g"].failed_in_a_row == 0


def test_retry_repairs_between_tries_and_gives_up_after_the_last() -> None:
    calls, repairs = [], []

    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise RayActorError()
        return 7

    assert _retry(flaky, lambda: repairs.append(1)) == 7
    assert (len(calls), len(repairs)) == (3, 2)

    def dead() -> int:
        raise RayActorError()

    repairs.clear()
    with pytest.raises(RayActorError):
        _retry(dead, lambda: repairs.append(1))
    assert len(repairs) == ATTEMPTS - 1
    with pytest.raises(ValueError):  # not an actor failure: no retry
        _retry(lambda: int("x"), lambda: repairs.append(1))


def test_an_input_error_is_found_in_a_cause_chain_or_in_a_traceback_text() -> None:
    """A rank's call that failed on bad input ends the run (the same input would fail
    every re-formation): the DataError is found as a cause, or, where Ray Data passed
    only its text on (a UDF's UserCodeException), in the text; other errors are not."""
    from recdistill.cluster.calls import input_error
    from recdistill.data.errors import DataError
    bad = DataError("empty multi-hot value", path="/d/part-3.parquet", row=6,
                    column="genres")
    try:
        try:
            raise bad
        except DataError as e:
            raise RuntimeError("the rank's iterator failed") from e
    except RuntimeError as wrapped:
        assert input_error(wrapped) is bad
    text = RuntimeError("ray::MapBatches(_Chunks)()\n  File ...\nrecdistill.data.errors."
                        "DataError: /d/part-3.parquet, row 6, column 'genres': empty "
                        "multi-hot value\n\nThe above exception was the direct cause ...")
    found = input_error(text)
    assert isinstance(found, DataError) and str(found) == str(bad)
    assert input_error(RuntimeError("ray::TeacherRank died")) is None
