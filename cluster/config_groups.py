"""The student side of the job's config and the committee: student groups
(``[[groups]]``), committee members (``[[teachers]]``), the ``[sweep]`` grid and the
default groups and committee. Re-exported by ``cluster.config``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from recdistill.cluster.config_stream import check_gpus, check_resources
from recdistill.data.errors import ConfigError
from recdistill.student.config import LossTerm, StudentConfig
from recdistill.teacher.config import TeacherConfig

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
        gpus: GPUs reserved per replica actor: 0 (the default) trains on CPU with
            gloo; a replica given a GPU trains, evaluates and keeps its tables there
            (FBGEMM's GPU kernels, the fused optimizer ``optimizer`` names, Adam
            included), its group on nccl. Replicas of one group never share a GPU, so
            a fraction needs ``replicas = 1``.
        resources: custom Ray resources reserved per replica (``{student_node = 1}``):
            the replicas run only on nodes that declare them.
        checkpoint_timeout_s: how long a sharded group's checkpoint I/O (DCP save and
            load and their barriers, on a gloo group of their own) may wait on a peer
            before it fails naming the call and the replica; training's collectives
            keep 30 s, so a dead peer is found fast. The driver waits this long plus a
            minute for a save.
        snapshot_every: every this many acknowledged batches (and at the start and each
            pass end) the driver keeps a snapshot of the group's state in the object
            store; if every replica dies, the group restarts from it and the batches
            trained since are delivered again. 0: no snapshots (a group with no
            survivor ends the job).
        patience: a group whose validation AUC (first task) has not improved for this
            many passes stops: it keeps its best student and leaves the stream, the
            other groups go on (and the run ends once every group stopped); the report
            says after which pass (``students[g].stopped_after_pass``). 0: it trains
            every pass.
    """

    student: StudentConfig
    replicas: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    checkpoint_timeout_s: float = 600.0
    snapshot_every: int = 50
    patience: int = 0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"groups.{self.student.name}.replicas must be >= 1, got "
                              f"{self.replicas}")
        if self.cpus < 0:
            raise ConfigError(f"groups.{self.student.name}.cpus must be >= 0")
        check_gpus(f"groups.{self.student.name}.gpus", self.gpus, self.replicas, "replicas")
        check_resources(f"groups.{self.student.name}.resources", self.resources)
        if self.checkpoint_timeout_s <= 0:
            raise ConfigError(f"groups.{self.student.name}.checkpoint_timeout_s must be > 0, "
                              f"got {self.checkpoint_timeout_s:g}")
        if self.snapshot_every < 0:
            raise ConfigError(f"groups.{self.student.name}.snapshot_every must be >= 0, "
                              f"got {self.snapshot_every}")
        if self.patience < 0:
            raise ConfigError(f"groups.{self.student.name}.patience must be >= 0, got "
                              f"{self.patience}")

    @property
    def name(self) -> str:
        return self.student.name

    @property
    def teacher_features(self) -> tuple[str, ...]:
        """The teacher features this group's adapters and relation terms read."""
        named = {t.params.get("teacher_feature", "last_hidden")
                 for t in self.student.losses if t.name == "relation_kd"}
        return tuple(sorted(set(self.student.adapters.values()) | named))


def default_groups(seed: int = 0) -> tuple[GroupConfig, ...]:
    """baseline (no KD), pred_kd, feat_kd, multitask_kd, listwise_kd: the comparison of
    the results (docs/results.md).

    Every group has the baseline's learning rate, its best of 2.5e-3, 5e-3 and 1e-2 on
    MovieLens validation; each KD setting is the best on validation of the ones tried
    (docs/results.md, "How the defaults were chosen")."""
    # Plain tables under dense Adam: on MovieLens' small tables it trained the baseline
    # best (sharded row-wise Adagrad lost test AUC on `like`: docs/results.md, "Sharded
    # students"); a group that does not say uses the sharded path.
    common = dict(embedding_dim=8, hidden=(64, 32), lr=5e-3, seed=seed, sharding="none")
    return (
        GroupConfig(StudentConfig(name="baseline", losses=(LossTerm("hard_label"),),
                                  **common)),
        GroupConfig(StudentConfig(name="pred_kd", losses=(
            LossTerm("hard_label", 0.2),
            LossTerm("prediction_kd", 0.8, {"temperature": 1.0})), **common)),
        # Relation KD on the committee's representation (every member's last_hidden):
        # of the feature terms tried (FitNets hints, relation KD at weights 1, 3, 10:
        # jobs/configs/tune_feat.toml), the best on validation of MovieLens, id_heavy
        # and dense_tabular (a tie there with weight 3).
        GroupConfig(StudentConfig(name="feat_kd", losses=(
            LossTerm("hard_label", 1.0), LossTerm("relation_kd", 10.0)), **common)),
        # Per-task KD with learned task weights; `label_tasks = ["like"]` in a config
        # would make it learn the other tasks from the teacher alone.
        GroupConfig(StudentConfig(name="multitask_kd", losses=(
            LossTerm("multitask_kd", 1.0, {"temperature": 1.0, "alpha": 0.8,
                                           "uncertainty": True}),), **common)),
        # pred_kd's objective, and the teacher's order within each user's rows of a
        # batch (CLID); run only on data with a group_key (keyed_groups)
        GroupConfig(StudentConfig(name="listwise_kd", losses=(
            LossTerm("hard_label", 0.2),
            LossTerm("prediction_kd", 0.8, {"temperature": 1.0}),
            LossTerm("listwise_kd", 1.0)), **common)),
    )


def keyed_groups(groups: tuple[GroupConfig, ...], group_key: str, seed: int = 0
                 ) -> tuple[tuple[GroupConfig, ...], list[str]]:
    """The groups without the default ``listwise_kd`` group (and its seed copies) when
    the dataset has no ``group_key`` to make lists of, and the names dropped; a group
    of a config's own that asks for listwise KD without a key is kept, to fail naming
    itself."""
    if group_key:
        return groups, []
    default = next(g for g in default_groups(seed) if g.name == "listwise_kd")
    dropped = [g.name for g in groups if g.name.partition("@")[0] == "listwise_kd"
               and g.student.losses == default.student.losses]
    return tuple(g for g in groups if g.name not in dropped), dropped


def default_teachers(base: TeacherConfig) -> tuple[MemberConfig, ...]:
    """The job's default committee of three architectures: the DCN-v2 teacher
    ``base``; the same model that also reads the privileged features (on a dataset
    without any, another seed of it); and a DLRM-style model (dot interactions). Chosen
    on MovieLens-100k validation AUC among committees of 2-5 of DCN seeds, DCN with
    privileged features, DLRM and DeepFM members (docs/results.md, "The teacher
    committee")."""
    return (MemberConfig("dcn", teacher=base),
            MemberConfig("dcn_priv", teacher=replace(base, use_privileged=True,
                                                     seed=base.seed + 3)),
            MemberConfig("dlrm", teacher=replace(base, interaction="dot",
                                                 seed=base.seed + 5)))


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

