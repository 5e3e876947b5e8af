"""Failure handling: an outcome goes to :class:`FailurePolicy`, which returns a
:class:`Decision`; :meth:`Executor.execute` carries out every decision, giving up
included. The policy is pure (tested without Ray); the executor is the one place where
actors are replaced, and every call the driver makes to the actors goes through
:meth:`Executor.on_labels` or :meth:`Executor.on_group`, so a rank or replica that dies
at any point (start, pass start, evaluation, refresh, snapshot, checkpoint) is handled
as one that dies mid-pass: its group is re-formed and the call made again.

- A student replica dies: the group's training calls in flight are settled (a step any
  replica finished counts as trained), the group is re-formed (new actors and process
  group) from a surviving replica's state; if none survived, from the group's last
  snapshot, and the batches it acknowledged since are delivered again.
- A label-group rank dies: the label source is re-formed from the same checkpoint
  versions and the pass is read again from after the batches every group trained
  (``SoftLabelStream.skip``); batches already published are dropped by ``(rank, seq)``. A rank's call that failed on bad input (``calls.input_error``) is no
  failure: the run ends with that error (``LabelGroup.outcomes`` raises it).
- A batch lost with its node is not a decision: the settlement says which batches go
  again (one per call while the lost one is looked for) and the ledger books that.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, TypeVar

from ray.exceptions import RayError

from recdistill.cluster.calls import CALL_TIMEOUT_S
from recdistill.cluster.contracts import GroupSave
from recdistill.cluster.process import COLLECTIVE_TIMEOUT
from recdistill.cluster.settlement import ReplicaOutcome, Settlement, settle
from recdistill.cluster.state import GroupState, LabelSource, LabelState
from recdistill.cluster.stream import SoftLabelStream

T = TypeVar("T")
ATTEMPTS = 5  # tries of one call (or one re-formation) before the job gives up
# A training call in flight is done within the collective timeout once a peer is gone.
SETTLE_TIMEOUT_S = COLLECTIVE_TIMEOUT.total_seconds() + 10


class RunAborted(RuntimeError):
    """The failure policy gave up: the run cannot go on."""


class Action(Enum):
    CONTINUE = "continue"
    REFORM_GROUP = "re-form the group (from a survivor, else its snapshot)"
    REFORM_FROM_SURVIVOR = "re-form the group from a surviving replica"
    RESTORE_SNAPSHOT = "re-form the group from its last snapshot"
    REFORM_LABELS = "re-form the label source and replay the pass"
    GIVE_UP = "end the run"


@dataclass(frozen=True)
class Decision:
    """What to do about an outcome.

    Attributes:
        action: the decision.
        group: the student group it concerns ("" for the label source).
        failed_in_a_row: the group's count of failed training calls from now on (None:
            unchanged; only a training call's outcome changes it); for the label source
            (``group`` ""), its failed labelling calls in a row.
        state: REFORM_FROM_SURVIVOR: the survivor's state.
        reason: GIVE_UP: why.
    """

    action: Action
    group: str = ""
    failed_in_a_row: int | None = None
    state: GroupSave | None = None
    reason: str = ""


class FailurePolicy:
    """Outcome -> :class:`Decision`. Pure: no actors, no Ray."""

    def __init__(self, attempts: int = ATTEMPTS) -> None:
        self.attempts = attempts

    def after_call(self, g: GroupState, s: Settlement) -> Decision:
        """A group's finished training call. A call that fails every time (a bug, not a
        lost process) would re-form the group forever: give up after ``attempts`` in a
        row."""
        if not s.replica_failed:
            return Decision(Action.CONTINUE, g.name, failed_in_a_row=0)
        failed = g.failed_in_a_row + 1
        if failed > self.attempts:
            return Decision(Action.GIVE_UP, g.name, reason=(
                f"group {g.name}: {failed} training calls in a row failed, each after a "
                "re-formation; the replicas' error is printed above"))
        return Decision(Action.REFORM_GROUP, g.name, failed_in_a_row=failed)

    def group_lost(self, name: str, survivor: GroupSave | None, snapshot: bool) -> Decision:
        """How a group that lost a replica restarts: from a survivor's state, else from
        its snapshot, else not at all."""
        if survivor is not None:
            return Decision(Action.REFORM_FROM_SURVIVOR, name, state=survivor)
        if snapshot:
            return Decision(Action.RESTORE_SNAPSHOT, name)
        return Decision(Action.GIVE_UP, name, reason=(
            f"group {name}: every replica died and it keeps no snapshots "
            "(snapshot_every = 0); nothing to restore from"))

    def label_calls(self, outcomes: list[bool | None], failed_in_a_row: int = 0
                    ) -> Decision:
        """Per rank and call in flight: True (done), False (failed), None (running).
        ``failed_in_a_row``: the label source's re-formations since it last labelled a
        call; a source that fails every time would be re-formed forever: give up after
        ``attempts``."""
        if False not in outcomes:
            return Decision(Action.CONTINUE)
        failed = failed_in_a_row + 1
        if failed > self.attempts:
            return Decision(Action.GIVE_UP, reason=(
                f"the label source failed {failed} times in a row, each time re-formed "
                "without labelling a call; the ranks' error is printed above"))
        return Decision(Action.REFORM_LABELS, failed_in_a_row=failed)


class Executor:
    """Carries out the decisions on the driver's states.

    Args:
        policy: decides.
        stream: the books.
        labels: the label source's state.
        groups: every student group's state, by name.
        wait_all: ``wait_all(refs, timeout)`` waits until every ref is done or the
            time is up (``ray.wait``; a test's fake).
        on_trained: ``on_trained(group, acked)`` after each batch is booked.
        on_labels_started: runs after a re-formed label source started (the controller
            hands it the pass in progress).
    """

    def __init__(self, policy: FailurePolicy, stream: SoftLabelStream, labels: LabelState,
                 groups: dict[str, GroupState], wait_all: Callable[[list[Any], float], None],
                 on_trained: Callable[[str, int], None],
                 on_labels_started: Callable[[], None]) -> None:
        self.policy, self.stream, self.labels, self.groups = policy, stream, labels, groups
        self.wait_all, self.on_trained = wait_all, on_trained
        self.on_labels_started = on_labels_started

    # ---------------------------------------------------------------- decisions
    def execute(self, d: Decision) -> None:
        """Carry out ``d``; the only place where a group's failure count, restores and
        actors change after a failure."""
        g = self.groups.get(d.group)
        if d.failed_in_a_row is not None:
            if g is not None:
                g.failed_in_a_row = d.failed_in_a_row
            elif d.action is Action.REFORM_LABELS:
                self.labels.failed_in_a_row = d.failed_in_a_row
        if d.action is Action.CONTINUE:
            return
        if d.action is Action.GIVE_UP:
            raise RunAborted(d.reason)
        if d.action is Action.REFORM_LABELS:
            self._reform_labels()
            return
        assert g is not None, d
        if d.action is Action.REFORM_GROUP:
            self.settle_in_flight(g)
            self.execute(self.policy.group_lost(g.name, g.actors.survivor_state(),
                                                g.actors.snapshot is not None))
        elif d.action is Action.REFORM_FROM_SURVIVOR:
            self._restart(g, d.state)
        elif d.action is Action.RESTORE_SNAPSHOT:
            state = g.actors.read_snapshot()
            g.ledger.rollback_to_snapshot()
            g.restores += 1
            self._restart(g, state)

    def _restart(self, g: GroupState, state: GroupSave | None) -> None:
        g.actors.discard()
        _retry(lambda: g.start(state), g.actors.discard)

    def _reform_labels(self) -> None:
        """New label actors and process group, shards reloaded from the same checkpoint
        version; the pass in progress is read again from its start (rows already
        published are not published again)."""
        self.labels.source.discard()
        # Batches a dead rank stored on a lost node are gone with it. Settle every call
        # in flight, then hand the undelivered batches back to the replay: their ids are
        # labelled again (rows a group has trained are still not re-trained).
        for g in self.groups.values():
            if self.settle_in_flight(g):
                self.execute(Decision(Action.REFORM_GROUP, g.name))
        self.stream.requeue_undelivered()
        _retry(self._start_labels, self.labels.source.discard)

    def _start_labels(self) -> None:
        self.labels.source.start()
        self.on_labels_started()

    # ------------------------------------------------------------ training calls
    def finish_call(self, g: GroupState, call: Any, timeout: float = CALL_TIMEOUT_S
                    ) -> Decision:
        """Book a finished training call of ``g`` and decide what comes next (a
        replica's call not done within ``timeout`` counts as failed)."""
        outcomes: list[ReplicaOutcome] = [g.actors.outcome(ref, timeout)
                                          for ref in call.refs]
        s = settle(g.name, call.items, outcomes)
        self.stream.apply(g.name, s)
        acked = g.ledger.acked - len(s.trained)
        for i in range(len(s.trained)):
            self.on_trained(g.name, acked + i + 1)
        return self.policy.after_call(g, s)

    def settle_in_flight(self, g: GroupState) -> bool:
        """Wait (bounded) for the group's calls in flight and book them; whether a
        replica failed in one."""
        self.wait_all([ref for call in g.actors.calls for ref in call.refs],
                      SETTLE_TIMEOUT_S)
        failed = False
        while g.actors.calls:  # a call still running now is stuck on a dead peer: failed
            d = self.finish_call(g, g.actors.calls.pop(0), timeout=1.0)
            failed |= d.action is not Action.CONTINUE
        return failed

    # ----------------------------------------------------------- guarded calls
    def start(self, states: dict[str, GroupSave],
              labels_started: Callable[[], None] | None = None) -> None:
        """Start the label source and every student group (``states``: group -> the
        state to start from), each retried as a re-formation would be;
        ``labels_started()`` runs in between (work for the label source that overlaps
        the student groups' start)."""
        _retry(self.labels.source.start, self.labels.source.discard)
        if labels_started is not None:
            labels_started()
        for name, g in self.groups.items():
            _retry(lambda: g.start(states.get(name)), g.actors.discard)

    def on_labels(self, call: Callable[[LabelSource], T]) -> T:
        """``call(source)``; if a rank dies in it, re-form the source and call again."""
        return _retry(lambda: call(self.labels.source),
                      lambda: self.execute(Decision(Action.REFORM_LABELS)))

    def on_group(self, name: str, call: Callable[[Any], T]) -> T:
        """``call(actors)``; if a replica dies in it, re-form the group and call again."""
        g = self.groups[name]
        return _retry(lambda: call(g.actors),
                      lambda: self.execute(Decision(Action.REFORM_GROUP, name)))


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

