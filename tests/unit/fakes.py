"""In-process stand-ins for the driver loop's actor groups and Ray runtime: the
controller runs whole passes against them with no cluster. Each call completes at once
(a ref is done when made) unless a test holds it; failures are injected by setting a
fake's fields."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray.exceptions import RayActorError

from recdistill.cluster.config import GroupConfig
from recdistill.cluster.contracts import LabelResult, RankCall, StateDict, StepResult, TrainResult
from recdistill.cluster.settlement import ReplicaOutcome, StreamItem
from recdistill.cluster.student_group import TrainCall
from recdistill.student.metrics import MetricState

EVAL_ROWS = 200
_rng = np.random.default_rng(7)
TASKS = ("click", "like")  # the tasks of the fakes' evaluation logits
EVAL_LABELS = (_rng.random((EVAL_ROWS, 2)) < 0.5).astype(np.float32)
EVAL_NOISE = _rng.normal(size=(EVAL_ROWS, 2)).astype(np.float32)


def scored(quality: tuple[float, float]) -> np.ndarray:
    """Logits whose AUC per task grows with ``quality`` (the same noise for everyone:
    equal quality, equal AUC)."""
    return EVAL_LABELS * np.asarray(quality, np.float32) + EVAL_NOISE


@dataclass(eq=False)
class Ref:
    """A fake object ref: done once ``done``; its value, or the error ``get`` raises."""

    value: Any = None
    error: bool = False
    done: bool = True


class FakeRuntime:
    """Waits return the refs done; a wait that finds none releases the held ones (time
    passing). Pass shares: the ids ``0..rows-1`` in a seeded order per pass, split
    equally over the ranks."""

    def __init__(self, rows: int, seed: int = 0) -> None:
        self.rows, self.seed = rows, seed
        self.pass_rows = rows
        self.held: list[Ref] = []
        self.waits = 0
        self.skipped: list[int] = []  # skip_rows of every share handed out

    def wait(self, refs: list[Any], timeout: float) -> set[Any]:
        self.waits += 1
        ready = {r for r in refs if r.done}
        if not ready:
            for r in self.held:
                r.done = True
            self.held.clear()
            ready = {r for r in refs if r.done}
        assert ready, "the loop waits on refs that never finish"
        return ready

    def wait_all(self, refs: list[Any], timeout: float) -> None:
        for r in refs:
            r.done = True

    skips = True

    def shards(self, pass_index: int, ranks: int, skip_rows: int = 0) -> list[Any]:
        order = np.random.default_rng(self.seed + pass_index).permutation(self.rows)
        m = self.rows // ranks
        self.skipped.append(skip_rows)
        return [order[k * m + skip_rows:(k + 1) * m] for k in range(ranks)]

    def table(self, split: str) -> Any:
        return split


class FakeLabels:
    """K ranks labelling ``label_rows``-row batches of their share of each pass."""

    def __init__(self, ranks: int, label_rows: int, quality: tuple[float, float] = (2.0, 1.0)
                 ) -> None:
        self.ranks, self.label_rows, self.quality = ranks, label_rows, quality
        self.generation = 0
        self.source = "teacher/v1"
        self.info: dict[str, Any] = {"version": 1, "parameters": 1000}
        self.pending: deque[tuple[RankCall, ...]] = deque()
        self.shares: dict[int, list[np.ndarray]] = {}
        self.read: dict[int, int] = {}  # pass -> batches read per rank
        self.handed: list[tuple[int, int]] = []  # (pass, generation)
        self.fail_call = 0  # the next this many labelling calls fail (a rank died)
        self.requests = 0
        self.alive = False

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def start(self) -> dict[str, Any]:
        self.alive = True
        return self.info

    def discard(self) -> None:
        self.shutdown()
        self.generation += 1
        self.shares.clear()

    def shutdown(self) -> None:
        self.alive, self.pending = False, deque()

    def start_pass(self, shards: list[Any], index: int) -> None:
        self.shares[index], self.read[index] = shards, 0
        self.handed.append((index, self.generation))

    def request(self, n: int, index: int) -> None:
        if index not in self.shares:
            raise AssertionError(f"pass {index + 1} was not handed to the ranks")
        self.requests += 1
        failed = self.fail_call > 0
        self.fail_call -= failed
        start = self.read[index]
        self.read[index] = start + n
        call = []
        for share in self.shares[index]:
            ids = [share[(start + i) * self.label_rows:(start + i + 1) * self.label_rows]
                   for i in range(n)]
            # as TeacherRank.label_many: None for a batch past the share's end
            ids = [b if len(b) else None for b in ids]
            call.append(RankCall(Ref(ids, error=failed),
                                 tuple(Ref(("batch", b)) for b in ids)))
        self.pending.append(tuple(call))

    def pending_refs(self) -> list[Any]:
        return [rank.ids for call in self.pending for rank in call]

    def outcomes(self, ready: set[Any]) -> list[bool | None]:
        return [None if r not in ready else not r.error for r in self.pending_refs()]

    def oldest_done(self, ready: set[Any]) -> bool:
        return bool(self.pending) and all(rank.ids in ready for rank in self.pending[0])

    def collect(self) -> LabelResult:
        call = self.pending.popleft()
        return LabelResult.from_ids([rank.ids.value for rank in call], call)

    def evaluate_members(self, split_ref: Any, block: int, batch_size: int,
                         group_key: str = "") -> tuple[np.ndarray, Any, None]:
        return EVAL_LABELS, {"teacher": scored(self.quality)}, None

    def reload(self, checkpoint: str) -> int:
        self.source = checkpoint
        self.info["version"] += 1
        return int(self.info["version"])

    def usage(self) -> dict[str, Any]:
        return {"batches": 0}


@dataclass
class FakeStudents:
    """A student group of ``cfg.replicas`` replicas. Its "model state" is the number of
    batches it trained (so a restore is visible); ``quality`` per pass gives its
    validation logits."""

    cfg: GroupConfig
    quality: list[tuple[float, float]] = field(default_factory=lambda: [(0.5, 0.5)])
    generation: int = 0
    calls: list[TrainCall] = field(default_factory=list)
    snapshot: Any = None
    trained: int = 0
    alive: bool = False
    sharded: bool = False  # no survivor can stand in for the group
    fail_calls: int = 0  # the next this many training calls fail (a replica died)
    hold: list[Ref] | None = None  # a runtime's held list: calls are not done until released
    starts: list[Any] = field(default_factory=list)
    guard_calls: list[tuple[str, ...]] = field(default_factory=list)
    snapshots_taken: int = 0
    evaluations: int = 0

    def start(self, state: Any = None) -> None:
        self.alive, self.calls = True, []
        self.starts.append(state)
        self.trained = state.state["trained"] if isinstance(state, StateDict) else 0

    def discard(self) -> None:
        self.shutdown()
        self.generation += 1

    def shutdown(self) -> None:
        self.alive, self.calls = False, []

    def submit(self, items: list[StreamItem], newest_version: int) -> None:
        failed = self.fail_calls > 0
        self.fail_calls -= failed
        refs = []
        for j in range(self.cfg.replicas):
            steps = [StepResult(np.array_split(i.ids, self.cfg.replicas)[j], {"loss": 1.0},
                                i.version, 1.0, {}) for i in items]
            refs.append(Ref(TrainResult(steps), error=failed,
                            done=self.hold is None))
            if self.hold is not None:
                self.hold.append(refs[-1])
        if not failed:
            self.trained += len(items)
        self.calls.append(TrainCall(items, refs))

    @staticmethod
    def outcome(ref: Ref, timeout: float = 0.0) -> ReplicaOutcome:
        return ReplicaOutcome() if ref.error else ReplicaOutcome(result=ref.value)

    def in_flight(self) -> list[StreamItem]:
        return [item for call in self.calls for item in call.items]

    def survivor_state(self) -> StateDict | None:
        return None if self.sharded else StateDict({"trained": self.trained})

    def take_snapshot(self) -> None:
        self._alive_or_die()
        self.snapshots_taken += 1
        self.snapshot = StateDict({"trained": self.trained})

    def read_snapshot(self) -> StateDict:
        return self.snapshot

    def set_kd_guard(self, off: tuple[str, ...], terms: tuple[str, ...] = ()) -> None:
        self._alive_or_die()
        self.guard_calls.append(tuple(off) + tuple(terms))

    def evaluate_async(self, table_ref: Any, batch_size: int, best: bool = False) -> Ref:
        q = self.quality[min(self.evaluations, len(self.quality) - 1)]
        self.evaluations += 1
        return Ref(MetricState.of(scored(q), EVAL_LABELS, TASKS), error=not self.alive)

    def evaluation(self, ref: Ref) -> Any:
        if ref.error:
            raise RayActorError()
        return ref.value

    def evaluate(self, table_ref: Any, batch_size: int, best: bool = False) -> Any:
        return self.evaluation(self.evaluate_async(table_ref, batch_size, best))

    def keep_best(self) -> None:
        self._alive_or_die()

    def state(self) -> StateDict:
        self._alive_or_die()
        return StateDict({"trained": self.trained})

    def write_serving(self, path: str) -> None:
        pass

    def parameters_count(self) -> dict[str, int]:
        return {"serving": 10, "total": 12}

    def die(self) -> None:
        """Every replica dies: the calls in flight fail."""
        for call in self.calls:
            for ref in call.refs:
                ref.error = True
        self.alive = False

    def _alive_or_die(self) -> None:
        if not self.alive:
            raise RayActorError()
