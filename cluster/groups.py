"""The actor groups the driver runs: one label group and a student group per config.

Each object owns its actors, their generation (a re-formed group's actors are named
``teacher-0.1``, ``student-kd-1.2``, ...) and, for the label group, its placement
group; each has ``start``, ``reform`` and ``shutdown``. What to do when one fails is
decided in cluster/recovery.py; these only run the calls.
"""

from __future__ import annotations

import shutil
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayError

from recdistill.cluster.actors import TeacherRank
from recdistill.cluster.config import DistillConfig, GroupConfig
from recdistill.cluster.contracts import LabelRound
from recdistill.cluster.ledger import ReplicaOutcome, StreamItem
from recdistill.cluster.replica import StudentReplica
from recdistill.cluster.soft_labels import SoftLabelReader
from recdistill.data.spec import ExampleTable, FeatureSpec
from recdistill.teacher.checkpoint import resolve

CALL_TIMEOUT_S = 600.0  # the most a control call (setup, pass start, evaluation) may take
PLACEMENT_TIMEOUT_S = 120.0


class LabelSource(Protocol):
    """What the driver calls on each rank of a label group: ``TeacherRank`` (the live
    teacher) or ``SoftLabelReader`` (precomputed labels)."""

    def address(self) -> tuple[str, int]: ...
    def setup(self, addr: str, port: int) -> dict[str, Any]: ...
    def start_pass(self, shard: Any, index: int) -> None: ...
    def label_many(self, n: int, index: int) -> tuple[Any, ...]: ...
    def evaluate(self, table: ExampleTable, batch_size: int
                 ) -> tuple[np.ndarray, np.ndarray]: ...
    def usage(self) -> dict[str, float]: ...
    def pid(self) -> int: ...


def _suffix(generation: int) -> str:
    return f".{generation}" if generation else ""


def _kill(actors: list[Any]) -> None:
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


class LabelGroup:
    """K label-source actors in lockstep over equal shares of each pass's stream.

    Args:
        cfg: the job config (its ``teacher_group`` and ``stream``).
        source: the teacher checkpoint version to load, or a soft-label directory.
        soft_labels: ``source`` is a soft-label directory (readers, no process group).
        member: a committee member's name ("": the one teacher); its actors are
            ``teacher-<member>-<rank>``.
        read_keys: the sparse features its ranks read from the stream (a committee's
            lead reads every member's); empty: its own.
        follower: a committee member that labels the lead's batches instead of reading
            the stream (:meth:`request_from`); its labels carry logits only.
    """

    def __init__(self, cfg: DistillConfig, source: str, soft_labels: bool = False, *,
                 member: str = "", read_keys: tuple[str, ...] = (),
                 follower: bool = False) -> None:
        self.cfg, self.source, self.soft_labels = cfg, source, soft_labels
        self.member, self.read_keys, self.follower = member, read_keys, follower
        self.rank_cls: type = TeacherRank  # the actor class of a live teacher's ranks
        self.name = "soft-labels" if soft_labels else \
            f"teacher-{member}" if member else "teacher"
        self.generation = 0
        self.actors: list[Any] = []
        self.pids: list[int] = []
        self.info: dict[str, Any] = {}
        # the labelling calls in flight, oldest first (at most
        # teacher_group.calls_in_flight): per rank, [ids-list ref, batch refs...]
        self.pending: deque[list[list[Any]]] = deque()
        self._placement: Any = None

    @classmethod
    def teacher(cls, cfg: DistillConfig) -> "LabelGroup":
        """The live teacher at the configured checkpoint version, resolved once here:
        every rank (and a re-formed group) loads the same version, even if training
        writes a newer one meanwhile."""
        return cls(cfg, str(resolve(cfg.members[0].checkpoint, cfg.teacher_group.version)))

    @property
    def ranks(self) -> int:
        return self.cfg.teacher_group.ranks

    def start(self) -> dict[str, Any]:
        """Start the actors and set them up as one group; returns rank 0's setup info."""
        tg = self.cfg.teacher_group
        strategy: list[Any] = [None] * tg.ranks
        if tg.placement:
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
            self._placement = placement_group(
                [{"CPU": tg.cpus}] * tg.ranks, strategy=tg.placement.upper(),
                name=self.name + _suffix(self.generation))
            if not self._placement.wait(timeout_seconds=PLACEMENT_TIMEOUT_S):
                self._release_placement()
                raise RuntimeError(f"teacher_group.placement = {tg.placement!r}: no "
                                   f"placement for {tg.ranks} ranks of {tg.cpus} CPUs "
                                   f"within {PLACEMENT_TIMEOUT_S:.0f} s")
            strategy = [PlacementGroupSchedulingStrategy(self._placement,
                                                         placement_group_bundle_index=k)
                        for k in range(tg.ranks)]
        cls: type = SoftLabelReader if self.soft_labels else self.rank_cls
        extra = () if self.soft_labels else (self.cfg.stream.logit_dtype,
                                             self.cfg.stream.feature_dtype)
        kw: dict[str, Any] = {"prefetch": tg.prefetch}
        if not self.soft_labels:
            kw.update(read_keys=self.read_keys, member=self.member,
                      table_dtype=tg.table_dtype)
        features = () if self.follower else self.cfg.requested_features
        self.actors = [ray.remote(cls).options(
            name=f"{self.name}-{k}{_suffix(self.generation)}", num_cpus=tg.cpus,
            scheduling_strategy=strategy[k], max_restarts=0).remote(
            k, tg.ranks, self.source, features, self.cfg.label_rows, *extra, **kw)
            for k in range(tg.ranks)]
        addr, port = ray.get(self.actors[0].address.remote(), timeout=CALL_TIMEOUT_S)
        infos = ray.get([t.setup.remote(addr, port) for t in self.actors],
                        timeout=CALL_TIMEOUT_S)
        self.pids = [int(i["pid"]) for i in infos]
        self.info = infos[0]
        return self.info

    def shutdown(self) -> None:
        """Kill the actors and free the placement; calls in flight are dropped."""
        _kill(self.actors)
        self.actors, self.pids, self.pending = [], [], deque()
        self._release_placement()

    def discard(self) -> None:
        """Shut down, so that the next ``start`` is a new generation of actors."""
        self.shutdown()
        self.generation += 1

    def _release_placement(self) -> None:
        if self._placement is not None:
            ray.util.remove_placement_group(self._placement)
            self._placement = None

    # ------------------------------------------------------------------- calls
    def start_pass(self, shards: list[Any], index: int) -> None:
        """Hand every rank its share of pass ``index``'s stream. Not waited for: a rank
        runs its calls in order, so this one comes after the labelling calls in flight
        and before the next; a rank that fails it fails its next labelling call."""
        for t, s in zip(self.actors, shards):
            t.start_pass.options(enable_task_events=False).remote(s, index)

    def request(self, n: int, index: int) -> None:
        """Ask every rank for its next ``n`` batches of pass ``index`` (``pending``
        until collected; a rank runs its calls in order)."""
        # Per-batch calls keep no task events: the GCS would hold one per call (up to
        # its cap), memory that grows with rows; metrics cover them.
        self.pending.append([t.label_many.options(num_returns=n + 1,
                                                  enable_task_events=False).remote(n, index)
                             for t in self.actors])

    def request_from(self, lead: list[list[Any]], n: int) -> None:
        """A follower: label the batches of one of the lead's calls (rank k takes the
        lead's rank k's), each call running once the lead's batches are stored."""
        self.pending.append([t.label_inputs.options(num_returns=n + 1,
                                                    enable_task_events=False)
                             .remote(*call[1:]) for t, call in zip(self.actors, lead)])

    @property
    def in_flight(self) -> int:
        """Labelling calls in flight (each on every rank)."""
        return len(self.pending)

    def pending_refs(self) -> list[Any]:
        """The ids-list refs of every call in flight, every rank."""
        return [call[0] for calls in self.pending for call in calls]

    def oldest_done(self, ready: set[Any]) -> bool:
        """Whether every rank's oldest call in flight is done."""
        return bool(self.pending) and all(call[0] in ready for call in self.pending[0])

    def outcomes(self, ready: set[Any]) -> list[bool | None]:
        """Per rank and call in flight, how it ended: True, False (it raised: the rank
        died, or a peer's collective failed) or None (still running). A dead rank's call
        fails at once; its peers would wait out the collective timeout, so the calls
        that are done are read without waiting for the rest."""
        out: list[bool | None] = []
        for ref in self.pending_refs():
            if ref not in ready:
                out.append(None)
                continue
            try:
                ray.get(ref)
                out.append(True)
            except RayError:
                out.append(False)
        return out

    def collect(self) -> LabelRound:
        """The oldest call's batches (every rank's call is done)."""
        calls = self.pending.popleft()
        return LabelRound.from_ids(ray.get([call[0] for call in calls]), calls)

    def evaluate(self, table_ref: Any, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Teacher (logits, labels) of a table; every rank takes part."""
        return ray.get([t.evaluate.remote(table_ref, batch_size) for t in self.actors],
                       timeout=CALL_TIMEOUT_S)[0]

    def reload(self, checkpoint: str) -> int:
        """Every rank loads another version of the same teacher; returns it."""
        versions = ray.get([t.reload.remote(checkpoint) for t in self.actors],
                           timeout=CALL_TIMEOUT_S)
        self.source = checkpoint  # a re-formed group loads this one
        return int(versions[0])

    def usage(self) -> dict[str, float]:
        """What the ranks spent and produced, summed."""
        usage = ray.get([t.usage.remote() for t in self.actors], timeout=CALL_TIMEOUT_S)
        return {key: sum(u[key] for u in usage) for key in usage[0]}


@dataclass
class Round:
    """Up to ``stream.batches_per_call`` batches a group's replicas train in one call
    (each replica's ``train_many`` ref)."""
    items: list[StreamItem]
    refs: list[Any]


@dataclass
class StudentGroup:
    """The M replicas of one student group, the rounds they are training and the
    group's last snapshot (an object ref the driver owns).

    ``generation`` counts re-formations (the report's ``restarts``); ``restores`` the
    ones that started from the snapshot because no replica survived.

    A sharded group (``student.sharding`` not ``none``) keeps its snapshot as one part
    per replica (each replica's shards, in the driver's object store: the group always
    re-forms with the same M) and its checkpointed states (the driver checkpoint's,
    which a group of another size may load) as torch.distributed.checkpoint directories
    under ``state_root``, written by every replica together (on a cluster of several
    nodes that directory must be shared storage). Its replicas each hold a share of the
    tables, so none can stand in for the group: a replica lost restarts the group from
    its snapshot.
    """

    cfg: GroupConfig
    spec: FeatureSpec
    teacher_dims: dict[str, int]
    state_root: str = ""
    generation: int = 0
    restores: int = 0
    replicas: list[Any] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)
    snapshot: Any = None
    kd_off: tuple[str, ...] = ()  # tasks the KD guard turned off (a re-formed group too)
    failed_in_a_row: int = 0  # rounds that failed since the last that did not

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def sharded(self) -> bool:
        return self.cfg.student.sharding != "none"

    @property
    def _collective(self) -> list[Any]:
        """The replicas a forward or a save needs: all of a sharded group's (its calls
        are collective), replica 0 of a plain one."""
        return self.replicas if self.sharded else self.replicas[:1]

    def _dir(self, leaf: str) -> str:
        if not self.state_root:
            raise RuntimeError(f"group {self.name}: a sharded group needs a state_root")
        return str(Path(self.state_root) / self.name / leaf)

    def start(self, state: dict[str, Any] | np.ndarray | None = None) -> None:
        actor = ray.remote(StudentReplica)
        g = self.cfg
        self.replicas = [actor.options(
            name=f"student-{g.name}-{j}{_suffix(self.generation)}", num_cpus=g.cpus,
            max_restarts=0).remote(g, self.spec, self.teacher_dims, j, g.replicas)
            for j in range(g.replicas)]
        addr, port = ray.get(self.replicas[0].address.remote(), timeout=CALL_TIMEOUT_S)
        # a sharded group's snapshot: replica j loads its own part j
        parts = state["parts"] if isinstance(state, dict) and "parts" in state \
            else [state] * len(self.replicas)
        self.pids = ray.get([r.setup.remote(addr, port, p)
                             for r, p in zip(self.replicas, parts, strict=True)],
                            timeout=CALL_TIMEOUT_S)
        if self.kd_off:
            self.set_kd_guard(self.kd_off)

    def set_kd_guard(self, off: tuple[str, ...]) -> None:
        """Every replica stops KD on tasks ``off`` (see ``StudentReplica.set_kd_guard``)."""
        ray.get([r.set_kd_guard.remote(off) for r in self.replicas], timeout=CALL_TIMEOUT_S)
        self.kd_off = tuple(off)

    def shutdown(self) -> None:
        _kill(self.replicas)
        self.replicas, self.pids, self.rounds = [], [], []

    def discard(self) -> None:
        """Shut down, so that the next ``start`` is a new generation of actors."""
        self.shutdown()
        self.generation += 1

    # ------------------------------------------------------------------- calls
    def submit(self, items: list[StreamItem], newest_version: int) -> None:
        # The batches are top-level arguments: Ray fetches them before the call.
        # A committee's batch is a tuple of refs (the lead's, then each member's).
        batch_refs = [i.ref if isinstance(i.ref, tuple) else (i.ref,) for i in items]
        members = len(batch_refs[0])
        refs = [r.train_many.options(enable_task_events=False).remote(
            newest_version, [i.rows for i in items], members,
            *[ref for b in batch_refs for ref in b])
            for r in self.replicas]
        self.rounds.append(Round(items, refs))

    @staticmethod
    def outcome(ref: Any, timeout: float = CALL_TIMEOUT_S) -> ReplicaOutcome:
        """What one replica's call came to (not done within ``timeout``: failed)."""
        try:
            return ReplicaOutcome(result=ray.get(ref, timeout=timeout))
        except ObjectLostError:  # a batch of it is gone (its node died)
            return ReplicaOutcome(lost_input=True)
        except Exception as e:  # noqa: BLE001 - the actor died, or a peer did mid-collective
            if not isinstance(e, (RayActorError, GetTimeoutError)):  # it raised: say what
                lines = [ln for ln in str(e).splitlines() if ln.strip()]
                print(f"warning: a student replica's step failed, re-forming its group: "
                      f"{lines[-1] if lines else type(e).__name__}", file=sys.stderr,
                      flush=True)
            return ReplicaOutcome()

    def in_flight(self) -> list[StreamItem]:
        return [item for rnd in self.rounds for item in rnd.items]

    def survivor_state(self) -> np.ndarray | None:
        """The state of the first replica that can still give it (a sharded group's
        replica holds only its share of the tables: none)."""
        if self.sharded:
            return None
        for r in self.replicas:
            try:
                return ray.get(r.state_blob.remote(), timeout=30)
            except (RayActorError, GetTimeoutError):
                continue
        return None

    def take_snapshot(self) -> None:
        """Keep the group's state now (it comes after the rounds already queued)."""
        if self.sharded:  # each replica's own part: the group re-forms with the same M
            blobs = ray.get([r.state_blob.remote() for r in self.replicas],
                            timeout=CALL_TIMEOUT_S)
            self.snapshot = [ray.put(b) for b in blobs]
            return
        # A copy the driver owns on its own node: a replica's return value would be
        # stored on the replica's node and lost with it. As bytes: the driver's get is
        # a zero-copy view and its put one copy, nothing unpickled.
        self.snapshot = ray.put(ray.get(self.replicas[0].state_blob.remote(),
                                        timeout=CALL_TIMEOUT_S))

    def read_snapshot(self) -> np.ndarray:
        """The last snapshot's state (``recovery.classify_group_loss`` has checked
        that there is one)."""
        try:
            if isinstance(self.snapshot, list):  # a sharded group's: one part per replica
                return {"parts": ray.get(self.snapshot, timeout=CALL_TIMEOUT_S)}
            return ray.get(self.snapshot, timeout=CALL_TIMEOUT_S)
        except RayError as e:
            raise RuntimeError(f"group {self.name}: every replica died and its last "
                               f"snapshot cannot be read: {e}") from None

    def evaluate_async(self, table_ref: Any, batch_size: int, best: bool = False) -> Any:
        """The ref of replica 0's (logits, labels) of a table. A sharded model's forward
        is collective: every replica runs it, on the same rows."""
        return [r.evaluate.remote(table_ref, batch_size, best) for r in self._collective][0]

    def evaluate(self, table_ref: Any, batch_size: int, best: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
        return ray.get(self.evaluate_async(table_ref, batch_size, best),
                       timeout=CALL_TIMEOUT_S)

    def keep_best(self) -> None:
        ray.get([r.keep_best.remote() for r in self.replicas], timeout=CALL_TIMEOUT_S)

    def _save(self, path: str) -> dict[str, str]:
        return ray.get([r.save_state.remote(path) for r in self.replicas],
                       timeout=CALL_TIMEOUT_S)[0]

    def state(self) -> dict[str, Any]:
        """The state for the driver checkpoint: replica 0's; a sharded group's, a new
        DCP directory (the one before it is kept: the last complete driver checkpoint
        may still name it; older ones are deleted)."""
        if not self.sharded:
            return ray.get(self.replicas[0].state.remote(), timeout=CALL_TIMEOUT_S)
        root = Path(self._dir("checkpoints"))
        old = sorted(root.glob("c*[0-9]")) if root.is_dir() else []
        number = int(old[-1].name[1:]) + 1 if old else 0
        state = self._save(str(root / f"c{number:06d}"))
        for p in old[:-1]:
            shutil.rmtree(p, ignore_errors=True)
        return state

    def write_serving(self, path: str) -> None:
        """The best state's serving weights to DCP directory ``path``."""
        ray.get([r.save_serving.remote(path) for r in self._collective],
                timeout=CALL_TIMEOUT_S)

    def parameters_count(self) -> dict[str, int]:
        return ray.get(self.replicas[0].parameters_count.remote(), timeout=CALL_TIMEOUT_S)
