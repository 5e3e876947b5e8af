"""The failure classifier and the retry helper, without a cluster."""

import numpy as np
import pytest
from ray.exceptions import RayActorError

from recdistill.cluster.contracts import StepResult
from recdistill.cluster.ledger import Settlement, StreamItem
from recdistill.cluster.recovery import (ATTEMPTS, Decision, _retry, classify_group_loss,
                                         classify_label_calls, classify_round)

ITEM = StreamItem(0, "ref", np.arange(4), 1, 0)
STEP = StepResult(np.arange(4), {"loss": 0.1}, 1, 1.0, {})


def test_round_outcomes_map_to_decisions() -> None:
    assert classify_round(Settlement(trained=((ITEM, (STEP,)),))) is Decision.CONTINUE
    assert classify_round(Settlement(redeliver=(ITEM, ITEM), retry_singly=2)) \
        is Decision.RETRY_SINGLY
    assert classify_round(Settlement(trained=((ITEM, (STEP,)),), replica_failed=True)) \
        is Decision.REFORM_FROM_SURVIVOR
    assert classify_round(Settlement(relabel=(ITEM,))) is Decision.CONTINUE


def test_a_lost_group_restarts_from_a_survivor_else_its_snapshot() -> None:
    assert classify_group_loss("g", survivor=True, snapshot=True) \
        is Decision.REFORM_FROM_SURVIVOR
    assert classify_group_loss("g", survivor=False, snapshot=True) \
        is Decision.RESTORE_SNAPSHOT
    with pytest.raises(RuntimeError, match="group g: every replica died"):
        classify_group_loss("g", survivor=False, snapshot=False)


def test_one_failed_rank_reforms_the_label_group() -> None:
    assert classify_label_calls([True, None]) is Decision.CONTINUE
    assert classify_label_calls([True, False, None]) is Decision.REFORM_LABEL_GROUP


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
