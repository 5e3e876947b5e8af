"""Online distillation on Ray: the teacher group streams soft labels to student groups.

The driver runs one event loop. It asks the K teacher ranks for their next batch in
lockstep (each rank reads its equal share of a Ray Data stream), publishes each rank's
labelled batch to the :class:`SoftLabelStream` (a ref, one stored copy), and hands
each group's next batch to all of the group's M replicas, which each train on their
1/M of its rows and step together (DDP). A group acknowledges a batch when the step is
done. Teachers wait while any group has ``max_inflight`` batches unacknowledged.

Student groups are actor groups rather than Ray Train ``TorchTrainer`` runs: the
stream must see every step's acknowledgement per batch and re-deliver exactly the
batches a dead replica held, while a TorchTrainer owns its own input loop and restarts
the whole group from a checkpoint on failure, which would re-train or lose batches.

A replica that dies mid-pass: if any replica of the group finished the step, the step
happened (the gradient all-reduce had completed), so the batch counts as trained;
otherwise it is re-delivered. The group is then re-formed (new actors, new process
group) from a surviving replica's state; re-delivered batches whose examples were
already trained are dropped as duplicates, so each example is trained once per pass.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayError
from tqdm import tqdm

from cluster.actors import COLLECTIVE_TIMEOUT, StudentReplica, TeacherRank
from cluster.config import DistillConfig, GroupConfig
from cluster.data import pass_dataset, train_dataset
from cluster.metrics import ActorMetrics
from cluster.soft_labels import SoftLabelReader
from cluster.stream import SoftLabelStream, StreamItem
from data.spec import Dataset
from student.metrics import task_metrics
from teacher.checkpoint import resolve

ROUNDS_AHEAD = 2  # rounds queued per group beyond the one running: hides call latency
STATE_FILE = "driver_state.pt"
PLACEMENT_GROUPS: dict[str, Any] = {}  # label groups' placement groups, by group name
STATE_FORMAT = 1


def start_label_group(cfg: DistillConfig, cls: type, source: str, name: str,
                      suffix: str = "") -> tuple[list[Any], dict[str, Any]]:
    """K actors of ``cls`` (teacher ranks or soft-label readers) named
    ``{name}-{k}{suffix}``, set up as one group; returns them and rank 0's setup info."""
    tg = cfg.teacher_group
    actor = ray.remote(cls)
    strategy: list[Any] = [None] * tg.ranks
    if tg.placement:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        pg = placement_group([{"CPU": tg.cpus}] * tg.ranks,
                             strategy=tg.placement.upper(), name=f"{name}{suffix}")
        PLACEMENT_GROUPS[f"{name}{suffix}"] = pg
        if not pg.wait(timeout_seconds=120):
            ray.util.remove_placement_group(pg)
            raise RuntimeError(f"teacher_group.placement = {tg.placement!r}: no placement "
                               f"for {tg.ranks} ranks of {tg.cpus} CPUs within 120 s")
        strategy = [PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=k)
                    for k in range(tg.ranks)]
    group = [actor.options(name=f"{name}-{k}{suffix}", num_cpus=tg.cpus,
                           scheduling_strategy=strategy[k], max_restarts=0).remote(
        k, tg.ranks, source, cfg.requested_features, tg.batch_size,
        cfg.stream.logit_dtype, cfg.stream.feature_dtype) for k in range(tg.ranks)]
    addr, port = ray.get(group[0].address.remote())
    infos = ray.get([t.setup.remote(addr, port) for t in group])
    return group, infos[0]


def start_teacher_group(cfg: DistillConfig) -> tuple[list[Any], dict[str, Any]]:
    """The K sharded teacher ranks, loaded from the configured checkpoint version."""
    tg = cfg.teacher_group
    # Resolved once here: every rank loads the same version, even if training writes a
    # newer one meanwhile.
    return start_label_group(cfg, TeacherRank, str(resolve(tg.checkpoint, tg.version)),
                             "teacher")


def labelled_batches(calls: list[list[Any]]) -> tuple[list[tuple[np.ndarray, Any]], bool]:
    """One labelling round's ``label_many`` calls (one per rank: the ids-list ref, then
    the batch refs) as ``(ids, batch ref)`` in production order (batch i of every rank,
    then batch i + 1), and whether the pass ended in this round."""
    ids_lists = ray.get([call[0] for call in calls])
    if len({tuple(ids is None for ids in ranks_ids) for ranks_ids in ids_lists}) > 1:
        raise RuntimeError("teacher ranks ran out of data unevenly")
    batches = [(ranks_ids[i], call[1 + i]) for i in range(len(ids_lists[0]))
               for ranks_ids, call in zip(ids_lists, calls) if ranks_ids[i] is not None]
    return batches, ids_lists[0][-1] is None


@dataclass
class Round:
    """Up to ``stream.batches_per_call`` batches a group's replicas train in one call
    (each replica's ``train_many`` ref)."""
    items: list[StreamItem]
    refs: list[Any]


@dataclass
class GroupRuntime:
    cfg: GroupConfig
    replicas: list[Any]
    generation: int = 0
    rounds: list[Round] = field(default_factory=list)
    curve: list[dict[str, Any]] = field(default_factory=list)
    # Running sums, not per-batch lists: the driver's memory must not grow with rows.
    loss_sums: dict[str, float] = field(default_factory=dict)  # this pass, per term
    loss_batches: int = 0  # batches in loss_sums
    batches: int = 0  # acknowledged rounds in all
    kd_scale_sum: float = 0.0
    best_auc: float = -1.0
    best_pass: int = -1
    restarts: int = 0
    examples_by_version: dict[int, int] = field(default_factory=dict)
    # Sums over acknowledged rounds of replica 0's step timing (prepare_s, step_s).
    timing: dict[str, float] = field(default_factory=dict)
    # The last snapshot of the group's state (an object ref the driver owns), the
    # batches acknowledged since, and the rounds in flight when it was taken (already
    # in it, since an actor runs its calls in order).
    snapshot: Any = None
    since_snapshot: list[StreamItem] = field(default_factory=list)
    covered: set[int] = field(default_factory=set)
    restores: int = 0
    # Rounds to submit one batch each: after a round of several failed for a lost batch,
    # its batches are tried one by one, to find the lost one(s).
    single: int = 0


class OnlineDistillation:
    """Runs the teacher group and the student groups for ``cfg.passes`` passes.

    Args:
        cfg: the validated job config.
        data: the dataset (the driver holds it; train goes to Ray Data, valid and test
            to the object store once).
        teacher_dims: width of every teacher feature (from the checkpoint).
        progress: show a progress bar.
        after_ack: called as ``after_ack(group, acked_so_far)`` after each acknowledged
            batch (tests use it to inject failures mid-pass).
        soft_labels: a directory of precomputed soft labels (``jobs.precompute``): its
            readers replace the live teacher ranks; everything else is the same.
        state_dir: where the driver checkpoints the run (every group's state, the
            example ids each group trained in the current pass, curves), at each pass
            end and every ``checkpoint_every`` teacher rounds; "" for none.
        resume: continue from ``state_dir``'s checkpoint (after the driver died): the
            same teacher version is loaded, every group restarts from its state, and
            the interrupted pass is read again with each group skipping the rows it had
            trained.
    """

    def __init__(self, cfg: DistillConfig, data: Dataset, teacher_dims: dict[str, int],
                 progress: bool = True,
                 after_ack: Callable[[str, int], None] | None = None,
                 soft_labels: str = "", state_dir: str = "", checkpoint_every: int = 0,
                 resume: bool = False) -> None:
        self.cfg, self.data, self.teacher_dims = cfg, data, teacher_dims
        self.state_path = Path(state_dir) / STATE_FILE if state_dir else None
        self.checkpoint_every, self.resume = checkpoint_every, resume
        self.resumed: dict[str, Any] | None = None
        self.soft_labels = soft_labels
        self.progress = progress
        self.after_ack = after_ack
        self.stream = SoftLabelStream([g.name for g in cfg.groups], cfg.stream.max_inflight)
        self.metrics = ActorMetrics("driver", {})
        self.teachers: list[Any] = []
        self.groups: dict[str, GroupRuntime] = {}
        self.teacher_restarts = 0
        self._busy_s = 0.0  # the driver's own time in the pass loops (not waiting)
        self._train_wall_s = 0.0
        self._driver_cpu_s = 0.0  # the driver process's CPU (all threads) in the passes
        self._loop_cpu_s = 0.0  # of which the event loop's own thread

    # ----------------------------------------------------------------- actor groups
    @property
    def _label_group_name(self) -> str:
        return "soft-labels" if self.soft_labels else "teacher"

    def _start_teachers(self, checkpoint: str = "", suffix: str = "") -> dict[str, Any]:
        """The label group; ``checkpoint``: this teacher version (a resumed or re-formed
        group's) instead of the configured one; ``suffix`` for its actors' names."""
        if self.soft_labels:
            # Readers of precomputed labels in the teacher ranks' place: the same K
            # shares of the same shuffled stream, so the students see the same batches.
            self.teachers, info = start_label_group(self.cfg, SoftLabelReader,
                                                    self.soft_labels, "soft-labels", suffix)
        elif checkpoint:
            self.teachers, info = start_label_group(self.cfg, TeacherRank, checkpoint,
                                                    "teacher", suffix)
        else:
            self.teachers, info = start_teacher_group(self.cfg)
        return info

    def _start_pass(self, pass_index: int, ds: Any) -> None:
        """Hand every label-group rank its share of the pass's shuffled stream."""
        shards = pass_dataset(ds, self.data.train, self.cfg.seed * 1000 + pass_index) \
            .streaming_split(len(self.teachers), equal=True)
        ray.get([t.start_pass.remote(s) for t, s in zip(self.teachers, shards)])

    def _spawn_group(self, g: GroupConfig, generation: int,
                     state: dict[str, Any] | np.ndarray | None = None) -> list[Any]:
        actor = ray.remote(StudentReplica)
        suffix = f".{generation}" if generation else ""
        replicas = [actor.options(name=f"student-{g.name}-{j}{suffix}", num_cpus=g.cpus,
                                  max_restarts=0).remote(
            g, self.data.spec, self.teacher_dims, j, g.replicas)
            for j in range(g.replicas)]
        addr, port = ray.get(replicas[0].address.remote())
        ray.get([r.setup.remote(addr, port, state) for r in replicas])
        return replicas

    # ------------------------------------------------------------------- the loop
    def _submit_rounds(self) -> None:
        per_call = self.cfg.stream.batches_per_call
        for name, g in self.groups.items():
            while len(g.rounds) <= ROUNDS_AHEAD:
                items = []
                while len(items) < (1 if g.single else per_call):
                    item = self.stream.next_for(name)
                    if item is None:
                        break
                    items.append(item)
                if not items:
                    break
                g.single = max(0, g.single - 1)
                # The batches are top-level arguments: Ray fetches them before the call.
                refs = [r.train_many.options(enable_task_events=False).remote(
                    self.version, [i.rows for i in items], *[i.ref for i in items])
                    for r in g.replicas]
                g.rounds.append(Round(items, refs))

    def _finish_round(self, name: str, rnd: Round) -> bool:
        """Book a finished round; False if a replica died in it."""
        g = self.groups[name]
        results, failed, lost = [], False, 0
        for ref in rnd.refs:
            try:
                result = ray.get(ref)
            except RayActorError:
                failed = True
            except ObjectLostError:  # a batch of it is gone (its node died)
                lost += 1
            except Exception:  # noqa: BLE001 - a peer died mid-collective: gloo error
                failed = True
            else:
                results.append(result["steps"])
                failed |= result["error"] is not None
        if lost == len(rnd.refs):
            # Every replica is fine but could not fetch a batch of the round (its node
            # died), so none stepped. The batch is labelled again by the pass's replay.
            # Which of several it was is not known: they go again, one per round.
            if len(rnd.items) == 1:
                self.stream.lose(name, rnd.items[0])
            else:
                for item in reversed(rnd.items):
                    self.stream.redeliver(name, item)
                g.single = len(rnd.items)
            return True
        # A step happened if any replica finished it (its all-reduce was done on every
        # live replica); the steps run in order, so those are a prefix of the items.
        done = max((len(steps) for steps in results), default=0)
        for i, item in enumerate(rnd.items[:done]):
            steps = [s[i] for s in results if len(s) > i]
            self._book_step(name, item, steps, check=not failed)
        for item in reversed(rnd.items[done:]):
            self.stream.redeliver(name, item)  # to the front, in their order
        return not failed

    def _book_step(self, name: str, item: StreamItem, steps: list[dict[str, Any]],
                   check: bool) -> None:
        """``item`` was trained by ``name``: replicas' ``steps`` results (each their
        share of its rows; ``check``: all of them, so the ids must add up)."""
        g = self.groups[name]
        if item.seq in g.covered:
            g.covered.discard(item.seq)
        else:
            g.since_snapshot.append(item)
        if check:
            ids = np.concatenate([r["ids"] for r in steps])
            if not np.array_equal(np.sort(ids), np.sort(item.ids)):
                raise RuntimeError(f"group {name}: replicas trained ids that do not match "
                                   f"batch {item.seq}")
        self.stream.ack(name, item)
        first = steps[0]
        for term, value in first["loss"].items():
            g.loss_sums[term] = g.loss_sums.get(term, 0.0) + value
        g.loss_batches += 1
        g.batches += 1
        v = int(first["version"])
        g.examples_by_version[v] = g.examples_by_version.get(v, 0) + len(item.ids)
        g.kd_scale_sum += float(first["kd_scale"])
        for key, value in first["timing"].items():
            g.timing[key] = g.timing.get(key, 0.0) + value
        if self.after_ack is not None:
            self.after_ack(name, self.stream.books[name].acked)

    def _recover(self, name: str) -> None:
        """Re-form a group after a replica died: book its rounds, restart from a survivor."""
        g = self.groups[name]
        deadline = time.monotonic() + COLLECTIVE_TIMEOUT.total_seconds() + 10
        for rnd in g.rounds:
            ray.wait(rnd.refs, num_returns=len(rnd.refs),
                     timeout=max(0.0, deadline - time.monotonic()))
        for rnd in g.rounds:
            self._finish_round(name, rnd)
        g.rounds.clear()
        state = None
        for r in g.replicas:
            try:
                state = ray.get(r.state_blob.remote(), timeout=30)
                break
            except (RayActorError, GetTimeoutError):
                continue
        if state is None:
            state = self._restore_snapshot(name)
        for r in g.replicas:
            ray.kill(r, no_restart=True)
        g.generation += 1
        g.restarts += 1
        g.replicas = self._spawn_group(g.cfg, g.generation, state)
        # Rounds of this group that were not trained went back to the front of its queue.

    def _checkpoint(self, pass_index: int, pass_done: bool) -> bool:
        """Write the driver's checkpoint atomically; False if a replica died meanwhile
        (its recovery comes first; the next checkpoint will do)."""
        if self.state_path is None:
            return False
        refs = {name: g.replicas[0].state.remote() for name, g in self.groups.items()}
        # Each state comes after the rounds already queued to that group: what it holds
        # is the books' ids plus those rounds'.
        trained = {name: np.unique(np.concatenate(
            [self.stream.trained_ids(name, pass_index).to_array()]
            + [item.ids for rnd in g.rounds for item in rnd.items])).astype(np.int64)
            for name, g in self.groups.items()}
        try:
            states = dict(zip(refs, ray.get(list(refs.values()))))
        except RayError:
            return False
        doc = {"format": STATE_FORMAT, "pass": pass_index, "pass_done": pass_done,
               "teacher_checkpoint": self._loaded, "soft_labels": self.soft_labels,
               "groups": {name: {
                   "state": states[name],
                   "trained": torch.from_numpy(trained[name]),
                   # plain JSON text: the file loads with weights_only=True
                   "books": json.dumps({
                       "curve": g.curve, "best_auc": g.best_auc, "best_pass": g.best_pass,
                       "restarts": g.restarts, "restores": g.restores,
                       "examples_by_version": {str(v): n for v, n in
                                               g.examples_by_version.items()}})}
                   for name, g in self.groups.items()}}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{STATE_FILE}.tmp")
        torch.save(doc, tmp)
        os.replace(tmp, self.state_path)  # a crash mid-write leaves the previous one
        return True

    def _load_checkpoint(self) -> dict[str, Any]:
        from teacher.checkpoint import CheckpointError
        path = self.state_path
        if path is None or not path.is_file():
            raise CheckpointError(f"{path}: no driver checkpoint to resume from")
        try:
            doc = torch.load(path, weights_only=True)
        except Exception as e:  # noqa: BLE001 - truncated, tampered or not ours
            raise CheckpointError(f"{path}: cannot read the driver checkpoint: {e}") from None
        if doc.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{path}: format {doc.get('format')}, this version reads "
                                  f"{STATE_FORMAT}")
        names = sorted(g.name for g in self.cfg.groups)
        if sorted(doc["groups"]) != names:
            raise CheckpointError(f"{path}: holds groups {sorted(doc['groups'])}, the "
                                  f"config has {names}")
        if doc["soft_labels"] != self.soft_labels:
            raise CheckpointError(f"{path}: was written with soft_labels = "
                                  f"{doc['soft_labels']!r}, not {self.soft_labels!r}")
        return doc

    def _snapshot(self, name: str) -> None:
        """Keep the group's state now (waits for the rounds queued before it)."""
        g = self.groups[name]
        try:
            # a copy the driver owns on its own node: a replica's return value would be
            # stored on the replica's node and lost with it. As bytes: the driver's get
            # is a zero-copy view and its put one copy, nothing unpickled.
            state = ray.put(ray.get(g.replicas[0].state_blob.remote()))
        except RayError:
            return  # the replica died: its recovery uses the previous snapshot
        g.snapshot, g.since_snapshot = state, []
        g.covered = {item.seq for rnd in g.rounds for item in rnd.items}

    def _restore_snapshot(self, name: str) -> np.ndarray:
        """Every replica died: the state of the last snapshot, with the batches trained
        since taken off the books and queued again."""
        g = self.groups[name]
        if g.snapshot is None:
            raise RuntimeError(f"group {name}: every replica died and it keeps no "
                               "snapshots (snapshot_every = 0); nothing to restore from")
        try:
            state = ray.get(g.snapshot)
        except RayError as e:
            raise RuntimeError(f"group {name}: every replica died and its last snapshot "
                               f"cannot be read: {e}") from None
        self.stream.unack(name, g.since_snapshot)
        for item in g.since_snapshot:
            g.examples_by_version[item.version] -= len(item.ids)
        g.since_snapshot, g.covered = [], set()
        g.restores += 1
        return state

    def _run_pass(self, pass_index: int, ds: Any, bar: tqdm) -> None:
        k = len(self.teachers)
        # Batches per rank per labelling call: as many as asked, but a full call must
        # fit the window (max_inflight), or the teachers would never be called.
        per_call = max(1, min(self.cfg.stream.batches_per_call,
                              self.cfg.stream.max_inflight // k))
        self._start_pass(pass_index, ds)
        teacher_call: list[list[Any]] | None = None  # per rank: [ids_list, batch refs...]
        teacher_done = False
        last_gauge = 0.0
        busy0 = time.perf_counter()
        while True:
            if not teacher_done and teacher_call is None \
                    and self.stream.has_room(k * per_call):
                self._maybe_refresh()
                # Per-batch calls keep no task events: the GCS would hold one per call
                # (up to its cap), memory that grows with rows; metrics cover them.
                teacher_call = [t.label_many.options(num_returns=per_call + 1,
                                                     enable_task_events=False)
                                .remote(per_call) for t in self.teachers]
            self._submit_rounds()
            waiting = [ref for g in self.groups.values() for rnd in g.rounds
                       for ref in rnd.refs]
            if teacher_call is not None:
                waiting += [call[0] for call in teacher_call]
            if not waiting:
                if teacher_done and self.stream.drained():
                    self._busy_s += time.perf_counter() - busy0
                    return
                raise RuntimeError("distillation stalled: nothing in flight")  # a bug
            self._busy_s += time.perf_counter() - busy0
            ready, _ = ray.wait(waiting, num_returns=1, timeout=5.0)
            busy0 = time.perf_counter()
            ready_set = set(ready) | set(ray.wait(waiting, num_returns=len(waiting),
                                                  timeout=0)[0])
            if teacher_call is not None and self._teacher_failed(teacher_call, ready_set):
                self._recover_teachers(pass_index, ds)
                teacher_call = None
            if teacher_call is not None and all(call[0] in ready_set
                                                for call in teacher_call):
                batches, teacher_done = labelled_batches(teacher_call)
                for ids, batch_ref in batches:
                    # None: a re-formed group replayed rows already published
                    self.stream.publish(batch_ref, ids, self.version, pass_index)
                if batches and self.checkpoint_every \
                        and self._rounds % self.checkpoint_every == 0:
                    self._checkpoint(pass_index, pass_done=False)
                teacher_call = None
            for name, g in self.groups.items():
                while g.rounds and all(ref in ready_set for ref in g.rounds[0].refs):
                    rnd = g.rounds.pop(0)
                    acked = self.stream.books[name].acked
                    ok = self._finish_round(name, rnd)
                    bar.update(self.stream.books[name].acked - acked)
                    if ok:
                        every = g.cfg.snapshot_every
                        if every and len(g.since_snapshot) >= every:
                            self._snapshot(name)
                            break  # the rounds' readiness changed meanwhile
                    else:
                        self._recover(name)
                        break
            now = time.monotonic()
            if now - last_gauge > 0.5:
                for name, books in self.stream.books.items():
                    self.metrics.gauge("recdistill_queue_depth", books.depth, {"group": name})
                last_gauge = now

    def _teacher_failed(self, call: list[list[Any]], ready: set[Any]) -> bool:
        """Whether a rank of the label group died in this round. A dead rank's call
        fails at once; its peers would wait out the collective timeout, so the calls
        that are done are checked without waiting for the rest."""
        done = [refs[0] for refs in call if refs[0] in ready]
        if not done:
            return False
        try:
            ray.get(done)
        except RayError:  # the actor died, or a peer's collective failed
            return True
        return False

    def _recover_teachers(self, pass_index: int, ds: Any) -> None:
        """Re-form the label group after a rank died mid-pass: new actors and process
        group, shards reloaded from the same checkpoint version, the pass's stream read
        again from the start. Rows already published are not published again
        (``SoftLabelStream.publish``), so the groups train each example once."""
        for t in self.teachers:
            ray.kill(t, no_restart=True)
        if self.cfg.teacher_group.placement:  # free the dead group's reservation
            old = self._label_group_name + (f".{self.teacher_restarts}"
                                            if self.teacher_restarts else "")
            pg = PLACEMENT_GROUPS.pop(old, None)
            if pg is not None:
                ray.util.remove_placement_group(pg)
        # Batches a dead rank stored on a lost node are gone with it. Settle every
        # round in flight, then hand the undelivered batches back to the replay: their
        # ids are labelled again (rows a group has trained are still not re-trained).
        for gname, g in self.groups.items():
            refs = [ref for rnd in g.rounds for ref in rnd.refs]
            ray.wait(refs, num_returns=len(refs),
                     timeout=COLLECTIVE_TIMEOUT.total_seconds() + 10)
            while g.rounds:
                if not self._finish_round(gname, g.rounds.pop(0)):
                    self._recover(gname)
                    break
        self.stream.requeue_undelivered()
        self.teacher_restarts += 1
        self._start_teachers(self._loaded, f".{self.teacher_restarts}")
        self._start_pass(pass_index, ds)

    def _maybe_refresh(self) -> None:
        """Every ``refresh_every`` teacher rounds, load a newer checkpoint version if the
        root has one (between batches: no teacher call is in flight here)."""
        tg = self.cfg.teacher_group
        self._rounds += 1
        if self.soft_labels or not tg.refresh_every or self._rounds % tg.refresh_every:
            return
        path = str(resolve(tg.checkpoint, tg.version))
        if path == self._loaded:
            return
        versions = ray.get([t.reload.remote(path) for t in self.teachers])
        self._loaded, self.version = path, int(versions[0])
        self.refreshes.append({"round": self._rounds, "produced": self.stream.produced,
                               "version": self.version})

    def _evaluate_groups(self, table_ref: Any, best: bool = False
                         ) -> dict[str, dict[str, dict[str, float]]]:
        refs = {name: g.replicas[0].evaluate.remote(table_ref, self.cfg.eval_batch_size, best)
                for name, g in self.groups.items()}
        out = {}
        for name, ref in refs.items():
            logits, labels = ray.get(ref)  # read-only arrays from the object store
            out[name] = task_metrics(torch.tensor(logits), torch.tensor(labels),
                                     self.data.spec.tasks)
        return out

    def run(self) -> dict[str, Any]:
        """Start the actors, run every pass, evaluate; returns the report's body."""
        t0 = time.perf_counter()
        doc = self._load_checkpoint() if self.resume else None
        info = self._start_teachers(doc["teacher_checkpoint"] if doc else "")
        self.version = int(info["version"])
        self._rounds, self._loaded = 0, info.get("checkpoint", "")
        self.refreshes: list[dict[str, int]] = []
        first_pass = 0
        for g in self.cfg.groups:
            saved = doc["groups"][g.name] if doc else None
            rt = GroupRuntime(g, self._spawn_group(g, 0, saved["state"] if saved else None))
            self.groups[g.name] = rt
            if saved is not None:
                books = json.loads(saved["books"])
                rt.curve, rt.best_auc, rt.best_pass = (books["curve"], books["best_auc"],
                                                       books["best_pass"])
                rt.restarts, rt.restores = books["restarts"], books["restores"]
                rt.examples_by_version = {int(v): n for v, n in
                                          books["examples_by_version"].items()}
                if not doc["pass_done"]:
                    self.stream.restore(g.name, doc["pass"], saved["trained"].numpy())
        if doc is not None:
            first_pass = doc["pass"] + (1 if doc["pass_done"] else 0)
            self.resumed = {"pass": doc["pass"] + 1, "pass_done": doc["pass_done"],
                            "trained_in_pass": {n: int(len(d["trained"])) for n, d in
                                                doc["groups"].items()}}
        params = {name: ray.get(g.replicas[0].parameters_count.remote())
                  for name, g in self.groups.items()}
        ds = train_dataset(self.data.train)
        valid_ref, test_ref = ray.put(self.data.valid), ray.put(self.data.test)
        eval_bs = self.cfg.eval_batch_size
        teacher_valid = self._teacher_metrics(valid_ref, eval_bs)
        first = self.data.spec.tasks[0]
        k, bs = self.cfg.teacher_group.ranks, self.cfg.teacher_group.batch_size
        per_pass = k * self.data.train.num_batches(bs, k)
        bar = tqdm(total=per_pass * self.cfg.passes * len(self.groups), unit="batch",
                   desc="distilling", disable=None if self.progress else True,
                   mininterval=0.5)
        for p in range(first_pass, self.cfg.passes):
            t_pass, cpu_pass = time.perf_counter(), time.process_time()
            thread_pass = time.thread_time()
            self._run_pass(p, ds, bar)
            for name, g in self.groups.items():  # a restore never reaches back a pass
                if g.cfg.snapshot_every:
                    self._snapshot(name)
            self._train_wall_s += time.perf_counter() - t_pass
            self._driver_cpu_s += time.process_time() - cpu_pass
            self._loop_cpu_s += time.thread_time() - thread_pass
            valid = self._evaluate_groups(valid_ref)
            for name, g in self.groups.items():
                auc = valid[name][first]["auc"]
                n = max(1, g.loss_batches)
                g.curve.append({"pass": p + 1, "valid": valid[name],
                                "train_loss": {t: v / n for t, v in g.loss_sums.items()},
                                "examples": len(self.stream.trained_ids(name, p))})
                g.loss_sums, g.loss_batches = {}, 0
                if auc > g.best_auc:
                    g.best_auc, g.best_pass = auc, p + 1
                    ray.get([r.keep_best.remote() for r in g.replicas])
            self._checkpoint(p, pass_done=True)
            bar.set_postfix({n: f"{valid[n][first]['auc']:.4f}" for n in self.groups})
        bar.close()
        usage = ray.get([t.usage.remote() for t in self.teachers])
        test = self._evaluate_groups(test_ref, best=True)
        teacher_test = self._teacher_metrics(test_ref, eval_bs)
        students = {}
        for name, g in self.groups.items():
            students[name] = {
                "kd": [t.name for t in g.cfg.student.losses if t.name != "hard_label"],
                "losses": [{"name": t.name, "weight": t.weight, "params": t.params}
                           for t in g.cfg.student.losses],
                "label_tasks": list(g.cfg.student.label_tasks or self.data.spec.tasks),
                "test": test[name], "best_pass": g.best_pass,
                "valid_best": g.curve[g.best_pass - 1]["valid"],
                "examples_trained": sum(c["examples"] for c in g.curve),
                "examples_per_pass": [c["examples"] for c in g.curve],
                "parameters": params[name]["serving"],
                "parameters_with_training_heads": params[name]["total"],
                "replicas": g.cfg.replicas, "restarts": g.restarts,
                "restored_from_snapshot": g.restores,
                "teacher_versions": sorted(g.examples_by_version),
                "examples_by_version": {str(v): n for v, n in
                                        sorted(g.examples_by_version.items())},
                "mean_kd_scale": g.kd_scale_sum / g.batches if g.batches else 1.0,
                # replica 0's seconds per acknowledged batch: reading its rows and the
                # teacher outputs out of the batch, and the optimizer step
                "seconds_per_batch": {k: v / max(1, g.batches)
                                      for k, v in g.timing.items()},
                "curve": g.curve,
            }
        return {
            "teacher": {"test": teacher_test, "valid": teacher_valid,
                        "parameters": int(info["parameters"]), "version": self.version,
                        "first_version": int(info["version"]),
                        "refreshes": self.refreshes, "ranks": k,
                        "restarts": self.teacher_restarts,
                        # what the label source (teacher ranks or soft-label readers) spent
                        # and produced over all passes
                        "usage": {key: sum(u[key] for u in usage) for key in usage[0]}},
            "students": students,
            "stream": self.stream.counters(),
            "resumed": self.resumed,
            "run_wall_s": time.perf_counter() - t0,
            # wall seconds of the passes alone (no setup, no evaluation), and the
            # driver's own work in them: the broker's cost
            "train_wall_s": self._train_wall_s,
            "driver_busy_s": self._busy_s, "driver_cpu_s": self._driver_cpu_s,
            "driver_loop_cpu_s": self._loop_cpu_s,
        }

    def _teacher_metrics(self, table_ref: Any, bs: int) -> dict[str, dict[str, float]]:
        logits, labels = ray.get([t.evaluate.remote(table_ref, bs) for t in self.teachers])[0]
        return task_metrics(torch.tensor(logits), torch.tensor(labels), self.data.spec.tasks)

    def shutdown(self) -> None:
        for a in self.teachers + [r for g in self.groups.values() for r in g.replicas]:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
