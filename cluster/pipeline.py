"""Online distillation on Ray: the label group streams soft labels to student groups.

The driver runs one loop, :meth:`OnlineDistillation.step`, in named phases: ask the K
label-group ranks for their next batches in lockstep (each rank reads its equal share
of a Ray Data stream); hand each group's next batches to all of the group's M replicas,
which each train on their 1/M of the rows and step together (DDP); wait for whatever
finishes first; publish the labelled batches to the :class:`SoftLabelStream` (refs, one
stored copy each); book the groups' finished rounds in their ledgers. A group
acknowledges a batch when the step is done; the label group waits while any group has
``max_inflight`` batches unacknowledged.

Student groups are actor groups rather than Ray Train ``TorchTrainer`` runs: the
stream must see every step's acknowledgement per batch and re-deliver exactly the
batches a dead replica held, while a TorchTrainer owns its own input loop and restarts
the whole group from a checkpoint on failure, which would re-train or lose batches.
Failures are decided and repaired in cluster/recovery.py.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
from tqdm import tqdm

from recdistill.cluster.config import DistillConfig, RunOptions
from recdistill.cluster.data import pass_shards, train_dataset
from recdistill.cluster.evaluation import evaluate_groups, evaluate_teacher, guard_off
from recdistill.cluster.committee import Committee
from recdistill.cluster.groups import StudentGroup
from recdistill.cluster.metrics import ActorMetrics
from recdistill.cluster.recovery import ATTEMPTS, Decision, Recovery, classify_label_calls
from recdistill.cluster.report import (SEED_MARK, DistillReport, DriverTiming, base_name,
                                       student_summary)
from recdistill.cluster.run_state import STATE_FILE, GroupCheckpoint, GroupHistory, RunCheckpoint
from recdistill.cluster.stream import SoftLabelStream
from recdistill.cluster.tensorboard import TensorBoardLog
from recdistill.data.spec import Dataset
from recdistill.teacher.checkpoint import resolve

ROUNDS_AHEAD = 2  # rounds queued per group beyond the one running: hides call latency


@dataclass(frozen=True)
class Hooks:
    """Calls into the run for tests: ``after_ack(group, acked_so_far)`` after each
    acknowledged batch, ``on_phase(name)`` as a phase starts (``evaluate valid``,
    ``evaluate test``, ``pass N``); they inject failures at those points."""

    after_ack: Callable[[str, int], None] | None = None
    on_phase: Callable[[str], None] | None = None


@dataclass
class PassState:
    index: int  # 0-based
    ds: Any  # the training rows as a Ray Dataset
    per_call: int  # labelled batches per rank per labelling call
    labels_done: bool = False  # the label group has labelled the whole pass


class OnlineDistillation:
    """Runs the label group and the student groups for ``cfg.passes`` passes.

    Args:
        cfg: the validated job config.
        data: the dataset (the driver holds it; train goes to Ray Data, valid and test
            to the object store once).
        teacher_dims: width of every teacher feature (from the checkpoint).
        options: how the run is driven: soft labels instead of the live teacher, the
            driver checkpoint (``state_dir``, ``checkpoint_every``, ``resume``: the same
            teacher version is loaded, every group restarts from its state, and the
            interrupted pass is read again with each group skipping the rows it had
            trained), progress bar.
        hooks: see :class:`Hooks`.
    """

    def __init__(self, cfg: DistillConfig, data: Dataset, teacher_dims: dict[str, int],
                 options: RunOptions = RunOptions(), hooks: Hooks = Hooks()) -> None:
        self.cfg, self.data, self.options, self.hooks = cfg, data, options, hooks
        self.state_path = Path(options.state_dir) / STATE_FILE if options.state_dir \
            else None
        names = [g.name for g in cfg.groups]
        self.resume_from = RunCheckpoint.load(self.state_path, names, options.soft_labels) \
            if options.resume and self.state_path is not None else None
        if options.soft_labels:
            self.labels = Committee.soft_labels(cfg, options.soft_labels)
        elif self.resume_from is not None:  # the versions the interrupted run labelled with
            self.labels = Committee.resume(cfg, self.resume_from.teacher_checkpoint)
        else:
            self.labels = Committee.teacher(cfg)
        # Sharded groups write their checkpointed states as DCP directories: under the
        # run's state_dir, or a directory of this run's own (removed at shutdown).
        self._own_root = "" if options.state_dir else tempfile.mkdtemp(
            prefix="recdistill-students-")
        root = str(Path(options.state_dir) / "groups") if options.state_dir \
            else self._own_root
        self.groups = {g.name: StudentGroup(g, data.spec, teacher_dims, state_root=root)
                       for g in cfg.groups}
        self.history = {name: GroupHistory() for name in names}
        self.stream = SoftLabelStream(names, cfg.stream.max_inflight)
        self.recovery = Recovery(self.stream, self.labels, self.groups, self._trained)
        self.metrics = ActorMetrics("driver", {})
        self.timing = DriverTiming()
        self.version = 0  # the teacher version labelling now
        self.label_rounds = 0  # labelling calls made: the refresh schedule
        self.rounds_collected = 0  # labelling calls collected: the checkpoint schedule
        self.refreshes: list[dict[str, int]] = []
        self.teacher_valid: dict[str, dict[str, float]] = {}
        self.guard_log: dict[str, dict[str, int]] = {}  # group -> task -> pass it went off
        self.resumed: dict[str, Any] | None = None
        self._pass: PassState | None = None
        # (last pass handed to the label ranks, their generation): passes up to it are
        # queued on those ranks
        self._handed: tuple[int, int] = (-1, -1)
        self._bar: Any = None
        self._last_gauge = 0.0
        self.tb: TensorBoardLog | None = None

    # ------------------------------------------------------------------ the run
    def run(self) -> DistillReport:
        """Start the actors, run every pass, evaluate; returns the report's body."""
        t0 = time.perf_counter()
        first_pass = 0
        if self.resume_from is not None:
            first_pass = self.resume_from.restore(self.groups, self.stream.ledgers,
                                                  self.history)
            self.resumed = self.resume_from.summary()
        ds = train_dataset(self.data.train)

        def hand_first_pass() -> None:
            # its stream starts while the student groups start and the teacher is
            # evaluated (a pass's stream takes ~1.5 s here to yield its first batch)
            if self.cfg.teacher_group.prefetch:
                self._pass = PassState(first_pass, ds, self.cfg.label_batches_per_call)
                self.recovery.on_labels(lambda _: self._start_pass())

        self.recovery.start({n: s.state for n, s in self.resume_from.groups.items()}
                            if self.resume_from else {}, hand_first_pass)
        self.version = first_version = int(self.labels.info["version"])
        params = {n: self.recovery.on_group(n, StudentGroup.parameters_count)
                  for n in self.groups}
        # A group whose replicas all die restores from its last snapshot: keep one from
        # the start, so a loss before the first `snapshot_every` batches is survived too.
        for name, g in self.groups.items():
            if g.cfg.snapshot_every:
                self._snapshot(name)
        valid_ref, test_ref = ray.put(self.data.valid), ray.put(self.data.test)
        teacher_valid, members_valid = self._teacher_metrics(valid_ref,
                                                             "evaluate teacher valid")
        self.teacher_valid = teacher_valid
        if self.options.tensorboard:
            self.tb = TensorBoardLog(self.options.tensorboard, list(self.groups))
        # the bar counts examples trained, every group's (a resumed run: from the resume)
        self._bar = tqdm(total=len(self.data.train) * (self.cfg.passes - first_pass)
                         * len(self.groups), unit="ex", unit_scale=True,
                         desc=f"distilling {self.data.name} into {len(self.groups)} "
                              f"group(s)", disable=None if self.options.progress else True,
                         mininterval=0.5)
        self._pass_walls: list[float] = []
        for p in range(first_pass, self.cfg.passes):
            t_pass = time.perf_counter()
            self._run_pass(p, ds)
            self._end_pass(p, valid_ref, t_pass)
        self._bar.close()
        usage = self.recovery.on_labels(Committee.usage)
        test = self._evaluate_groups(test_ref, "evaluate test", best=True)
        teacher_test, members_test = self._teacher_metrics(test_ref, "evaluate teacher test")
        teacher = {"test": teacher_test,
                   "valid": teacher_valid, "parameters": int(self.labels.info["parameters"]),
                   "version": self.version, "first_version": first_version,
                   "refreshes": self.refreshes,
                   "ranks": self.cfg.teacher_group.ranks,
                   "restarts": self.labels.generation,
                   # how it labelled: rows per forward, input prefetch and split, table
                   # dtype and (rank 0 of the lead) the tables' bytes and the rank's RSS
                   "labelling": {"label_rows": self.cfg.label_rows,
                                 "prefetch": self.cfg.teacher_group.prefetch,
                                 "split": self.cfg.teacher_group.split,
                                 "table_dtype": self.cfg.teacher_group.table_dtype,
                                 "tables": self.labels.info.get("tables", {})},
                   # what the label source (teacher ranks or soft-label readers) spent
                   # and produced over all passes
                   "usage": usage}
        if members_test:  # a committee: the students learn from the members' mean
            teacher["members"] = {
                name: {"valid": members_valid[name], "test": members_test[name],
                       "checkpoint": m.source, "parameters": int(m.info["parameters"])}
                for name, m in zip(self.labels.names, self.labels.members)}
        students = {n: student_summary(g, self.stream.ledgers[n], self.history[n],
                                       params[n], test[n], self.data.spec.tasks)
                    for n, g in self.groups.items()}
        for n, s in students.items():
            s["kd_guard"] = {"enabled": self.cfg.kd_guard and "baseline" in self.groups
                             and bool(s["kd"]),
                             "off": self.guard_log.get(n, {})}  # task -> pass turned off
        if self.options.artifacts:
            self._phase("write students")
            for n, path in self.write_artifacts(self.options.artifacts, students).items():
                students[n]["artifact"] = path
        self.timing.run_wall_s = time.perf_counter() - t0
        return DistillReport(teacher=teacher, students=students,
                             stream=self.stream.counters(), resumed=self.resumed,
                             timing=self.timing)

    def _run_pass(self, p: int, ds: Any) -> None:
        t_pass, cpu_pass, thread_pass = time.perf_counter(), time.process_time(), \
            time.thread_time()
        self._pass = PassState(p, ds, self.cfg.label_batches_per_call)
        self._phase(f"pass {p + 1}")
        self.recovery.on_labels(lambda _: self._start_pass())
        self.recovery.restart_pass = self._start_pass  # a re-formed group replays it
        busy0 = time.perf_counter()
        while self.step():
            pass
        self.timing.busy_s += time.perf_counter() - busy0
        self.recovery.restart_pass = None
        for name, g in self.groups.items():  # a restore never reaches back a pass
            if g.cfg.snapshot_every:
                self._snapshot(name)
        self.timing.train_wall_s += time.perf_counter() - t_pass
        self.timing.driver_cpu_s += time.process_time() - cpu_pass
        self.timing.driver_loop_cpu_s += time.thread_time() - thread_pass

    def _start_pass(self) -> None:
        """Hand every label-group rank its share of the pass's shuffled stream, unless
        it already has it (a re-formed label group is a new generation: it gets it
        again). With ``teacher_group.prefetch`` the next pass's share follows once this
        pass's first round is back (:meth:`_collect_labels`)."""
        ps = self._pass
        assert ps is not None
        self._hand(ps.index)
        ps.labels_done = False

    def _hand(self, index: int) -> None:
        """Hand pass ``index``'s shares to the label ranks if they do not have it yet."""
        generation = self.labels.generation
        if self._handed[1] != generation:
            self._handed = (-1, generation)
        if self._handed[0] < index < self.cfg.passes:
            self.labels.start_pass(self._shards(index), index)
            self._handed = (index, generation)

    def _shards(self, index: int) -> list[Any]:
        ps = self._pass
        assert ps is not None
        return pass_shards(ps.ds, self.data.train, self.cfg.seed, index, self.labels.ranks,
                           self.cfg.teacher_group.split)

    def _end_pass(self, p: int, valid_ref: Any, t_pass: float) -> None:
        valid = self._evaluate_groups(valid_ref, "evaluate valid")
        first = self.data.spec.tasks[0]
        for name, g in self.groups.items():
            ledger = self.stream.ledgers[name]
            if self.history[name].record(p + 1, valid[name], ledger.stats.end_pass(),
                                         len(ledger.trained_ids(p)), first):
                self.recovery.on_group(name, StudentGroup.keep_best)
        self._guard(p + 1)
        self._checkpoint(pass_done=True)
        self._bar.set_postfix({n: f"{valid[n][first]['auc']:.4f}" for n in self.groups})
        if self.tb is not None:
            self.tb.pass_end(p + 1, self.stream.ledgers, valid, self.teacher_valid)
        self._pass_walls.append(time.perf_counter() - t_pass)
        tqdm.write(pass_line(p + 1, self.cfg.passes, self._pass_walls,
                             {n: len(self.stream.ledgers[n].trained_ids(p))
                              for n in self.groups}, valid))

    # ------------------------------------------------------------------ the loop
    def step(self) -> bool:
        """One turn of the pass loop; False once the pass is labelled and trained."""
        self._request_labels()
        self._submit_rounds()
        ready = self._wait()
        if ready is None:
            return False
        self._collect_labels(ready)
        self._collect_rounds(ready)
        self._gauges()
        return True

    def _request_labels(self) -> None:
        """Another labelling call, if fewer than ``teacher_group.calls_in_flight`` are in
        flight and the window has room for its batches and theirs."""
        ps = self._pass
        assert ps is not None
        n = self.labels.in_flight
        if ps.labels_done or n >= self.cfg.teacher_group.calls_in_flight \
                or not self.stream.has_room((n + 1) * self.labels.ranks
                                            * self.cfg.student_batches_per_call):
            return
        if n and self._refresh_due(self.label_rounds + 1):
            return  # a refresh loads between calls: the ones in flight finish first
        self.label_rounds += 1
        self._maybe_refresh()
        self.labels.request(ps.per_call, ps.index)

    def _submit_rounds(self) -> None:
        for name, g in self.groups.items():
            while len(g.rounds) <= ROUNDS_AHEAD:
                items = self.stream.ledgers[name].take_round(self.cfg.stream.batches_per_call)
                if not items:
                    break
                g.submit(items, self.version)

    def _wait(self) -> set[Any] | None:
        """The refs done (waiting up to 5 s for one); None when the pass is complete."""
        ps = self._pass
        assert ps is not None
        waiting = [ref for g in self.groups.values() for rnd in g.rounds
                   for ref in rnd.refs] + self.labels.pending_refs()
        if not waiting:
            if ps.labels_done and self.stream.drained():
                return None
            raise RuntimeError("distillation stalled: nothing in flight")  # a bug
        t = time.perf_counter()
        ready, _ = ray.wait(waiting, num_returns=1, timeout=5.0)
        self.timing.busy_s -= time.perf_counter() - t  # waiting is not the driver's work
        return set(ready) | set(ray.wait(waiting, num_returns=len(waiting), timeout=0)[0])

    def _collect_labels(self, ready: set[Any]) -> None:
        ps = self._pass
        assert ps is not None
        if not self.labels.in_flight:
            return
        if classify_label_calls(self.labels.outcomes(ready)) \
                is Decision.REFORM_LABEL_GROUP:
            self.recovery.reform_labels()
            return
        if not self.labels.oldest_done(ready):
            return
        rnd = self.labels.collect()
        self.rounds_collected += 1
        ps.labels_done = rnd.ended
        if self.cfg.teacher_group.prefetch:
            # The next pass's input starts once this pass's has yielded (its first round
            # is back), never beside it: on 2 cores two passes' shuffles started together
            # took 1-3 s for the second, one alone ~0.2 s (measured).
            self.recovery.on_labels(lambda _: self._hand(ps.index + 1))
        bs = self.cfg.teacher_group.batch_size
        for ids, batch_ref in rnd.batches:
            # A labelled batch (label_batch_size rows) is published as student batches
            # of its row ranges, each the same stored object; one that is a single
            # student batch goes whole. publish drops rows that a re-formed label group
            # replayed.
            for start in range(0, len(ids), bs):
                stop = min(start + bs, len(ids))
                whole = start == 0 and stop == len(ids)
                self.stream.publish(batch_ref, ids[start:stop], self.version, ps.index,
                                    rows=None if whole else np.arange(start, stop))
        every = self.options.checkpoint_every
        if rnd.batches and every and self.rounds_collected % every == 0:
            self._checkpoint(pass_done=False)

    def _collect_rounds(self, ready: set[Any]) -> None:
        for name, g in self.groups.items():
            while g.rounds and all(ref in ready for ref in g.rounds[0].refs):
                if self.recovery.finish_round(name, g.rounds.pop(0)) \
                        is Decision.REFORM_FROM_SURVIVOR:
                    # A step that fails every time (a bug, not a lost process) would
                    # re-form the group forever: give up after ATTEMPTS in a row.
                    g.failed_in_a_row += 1
                    if g.failed_in_a_row > ATTEMPTS:
                        raise RuntimeError(
                            f"group {name}: {g.failed_in_a_row} rounds in a row failed, "
                            "each after a re-formation; the replicas' error is printed "
                            "above")
                    self.recovery.reform_group(name)
                    break
                g.failed_in_a_row = 0
                every = g.cfg.snapshot_every
                if every and len(self.stream.ledgers[name].since_snapshot) >= every:
                    self._snapshot(name)
                    break  # the rounds' readiness changed meanwhile

    def _gauges(self) -> None:
        now = time.monotonic()
        if now - self._last_gauge > 0.5:
            for name, ledger in self.stream.ledgers.items():
                self.metrics.gauge("recdistill_queue_depth", ledger.depth, {"group": name})
            self._last_gauge = now
        if self.tb is not None:
            self.tb.sample(self.stream.ledgers)

    def _trained(self, name: str, acked: int) -> None:
        self._bar.update(sum(led.acked_rows for led in self.stream.ledgers.values())
                         - self._bar.n)
        if self.hooks.after_ack is not None:
            self.hooks.after_ack(name, acked)

    def _phase(self, name: str) -> None:
        if self.hooks.on_phase is not None:
            self.hooks.on_phase(name)

    def _guard(self, pass_number: int) -> None:
        """The KD guard (``DistillConfig.kd_guard``) after a pass: tasks where a KD
        group's baseline reached the teacher's validation AUC lose their KD."""
        if not self.cfg.kd_guard or "baseline" not in self.groups:
            return
        for name, g in self.groups.items():
            base, k = base_name(name)
            if base == "baseline" or \
                    all(t.name == "hard_label" for t in g.cfg.student.losses):
                continue
            paired = f"baseline{SEED_MARK}{k}" if k else "baseline"
            curve = self.history.get(paired, self.history["baseline"]).curve
            off = guard_off(self.teacher_valid, curve, g.kd_off)
            if off != g.kd_off:
                new = [t for t in off if t not in g.kd_off]
                self.recovery.on_group(name, lambda grp: grp.set_kd_guard(off))
                self.guard_log.setdefault(name, {}).update(
                    {t: pass_number for t in new})
                tqdm.write(f"kd guard: {name}: KD off on {new} after pass {pass_number} "
                           f"({paired} reached the teacher's validation AUC)")

    # ------------------------------------------------------------ between batches
    def _refresh_due(self, rounds: int) -> bool:
        """Whether the labelling call numbered ``rounds`` checks for a newer version."""
        every = self.cfg.teacher_group.refresh_every
        return not self.options.soft_labels and bool(every) and rounds % every == 0

    def _maybe_refresh(self) -> None:
        """Every ``refresh_every`` labelling rounds, load a newer checkpoint version if
        the root has one (between batches: no labelling call is in flight here)."""
        tg = self.cfg.teacher_group
        if not self._refresh_due(self.label_rounds):
            return
        path = str(resolve(tg.checkpoint, tg.version))
        if path == self.labels.source:
            return
        self.version = self.recovery.on_labels(lambda labels: labels.reload(path))
        self.refreshes.append({"round": self.label_rounds, "produced": self.stream.produced,
                               "version": self.version})

    def _snapshot(self, name: str) -> None:
        """Keep the group's state now (it comes after the rounds queued before it)."""
        self.recovery.on_group(name, StudentGroup.take_snapshot)
        self.stream.ledgers[name].snapshot_taken(self.groups[name].in_flight())

    def _checkpoint(self, pass_done: bool) -> None:
        """Write the driver's checkpoint (atomically)."""
        if self.state_path is None:
            return
        ps = self._pass
        assert ps is not None
        groups = {name: GroupCheckpoint.capture(
            g, self.recovery.on_group(name, StudentGroup.state), self.stream.ledgers[name],
            self.history[name], ps.index) for name, g in self.groups.items()}
        RunCheckpoint(ps.index, pass_done, "" if self.options.soft_labels
                      else self.labels.source, self.options.soft_labels, groups
                      ).save(self.state_path)

    # ---------------------------------------------------------------- evaluation
    def _evaluate_groups(self, table_ref: Any, phase: str, best: bool = False
                         ) -> dict[str, dict[str, dict[str, float]]]:
        self._phase(phase)
        return evaluate_groups(self.recovery, table_ref, self.cfg.eval_batch_size,
                               self.data.spec.tasks, best)

    def _teacher_metrics(self, table_ref: Any, phase: str
                         ) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
        self._phase(phase)
        return evaluate_teacher(self.recovery, table_ref, self.cfg.eval_batch_size,
                                self.data.spec.tasks)

    def write_artifacts(self, root: str, students: dict[str, Any]) -> dict[str, str]:
        """Every group's best student to ``<root>/<group>/`` (``student/artifact.py``),
        with its report metrics; group -> path."""
        from recdistill.data.fingerprint import fingerprint
        from recdistill.student.artifact import write_artifact
        fp = fingerprint(self.data.spec, self.data.name)
        paths = {}
        for name, g in self.groups.items():
            s = students[name]
            metrics = {"test": s["test"], "valid_best": s["valid_best"],
                       "best_pass": s["best_pass"]}
            path = write_artifact(
                Path(root) / name,
                lambda d, n=name: self.recovery.on_group(
                    n, lambda grp: grp.write_serving(d)),
                cfg=g.cfg.student, spec=self.data.spec, fingerprint=fp,
                metrics=metrics, data={"split": self.cfg.split, "seed": self.cfg.seed,
                                       "rows": self.cfg.rows,
                                       "max_cardinality": self.cfg.max_cardinality})
            paths[name] = str(path)
        return paths

    def shutdown(self) -> None:
        if self.tb is not None:
            self.tb.close()
        self.labels.shutdown()
        for g in self.groups.values():
            g.shutdown()
        if self._own_root:
            shutil.rmtree(self._own_root, ignore_errors=True)


def pass_line(k: int, passes: int, walls: list[float], examples: dict[str, int],
              valid: dict[str, dict[str, dict[str, float]]]) -> str:
    """The log's line for a finished pass (a terminal or not): ``pass k/N``, examples/s
    (of the group that trained most), each group's validation AUC per task, and the ETA
    from the mean pass time so far (validation included)."""
    wall = walls[-1]
    rate = max(examples.values(), default=0) / wall if wall > 0 else 0.0
    aucs = "; ".join(f"{name} " + " ".join(f"{task} {m['auc']:.4f}" for task, m in v.items())
                     for name, v in valid.items())
    eta = (passes - k) * sum(walls) / len(walls)
    return (f"pass {k}/{passes}: {wall:.1f}s, {rate:,.0f} examples/s; valid AUC {aucs}; "
            f"ETA {_duration(eta)}")


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
