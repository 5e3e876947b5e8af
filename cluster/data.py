"""Ray Data input: the training rows as Ray Datasets, each pass's order of them split
into the label ranks' shares, and the driver's Ray calls around them (``RayRuntime``).
The Arrow layout of examples is cluster/arrow.py's."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data

from recdistill.cluster.arrow import (DENSE, ID, LABELS, arrow_to_batch, arrow_to_table,
                                      to_arrow)
from recdistill.cluster.config import SPLITS
from recdistill.data.spec import BatchArrays, Dataset, ExampleTable, pass_seed
from recdistill.data.file_stream import FileStream
from recdistill.data.synthetic import SyntheticStream

__all__ = ["DENSE", "ID", "LABELS", "RayRuntime", "RowShare", "StreamShare",
           "arrow_to_batch", "arrow_to_table", "pass_dataset", "pass_shards",
           "share_dataset", "to_arrow", "train_dataset"]

# Training rows never held whole: chunk c is made where it is read (``chunk(c, seed)``).
Streamed = SyntheticStream | FileStream


def to_ray_dataset(table: ExampleTable) -> ray.data.Dataset:
    """The table as a Ray Dataset held in the object store."""
    return ray.data.from_arrow(to_arrow(table))


class _Pieces:
    """Ray Data map: pieces ``(chunk, lo, hi)`` -> rows ``[lo, hi)`` of each chunk in the
    pass's order of its rows."""

    def __init__(self, stream: Streamed, seed: int) -> None:
        self.stream, self.seed = stream, seed

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return pa.concat_tables([to_arrow(self.stream.chunk(int(c), self.seed)).slice(
            int(lo), int(hi - lo)) for c, lo, hi in zip(batch["c"], batch["lo"], batch["hi"])])


def share_pieces(sizes: list[int], seed: int, start: int, stop: int
                 ) -> list[tuple[int, int, int]]:
    """Rows ``[start, stop)`` of a streamed pass as ``(chunk, lo, hi)`` pieces: the
    pass reads the chunks in an order drawn from ``seed`` (``sizes``: each chunk's
    rows)."""
    pieces, pos = [], 0
    for c in np.random.default_rng(seed).permutation(len(sizes)).tolist():
        lo, hi = max(start - pos, 0), min(stop - pos, sizes[c])
        if lo < hi:
            pieces.append((c, lo, hi))
        pos += sizes[c]
        if pos >= stop:
            break
    return pieces


def share_dataset(train: Streamed, seed: int, start: int, stop: int, readers: int = 2
                  ) -> ray.data.Dataset:
    """Rows ``[start, stop)`` of the streamed pass ``seed`` (:func:`share_pieces`), each
    chunk's rows shuffled as it is made (a two-level shuffle holding one chunk per task,
    not the whole dataset), by at most ``readers`` tasks at once. (Ray Data's default
    runs as many as there are CPUs, each a worker process importing the data layer
    first: on a small machine the first pass waited ~40 s for ten of them to start; a
    reader makes ~1e5 rows/s, more than a teacher rank labels.)"""
    pieces = share_pieces(train.chunk_sizes, seed, start, stop)
    items = [{"c": c, "lo": lo, "hi": hi} for c, lo, hi in pieces]
    return ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        _Pieces(train, seed), batch_size=1, batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=readers))


def train_dataset(train: ExampleTable | Streamed, read_ahead_mib: int = 768
                  ) -> ray.data.Dataset | None:
    """The training rows as a Ray Dataset, made once per job: an in-memory table goes
    to the object store; a streamed one (:class:`SyntheticStream`, :class:`FileStream`)
    has none (None): each rank's share of a pass is a dataset of its own
    (:func:`share_dataset`), its rows made by the pass's read tasks, at most
    ``read_ahead_mib`` of them (over all ranks) in the object store ahead of the ranks.
    (Ray Data's default is a share of the whole store: with readers faster than the
    teacher, a pass of 1e7 rows filled 2.1 GiB of it where 1e6 rows peaked at 0.7.)"""
    # A pass's blocks are made by parallel tasks (the shuffle's reducers, the stream's
    # chunk generators); without preserve_order Ray Data yields them as they finish, and
    # the same seed gives another order of batches each run, so another student: a KD
    # gain of 0.003 AUC was within that noise. (A dataset keeps the context it was made
    # in, so this holds for every pass of it.)
    options = ray.data.DataContext.get_current().execution_options
    options.preserve_order = True
    # (the context is the process's: a job in memory after a streamed one, in one
    # process, gets Ray Data's default back)
    options.resource_limits = ray.data.ExecutionResources.for_limits(
        object_store_memory=read_ahead_mib << 20 if isinstance(train, Streamed) else None)
    return None if isinstance(train, Streamed) else to_ray_dataset(train)


def pass_dataset(ds: ray.data.Dataset | None, train: ExampleTable | Streamed,
                 seed: int, readers: int = 2) -> ray.data.Dataset:
    """One pass's order of the training rows: a full random shuffle of an in-memory
    table (``ds``); a stream's whole pass (:func:`share_dataset`)."""
    if isinstance(train, Streamed):
        return share_dataset(train, seed, 0, len(train), readers)
    assert ds is not None
    return ds.random_shuffle(seed=seed)


SHUFFLE_TIMEOUT_S = 600.0  # a rank's wait for its pass's shuffled table


def _shuffled(pass_ds: ray.data.Dataset) -> ExampleTable:
    """One pass of an in-memory table in its shuffled order, decoded once into one
    :class:`ExampleTable` (run as a Ray task: Ray Data's executor and the decode run
    there, not in a teacher rank's process, which then slices its batches)."""
    blocks = list(pass_ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    return arrow_to_table(blocks[0] if len(blocks) == 1 else pa.concat_tables(blocks))


# num_cpus=0: the task waits on the shuffle's own tasks (which take their CPUs)
_shuffled_task = ray.remote(num_cpus=0)(_shuffled).options(name="shuffle-pass")


@dataclass(frozen=True)
class RowShare:
    """Rows ``[start, stop)`` of one pass of an in-memory table in the pass's order: one
    rank's share. ``table`` is the object ref of the pass's shuffled table, made and
    decoded once per pass by a task (Ray Data's seeded ``random_shuffle``); the rank
    reads its batches as views of the stored columns (no Arrow decode per batch).

    Why not ``streaming_split``: Ray Data splits a stream lazily only through it, and
    its coordinator is a new actor every pass (a worker process starting: as much CPU
    as the teacher's labelling of a MovieLens pass, BENCHMARKS.md, ``input``), for rows
    a rank can slice itself; its executor then runs beside the ranks.
    ``streaming_split(k, equal=True)`` of the one-block shuffled table gives rank r the
    rows ``[r*m, (r+1)*m)``, m = n // k: a RowShare reads exactly those, in the same
    batches.
    """

    table: Any  # ObjectRef[ExampleTable]
    start: int
    stop: int

    def ranges(self, batch_size: int) -> Iterator[tuple[ExampleTable, int, int]]:
        """(the pass's table, start, stop) of each ``batch_size``-row batch of the share
        (the last may be shorter); the table is fetched (waited for) at the first."""
        table = ray.get(self.table, timeout=SHUFFLE_TIMEOUT_S)
        for i in range(self.start, self.stop, batch_size):
            yield table, i, min(i + batch_size, self.stop)

    def batches(self, batch_size: int, keys: tuple[str, ...]) -> Iterator[BatchArrays]:
        """The share's batches (:meth:`ranges`) holding the sparse features ``keys``."""
        return (table.rows(a, b, keys) for table, a, b in self.ranges(batch_size))


@dataclass(frozen=True)
class StreamShare:
    """One rank's share of a streamed pass: ``dataset`` (:func:`share_dataset`), read
    through a local shuffle buffer of ``buffer_rows`` rows seeded with the pass's
    ``seed`` (0: none; ``teacher_group.shuffle_buffer_rows``), the batches of its first
    ``skip_rows`` rows read and dropped. (Without a buffer a replay's dataset starts
    past the rows it skips; with one a batch's rows depend on every row before it.)"""

    dataset: Any  # ray.data.Dataset
    seed: int
    buffer_rows: int = 0
    skip_rows: int = 0

    def batches(self, batch_size: int) -> Iterator[pa.Table]:
        it = iter(self.dataset.iter_batches(
            batch_size=batch_size, batch_format="pyarrow", prefetch_batches=2,
            local_shuffle_buffer_size=self.buffer_rows or None,
            local_shuffle_seed=self.seed if self.buffer_rows else None))
        for _ in range(self.skip_rows // batch_size):
            next(it, None)
        return it


def pass_shards(ds: ray.data.Dataset | None, train: ExampleTable | Streamed, seed: int,
                pass_index: int, k: int, split: str = "rows", skip_rows: int = 0,
                buffer_rows: int = 0) -> list[StreamShare | ray.data.DataIterator | RowShare]:
    """Pass ``pass_index``'s order of the training rows split into ``k`` equal shares,
    one per label-group rank (equal, so the ranks make the same number of forwards):
    rank r reads rows ``[r*m, (r+1)*m)`` of the pass's order, m = n // k. The seed fixes
    every share, so a pass read again gives each rank the same batches (what the books
    count, ``cluster/watermark.py``). Returns at once: the pass's shuffle runs while the
    ranks get to it.

    ``split``: ``rows`` gives an in-memory table's ranks :class:`RowShare` s (the same
    rows and batches as ``stream``; one shuffle task per pass, no coordinator actor);
    ``stream``, Ray Data's ``streaming_split`` of it. Streamed rows (a pass too large to
    hold) give each rank a :class:`StreamShare` of its rows, shuffled through
    ``buffer_rows`` if any. ``skip_rows``: each share starts that many rows in (a
    replay after batches every group trained; not with ``stream``,
    :attr:`RayRuntime.skips`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    seed, m = pass_seed(seed, pass_index), len(train) // k
    if isinstance(train, Streamed):
        late = 0 if buffer_rows else skip_rows  # where each share's dataset starts
        return [StreamShare(share_dataset(train, seed, r * m + late, (r + 1) * m,
                                          readers=max(1, 2 // k)),
                            seed, buffer_rows, skip_rows - late) for r in range(k)]
    assert ds is not None
    if split == "stream":
        if skip_rows:
            raise ValueError("split = 'stream' reads every pass from its start")
        return pass_dataset(ds, train, seed, readers=max(2, k)).streaming_split(k, equal=True)
    table = _shuffled_task.remote(pass_dataset(ds, train, seed))
    return [RowShare(table, r * m + skip_rows, (r + 1) * m) for r in range(k)]


class RayRuntime:
    """The driver's Ray calls that belong to no actor group: waiting on refs, each
    pass's input shares (Ray Data, made from the training rows once), and the
    evaluation tables (put in the object store once each).

    Args:
        data: the dataset (the driver holds it).
        seed: the seed of every pass's order.
        split: ``teacher_group.split``.
    """

    def __init__(self, data: Dataset, seed: int, split: str, read_ahead_mib: int = 768,
                 shuffle_buffer_rows: int = 0) -> None:
        self.data, self.seed, self.split = data, seed, split
        self.read_ahead_mib, self.buffer_rows = read_ahead_mib, shuffle_buffer_rows
        self._train: ray.data.Dataset | None = None  # a streamed split has none
        self._made = False
        self._tables: dict[str, Any] = {}

    def wait(self, refs: list[Any], timeout: float) -> set[Any]:
        """The refs done once one is (or ``timeout`` passed)."""
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        return set(ready) | set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])

    def wait_all(self, refs: list[Any], timeout: float) -> None:
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=timeout)

    @property
    def skips(self) -> bool:
        """Whether a pass's shares can start past their first rows (``shards``)."""
        return self.split == "rows" or isinstance(self.data.train, Streamed)

    def shards(self, pass_index: int, ranks: int, skip_rows: int = 0) -> list[Any]:
        if not self._made:  # the ranks' read-ahead together: the configured one
            self._train = train_dataset(self.data.train, self.read_ahead_mib // ranks)
            self._made = True
        return pass_shards(self._train, self.data.train, self.seed, pass_index, ranks,
                           self.split, skip_rows, self.buffer_rows)

    @property
    def pass_rows(self) -> int:
        """Training rows per pass."""
        return len(self.data.train)

    def table(self, split: str) -> Any:
        if split not in self._tables:
            self._tables[split] = ray.put(getattr(self.data, split))
        return self._tables[split]
