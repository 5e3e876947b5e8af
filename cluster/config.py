"""Configuration of the online distillation job: frozen, typed, validated up front."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from recdistill.data.errors import ConfigError
from recdistill.student.config import LossTerm, StudentConfig
from recdistill.teacher.config import TABLE_DTYPES, TeacherConfig
from recdistill.teacher.outputs import FEATURE_NAMES

DTYPES = ("float16", "bfloat16", "float32")
SPLITS = ("rows", "stream")  # teacher_group.split


@dataclass(frozen=True)
class StreamConfig:
    """How soft labels flow from the teacher group to the student groups.

    Attributes:
        max_inflight: most labelled batches a student group may have unacknowledged
            (queued or being trained). It bounds object-store memory: each batch stays
            in the store until every group has acknowledged it. The teachers wait when
            a group is this far behind.
        logit_dtype: dtype the teacher's logits travel in.
        feature_dtype: dtype the teacher's hidden features travel in.
        batches_per_call: most batches one actor call carries: each teacher rank labels
            up to this many per call, each replica trains up to this many per call. The
            driver's CPU per batch is mostly its actor calls (~0.8 ms each), so this
            divides it; the window still bounds what is in flight (a call asks for no
            more than ``max_inflight`` allows).
    """

    max_inflight: int = 32
    logit_dtype: str = "float16"
    feature_dtype: str = "float16"
    batches_per_call: int = 8

    def __post_init__(self) -> None:
        if self.max_inflight < 1:
            raise ConfigError(f"stream.max_inflight must be >= 1, got {self.max_inflight}")
        if self.batches_per_call < 1:
            raise ConfigError(f"stream.batches_per_call must be >= 1, got "
                              f"{self.batches_per_call}")
        for key in ("logit_dtype", "feature_dtype"):
            if getattr(self, key) not in DTYPES:
                raise ConfigError(f"stream.{key}: unknown dtype {getattr(self, key)!r}; "
                                  f"expected one of {DTYPES}")


@dataclass(frozen=True)
class TeacherGroupConfig:
    """The teacher as a group of Ray actors.

    Attributes:
        ranks: K actors forming one torch.distributed group (one shard each).
        batch_size: examples per student batch: what the stream hands a group for one
            optimizer step, and what ``stream.max_inflight`` counts.
        label_batch_size: examples each rank labels per forward, a multiple of
            ``batch_size``; the stream slices every labelled batch into student
            batches by row ranges (the slices share the one stored batch, nothing is
            copied). Larger forwards amortise the teacher's per-batch and per-call
            costs. At most ``stream.batches_per_call`` student batches and the rank's
            share of ``stream.max_inflight`` (a larger value is lowered to that: see
            :attr:`DistillConfig.label_rows`). ``batch_size`` labels in student-sized
            batches (the behaviour before this setting existed).
        prefetch: each pass's input starts once the pass before it has yielded its
            first round, while that pass is being labelled (its shuffle task with
            ``split = rows``; with ``stream``, its stream, read and decoded ahead by a
            thread in every rank), so no rank waits for a pass to start; false: a pass's
            input starts when the pass does, and a batch is read when it is labelled.
        calls_in_flight: labelling calls the driver keeps queued on every rank: 2 (the
            default) lets a rank start its next call while the driver handles the last
            one's batches, instead of idling for that round trip; 1 is the behaviour
            before. It bounds what is labelled ahead of the stream: a call is made only
            if the window (``stream.max_inflight``) has room for it and the calls
            already in flight.
        split: how the ranks get their shares of a pass of an in-memory table:
            ``rows``: one task per pass shuffles the table (Ray Data's seeded
            ``random_shuffle``) into the object store and every rank reads its range of
            rows from there without copying (~0.3 s of CPU per pass on MovieLens-100k);
            ``stream``: Ray Data's ``streaming_split``, whose coordinator is a new actor
            every pass (~1.5 s of CPU per pass on a 2-core machine; the behaviour
            before ``rows`` existed). Both give every rank the same rows in the same
            batches. A streamed dataset (``synthetic-stream``) always uses ``stream``:
            its passes are too large to hold.
        table_dtype: the embedding tables the teacher labels from: ``fp32`` (as
            trained), or quantized after loading to ``fp16``, ``int8`` or ``int4``
            (FBGEMM's inference kernels, per row scale and bias for the integer types;
            the tables stay sharded over the ranks, the dense tower is unchanged). A
            labelling teacher never trains, so this costs accuracy only through the
            quantization error (the labelling benchmark reports it).
        checkpoint: the teacher checkpoint: a training run's root of versions (as
            ``jobs.train_teacher`` writes it) or one version's directory; trained
            first if missing.
        version: which version of a root to load: ``best`` (by validation AUC),
            ``latest``, or a version number (the training step that wrote it).
        refresh_every: check the checkpoint root for a newer ``version`` every this many
            teacher rounds (labelling calls: up to ``stream.batches_per_call`` batches
            per rank each) and load it between batches without stopping the stream
            (0: never; a root of versions only).
        train_if_missing: train the teacher (``jobs.train_teacher``) when the checkpoint
            does not exist; otherwise a missing checkpoint is an error.
        cpus: CPUs reserved per teacher actor.
        placement: ``""`` (Ray places the ranks), ``spread`` (a placement group
            spreading them over nodes where it can) or ``strict_spread`` (one node per
            rank, or the job waits); a re-formed group gets a new placement group, so
            with ``spread`` it fits on the nodes that remain.
    """

    ranks: int = 1
    batch_size: int = 512
    label_batch_size: int = 4096
    prefetch: bool = True
    calls_in_flight: int = 2
    split: str = "rows"
    table_dtype: str = "fp32"
    checkpoint: str = "runs/distill/teacher"
    version: str = "best"
    refresh_every: int = 0
    train_if_missing: bool = True
    cpus: float = 1.0
    placement: str = ""

    def __post_init__(self) -> None:
        if self.placement not in ("", "spread", "strict_spread"):
            raise ConfigError("teacher_group.placement must be '', 'spread' or "
                              f"'strict_spread', got {self.placement!r}")
        if self.ranks < 1:
            raise ConfigError(f"teacher_group.ranks must be >= 1, got {self.ranks}")
        if self.batch_size < 1:
            raise ConfigError(f"teacher_group.batch_size must be >= 1, got {self.batch_size}")
        if self.calls_in_flight < 1:
            raise ConfigError("teacher_group.calls_in_flight must be >= 1, got "
                              f"{self.calls_in_flight}")
        if self.label_batch_size < self.batch_size or self.label_batch_size % self.batch_size:
            raise ConfigError(f"teacher_group.label_batch_size ({self.label_batch_size}) "
                              "must be a multiple of teacher_group.batch_size "
                              f"({self.batch_size})")
        if self.split not in SPLITS:
            raise ConfigError(f"teacher_group.split must be one of {SPLITS}, got "
                              f"{self.split!r}")
        if self.table_dtype not in TABLE_DTYPES:
            raise ConfigError(f"teacher_group.table_dtype: unknown {self.table_dtype!r}; "
                              f"expected one of {TABLE_DTYPES}")
        if not self.checkpoint:
            raise ConfigError("teacher_group.checkpoint must name a directory")
        if self.refresh_every < 0:
            raise ConfigError(f"teacher_group.refresh_every must be >= 0, got "
                              f"{self.refresh_every}")
        if self.refresh_every and self.version.isdigit():
            raise ConfigError("teacher_group.refresh_every needs version = 'best' or "
                              f"'latest' (a fixed version {self.version} never changes)")
        if self.version not in ("best", "latest") and not self.version.isdigit():
            raise ConfigError("teacher_group.version must be best, latest or a version "
                              f"number, got {self.version!r}")
        if self.cpus < 0:
            raise ConfigError(f"teacher_group.cpus must be >= 0, got {self.cpus}")


@dataclass(frozen=True)
class MemberConfig:
    """One teacher of a committee (``[[teachers]]``).

    Attributes:
        name: the member's name (its actors are ``teacher-<name>-<rank>``).
        checkpoint: its checkpoint root or version directory; empty: the teacher
            group's checkpoint for the first member, that path with ``-<name>``
            appended for the others.
        teacher: the model it is trained with when its checkpoint is missing (the
            ``[teacher]`` table with the member's own keys over it).
    """

    name: str
    checkpoint: str = ""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"teachers: member name {self.name!r} must be letters, "
                              "digits, '-' or '_'")


@dataclass(frozen=True)
class GroupConfig:
    """One student group: a student model trained data-parallel by ``replicas`` actors.

    Attributes:
        student: the student model and its objective (its name is the group's name).
        replicas: M actors training it with DDP; each takes 1/M of every batch's rows.
        cpus: CPUs reserved per replica actor.
        snapshot_every: every this many acknowledged batches (and at the start and each
            pass end) the driver keeps a snapshot of the group's state in the object
            store; if every replica dies, the group restarts from it and the batches
            trained since are delivered again. 0: no snapshots (a group with no
            survivor ends the job).
    """

    student: StudentConfig
    replicas: int = 1
    cpus: float = 1.0
    snapshot_every: int = 50

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"groups.{self.student.name}.replicas must be >= 1, got "
                              f"{self.replicas}")
        if self.cpus < 0:
            raise ConfigError(f"groups.{self.student.name}.cpus must be >= 0")
        if self.snapshot_every < 0:
            raise ConfigError(f"groups.{self.student.name}.snapshot_every must be >= 0, "
                              f"got {self.snapshot_every}")

    @property
    def name(self) -> str:
        return self.student.name

    @property
    def teacher_features(self) -> tuple[str, ...]:
        """The teacher features this group's adapters read."""
        return tuple(sorted(set(self.student.adapters.values())))


def default_groups(seed: int = 0) -> tuple[GroupConfig, ...]:
    """baseline (no KD), pred_kd, feat_kd, multitask_kd: the README's comparison.

    Every group has the baseline's learning rate, its best of 2.5e-3, 5e-3 and 1e-2 on
    MovieLens validation; each KD setting is the best on validation of the ones tried
    (README, "How the defaults were chosen")."""
    # Plain tables under dense Adam: on MovieLens' small tables it trained the baseline
    # best (sharded row-wise Adagrad: -0.0064 test AUC on `like`, README "Sharded
    # students"); a group that does not say uses the sharded path.
    common = dict(embedding_dim=8, hidden=(64, 32), lr=5e-3, seed=seed, sharding="none")
    return (
        GroupConfig(StudentConfig(name="baseline", losses=(LossTerm("hard_label"),),
                                  **common)),
        GroupConfig(StudentConfig(name="pred_kd", losses=(
            LossTerm("hard_label", 0.2),
            LossTerm("prediction_kd", 0.8, {"temperature": 1.0})), **common)),
        GroupConfig(StudentConfig(name="feat_kd", losses=(
            LossTerm("hard_label", 1.0), LossTerm("feature_kd", 0.3, {"metric": "mse"})),
            adapters={"last_hidden": "last_hidden"}, **common)),
        # Per-task KD with learned task weights; `label_tasks = ["like"]` in a config
        # would make it learn the other tasks from the teacher alone.
        GroupConfig(StudentConfig(name="multitask_kd", losses=(
            LossTerm("multitask_kd", 1.0, {"temperature": 1.0, "alpha": 0.8,
                                           "uncertainty": True}),), **common)),
    )


def default_teachers(base: TeacherConfig) -> tuple[MemberConfig, ...]:
    """The job's default committee of three architectures: the DCN-v2 teacher
    ``base``; the same model that also reads the privileged features (on a dataset
    without any, another seed of it); and a DLRM-style model (dot interactions). Chosen
    on MovieLens-100k validation AUC among committees of 2-5 of DCN seeds, DCN with
    privileged features, DLRM and DeepFM members (README, "The teacher committee")."""
    return (MemberConfig("dcn", teacher=base),
            MemberConfig("dcn_priv", teacher=replace(base, use_privileged=True,
                                                     seed=base.seed + 3)),
            MemberConfig("dlrm", teacher=replace(base, interaction="dot",
                                                 seed=base.seed + 5)))


@dataclass(frozen=True)
class RunOptions:
    """How one run of the job is driven (what it trains is :class:`DistillConfig`).

    Attributes:
        soft_labels: train from a directory of precomputed soft labels
            (``jobs.precompute``): its readers replace the live teacher ranks.
        state_dir: where the driver checkpoints the run (every group's state, the
            example ids each group trained in the current pass, curves); "" for none.
        checkpoint_every: a driver checkpoint every this many labelling rounds, and at
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

    def __post_init__(self) -> None:
        if self.checkpoint_every < 0:
            raise ConfigError(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        if self.join_timeout_s <= 0:
            raise ConfigError(f"--join-timeout must be > 0, got {self.join_timeout_s}")
        if self.resume and not self.state_dir:
            raise ConfigError("--resume needs a --state-dir to resume from")


SWEEP_KINDS = ("prediction_kd", "multitask_kd")


@dataclass(frozen=True)
class SweepConfig:
    """The grid of a ``[sweep]`` table (expanded by ``cluster.sweep.sweep_groups``).

    Attributes:
        embedding_dim: student embedding widths.
        hidden: student MLP shapes (each a list of widths).
        loss: KD kinds: ``prediction_kd`` (``1 - kd_weight`` hard labels plus
            ``kd_weight`` prediction KD) or ``multitask_kd`` (``alpha = kd_weight``,
            learned task weights).
        kd_weight: KD weights.
        temperature: KD temperatures.
        lr: every student's learning rate (the no-KD ones' too).
        seed: every student's seed.
        sharding: every student's ``sharding`` (``StudentConfig``).
    """

    embedding_dim: tuple[int, ...] = (4, 8, 16)
    hidden: tuple[tuple[int, ...], ...] = ((64, 32),)
    loss: tuple[str, ...] = ("prediction_kd",)
    kd_weight: tuple[float, ...] = (0.8,)
    temperature: tuple[float, ...] = (1.0,)
    lr: float = 5e-3
    seed: int = 0
    sharding: str = "row_wise"

    def __post_init__(self) -> None:
        for key in ("embedding_dim", "hidden", "loss", "kd_weight", "temperature"):
            if not getattr(self, key):
                raise ConfigError(f"sweep.{key}: give at least one value")
        bad = [k for k in self.loss if k not in SWEEP_KINDS]
        if bad:
            raise ConfigError(f"sweep.loss: unknown {bad}; a sweep knows {list(SWEEP_KINDS)}")
        if any(not 0 < w <= 1 for w in self.kd_weight):
            raise ConfigError(f"sweep.kd_weight: values must be in (0, 1], got "
                              f"{list(self.kd_weight)}")


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
        kd_guard: after each pass, turn KD off, per task, in every KD group whose
            baseline (``baseline``, or ``baseline@k`` for seed k) has reached the
            teacher's validation AUC on that task: the teacher's logits there are
            replaced by the student's own (no KD gradient; the labels still train it),
            and with every task off feature KD stops too. Needs a ``baseline`` group;
            the report says what it did (``students[g].kd_guard``).
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
    sweep: SweepConfig | None = None

    def __post_init__(self) -> None:
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
                raise ConfigError(f"groups.{g.name}.adapters: the teacher produces "
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
