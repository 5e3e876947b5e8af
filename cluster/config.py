"""Configuration of the online distillation job: frozen, typed, validated up front.

``DistillConfig`` (the whole job) and ``RunOptions`` (how one run is driven) live here;
the tables they hold are in ``cluster.config_stream`` (teacher group, stream) and
``cluster.config_groups`` (student groups, committee members, sweep), imported here so
that ``from recdistill.cluster.config import X`` finds every one of them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from recdistill.cluster.config_groups import (SWEEP_KINDS, GroupConfig, MemberConfig,
                                              SweepConfig, default_groups, default_teachers)
from recdistill.cluster.config_stream import DTYPES, SPLITS, StreamConfig, TeacherGroupConfig
from recdistill.data.errors import ConfigError
from recdistill.teacher.config import TeacherConfig
from recdistill.teacher.outputs import FEATURE_NAMES

__all__ = ["DTYPES", "SPLITS", "SWEEP_KINDS", "DistillConfig", "GroupConfig", "MemberConfig",
           "RunOptions", "StreamConfig", "SweepConfig", "TeacherGroupConfig",
           "default_groups", "default_teachers", "with_seeds"]


@dataclass(frozen=True)
class RunOptions:
    """How one run of the job is driven (what it trains is :class:`DistillConfig`).

    Attributes:
        soft_labels: train from a directory of precomputed soft labels
            (``jobs.precompute``): its readers replace the live teacher ranks.
        state_dir: where the driver checkpoints the run (every group's state, the
            batches each group trained in the current pass, curves); "" for none.
        checkpoint_every: a driver checkpoint every this many labelling calls, and at
            each pass end (0: at pass ends only).
        resume: continue from ``state_dir``'s checkpoint (after the driver died).
        progress: show a progress bar (on a terminal).
        address: the Ray cluster to join ("": start a local one).
        join_timeout_s: the most joining ``address`` may take; then the job fails
            naming it (Ray's own join retries a silent address without end).
        report: the JSON report's path ("": none written).
        plot: the PNG's path ("": beside the report).
        artifacts: where every group's best student is written at the end,
            ``<artifacts>/<group>/`` (``student/artifact.py``); "" for none.
        verbose: keep Ray's own log lines (start-up, token auth) in the output.
        tensorboard: where the driver writes TensorBoard event files, one run per group
            (``cluster/tensorboard.py``); "" for none.
        storage: the run's root (``--storage``, absolute or a URI); its ``teacher/`` is
            the default teacher checkpoint ("": ``teacher_group.checkpoint``'s default).
    """

    soft_labels: str = ""
    state_dir: str = ""
    checkpoint_every: int = 500
    resume: bool = False
    progress: bool = True
    address: str = ""
    join_timeout_s: float = 60.0
    report: str = ""
    plot: str = ""
    artifacts: str = ""
    verbose: bool = False
    tensorboard: str = ""
    storage: str = ""

    def __post_init__(self) -> None:
        if self.checkpoint_every < 0:
            raise ConfigError(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        if self.join_timeout_s <= 0:
            raise ConfigError(f"--join-timeout must be > 0, got {self.join_timeout_s}")
        if self.resume and not self.state_dir:
            raise ConfigError("--resume needs a --state-dir to resume from")



@dataclass(frozen=True)
class DistillConfig:
    """The whole online distillation job.

    Attributes:
        data: ``movielens``, ``synthetic``, ``synthetic-stream`` (training rows generated
            as Ray Data reads them: memory does not grow with ``rows``) or a dataset
            TOML file.
        split: MovieLens split.
        rows: synthetic rows (``synthetic-stream``: training rows).
        max_cardinality: cap on the synthetic features' ids (1e7: Criteo's own sizes).
        passes: passes over train, every group sees every example once per pass.
        seed: seed of the data order (and of the default groups' initialisation).
        teacher: the teacher model (used when the teacher is trained first).
        teacher_group: the teacher's actors and checkpoint.
        stream: the soft-label stream.
        groups: the student groups; names must be unique.
        eval_batch_size: rows per evaluation batch.
        teachers: a committee of teachers (``[[teachers]]``); empty: the one teacher
            of ``teacher`` and ``teacher_group.checkpoint``. See :attr:`members`.
        seeds: every group runs with this many student seeds, as extra groups of the
            same stream (``pred_kd@1`` is ``pred_kd`` with its seed + 1): one teacher
            pass gives the spread over seeds (:func:`with_seeds`).
        kd_guard: judge every KD group against its same-seed baseline (``baseline``,
            or ``baseline@k`` for seed k) on validation: per task, KD goes off where
            the baseline reached the teacher's validation AUC (checked in pass 1 by
            the probe, then after every pass), and a group that trails its baseline by
            more than 0.001 once both stopped improving loses its feature terms
            (``feature_kd``, ``relation_kd``), then, trailing still, its KD on those
            tasks. KD off on a task: the teacher's logits there are replaced by the
            student's own (no KD gradient; the labels still train it); with every task
            off the feature terms stop too. Needs a ``baseline`` group; the report says
            what it did and why (``students[g].kd_guard``).
        kd_guard_probe: the share of pass 1 after which the baselines are evaluated
            once, so a teacher the baseline already beats stops teaching within pass 1
            rather than after it. 0: no probe.
        sweep: a grid of student sizes and KD settings (``[sweep]``), expanded into
            groups by ``cluster.sweep.sweep_groups``; the report adds its Pareto view.
    """

    data: str = "movielens"
    split: str = "user_time"
    rows: int = 100_000
    max_cardinality: int = 100_000
    passes: int = 8
    seed: int = 0
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    teacher_group: TeacherGroupConfig = field(default_factory=TeacherGroupConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    groups: tuple[GroupConfig, ...] = field(default_factory=default_groups)
    eval_batch_size: int = 4096
    teachers: tuple[MemberConfig, ...] = ()
    seeds: int = 1
    kd_guard: bool = True
    kd_guard_probe: float = 0.1
    sweep: SweepConfig | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.kd_guard_probe < 1.0:
            raise ConfigError(f"kd_guard_probe must be in [0, 1), got {self.kd_guard_probe}")
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {self.seeds}")
        names = [m.name for m in self.teachers]
        if len(set(names)) < len(names):
            raise ConfigError(f"teachers: duplicate member names "
                              f"{sorted({n for n in names if names.count(n) > 1})}")
        if len(self.teachers) > 1 and self.teacher_group.refresh_every:
            raise ConfigError("teacher_group.refresh_every needs a single teacher (a "
                              "committee's members would refresh at different times; "
                              "`teachers = []` runs the one teacher)")
        if len(self.teachers) > 1 and self.teacher_group.version.isdigit():
            raise ConfigError(f"teacher_group.version = {self.teacher_group.version}: a "
                              "committee's members have versions of their own; use best "
                              "or latest (or `teachers = []` for the one teacher)")
        if self.passes < 1:
            raise ConfigError(f"passes must be >= 1, got {self.passes}")
        if not self.groups:
            raise ConfigError("groups: at least one student group is needed")
        names = [g.name for g in self.groups]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"groups: duplicate group names {dup}")
        for g in self.groups:
            unknown = set(g.teacher_features) - set(FEATURE_NAMES)
            if unknown:
                key = "adapters" if unknown & set(g.student.adapters.values()) else \
                    "losses (relation_kd's teacher_feature)"
                raise ConfigError(f"groups.{g.name}.{key}: the teacher produces "
                                  f"{list(FEATURE_NAMES)}, not {sorted(unknown)}")
            if self.teacher_group.batch_size < g.replicas:
                raise ConfigError(f"groups.{g.name}.replicas ({g.replicas}) exceeds "
                                  f"teacher_group.batch_size ({self.teacher_group.batch_size})")

    @property
    def _call_batches(self) -> int:
        """Student batches per rank per labelling call: ``stream.batches_per_call``, but
        a full call of every rank must fit the window (``max_inflight``), or the label
        group would never be called."""
        return max(1, min(self.stream.batches_per_call,
                          self.stream.max_inflight // self.teacher_group.ranks))

    @property
    def label_rows(self) -> int:
        """Rows per labelling forward: ``teacher_group.label_batch_size``, lowered to
        what one call of every rank may hold (:attr:`_call_batches` student batches)."""
        tg = self.teacher_group
        return min(tg.label_batch_size, self._call_batches * tg.batch_size)

    @property
    def slices_per_label_batch(self) -> int:
        """Student batches the stream cuts one labelled batch into."""
        return self.label_rows // self.teacher_group.batch_size

    @property
    def label_batches_per_call(self) -> int:
        """Labelled batches per rank per labelling call (each its own stored object):
        a call carries up to ``stream.batches_per_call`` student batches' rows."""
        return max(1, self._call_batches // self.slices_per_label_batch)

    @property
    def student_batches_per_call(self) -> int:
        """Student batches one labelling call of one rank publishes (at most): what the
        stream's window must have room for before the call is made."""
        return self.label_batches_per_call * self.slices_per_label_batch

    @property
    def members(self) -> tuple[MemberConfig, ...]:
        """The teachers that label the stream, checkpoints resolved: the committee's
        members, or one member ``teacher`` (``teacher_group.checkpoint``, ``teacher``).
        The first member leads: it reads the stream, the others label its batches."""
        root = self.teacher_group.checkpoint
        if not self.teachers:
            return (MemberConfig("teacher", root, self.teacher),)
        # the lead's default is the teacher group's checkpoint itself, the others' beside it
        return tuple(m if m.checkpoint else MemberConfig(
            m.name, root if i == 0 else f"{root}-{m.name}", m.teacher)
            for i, m in enumerate(self.teachers))

    @property
    def requested_features(self) -> tuple[str, ...]:
        """Teacher features some group needs; only these travel."""
        return tuple(sorted({f for g in self.groups for f in g.teacher_features}))


def with_seeds(groups: tuple[GroupConfig, ...], seeds: int) -> tuple[GroupConfig, ...]:
    """Each group, then its copies ``<name>@k`` seeded ``seed + k`` for k < ``seeds``
    (groups already named ``@k`` are kept as they are)."""
    out = list(groups)
    for k in range(1, seeds):
        out += [replace(g, student=replace(g.student, name=f"{g.name}@{k}",
                                           seed=g.student.seed + k))
                for g in groups if "@" not in g.name]
    return tuple(out)
