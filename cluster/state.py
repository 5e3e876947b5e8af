"""What the driver knows, in one place per group: a student group's :class:`GroupState`,
the label source's :class:`LabelState`, and the schedules that own their counters.

The controller (cluster/controller.py) reads these; the failure executor
(cluster/recovery.py) is the only other code that changes them. No Ray here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from recdistill.cluster.config import GroupConfig
from recdistill.cluster.contracts import GroupSave, LabelResult
from recdistill.cluster.ledger import GroupLedger
from recdistill.cluster.settlement import ReplicaOutcome, StreamItem
from recdistill.student.losses import feature_terms


# ------------------------------------------------------------------ schedules
@dataclass
class Every:
    """Fires on every ``n``-th event it counts (``n = 0``: never)."""

    n: int
    count: int = 0

    def due(self, count: int | None = None) -> bool:
        """Whether event number ``count`` (default: the last one counted) fires."""
        c = self.count if count is None else count
        return self.n > 0 and c > 0 and c % self.n == 0

    def tick(self) -> bool:
        """Count one event; whether it fires."""
        self.count += 1
        return self.due()


@dataclass
class Interval:
    """Fires at most once every ``seconds`` of ``clock`` (the dashboard's gauges)."""

    seconds: float
    clock: Callable[[], float] = time.monotonic
    last: float = -math.inf

    def tick(self) -> bool:
        now = self.clock()
        if now - self.last > self.seconds:
            self.last = now
            return True
        return False


@dataclass(frozen=True)
class SnapshotSchedule:
    """A group's snapshots: at the start, at each pass end and once ``every`` batches
    were acknowledged since the last one (the ledger counts them); 0: never."""

    every: int

    def due(self, ledger: GroupLedger) -> bool:
        return bool(self.every) and len(ledger.since_snapshot) >= self.every


# ------------------------------------------------------------- the actor groups
class StudentActors(Protocol):
    """What the driver calls on a student group's actors (``StudentGroup``, or a test's
    fake); every call that can lose an actor goes through the executor."""

    cfg: GroupConfig
    generation: int
    calls: list[Any]  # TrainCall: items and one ref per replica
    snapshot: Any

    def start(self, state: GroupSave | None = None) -> None: ...
    def discard(self) -> None: ...
    def shutdown(self) -> None: ...
    def submit(self, items: list[StreamItem], newest_version: int) -> None: ...
    def outcome(self, ref: Any, timeout: float = ...) -> ReplicaOutcome: ...
    def in_flight(self) -> list[StreamItem]: ...
    def survivor_state(self) -> GroupSave | None: ...
    def take_snapshot(self) -> None: ...
    def read_snapshot(self) -> GroupSave: ...
    def set_kd_guard(self, off: tuple[str, ...], terms: tuple[str, ...] = ()) -> None: ...
    def evaluate_async(self, split_ref: Any, batch_size: int, best: bool = False) -> Any: ...
    def evaluation(self, ref: Any) -> Any: ...
    def evaluate(self, split_ref: Any, batch_size: int, best: bool = False) -> Any: ...
    def keep_best(self) -> None: ...
    def state(self) -> GroupSave: ...
    def write_serving(self, path: str) -> None: ...
    def parameters_count(self) -> dict[str, int]: ...


class LabelSource(Protocol):
    """What the driver calls on the label source (``Committee``: one teacher, a
    committee, or soft-label readers; or a test's fake)."""

    generation: int
    info: dict[str, Any]
    source: str

    @property
    def ranks(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    def start(self) -> dict[str, Any]: ...
    def discard(self) -> None: ...
    def shutdown(self) -> None: ...
    def start_pass(self, shards: list[Any], index: int) -> None: ...
    def request(self, n: int, index: int) -> None: ...
    def pending_refs(self) -> list[Any]: ...
    def outcomes(self, ready: set[Any]) -> list[bool | None]: ...
    def oldest_done(self, ready: set[Any]) -> bool: ...
    def collect(self) -> LabelResult: ...
    def evaluate_members(self, split_ref: Any, block: int, batch_size: int,
                         group_key: str = "") -> Any: ...
    def reload(self, checkpoint: str) -> int: ...
    def usage(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Hooks:
    """Calls into the run for tests: ``after_ack(group, acked_so_far)`` after each
    acknowledged batch, ``on_phase(name)`` as a phase starts (``evaluate valid``,
    ``evaluate test``, ``pass N``); they inject failures at those points."""

    after_ack: Callable[[str, int], None] | None = None
    on_phase: Callable[[str], None] | None = None


class Runtime(Protocol):
    """The driver's Ray calls that belong to no actor group (``RayRuntime`` in
    cluster/data.py; a test's fake)."""

    def wait(self, refs: list[Any], timeout: float) -> set[Any]: ...
    def wait_all(self, refs: list[Any], timeout: float) -> None: ...
    @property
    def skips(self) -> bool: ...  # whether shards can start past their first rows
    def shards(self, pass_index: int, ranks: int, skip_rows: int = 0) -> list[Any]: ...
    def table(self, split: str) -> Any: ...
    @property
    def pass_rows(self) -> int: ...  # training rows per pass



# --------------------------------------------------------------------- states
@dataclass
class GroupHistory:
    """What the driver learnt about a group over the passes: its validation curve and
    its best pass (by the first task's validation AUC)."""

    curve: list[dict[str, Any]] = field(default_factory=list)
    best_auc: float = -1.0
    best_pass: int = -1

    def record(self, pass_number: int, valid: dict[str, dict[str, float]],
               train_loss: dict[str, float], examples: int, first_task: str) -> bool:
        """Add pass ``pass_number`` (1-based); whether it is the best so far."""
        self.curve.append({"pass": pass_number, "valid": valid, "train_loss": train_loss,
                           "examples": examples})
        if valid[first_task]["auc"] > self.best_auc:
            self.best_auc, self.best_pass = valid[first_task]["auc"], pass_number
            return True
        return False


@dataclass
class GroupState:
    """One student group: its actors, its books and everything the driver decided
    about it.

    Attributes:
        actors: the replicas (a re-formation replaces them, not this object).
        ledger: its books (the stream fans batches out to it).
        history: its validation curve and best pass.
        snapshots: when it keeps a snapshot.
        guard_log: task or loss term -> the pass after which the KD guard turned it off
            (a re-formed group gets them again: :attr:`kd_off`, :attr:`terms_off`).
        guard_why: task or term -> why (the baseline reached the teacher, or the group
            trailed its baseline).
        failed_in_a_row: training calls that failed since the last that did not.
        restores: re-formations that started from the snapshot (no replica survived).
        stopped_after: the pass after which it stopped (``GroupConfig.patience``); 0:
            it trains.
    """

    actors: StudentActors
    ledger: GroupLedger
    snapshots: SnapshotSchedule
    history: GroupHistory = field(default_factory=GroupHistory)
    guard_log: dict[str, int] = field(default_factory=dict)
    guard_why: dict[str, str] = field(default_factory=dict)
    failed_in_a_row: int = 0
    restores: int = 0
    stopped_after: int = 0

    @property
    def name(self) -> str:
        return self.actors.cfg.name

    @property
    def cfg(self) -> GroupConfig:
        return self.actors.cfg

    @property
    def kd_off(self) -> tuple[str, ...]:
        """The tasks the KD guard turned off."""
        return tuple(k for k in self.guard_log if k not in feature_terms(self.cfg.student))

    @property
    def terms_off(self) -> tuple[str, ...]:
        """The loss terms the KD guard turned off."""
        return tuple(k for k in self.guard_log if k in feature_terms(self.cfg.student))

    def out_of_patience(self, pass_number: int) -> bool:
        """Whether, after pass ``pass_number``, its best pass is ``patience`` or more
        passes back."""
        patience = self.cfg.patience
        return bool(patience) and pass_number - self.history.best_pass >= patience

    def start(self, state: GroupSave | None = None) -> None:
        """Start the actors (from ``state``) with the guard's decisions applied."""
        self.actors.start(state)
        if self.kd_off or self.terms_off:
            self.actors.set_kd_guard(self.kd_off, self.terms_off)


@dataclass
class PassState:
    """The pass being labelled and trained.

    Attributes:
        index: 0-based.
        per_call: labelled batches per rank per labelling call.
        labels_done: the label source has labelled the whole pass.
        active: the pass loop runs (a re-formed label source is handed the pass).
    """

    index: int
    per_call: int
    labels_done: bool = False
    active: bool = False


@dataclass
class LabelState:
    """The label source and what the driver decided about it.

    Attributes:
        source: its actors.
        refresh: counts labelling calls made; fires when a newer teacher version is
            looked for.
        version: the teacher version labelling now (``first_version``: at the start).
        handed: (the last pass handed to the ranks, their generation): passes up to it
            are queued on those ranks.
        next_seq: pass -> the seq (in each rank's share) of the next labelled batch
            collected: 0, or where a replay of the pass starts (``SoftLabelStream.skip``).
        refreshes: every version loaded mid-run (the report's ``refreshes``).
        current: the pass in progress.
        failed_in_a_row: re-formations since a labelling call was last collected.
    """

    source: LabelSource
    refresh: Every
    version: int = 0
    first_version: int = 0
    handed: tuple[int, int] = (-1, -1)
    next_seq: dict[int, int] = field(default_factory=dict)
    refreshes: list[dict[str, int]] = field(default_factory=list)
    current: PassState | None = None
    failed_in_a_row: int = 0
