"""Failure handling: what a round's outcomes mean (a decision), and one executor for
every decision.

The classifiers are pure (tested without Ray). The executor, :class:`Recovery`, is the
one place where actors are replaced; every call the driver makes to the actors goes
through :meth:`Recovery.on_labels` or :meth:`Recovery.on_group`, so a rank or replica
that dies at any point (start, pass start, evaluation, refresh, snapshot, checkpoint)
is handled as one that dies mid-pass: its group is re-formed and the call made again.

- A student replica dies: the group's rounds in flight are settled (a step any replica
  finished counts as trained), the group is re-formed (new actors and process group)
  from a surviving replica's state; if none survived, from the group's last snapshot,
  and the batches it acknowledged since are delivered again.
- A label-group rank dies: the group is re-formed from the same checkpoint version and
  the pass is read again from its start; rows already published are dropped by id.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Callable, TypeVar

import ray
from ray.exceptions import RayError

from recdistill.cluster.committee import Committee
from recdistill.cluster.groups import CALL_TIMEOUT_S, Round, StudentGroup
from recdistill.cluster.ledger import ReplicaOutcome, Settlement, settle
from recdistill.cluster.process import COLLECTIVE_TIMEOUT
from recdistill.cluster.stream import SoftLabelStream

T = TypeVar("T")
ATTEMPTS = 5  # tries of one call (or one re-formation) before the job gives up
# A round in flight is done within the collective timeout once a peer is gone.
SETTLE_TIMEOUT_S = COLLECTIVE_TIMEOUT.total_seconds() + 10


class Decision(Enum):
    CONTINUE = "continue"
    RETRY_SINGLY = "retry the round's batches one per call"
    REFORM_FROM_SURVIVOR = "re-form the group from a surviving replica"
    RESTORE_SNAPSHOT = "re-form the group from its last snapshot"
    REFORM_LABEL_GROUP = "re-form the label group and replay the pass"


def classify_round(s: Settlement) -> Decision:
    """A student round's settlement -> what to do next."""
    if s.replica_failed:
        return Decision.REFORM_FROM_SURVIVOR
    return Decision.RETRY_SINGLY if s.retry_singly else Decision.CONTINUE


def classify_group_loss(group: str, survivor: bool, snapshot: bool) -> Decision:
    """How a failed group restarts: from a survivor's state, else from its snapshot."""
    if survivor:
        return Decision.REFORM_FROM_SURVIVOR
    if snapshot:
        return Decision.RESTORE_SNAPSHOT
    raise RuntimeError(f"group {group}: every replica died and it keeps no snapshots "
                       "(snapshot_every = 0); nothing to restore from")


def classify_label_calls(outcomes: list[bool | None]) -> Decision:
    """Per rank: True (its call succeeded), False (it failed), None (still running)."""
    return Decision.REFORM_LABEL_GROUP if False in outcomes else Decision.CONTINUE


class Recovery:
    """Executes the decisions on the driver's groups.

    Args:
        stream: the ledgers.
        labels: the label group.
        groups: the student groups, by name.
        on_trained: called as ``on_trained(group, acked)`` after each batch is booked
            (``acked``: the group's batches acknowledged so far).
    """

    def __init__(self, stream: SoftLabelStream, labels: Committee,
                 groups: dict[str, StudentGroup],
                 on_trained: Callable[[str, int], None]) -> None:
        self.stream, self.labels, self.groups = stream, labels, groups
        self.on_trained = on_trained
        # Set by the loop while a pass runs: hands the re-formed label group its shares.
        self.restart_pass: Callable[[], None] | None = None

    # ---------------------------------------------------------------- rounds
    def finish_round(self, name: str, rnd: Round, timeout: float = CALL_TIMEOUT_S
                     ) -> Decision:
        """Book a finished round of ``name`` and say what to do next (a replica's call
        not done within ``timeout`` counts as failed)."""
        outcomes: list[ReplicaOutcome] = [StudentGroup.outcome(ref, timeout)
                                          for ref in rnd.refs]
        s = settle(name, rnd.items, outcomes)
        self.stream.apply(name, s)
        acked = self.stream.ledgers[name].acked - len(s.trained)
        for i in range(len(s.trained)):
            self.on_trained(name, acked + i + 1)
        return classify_round(s)

    def settle_in_flight(self, name: str) -> bool:
        """Wait (bounded) for the group's rounds in flight and book them; whether a
        replica failed in one."""
        g = self.groups[name]
        refs = [ref for rnd in g.rounds for ref in rnd.refs]
        ray.wait(refs, num_returns=len(refs), timeout=SETTLE_TIMEOUT_S)
        failed = False
        while g.rounds:  # a call still running now is stuck on a dead peer: failed
            failed |= self.finish_round(name, g.rounds.pop(0), timeout=1.0) \
                is Decision.REFORM_FROM_SURVIVOR
        return failed

    # --------------------------------------------------------- re-formations
    def reform_group(self, name: str) -> None:
        """Replace a group after a replica died: book its rounds, restart it from a
        survivor's state or, if none is left, from its snapshot."""
        g = self.groups[name]
        self.settle_in_flight(name)
        state = g.survivor_state()
        if classify_group_loss(name, state is not None, g.snapshot is not None) \
                is Decision.RESTORE_SNAPSHOT:
            state = g.read_snapshot()
            self.stream.ledgers[name].rollback_to_snapshot()
            g.restores += 1
        g.discard()
        _retry(lambda: g.start(state), g.discard)

    def reform_labels(self) -> None:
        """Replace the label group after a rank died: new actors and process group,
        shards reloaded from the same checkpoint version; the pass in progress is read
        again from its start (rows already published are not published again)."""
        self.labels.discard()
        # Batches a dead rank stored on a lost node are gone with it. Settle every round
        # in flight, then hand the undelivered batches back to the replay: their ids are
        # labelled again (rows a group has trained are still not re-trained).
        for name in self.groups:
            if self.settle_in_flight(name):
                self.reform_group(name)
        self.stream.requeue_undelivered()
        _retry(self._start_labels, self.labels.discard)

    def _start_labels(self) -> None:
        self.labels.start()
        if self.restart_pass is not None:
            self.restart_pass()

    def start(self, states: dict[str, Any],
              labels_started: Callable[[], None] | None = None) -> None:
        """Start the label group and every student group (``states``: group -> the
        state to start from, if any), each retried as a re-formation would be;
        ``labels_started()`` runs in between (work for the label group that overlaps
        the student groups' start)."""
        _retry(self.labels.start, self.labels.discard)
        if labels_started is not None:
            labels_started()
        for name, g in self.groups.items():
            _retry(lambda: g.start(states.get(name)), g.discard)

    # ----------------------------------------------------------- guarded calls
    def on_labels(self, call: Callable[[Committee], T]) -> T:
        """``call(labels)``; if a rank dies in it, re-form the group and call again."""
        return _retry(lambda: call(self.labels), self.reform_labels)

    def on_group(self, name: str, call: Callable[[StudentGroup], T]) -> T:
        """``call(group)``; if a replica dies in it, re-form the group and call again."""
        return _retry(lambda: call(self.groups[name]), lambda: self.reform_group(name))


def _retry(call: Callable[[], T], repair: Callable[[], None]) -> T:
    """``call()``, with ``repair()`` between tries when an actor died in it (a
    ``RayError``), up to ``ATTEMPTS`` tries."""
    for attempt in range(ATTEMPTS):
        try:
            return call()
        except RayError:
            if attempt == ATTEMPTS - 1:
                raise
            repair()
    raise AssertionError("unreachable")
