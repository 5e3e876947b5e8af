"""A label group: K label-source actors (teacher ranks, or soft-label readers) in
lockstep over equal shares of each pass's input. It owns its actors, their generation and
its placement group; what to do when one fails is decided in cluster/recovery.py."""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import numpy as np
import ray
from ray.exceptions import RayError

from recdistill.cluster.actors import TeacherRank
from recdistill.cluster.calls import (CALL_TIMEOUT_S, PLACEMENT_TIMEOUT_S, generation_suffix,
                                      get_all, input_error, kill_actors)
from recdistill.cluster.config import DistillConfig
from recdistill.cluster.contracts import LabelCall, LabelResult, RankCall
from recdistill.cluster.soft_labels import SoftLabelReader
from recdistill.data.spec import EvalSplit
from recdistill.data.storage import shown
from recdistill.teacher.checkpoint import resolve

DRAIN_TIMEOUT_S = 10.0


class LabelActor(Protocol):
    """What the driver calls on each rank of a label group: ``TeacherRank`` (the live
    teacher) or ``SoftLabelReader`` (precomputed labels)."""

    def address(self) -> tuple[str, int]: ...
    def setup(self, addr: str, port: int) -> dict[str, Any]: ...
    def start_pass(self, shard: Any, index: int) -> None: ...
    def label_many(self, n: int, index: int) -> tuple[Any, ...]: ...
    def evaluate(self, split: EvalSplit, block: int, batch_size: int, group_key: str = ""
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]: ...
    def usage(self) -> dict[str, float]: ...
    def pid(self) -> int: ...


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
        # teacher_group.calls_in_flight)
        self.pending: deque[LabelCall] = deque()
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
        gpus = 0 if self.soft_labels else tg.gpus  # a soft-label reader reads files
        if tg.placement:
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
            bundle = {"CPU": tg.cpus, **({"GPU": gpus} if gpus else {}), **tg.resources}
            self._placement = placement_group(
                [bundle] * tg.ranks, strategy=tg.placement.upper(),
                name=self.name + generation_suffix(self.generation))
            if not self._placement.wait(timeout_seconds=PLACEMENT_TIMEOUT_S):
                self._release_placement()
                raise RuntimeError(f"teacher_group.placement = {tg.placement!r}: no "
                                   f"placement for {tg.ranks} ranks of {bundle} "
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
                      table_dtype=tg.table_dtype, io_timeout_s=tg.checkpoint_timeout_s)
        self.actors = [ray.remote(cls).options(
            name=self._names[k], num_cpus=tg.cpus,
            num_gpus=gpus, resources=None if tg.placement else tg.resources,
            scheduling_strategy=strategy[k],
            max_restarts=0).remote(
            k, tg.ranks, self.source, self.cfg.requested_features, self.cfg.label_rows, *extra, **kw)
            for k in range(tg.ranks)]
        addr, port = ray.get(self.actors[0].address.remote(), timeout=CALL_TIMEOUT_S)
        # each rank loads the checkpoint: a wait that expires names the ranks it waits on
        infos = get_all([t.setup.remote(addr, port) for t in self.actors],
                        f"setup (loading {shown(self.source)})", self._names,
                        max(CALL_TIMEOUT_S, tg.checkpoint_timeout_s + 60))
        self.pids = [int(i["pid"]) for i in infos]
        self.info = infos[0]
        return self.info

    @property
    def _names(self) -> list[str]:
        """The ranks' actor names (``teacher-0``, a re-formed group's ``teacher-0.1``)."""
        return [f"{self.name}-{k}{generation_suffix(self.generation)}"
                for k in range(self.cfg.teacher_group.ranks)]

    def shutdown(self) -> None:
        """Kill the actors and free the placement; calls in flight are dropped."""
        kill_actors(self.actors)
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
        self.pending.append(tuple(_rank_call(t.label_many.options(
            num_returns=n + 1, enable_task_events=False).remote(n, index))
            for t in self.actors))

    def request_from(self, lead: LabelCall, n: int) -> None:
        """A follower: label the batches of one of the lead's calls (rank k takes the
        lead's rank k's), each call running once the lead's batches are stored."""
        self.pending.append(tuple(_rank_call(t.label_inputs.options(
            num_returns=n + 1, enable_task_events=False).remote(*call.batches))
            for t, call in zip(self.actors, lead)))

    @property
    def in_flight(self) -> int:
        """Labelling calls in flight (each on every rank)."""
        return len(self.pending)

    def pending_refs(self) -> list[Any]:
        """The ids-list refs of every call in flight, every rank."""
        return [rank.ids for call in self.pending for rank in call]

    def oldest_done(self, ready: set[Any]) -> bool:
        """Whether every rank's oldest call in flight is done."""
        return bool(self.pending) and all(rank.ids in ready for rank in self.pending[0])

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
            except RayError as e:
                bad = input_error(e)
                if bad is not None:  # the input itself: no re-formation reads past it
                    self._drain()
                    raise bad from None
                out.append(False)
        return out

    def _drain(self) -> None:
        """Fetch every call in flight, failed or not (the rest of a broken input fails
        at once; a few seconds at most), so Ray prints no "unhandled error" for the
        calls the job ends without reading."""
        refs = [r for call in self.pending for rank in call for r in (rank.ids,
                                                                       *rank.batches)]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=DRAIN_TIMEOUT_S)
        for ref in done:
            try:
                ray.get(ref)
            except RayError:
                pass

    def collect(self) -> LabelResult:
        """The oldest call's batches (every rank's call is done)."""
        call = self.pending.popleft()
        return LabelResult.from_ids(ray.get([rank.ids for rank in call]), call)

    def reload(self, checkpoint: str) -> int:
        """Every rank loads another version of the same teacher; returns it."""
        versions = get_all([t.reload.remote(checkpoint) for t in self.actors],
                           f"reload of {shown(checkpoint)}", self._names,
                           max(CALL_TIMEOUT_S, self.cfg.teacher_group.checkpoint_timeout_s
                               + 60))
        self.source = checkpoint  # a re-formed group loads this one
        return int(versions[0])

    def usage(self) -> dict[str, float]:
        """What the ranks spent and produced, summed."""
        usage = ray.get([t.usage.remote() for t in self.actors], timeout=CALL_TIMEOUT_S)
        return {key: sum(u[key] for u in usage) for key in usage[0]}


def _rank_call(refs: list[Any]) -> RankCall:
    """A ``num_returns = n + 1`` call's refs: the ids list's, then the n batches'."""
    return RankCall(refs[0], tuple(refs[1:]))
