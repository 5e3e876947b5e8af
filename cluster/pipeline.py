"""Online distillation on Ray: the real actor groups around the driver loop, and the
run's report.

:class:`OnlineDistillation` builds the label source (the teacher, a committee, or
soft-label readers; resumed at the versions an interrupted run used), one
``StudentGroup`` per config and the Ray runtime, hands them to the
:class:`~recdistill.cluster.controller.Controller`, runs every pass, evaluates on test
and writes the artifacts.

Student groups are actor groups rather than Ray Train ``TorchTrainer`` runs: the
stream must see every step's acknowledgement per batch and re-deliver exactly the
batches a dead replica held, while a TorchTrainer owns its own input loop and restarts
the whole group from a checkpoint on failure, which would re-train or lose batches.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from typing import Any

from recdistill.cluster.committee import Committee
from recdistill.cluster.config import DistillConfig, RunOptions
from recdistill.cluster.controller import Controller
from recdistill.cluster.data import RayRuntime
from recdistill.cluster.evaluation import evaluate_teacher
from recdistill.cluster.progress import Progress
from recdistill.cluster.report import DistillReport, student_summary
from recdistill.cluster.run_state import STATE_FILE, RunCheckpoint, share_layout
from recdistill.cluster.state import Hooks
from recdistill.cluster.stream import SoftLabelStream
from recdistill.cluster.student_group import StudentGroup
from recdistill.data import storage
from recdistill.data.spec import Dataset
from recdistill.teacher.checkpoint import resolve


class OnlineDistillation:
    """Runs the label source and the student groups for ``cfg.passes`` passes.

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
        self.cfg, self.data, self.options = cfg, data, options
        state = storage.join(options.state_dir, STATE_FILE) if options.state_dir else None
        self.resume_from = RunCheckpoint.load(state, [g.name for g in cfg.groups],
                                              options.soft_labels, share_layout(cfg)) \
            if options.resume and state is not None else None
        if options.soft_labels:
            labels = Committee.soft_labels(cfg, options.soft_labels)
        elif self.resume_from is not None:  # the versions the interrupted run labelled with
            labels = Committee.resume(cfg, self.resume_from.teacher_checkpoint)
        else:
            labels = Committee.teacher(cfg)
        # Sharded groups write their checkpointed states as DCP directories: under the
        # run's state_dir, or a directory of this run's own (removed at shutdown) beside
        # the report, where every replica's node finds it.
        self._own_root = "" if options.state_dir else storage.join(
            storage.parent(options.report), f".groups-{uuid.uuid4().hex[:12]}") \
            if options.report else tempfile.mkdtemp(prefix="recdistill-students-")
        root = storage.join(options.state_dir, "groups") if options.state_dir \
            else self._own_root
        groups = {g.name: StudentGroup(g, data.spec, teacher_dims, state_root=root)
                  for g in cfg.groups}
        tg = cfg.teacher_group
        self.controller = Controller(
            cfg, data.spec.tasks, options, labels, groups,
            RayRuntime(data, cfg.seed, tg.split, tg.read_ahead_mib,
                       tg.shuffle_buffer_rows), hooks,
            Progress(options.progress, options.tensorboard),
            newest_teacher=lambda: str(resolve(tg.checkpoint, tg.version)))

    # what tests look at: the actors and the books
    @property
    def labels(self) -> Committee:
        return self.controller.labels.source  # type: ignore[return-value]

    @property
    def groups(self) -> dict[str, StudentGroup]:
        return {n: g.actors for n, g in self.controller.groups.items()}  # type: ignore[misc]

    @property
    def stream(self) -> SoftLabelStream:
        return self.controller.stream

    def run(self) -> DistillReport:
        """Start the actors, run every pass, evaluate; returns the report's body."""
        t0 = time.perf_counter()
        c, tasks = self.controller, self.data.spec.tasks
        first = c.start(self.resume_from)
        params = {n: c.executor.on_group(n, lambda a: a.parameters_count())
                  for n in c.groups}
        c.teacher_valid, members_valid = self._teacher_metrics("valid")
        c.progress.begin(list(c.groups), len(self.data.train) * (self.cfg.passes - first)
                         * len(c.groups), f"distilling {self.data.name} into "
                                          f"{len(c.groups)} group(s)")
        c.run_passes(first)
        c.progress.close()
        usage = c.executor.on_labels(lambda s: s.usage())
        test = c.evaluate("test", "evaluate test", best=True)
        teacher_test, members_test = self._teacher_metrics("test")
        source, tg = self.labels, self.cfg.teacher_group
        teacher = {"test": teacher_test, "valid": c.teacher_valid,
                   "parameters": int(source.info["parameters"]),
                   "version": c.labels.version, "first_version": c.labels.first_version,
                   "refreshes": c.labels.refreshes, "ranks": tg.ranks,
                   "restarts": source.generation,
                   # how it labelled: rows per forward, input prefetch and split, table
                   # dtype and (rank 0 of the lead) the tables' bytes and the rank's RSS
                   "labelling": {"label_rows": self.cfg.label_rows, "prefetch": tg.prefetch,
                                 "split": tg.split, "table_dtype": tg.table_dtype,
                                 "tables": source.info.get("tables", {})},
                   # what the label source (teacher ranks or soft-label readers) spent
                   # and produced over all passes
                   "usage": usage}
        if members_test:  # a committee: the students learn from the members' mean
            teacher["members"] = {
                name: {"valid": members_valid[name], "test": members_test[name],
                       "checkpoint": m.source, "parameters": int(m.info["parameters"])}
                for name, m in zip(source.names, source.members)}
        students = {n: student_summary(g, params[n], test[n], tasks)
                    for n, g in c.groups.items()}
        for n, s in students.items():
            s["kd_guard"] = {"enabled": self.cfg.kd_guard and "baseline" in c.groups
                             and bool(s["kd"]),
                             # task or term -> the pass after which it was turned off
                             "off": c.groups[n].guard_log, "why": c.groups[n].guard_why}
        if self.options.artifacts:
            c.phase("write students")
            for n, path in self.write_artifacts(self.options.artifacts, students).items():
                students[n]["artifact"] = path
        c.timing.run_wall_s = time.perf_counter() - t0
        return DistillReport(teacher=teacher, students=students,
                             stream=c.stream.counters(),
                             resumed=self.resume_from.summary() if self.resume_from else None,
                             timing=c.timing)

    def _teacher_metrics(self, split: str) -> tuple[Any, dict[str, Any]]:
        c = self.controller
        c.phase(f"evaluate teacher {split}")
        return evaluate_teacher(c.executor, c.runtime.table(split),
                                self.data.split(split).n_blocks, self.cfg.eval_batch_size,
                                self.data.spec.tasks, self.data.spec.group_key)

    def write_artifacts(self, root: str, students: dict[str, Any]) -> dict[str, str]:
        """Every group's best student to ``<root>/<group>/`` (``student/artifact.py``),
        with its report metrics; group -> path."""
        from recdistill.data.fingerprint import fingerprint
        from recdistill.student.artifact import write_artifact
        fp = fingerprint(self.data.spec, self.data.name)
        paths = {}
        for name, g in self.controller.groups.items():
            s = students[name]
            metrics = {"test": s["test"], "valid_best": s["valid_best"],
                       "best_pass": s["best_pass"]}
            path = write_artifact(
                storage.join(root, name),
                lambda d, n=name: self.controller.executor.on_group(
                    n, lambda a: a.write_serving(d)),
                cfg=g.cfg.student, spec=self.data.spec, fingerprint=fp,
                metrics=metrics, data={"split": self.cfg.split, "seed": self.cfg.seed,
                                       "rows": self.cfg.rows,
                                       "max_cardinality": self.cfg.max_cardinality},
                transform=self.data.transform)
            paths[name] = path
        return paths

    def shutdown(self) -> None:
        self.controller.progress.close()
        self.labels.shutdown()
        for g in self.groups.values():
            g.shutdown()
        if self._own_root:
            storage.rmtree(self._own_root)
