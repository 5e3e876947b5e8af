"""A student group's actors: its M replicas, the training calls they are running and
the group's last snapshot. It runs the calls; what to do when one fails is decided in
cluster/recovery.py, and what the driver knows of the group is its ``GroupState``
(cluster/state.py)."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayError

from recdistill.cluster.calls import CALL_TIMEOUT_S, generation_suffix, get_all, kill_actors
from recdistill.cluster.config import GroupConfig
from recdistill.cluster.contracts import (DcpState, GroupSave, ShardedParts, StateBlob,
                                          StateDict)
from recdistill.cluster.settlement import ReplicaOutcome, StreamItem
from recdistill.cluster.replica import StudentReplica
from recdistill.data import storage
from recdistill.data.spec import FeatureSpec
from recdistill.student.metrics import MetricState
from recdistill.student.sharding import STATE_META


@dataclass
class TrainCall:
    """Up to ``stream.batches_per_call`` batches a group's replicas train in one call:
    each replica's ``train_many`` ref."""

    items: list[StreamItem]
    refs: list[Any]


class StudentGroup:
    """The M replicas of one student group.

    ``generation`` counts re-formations (the report's ``restarts``; a re-formed group's
    actors are named ``student-kd-1.2``, ...).

    A sharded group (``student.sharding`` not ``none``) keeps its snapshot as one part
    per replica (each replica's shards, in the driver's object store: the group always
    re-forms with the same M) and its checkpointed states (the driver checkpoint's,
    which a group of another size may load) as torch.distributed.checkpoint directories
    under ``state_root``, written by every replica together (on a cluster of several
    nodes that directory must be shared storage). Its replicas each hold a share of the
    tables, so none can stand in for the group: a replica lost restarts the group from
    its snapshot.
    """

    def __init__(self, cfg: GroupConfig, spec: FeatureSpec, teacher_dims: dict[str, int],
                 state_root: str = "") -> None:
        self.cfg, self.spec, self.teacher_dims = cfg, spec, teacher_dims
        self.state_root = state_root
        self.generation = 0
        self.replicas: list[Any] = []
        self.pids: list[int] = []
        self.calls: list[TrainCall] = []  # in flight, oldest first
        # the last snapshot: object refs the driver owns, one per replica of a sharded
        # group, one for a plain group
        self.snapshot: ShardedParts | None = None

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def sharded(self) -> bool:
        return self.cfg.student.sharding != "none"

    @property
    def _names(self) -> list[str]:
        return [f"student-{self.name}-{j}{generation_suffix(self.generation)}"
                for j in range(self.cfg.replicas)]

    @property
    def _io_timeout(self) -> float:
        """A call that saves or loads a state: the replicas' own I/O timeout, a minute
        more for them to say which of them failed, at least a control call's."""
        return max(CALL_TIMEOUT_S, self.cfg.checkpoint_timeout_s + 60)

    @property
    def _collective(self) -> list[Any]:
        """The replicas a forward or a save needs: all of a sharded group's (its calls
        are collective), replica 0 of a plain one."""
        return self.replicas if self.sharded else self.replicas[:1]

    def _dir(self, leaf: str) -> str:
        if not self.state_root:
            raise RuntimeError(f"group {self.name}: a sharded group needs a state_root")
        return storage.join(self.state_root, self.name, leaf)

    def start(self, state: GroupSave | None = None) -> None:
        actor = ray.remote(StudentReplica)
        g = self.cfg
        self.replicas = [actor.options(
            name=self._names[j],
            num_cpus=g.cpus, num_gpus=g.gpus, resources=g.resources,
            max_restarts=0).remote(
                g, self.spec, self.teacher_dims, j, g.replicas)
            for j in range(g.replicas)]
        addr, port = ray.get(self.replicas[0].address.remote(), timeout=CALL_TIMEOUT_S)
        # a sharded group's snapshot: replica j loads its own part j
        parts = list(state.parts) if isinstance(state, ShardedParts) \
            else [state] * len(self.replicas)
        self.pids = get_all([r.setup.remote(addr, port, p)
                             for r, p in zip(self.replicas, parts, strict=True)],
                            "setup" + (" (loading a state)" if state is not None else ""),
                            self._names, self._io_timeout)

    def set_kd_guard(self, off: tuple[str, ...], terms: tuple[str, ...] = ()) -> None:
        """Every replica stops KD on tasks ``off`` and leaves out loss terms ``terms``
        (see ``StudentReplica.set_kd_guard``)."""
        ray.get([r.set_kd_guard.remote(off, terms) for r in self.replicas],
                timeout=CALL_TIMEOUT_S)

    def shutdown(self) -> None:
        kill_actors(self.replicas)
        self.replicas, self.pids, self.calls = [], [], []

    def discard(self) -> None:
        """Shut down, so that the next ``start`` is a new generation of actors."""
        self.shutdown()
        self.generation += 1

    # ------------------------------------------------------------------- calls
    def submit(self, items: list[StreamItem], newest_version: int) -> None:
        """Every replica trains ``items`` in one call (queued behind its calls in flight)."""
        # The batches are top-level arguments: Ray fetches them before the call. Each
        # batch is one ref per committee member (the lead's first).
        members = len(items[0].refs)
        refs = [r.train_many.options(enable_task_events=False).remote(
            newest_version, [i.rows for i in items], members,
            *[ref for i in items for ref in i.refs])
            for r in self.replicas]
        self.calls.append(TrainCall(items, refs))

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
        return [item for call in self.calls for item in call.items]

    def survivor_state(self) -> StateBlob | None:
        """The state of the first replica that can still give it (a sharded group's
        replica holds only its share of the tables: none)."""
        if self.sharded:
            return None
        for r in self.replicas:
            try:
                return StateBlob(ray.get(r.state_blob.remote(), timeout=30))
            except (RayActorError, GetTimeoutError):
                continue
        return None

    def take_snapshot(self) -> None:
        """Keep the group's state now (it comes after the calls already queued)."""
        # Copies the driver owns on its own node: a replica's return value would be
        # stored on the replica's node and lost with it. As bytes: the driver's get is
        # a zero-copy view and its put one copy, nothing unpickled.
        blobs = ray.get([r.state_blob.remote() for r in self._collective],
                        timeout=CALL_TIMEOUT_S)
        self.snapshot = ShardedParts(tuple(ray.put(b) for b in blobs))

    def read_snapshot(self) -> StateBlob | ShardedParts:
        """The last snapshot's state (``recovery`` has checked that there is one)."""
        assert self.snapshot is not None
        try:
            blobs = [StateBlob(b) for b in ray.get(list(self.snapshot.parts),
                                                    timeout=CALL_TIMEOUT_S)]
        except RayError as e:
            raise RuntimeError(f"group {self.name}: every replica died and its last "
                               f"snapshot cannot be read: {e}") from None
        return ShardedParts(tuple(blobs)) if self.sharded else blobs[0]

    def evaluate_async(self, split_ref: Any, batch_size: int, best: bool = False) -> Any:
        """The ref of replica 0's metric state of a split. A sharded model's forward
        is collective: every replica runs it, on the same rows."""
        return [r.evaluate.remote(split_ref, batch_size, best) for r in self._collective][0]

    @staticmethod
    def evaluation(ref: Any) -> MetricState:
        """What ``evaluate_async`` returned (raises ``RayError`` if the replica died)."""
        return ray.get(ref, timeout=CALL_TIMEOUT_S)

    def evaluate(self, split_ref: Any, batch_size: int, best: bool = False) -> MetricState:
        return self.evaluation(self.evaluate_async(split_ref, batch_size, best))

    def keep_best(self) -> None:
        ray.get([r.keep_best.remote() for r in self.replicas], timeout=CALL_TIMEOUT_S)

    def state(self) -> StateDict | DcpState:
        """The state for the driver checkpoint: replica 0's; a sharded group's, a new
        DCP directory (the one before it is kept: the last complete driver checkpoint
        may still name it; older ones are deleted)."""
        if not self.sharded:
            return ray.get(self.replicas[0].state.remote(), timeout=CALL_TIMEOUT_S)
        root = self._dir("checkpoints")
        old = [n for n in storage.listdir(root) if re.fullmatch(r"c\d+", n)]
        number = int(old[-1][1:]) + 1 if old else 0
        path = storage.join(root, f"c{number:06d}")
        # on an object store a save that died leaves its directory without STATE_META:
        # keep the newest complete one (the last driver checkpoint may name it)
        done = [n for n in old if storage.is_file(storage.join(root, n, STATE_META))]
        state = get_all([r.save_state.remote(path) for r in self.replicas],
                        f"save_state to {storage.shown(path)}", self._names,
                        self._io_timeout)[0]
        for n in old:
            if n not in done[-1:]:
                storage.rmtree(storage.join(root, n))
        return state

    def write_serving(self, path: str) -> None:
        """The best state's serving weights to DCP directory ``path``."""
        get_all([r.save_serving.remote(path) for r in self._collective],
                f"save_serving to {storage.shown(path)}", self._names[:len(self._collective)],
                self._io_timeout)

    def parameters_count(self) -> dict[str, int]:
        return ray.get(self.replicas[0].parameters_count.remote(), timeout=CALL_TIMEOUT_S)
