"""Feature schema, example tables and batches.

A dataset split is held as an :class:`ExampleTable`: columnar numpy arrays, one ragged
(offsets, values) pair per sparse feature. Batches are cut from it as :class:`Batch`
(torch tensors + a TorchRec ``KeyedJaggedTensor``) for the models, or as
:class:`BatchArrays` (plain numpy) for transport through an object store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator, Protocol

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

OOV_ID = 0  # id 0 of every categorical feature: unseen value, padding, missing


@dataclass(frozen=True)
class SparseFeature:
    """One categorical feature.

    Attributes:
        name: feature (KeyedJaggedTensor key) name.
        cardinality: number of ids, OOV id 0 included; ids lie in ``[0, cardinality)``.
        multi_valued: True for a bag of ids per example (genres, history).
        table: name of the embedding table it is looked up in; features naming the
            same table share it (``user_history`` looks up the ``item_id`` table).
            Defaults to the feature's own name.
    """

    name: str
    cardinality: int
    multi_valued: bool = False
    table: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("SparseFeature.name must be non-empty")
        if self.cardinality < 1:
            raise ValueError(f"SparseFeature {self.name!r}: cardinality must be >= 1, "
                             f"got {self.cardinality}")
        if not self.table:
            object.__setattr__(self, "table", self.name)


@dataclass(frozen=True)
class FeatureSpec:
    """The schema of a dataset.

    Attributes:
        dense: names of the float features, in column order of ``Batch.dense``.
        sparse: the categorical features, in KeyedJaggedTensor key order.
        tasks: binary label names, in column order of ``Batch.labels``.
        privileged: sparse features only the teacher may use (privileged-feature
            distillation, Xu et al. KDD 2020); students never see them.
        group_key: the sparse feature whose value groups rows into the lists a
            recommender ranks (the user, or the request): GAUC and NDCG@10 are computed
            per value, and ``listwise_kd`` normalises within it. "": none.
    """

    dense: tuple[str, ...]
    sparse: tuple[SparseFeature, ...]
    tasks: tuple[str, ...]
    privileged: tuple[str, ...] = ()
    group_key: str = ""

    def __post_init__(self) -> None:
        names = [f.name for f in self.sparse]
        for kind, seq in (("dense", list(self.dense)), ("sparse", names),
                          ("tasks", list(self.tasks))):
            dup = {n for n in seq if seq.count(n) > 1}
            if dup:
                raise ValueError(f"FeatureSpec.{kind}: duplicate names {sorted(dup)}")
        if not self.tasks:
            raise ValueError("FeatureSpec.tasks: at least one task is needed")
        unknown = set(self.privileged) - set(names)
        if unknown:
            raise ValueError(f"FeatureSpec.privileged: not sparse features {sorted(unknown)}")
        if self.group_key and self.group_key not in names:
            raise ValueError(f"FeatureSpec.group_key: {self.group_key!r} is not a sparse "
                             f"feature; they are {names}")
        tables: dict[str, int] = {}
        for f in self.sparse:
            if tables.setdefault(f.table, f.cardinality) != f.cardinality:
                raise ValueError(f"FeatureSpec: features sharing table {f.table!r} "
                                 "must have one cardinality")

    @property
    def sparse_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.sparse)

    def feature(self, name: str) -> SparseFeature:
        for f in self.sparse:
            if f.name == name:
                return f
        raise KeyError(f"unknown sparse feature {name!r}; known: {list(self.sparse_names)}")

    def without(self, names: tuple[str, ...] | list[str]) -> FeatureSpec:
        """The same schema minus some sparse features (e.g. the privileged ones)."""
        drop = set(names)
        for n in drop:
            self.feature(n)  # raises on an unknown name
        return replace(self, sparse=tuple(f for f in self.sparse if f.name not in drop),
                       privileged=tuple(p for p in self.privileged if p not in drop))

    def student_view(self) -> FeatureSpec:
        """What a student may see: every feature but the privileged ones."""
        return self.without(self.privileged)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (checkpoints carry the schema they were trained on)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(dense=tuple(d["dense"]),
                   sparse=tuple(SparseFeature(**f) for f in d["sparse"]),
                   tasks=tuple(d["tasks"]), privileged=tuple(d.get("privileged", ())))


@dataclass
class BatchArrays:
    """The numpy form of a :class:`Batch`, for the object store (zero-copy reads).

    Attributes:
        dense: float32 [B, D].
        labels: float32 [B, T].
        ids: int64 [B] example ids.
        keys: sparse feature names, KeyedJaggedTensor key order.
        values: int64 [nnz] ids of all features, key-major.
        lengths: int32 [F * B] bag sizes, key-major.
    """

    dense: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    keys: tuple[str, ...]
    values: np.ndarray
    lengths: np.ndarray

    @classmethod
    def key_major(cls, dense: np.ndarray, labels: np.ndarray, ids: np.ndarray,
                  keys: tuple[str, ...], lengths: list[np.ndarray],
                  values: list[np.ndarray]) -> BatchArrays:
        """A batch from each key's bag lengths and values (in ``keys``' order)."""
        return cls(dense, labels, ids, keys,
                   np.concatenate(values).astype(np.int64, copy=False) if values
                   else np.zeros(0, np.int64),
                   np.concatenate(lengths).astype(np.int32, copy=False) if lengths
                   else np.zeros(0, np.int32))

    @property
    def batch_size(self) -> int:
        return int(self.ids.shape[0])

    def select(self, keys: tuple[str, ...]) -> BatchArrays:
        """The same rows with only the sparse features ``keys`` (a subset of ``keys``,
        in the order given)."""
        if keys == self.keys:
            return self
        b = self.batch_size
        per_key = self.lengths.reshape(len(self.keys), b)
        ends = np.cumsum(per_key.sum(axis=1, dtype=np.int64))
        starts = ends - per_key.sum(axis=1, dtype=np.int64)
        index = {k: i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in index]
        if missing:
            raise KeyError(f"batch has no sparse features {missing}; it has {self.keys}")
        pick = [index[k] for k in keys]
        return BatchArrays(self.dense, self.labels, self.ids, tuple(keys),
                           np.concatenate([self.values[starts[i]:ends[i]] for i in pick])
                           if pick else np.zeros(0, np.int64),
                           per_key[pick].reshape(-1) if pick else np.zeros(0, np.int32))

    def to_table(self) -> ExampleTable:
        """The batch as a table (to cut it into row slices, e.g. one per replica)."""
        b = self.batch_size
        per_key = self.lengths.reshape(len(self.keys), b) if self.keys else \
            np.zeros((0, b), np.int32)
        sparse, start = {}, 0
        for k, lengths in zip(self.keys, per_key):
            offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
            sparse[k] = (offsets, self.values[start:start + offsets[-1]])
            start += int(offsets[-1])
        return ExampleTable(self.dense, self.labels, self.ids, sparse)

    def to_batch(self) -> Batch:
        # torch.from_numpy refuses read-only arrays (ray.get returns those) only with a
        # warning; copy the small ones, they are what the model writes through anyway.
        return Batch(
            dense=torch.from_numpy(np.array(self.dense, dtype=np.float32)),
            sparse=KeyedJaggedTensor.from_lengths_sync(
                keys=list(self.keys),
                values=torch.from_numpy(np.array(self.values, dtype=np.int64)),
                lengths=torch.from_numpy(np.array(self.lengths, dtype=np.int32)),
            ),
            labels=torch.from_numpy(np.array(self.labels, dtype=np.float32)),
            ids=torch.from_numpy(np.array(self.ids, dtype=np.int64)),
        )


@dataclass
class Batch:
    """A batch of examples as the models take it.

    Attributes:
        dense: float32 [B, D] normalised dense features.
        sparse: KeyedJaggedTensor, one key per sparse feature, stride B.
        labels: float32 [B, T] 0/1 labels, one column per task.
        ids: int64 [B] example ids, unique within a dataset.
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: torch.Tensor
    ids: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.ids.shape[0])

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        """On ``device`` (from pinned memory, ``non_blocking`` copies overlap)."""
        return Batch(self.dense.to(device, non_blocking=non_blocking),
                     self.sparse.to(device, non_blocking=non_blocking),
                     self.labels.to(device, non_blocking=non_blocking),
                     self.ids.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        return Batch(self.dense.pin_memory(), self.sparse.pin_memory(),
                     self.labels.pin_memory(), self.ids.pin_memory())

    def to_numpy(self) -> BatchArrays:
        return BatchArrays(
            dense=self.dense.cpu().numpy(),
            labels=self.labels.cpu().numpy(),
            ids=self.ids.cpu().numpy(),
            keys=tuple(self.sparse.keys()),
            values=self.sparse.values().cpu().numpy().astype(np.int64, copy=False),
            lengths=self.sparse.lengths().cpu().numpy().astype(np.int32, copy=False),
        )


def pass_seed(seed: int, pass_index: int) -> int:
    """The shuffle seed of pass (or epoch) ``pass_index`` of a run seeded ``seed``."""
    return seed * 1000 + pass_index


def _gather_ragged(offsets: np.ndarray, values: np.ndarray,
                   rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``rows`` of a ragged column -> (lengths [R], values [sum lengths])."""
    starts = offsets[rows]
    lengths = offsets[rows + 1] - starts
    total = int(lengths.sum())
    if total == 0:
        return lengths, values[:0]
    # Position of every output value in `values`: its row's start plus its rank in the row.
    row_base = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return lengths, values[row_base + np.arange(total)]


EVAL_BLOCK_ROWS = 65_536  # rows scored at a time by evaluation, as a file's chunk


class EvalSplit(Protocol):
    """A split evaluation scores one block at a time: an :class:`ExampleTable` (blocks of
    :data:`EVAL_BLOCK_ROWS` rows) or a ``data.file_stream.FileStream`` (a block per
    chunk of its files)."""

    @property
    def n_blocks(self) -> int: ...
    def block(self, i: int) -> "ExampleTable": ...


@dataclass
class ExampleTable:
    """One dataset split in columnar numpy form.

    Attributes:
        dense: float32 [N, D].
        labels: float32 [N, T].
        ids: int64 [N].
        sparse: feature name -> (offsets int64 [N + 1], values int64 [nnz]); a
            single-valued feature has ``offsets == arange(N + 1)``.
    """

    dense: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    sparse: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def group_keys(self, name: str) -> np.ndarray:
        """int64 [N]: each row's first id of sparse feature ``name`` (-1 where empty),
        the key rows are ranked within (``FeatureSpec.group_key``)."""
        offsets, values = self.sparse[name]
        first = np.full(len(self), -1, np.int64)
        has = offsets[1:] > offsets[:-1]
        first[has] = values[offsets[:-1][has]]
        return first

    def take(self, rows: np.ndarray, keys: tuple[str, ...] | None = None) -> BatchArrays:
        """Gather ``rows`` into a batch holding the sparse features ``keys`` (all if None)."""
        keys = tuple(self.sparse) if keys is None else keys
        lengths, values = [], []
        for k in keys:
            offsets, vals = self.sparse[k]
            ln, v = _gather_ragged(offsets, vals, rows)
            lengths.append(ln)
            values.append(v)
        return BatchArrays.key_major(self.dense[rows], self.labels[rows], self.ids[rows],
                                     keys, lengths, values)

    def rows(self, start: int, stop: int, keys: tuple[str, ...] | None = None
             ) -> BatchArrays:
        """Rows ``[start, stop)`` as a batch holding the sparse features ``keys`` (all if
        None): views of the columns, only the key-major values and lengths are put
        together (``take`` of a contiguous range, without its gathers)."""
        keys = tuple(self.sparse) if keys is None else keys
        lengths, values = [], []
        for k in keys:
            offsets, vals = self.sparse[k]
            lengths.append(np.diff(offsets[start:stop + 1]))
            values.append(vals[offsets[start]:offsets[stop]])
        return BatchArrays.key_major(self.dense[start:stop], self.labels[start:stop],
                                     self.ids[start:stop], keys, lengths, values)

    @property
    def n_blocks(self) -> int:
        """Blocks of :data:`EVAL_BLOCK_ROWS` rows that evaluation scores one at a time
        (a split read from files has one per chunk instead)."""
        return max(1, -(-len(self) // EVAL_BLOCK_ROWS))

    def block(self, i: int) -> "ExampleTable":
        """Block ``i`` (see :attr:`n_blocks`): the table itself where it is one block."""
        if self.n_blocks == 1:
            return self
        start = i * EVAL_BLOCK_ROWS
        return self.take(np.arange(start, min(start + EVAL_BLOCK_ROWS, len(self)))
                         ).to_table()

    def num_batches(self, batch_size: int, world: int = 1) -> int:
        """Batches ``iter_batches(batch_size, world=world)`` yields per rank (no padding)."""
        return -(-(len(self) // world) // batch_size)

    def iter_batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                     keys: tuple[str, ...] | None = None, rank: int = 0, world: int = 1,
                     pad: bool = False) -> Iterator[BatchArrays]:
        """Yield batches of rank ``rank``'s share of the rows.

        Every rank gets the same number of batches of the same sizes, which the
        all-to-all of a sharded model needs. With ``pad=False`` (training) the last
        ``N mod world`` rows of the (shuffled) order are left out; with ``pad=True``
        (evaluation) short shares are filled up by repeating their first row, so every
        row is seen; callers de-duplicate by example id.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world of size {world}")
        n = len(self)
        order = (np.random.default_rng(seed).permutation(n) if shuffle
                 else np.arange(n))
        if pad:
            shares = np.array_split(order, world)
            per_rank = len(shares[0])
            mine = shares[rank]
            if len(mine) < per_rank:
                filler = mine[:1] if len(mine) else order[:1]
                mine = np.concatenate([mine, np.repeat(filler, per_rank - len(mine))])
        else:
            per_rank = n // world
            mine = order[rank * per_rank:(rank + 1) * per_rank]
        for start in range(0, len(mine), batch_size):
            yield self.take(mine[start:start + batch_size], keys)


@dataclass
class Dataset:
    """A schema and its three splits."""

    spec: FeatureSpec
    train: ExampleTable
    valid: ExampleTable
    test: ExampleTable
    name: str = "dataset"
    # Rows left out while loading (``skip_bad_rows``): split -> {"rows": n, "reasons":
    # {reason: n}, "first": [where, ...]}. Empty when nothing was skipped.
    skipped: dict[str, Any] = field(default_factory=dict)
    # How a raw row became an example (a ``data.transform.RowTransform``) for datasets
    # read from files, None for generated ones; student artifacts keep it.
    transform: Any = None
    # How train was read, for the jobs to print ("" where there is nothing to say).
    reading: str = ""

    def split(self, name: str) -> ExampleTable:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"unknown split {name!r}; expected train, valid or test")
        return getattr(self, name)
