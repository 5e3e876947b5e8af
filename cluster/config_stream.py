"""The teacher side of the job's config: the teacher group (``[teacher_group]``) and the
soft-label stream (``[stream]``). Re-exported by ``cluster.config``."""

from __future__ import annotations

from dataclasses import dataclass, field

from recdistill.data.errors import ConfigError
from recdistill.teacher.config import TABLE_DTYPES

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
            driver's CPU per batch is mostly the cost of its actor calls, so this
            divides it (measured in BENCHMARKS.md, ``pipeline``); the window still
            bounds what is in flight (a call asks for no more than ``max_inflight``
            allows).
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


def check_resources(key: str, resources: dict[str, float]) -> None:
    """Custom Ray resources per actor: names other than Ray's own, amounts >= 0."""
    for name, amount in resources.items():
        if name in ("CPU", "GPU", "memory", "object_store_memory"):
            raise ConfigError(f"{key}.{name}: set cpus / gpus instead; resources are the "
                              "custom ones nodes declare (ray start --resources)")
        if not isinstance(amount, (int, float)) or amount < 0:
            raise ConfigError(f"{key}.{name} must be a number >= 0, got {amount!r}")


def check_gpus(key: str, gpus: float, world: int, what: str) -> None:
    """``gpus`` per actor of a group of ``world``: >= 0, and whole where the group's
    actors are more than one (two of one nccl group cannot share a device)."""
    if gpus < 0:
        raise ConfigError(f"{key} must be >= 0, got {gpus:g}")
    if world > 1 and gpus != int(gpus):
        raise ConfigError(f"{key} = {gpus:g}: {world} {what} would share a GPU, which "
                          f"nccl cannot; give each a whole GPU or set {what} = 1")


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
            batches.
        prefetch: each pass's input starts once the pass before it has yielded its
            first labelling call, while that pass is being labelled (its shuffle task with
            ``split = rows``; with ``stream``, its stream, read and decoded ahead by a
            thread in every rank), so no rank waits for a pass to start; false: a pass's
            input starts when the pass does, and a batch is read when it is labelled.
        calls_in_flight: labelling calls the driver keeps queued on every rank: 2 (the
            default) lets a rank start its next call while the driver handles the last
            one's batches, instead of idling for that round trip; 1: one call at a time.
            It bounds what is labelled ahead of the stream: a call is made only if the
            window (``stream.max_inflight``) has room for it and the calls already in
            flight.
        split: how the ranks get their shares of a pass of an in-memory table:
            ``rows``: one task per pass shuffles the table (Ray Data's seeded
            ``random_shuffle``) into the object store and every rank reads its range of
            rows from there without copying; ``stream``: Ray Data's ``streaming_split``,
            whose coordinator is a new actor every pass, a process started per pass that
            costs several times the CPU of ``rows``' shuffle task and competes with the
            teacher for the cores (measured in BENCHMARKS.md, ``input``). Both give
            every rank the same rows in the same batches. A streamed dataset
            (``synthetic-stream``, a dataset TOML read as a stream) gives each rank a
            Ray Data stream of its rows of the pass: its passes are too large to hold.
        read_ahead_mib: what a streamed pass's readers may hold in the object store
            ahead of the ranks (Ray Data's limit for the pass, over all ranks). Ray
            Data's own default is a share of the whole store, which a long pass fills;
            768 MiB kept the ranks fed at 1e6 and 1e7 rows where 512 halved the pass's
            speed (BENCHMARKS.md, ``ingest``).
        shuffle_buffer_rows: a streamed pass's rows are shuffled in each rank through
            a buffer of this many rows (Ray Data's local shuffle, seeded by the pass),
            mixing rows across chunks; 0: a pass shuffles its chunk order and the rows
            within each chunk only. A replay of the pass then reads the batches it
            skips (without labelling them), as a batch's rows depend on the buffer.
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
            labelling calls (up to ``stream.batches_per_call`` batches
            per rank each) and load it between batches without stopping the stream
            (0: never; a root of versions only).
        train_if_missing: train the teacher (``jobs.train_teacher``) when the checkpoint
            does not exist; otherwise a missing checkpoint is an error.
        checkpoint_timeout_s: how long a rank's checkpoint load (DCP's collectives, on a
            gloo group of their own) may wait on the other ranks before it fails naming
            the rank and the checkpoint; labelling's collectives keep 30 s. The driver
            waits this long plus a minute for a setup or reload.
        cpus: CPUs reserved per teacher actor.
        gpus: GPUs reserved per teacher actor (Ray's ``num_gpus``, in the placement
            bundles too): 0 (the default) runs the ranks on CPU with gloo; a rank given
            a GPU runs on it, its group on nccl, with FBGEMM's GPU kernels. Ranks of one
            group never share a GPU (nccl cannot), so a fraction needs ``ranks = 1``.
        resources: custom Ray resources reserved per rank (``{teacher_node = 1}``): the
            ranks run only on nodes that declare them (declared at ``ray start``), in
            the placement bundles too.
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
    read_ahead_mib: int = 768
    shuffle_buffer_rows: int = 0
    table_dtype: str = "fp32"
    checkpoint: str = "runs/distill/teacher"
    version: str = "best"
    refresh_every: int = 0
    train_if_missing: bool = True
    checkpoint_timeout_s: float = 600.0
    cpus: float = 1.0
    gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
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
        if self.read_ahead_mib < 64:
            raise ConfigError("teacher_group.read_ahead_mib must be >= 64 (a few chunks), "
                              f"got {self.read_ahead_mib}")
        if self.shuffle_buffer_rows < 0:
            raise ConfigError("teacher_group.shuffle_buffer_rows must be >= 0, got "
                              f"{self.shuffle_buffer_rows}")
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
        if self.checkpoint_timeout_s <= 0:
            raise ConfigError("teacher_group.checkpoint_timeout_s must be > 0, got "
                              f"{self.checkpoint_timeout_s:g}")
        check_gpus("teacher_group.gpus", self.gpus, self.ranks, "ranks")
        check_resources("teacher_group.resources", self.resources)

