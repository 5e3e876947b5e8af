"""What labels a run, checked before any actor starts (:func:`resolve_labels`): soft
labels, or the teacher committee's checkpoints matched to the dataset
(:func:`match_teacher`), the width of their features (:func:`teacher_dims`), every
student group built once (:func:`validate_students`); and each missing member trained
first, as Ray tasks side by side (:func:`ensure_teacher`)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from recdistill.cluster.config import DistillConfig, TeacherGroupConfig
from recdistill.cluster.config_groups import keyed_groups
from recdistill.data.errors import ConfigError, DataError
from recdistill.teacher.checkpoint import CheckpointError
from recdistill.teacher.loop import TeacherRun, TrainTeacherArgs


def member_exists(checkpoint: str) -> bool:
    """Whether a teacher checkpoint (a version directory or a root holding versions) is
    there to load; a path holding something else fails (``CheckpointError``)."""
    from recdistill.teacher.checkpoint import check_absent_or_checkpoint
    return check_absent_or_checkpoint(checkpoint)


def teacher_exists(cfg: DistillConfig) -> bool:
    """Whether every configured teacher (the one, or each committee member) is there."""
    return all(member_exists(m.checkpoint) for m in cfg.members)


def teacher_dims(cfg: DistillConfig, spec: Any) -> dict[str, int]:
    """Width of each teacher feature (a committee's: the sum of its members', whose
    tensors travel side by side): from each checkpoint if there is one, else the
    config."""
    from recdistill.teacher.checkpoint import read_meta, resolve
    from recdistill.teacher.model import feature_dims
    dims: dict[str, int] = {}
    for m in cfg.members:
        tcfg = read_meta(resolve(m.checkpoint, cfg.teacher_group.version))[1] \
            if member_exists(m.checkpoint) else m.teacher
        for k, d in feature_dims(spec, tcfg).items():
            dims[k] = dims.get(k, 0) + d
    return dims


def validate_students(cfg: DistillConfig, spec: Any, dims: dict[str, int]) -> None:
    """Build every student once here, so a bad group fails before any actor starts; and
    every teacher member's tower that is not the built-in one (a registered arch), so
    one that breaks the contract fails the same way.

    Raises:
        ConfigError: a group names tasks the dataset does not have, or its student (or a
            registered teacher tower) does not build.
    """
    from recdistill.student.losses import build_objective
    from recdistill.student.model import StudentModel, student_features
    from recdistill.teacher.model import feature_dims
    for m in cfg.members:
        if m.teacher.arch != "builtin" and not member_exists(m.checkpoint):
            feature_dims(spec, m.teacher)
    for g in cfg.groups:
        unknown = set(g.student.label_tasks) - set(spec.tasks)
        if unknown:
            raise ConfigError(f"groups.{g.name}.label_tasks: unknown tasks "
                              f"{sorted(unknown)}; tasks are {list(spec.tasks)}")
        objective = build_objective(g.student, spec.tasks, spec.group_key,
                                    student_features(spec, g.student))
        StudentModel(spec, g.student, dims, uncertainty=objective.uncertainty)


def match_teacher(cfg: DistillConfig, data: Any,
                  default: str = TeacherGroupConfig.checkpoint) -> DistillConfig:
    """The config with teacher checkpoints made for ``data``, checked before any actor
    starts: a teacher (or committee member) trained on another dataset fails naming
    its checkpoint and the difference, unless its path derives from the ``default``
    teacher checkpoint (``<storage>/teacher`` in a job) and ``train_if_missing`` holds; then this dataset's
    teachers live at the default path keyed by the dataset (trained there if missing).
    A missing checkpoint without ``train_if_missing`` fails here too.

    Raises:
        CheckpointError: as above, naming the checkpoint.
    """
    from recdistill.data.fingerprint import differences, fingerprint, keyed_path
    from recdistill.teacher.checkpoint import read_meta, resolve
    tg = cfg.teacher_group
    fp = fingerprint(data.spec, data.name)

    def mismatches(c: DistillConfig) -> list[tuple[str, str, list[str]]]:
        out = []
        for m in c.members:
            if not member_exists(m.checkpoint):
                if not tg.train_if_missing:
                    raise CheckpointError(f"{m.checkpoint}: teacher checkpoint not found "
                                          "and teacher_group.train_if_missing is false")
                continue
            path = resolve(m.checkpoint, tg.version)
            spec, _, info = read_meta(path)
            found = differences(info.get("fingerprint") or fingerprint(spec, ""), fp)
            if found:
                out.append((m.name, path, found))
        return out

    def fail(found: list[tuple[str, str, list[str]]]) -> CheckpointError:
        _, path, what = found[0]
        return CheckpointError(
            f"{path}: this teacher was trained on another dataset than {data.name} "
            f"({'; '.join(what)}); give --teacher-checkpoint a teacher of this dataset "
            "or a new directory to train one in")

    found = mismatches(cfg)
    if not found:
        return cfg
    explicit = {m.name for m in cfg.teachers if m.checkpoint}
    if tg.checkpoint != default or not tg.train_if_missing or \
            any(name in explicit for name, _, _ in found):
        raise fail(found)
    keyed = dataclasses.replace(cfg, teacher_group=dataclasses.replace(
        tg, checkpoint=keyed_path(default, fp)))
    found = mismatches(keyed)
    if found:
        raise fail(found)
    print(f"teacher checkpoint {default} is of another dataset; {data.name}'s teacher "
          f"is {keyed.teacher_group.checkpoint}", flush=True)
    return keyed


def resolve_labels(cfg: DistillConfig, data: Any, soft_labels: str,
                   default_teacher: str = TeacherGroupConfig.checkpoint
                   ) -> tuple[DistillConfig, dict[str, int]]:
    """What labels the run, checked before any actor starts: the soft labels at
    ``soft_labels`` (of this dataset, holding the teacher features the groups request),
    or else the teacher matched to ``data`` (:func:`match_teacher`). Returns the config
    (its teacher checkpoints matched) and the teacher features' widths, every student
    group built once against them (:func:`validate_students`).

    Raises:
        ConfigError, DataError, CheckpointError: naming the soft labels, the key or the
            checkpoint.
    """
    groups, dropped = keyed_groups(cfg.groups, data.spec.group_key, cfg.seed)
    if dropped:
        print(f"groups {dropped} left out: listwise KD needs lists, and {data.name} has "
              "no group_key (a dataset TOML names the column of its user or request)",
              flush=True)
        cfg = dataclasses.replace(cfg, groups=groups)
    if soft_labels:
        from recdistill.cluster.soft_labels import Manifest, spec_check
        manifest = Manifest.load(soft_labels)
        spec_check(manifest, data.spec, soft_labels, data.name)
        missing = set(cfg.requested_features) - set(manifest.features)
        if missing:
            raise ConfigError(f"students request teacher features {sorted(missing)} that "
                              f"{soft_labels} does not hold (it has "
                              f"{sorted(manifest.features)}); precompute with this config")
        dims = dict(manifest.features)
    else:
        cfg = match_teacher(cfg, data, default_teacher)
        dims = teacher_dims(cfg, data.spec)
    validate_students(cfg, data.spec, dims)
    return cfg, dims


def ensure_teacher(cfg: DistillConfig, train: TeacherRun) -> None:
    """Train each missing teacher (the one, or each committee member) as a Ray task,
    side by side, with ``train`` (``jobs.train_teacher.run``: the job's whole run in
    one process, its dataset loaded there).

    Raises:
        CheckpointError: a member is missing and ``teacher_group.train_if_missing`` is
            false.
    """
    import ray
    from ray.util.queue import Queue
    missing = [m for m in cfg.members if not member_exists(m.checkpoint)]
    if not missing:
        return
    if not cfg.teacher_group.train_if_missing:
        raise CheckpointError(f"{missing[0].checkpoint}: teacher checkpoint not found and "
                              "teacher_group.train_if_missing is false")
    # A streamed dataset trains its teacher on up to 1e6 in-memory rows of the same
    # generator (same feature spec).
    data, rows = (("synthetic", min(cfg.rows, 1_000_000)) if cfg.data == "synthetic-stream"
                  else (cfg.data, cfg.rows))
    # one GPU where the teacher's ranks have GPUs; none seen otherwise (_train_member)
    task = ray.remote(num_cpus=1, num_gpus=1 if cfg.teacher_group.gpus else 0)(_train_member)
    # The training tasks' progress lines come to this driver through a queue (a small
    # Ray actor), so they are in the job's own output, terminal or not; Ray's forwarding
    # of worker output is off (it would bring every library's chatter with them).
    lines = Queue(actor_options={"num_cpus": 0})
    pending = []
    for m in missing:
        print(f"teacher checkpoint {m.checkpoint} not found: training "
              f"{'the teacher' if len(cfg.members) == 1 else 'member ' + m.name} into it "
              "first", flush=True)
        job = TrainTeacherArgs(data=data, split=cfg.split, rows=rows,
                               max_cardinality=cfg.max_cardinality, data_seed=cfg.seed,
                               checkpoint=m.checkpoint, report=m.checkpoint + "_report.json")
        prefix = "teacher" if len(cfg.members) == 1 else f"teacher {m.name}"
        pending.append(task.remote(train, job, m.teacher, lines, prefix))
    try:
        while pending:
            done, pending = ray.wait(pending, timeout=0.5)
            _drain(lines)
            try:
                ray.get(done)  # a failed training raises here
            except ray.exceptions.RayTaskError as e:
                # bad data or config: the job's one-line error, not the task's traceback
                if isinstance(e.cause, (DataError, ConfigError, CheckpointError)):
                    raise e.cause from None
                raise
        _drain(lines)
    finally:
        ray.kill(lines.actor)


def _drain(lines: Any) -> None:
    """Print the lines the training tasks have queued so far."""
    for line in lines.get_nowait_batch(lines.qsize()):
        print(line, flush=True)


def _train_member(train: TeacherRun, job: TrainTeacherArgs, tcfg: Any, lines: Any,
                  prefix: str) -> None:
    """The Ray task of one member: ``train``, its lines sent to the driver prefixed.
    A task Ray gave no GPU sees none: Ray leaves CUDA_VISIBLE_DEVICES alone for it, and
    the training loop would take GPU 0 of the node (a worker that already used CUDA
    keeps what it saw; Ray's workers for these tasks do not)."""
    import ray
    import torch.distributed as dist
    if not ray.get_gpu_ids():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        train(job, tcfg, echo=lambda msg: lines.put(f"{prefix}: {msg}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
