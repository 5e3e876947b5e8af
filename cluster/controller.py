"""The driver loop: one label source streams labelled batches to G student groups.

Each turn of the pass loop (:meth:`Controller.turn`) runs its phases in order:
1. **request labels**: another labelling call on every rank, if fewer than
   ``teacher_group.calls_in_flight`` are in flight and every group's window
   (``stream.max_inflight``) has room for its batches;
2. **submit training**: each group's next batches go to its replicas, up to
   ``CALLS_AHEAD`` training calls queued beyond the one running;
3. **wait** for whatever finishes first (at most 5 s);
4. **collect labels**: a finished labelling call's batches go to the
   :class:`SoftLabelStream` (refs, one stored copy each); a failed one to the policy;
5. **collect training**: finished training calls are settled and booked in the groups'
   ledgers; what the policy decides about them, the executor carries out;
then (in pass 1, once) the KD guard's probe, and the gauges are sampled. A pass ends
when every group has trained it: groups are evaluated, keep their best states, the KD
guard decides, groups out of patience stop, the driver checkpoints. State:
cluster/state.py; calls that can lose an actor: the executor (cluster/recovery.py)."""

from __future__ import annotations

import time
from typing import Any, Callable

from recdistill.cluster.config import DistillConfig, RunOptions
from recdistill.cluster.evaluation import (Metrics, evaluate_groups, guard_probe, kd_guard,
                                           probe_room)
from recdistill.cluster.progress import Progress
from recdistill.cluster.recovery import Action, Executor, FailurePolicy
from recdistill.cluster.report import DriverTiming
from recdistill.cluster.run_state import Checkpointer, RunCheckpoint, share_layout
from recdistill.cluster.state import (Every, GroupState, Hooks, LabelSource, LabelState,
                                      PassState, Runtime, SnapshotSchedule, StudentActors)
from recdistill.cluster.stream import SoftLabelStream

CALLS_AHEAD = 2  # training calls queued per group beyond the one running: hides latency
WAIT_S = 5.0  # the most one wait phase blocks (the loop's progress and gauges go on)


class Controller:
    """Runs the passes over the given label source and student groups.

    Args:
        cfg: the validated job config.
        tasks: the dataset's tasks (the first decides the best pass).
        options: the driver checkpoint (``state_dir``, ``checkpoint_every``) and
            ``soft_labels`` (no teacher refresh).
        labels: the label source's actors.
        groups: each student group's actors, by name.
        runtime: waits, pass shares, evaluation tables.
        hooks: see :class:`Hooks`; progress: what is shown (default: nothing).
        newest_teacher: the checkpoint version a refresh loads (default: the one
            loaded: a refresh loads nothing).
    """

    def __init__(self, cfg: DistillConfig, tasks: tuple[str, ...], options: RunOptions,
                 labels: LabelSource, groups: dict[str, StudentActors], runtime: Runtime,
                 hooks: Hooks = Hooks(), progress: Progress | None = None,
                 newest_teacher: Callable[[], str] | None = None) -> None:
        self.cfg, self.tasks, self.options, self.hooks = cfg, tasks, options, hooks
        self.runtime = runtime
        self.progress = progress or Progress()
        self.newest_teacher = newest_teacher or (lambda: self.labels.source.source)
        self.stream = SoftLabelStream(list(groups), cfg.stream.max_inflight,
                                      cfg.slices_per_label_batch)
        self.groups = {n: GroupState(a, self.stream.ledgers[n],
                                     SnapshotSchedule(a.cfg.snapshot_every))
                       for n, a in groups.items()}
        tg = cfg.teacher_group
        self.labels = LabelState(labels, Every(0 if options.soft_labels else tg.refresh_every))
        self.checkpoints = Checkpointer(options, share_layout(cfg))
        self.executor = Executor(FailurePolicy(), self.stream, self.labels, self.groups,
                                 runtime.wait_all, self._trained, self._labels_restarted)
        self.teacher_valid: Metrics = {}
        self.probe = cfg.kd_guard_probe if cfg.kd_guard and "baseline" in groups else 0.0
        self.timing = DriverTiming()

    # ------------------------------------------------------------------ the run
    def start(self, resume: RunCheckpoint | None = None) -> int:
        """Start every actor (from ``resume``'s states); returns the first pass to run."""
        first = resume.restore(self.groups) if resume is not None else 0
        for name, g in self.groups.items():
            if g.stopped_after:  # stopped before the interruption: stays out
                self.stream.retire(name)

        def hand_first_pass() -> None:  # its input starts while the groups start
            if self.cfg.teacher_group.prefetch:
                self.labels.current = PassState(first, self.cfg.label_batches_per_call)
                self.executor.on_labels(lambda _: self._hand(first))

        self.executor.start({n: s.state for n, s in resume.groups.items()}
                            if resume is not None else {}, hand_first_pass)
        self.labels.version = self.labels.first_version = \
            int(self.labels.source.info["version"])
        # a snapshot from the start: a loss before the first `snapshot_every` is survived
        for g in self.training.values():
            if g.snapshots.every:
                self._snapshot(g)
        return first

    @property
    def training(self) -> dict[str, GroupState]:  # not stopped (GroupConfig.patience)
        return {n: g for n, g in self.groups.items() if not g.stopped_after}

    def run_passes(self, first: int) -> None:
        """Passes ``first`` to the last, or until every group stopped."""
        for p in range(first, self.cfg.passes):
            if not self.training:
                break
            t_pass = time.perf_counter()
            self.run_pass(p)
            self.end_pass(p, t_pass)

    def run_pass(self, p: int) -> None:
        """Label and train pass ``p`` (0-based)."""
        t, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
        self.labels.current = PassState(p, self.cfg.label_batches_per_call, active=True)
        self.phase(f"pass {p + 1}")
        self.executor.on_labels(lambda _: self._start_pass())
        busy0 = time.perf_counter()
        while self.turn():
            pass
        self.timing.busy_s += time.perf_counter() - busy0
        self.labels.current.active = False
        for g in self.training.values():  # a restore never reaches back a pass
            if g.snapshots.every:
                self._snapshot(g)
        self.timing.train_wall_s += time.perf_counter() - t
        self.timing.driver_cpu_s += time.process_time() - cpu
        self.timing.driver_loop_cpu_s += time.thread_time() - thread

    def end_pass(self, p: int, t_pass: float) -> None:
        """Evaluate the groups still training, keep their best states, apply the KD
        guard, stop the groups out of patience, checkpoint."""
        training = self.training
        valid = self.evaluate("valid", "evaluate valid", names=list(training))
        for name, g in training.items():
            if g.history.record(p + 1, valid[name], g.ledger.stats.end_pass(),
                                g.ledger.books(p).examples, self.tasks[0]):
                self.executor.on_group(name, lambda a: a.keep_best())
        if self.cfg.kd_guard:
            kd_guard(self.executor, self.teacher_valid, p + 1, self.progress.write)
        for name, g in training.items():
            if g.out_of_patience(p + 1):
                g.stopped_after = p + 1
                self.stream.retire(name)
                self.progress.write(f"patience: {name} stops after pass {p + 1} (its best "
                                    f"pass was {g.history.best_pass})")
        self.checkpoints.write(self.executor, p, pass_done=True)
        self.progress.pass_end(p + 1, self.cfg.passes, time.perf_counter() - t_pass,
                               self.stream.ledgers, valid, self.teacher_valid,
                               {n: g.ledger.books(p).examples for n, g in training.items()})

    # ------------------------------------------------------------------ one turn
    def turn(self) -> bool:
        """One turn of the pass loop; False once the pass is labelled and trained."""
        self._request_labels()
        self._submit_training()
        ready = self._wait()
        if ready is None:
            return False
        self._collect_labels(ready)
        self._collect_training(ready)
        if self.probe and self._pass.index == 0 and guard_probe(
                self.executor, self.teacher_valid, self.probe, self.runtime.pass_rows,
                lambda names: self.evaluate("valid", "kd guard probe", names=names),
                self.progress.write):
            self.probe = 0.0  # once (DistillConfig.kd_guard_probe)
        self.progress.sample(self.stream.ledgers)
        return True

    def _request_labels(self) -> None:
        ps, src = self._pass, self.labels.source
        n = src.in_flight
        if ps.labels_done or n >= self.cfg.teacher_group.calls_in_flight \
                or not self.stream.has_room((n + 1) * src.ranks
                                            * self.cfg.student_batches_per_call):
            return
        if n and self.labels.refresh.due(self.labels.refresh.count + 1):
            return  # a refresh loads between calls: the ones in flight finish first
        if self.labels.refresh.tick():
            self._refresh()
        src.request(ps.per_call, ps.index)

    def _submit_training(self) -> None:
        for g in self.groups.values():
            while len(g.actors.calls) <= CALLS_AHEAD:
                most = self.cfg.stream.batches_per_call
                if self.probe and not self._pass.index:  # the guard's probe: wait there
                    most = probe_room(g.ledger, self.probe, self.runtime.pass_rows, most,
                                      self.cfg.teacher_group.batch_size)
                items = g.ledger.take_call(most) if most else []
                if not items:
                    break
                g.actors.submit(items, self.labels.version)

    def _wait(self) -> set[Any] | None:
        """The refs done (waiting up to ``WAIT_S`` for one); None: the pass is complete."""
        waiting = [ref for g in self.groups.values() for call in g.actors.calls
                   for ref in call.refs] + self.labels.source.pending_refs()
        if not waiting:
            if self._pass.labels_done and self.stream.drained():
                return None
            raise RuntimeError("distillation stalled: nothing in flight")  # a bug
        t = time.perf_counter()
        ready = self.runtime.wait(waiting, WAIT_S)
        self.timing.busy_s -= time.perf_counter() - t  # waiting is not the driver's work
        return ready

    def _collect_labels(self, ready: set[Any]) -> None:
        ps, src, src_failed = self._pass, self.labels.source, self.labels.failed_in_a_row
        if not src.in_flight:
            return
        decision = self.executor.policy.label_calls(src.outcomes(ready), src_failed)
        if decision.action is not Action.CONTINUE:
            self.executor.execute(decision)
            return
        if not src.oldest_done(ready):
            return
        result = src.collect()
        self.labels.failed_in_a_row = 0
        ps.labels_done = result.ended
        if self.cfg.teacher_group.prefetch:
            # the next pass's input starts once this one's first call is back, not beside it
            self.executor.on_labels(lambda _: self._hand(ps.index + 1))
        first = self.labels.next_seq[ps.index]
        for rank, i, ids, refs in result.batches:
            self.stream.publish_slices(refs, ids, self.cfg.teacher_group.batch_size,
                                       self.labels.version, ps.index, rank, first + i)
        self.labels.next_seq[ps.index] = first + result.per_rank
        if self.checkpoints.calls.tick() and result.batches:
            self.checkpoints.write(self.executor, ps.index, pass_done=False)

    def _collect_training(self, ready: set[Any]) -> None:
        for g in self.groups.values():
            while g.actors.calls and all(ref in ready for ref in g.actors.calls[0].refs):
                decision = self.executor.finish_call(g, g.actors.calls.pop(0))
                self.executor.execute(decision)
                if decision.action is not Action.CONTINUE:
                    break  # re-formed: its calls' readiness changed
                if g.snapshots.due(g.ledger):
                    self._snapshot(g)
                    break  # the calls' readiness changed meanwhile

    # ------------------------------------------------------------ between turns
    @property
    def _pass(self) -> PassState:
        assert self.labels.current is not None, "no pass in progress"
        return self.labels.current

    def _start_pass(self) -> None:
        """Hand the label ranks the current pass unless they have it (and see prefetch)."""
        self._hand(self._pass.index)
        self._pass.labels_done = False

    def _labels_restarted(self) -> None:  # a re-formed source reads the pass again
        if self.labels.current is not None and self.labels.current.active:
            self._start_pass()

    def _hand(self, index: int) -> None:
        """Hand pass ``index``'s shares to the label ranks if they do not have it yet."""
        src = self.labels.source
        if self.labels.handed[1] != src.generation:
            self.labels.handed = (-1, src.generation)
        if self.labels.handed[0] < index < self.cfg.passes:
            # a replay starts after the batches every group trained (resume skips by seq)
            skip = self.stream.skip(index, src.ranks) if self.runtime.skips else 0
            shards = self.runtime.shards(index, src.ranks, skip * self.cfg.label_rows)
            src.start_pass(shards, index)
            self.labels.handed, self.labels.next_seq[index] = (index, src.generation), skip

    def _refresh(self) -> None:
        """Load a newer teacher version if there is one (no labelling call in flight)."""
        path = self.newest_teacher()
        if path == self.labels.source.source:
            return
        self.labels.version = self.executor.on_labels(lambda s: s.reload(path))
        self.labels.refreshes.append({"round": self.labels.refresh.count,
                                      "produced": self.stream.produced,
                                      "version": self.labels.version})

    def _snapshot(self, g: GroupState) -> None:
        """Keep the group's state now (it comes after the calls queued before it)."""
        self.executor.on_group(g.name, lambda a: a.take_snapshot())
        g.ledger.snapshot_taken(g.actors.in_flight())

    def _trained(self, name: str, acked: int) -> None:
        self.progress.trained(self.stream.ledgers)
        if self.hooks.after_ack is not None:
            self.hooks.after_ack(name, acked)

    def phase(self, name: str) -> None:  # Hooks.on_phase
        (self.hooks.on_phase or (lambda _: None))(name)

    def evaluate(self, split: str, phase: str, best: bool = False,
                 names: list[str] | None = None) -> dict[str, Metrics]:
        """The metrics on ``split`` of groups ``names`` (default: every group; their best
        states' if ``best``)."""
        self.phase(phase)
        return evaluate_groups(self.executor, self.runtime.table(split),
                               self.cfg.eval_batch_size, self.tasks, best, names)
