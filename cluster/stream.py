"""The soft-label stream: fan-out of labelled-batch refs to student groups.

The stream holds Ray object refs, never the data: the teacher rank's output is stored
once in the object store and every group's replicas read that one copy. For each group
it keeps a queue of batches not yet delivered and the set of batches delivered but not
acknowledged; ``max_inflight`` bounds their sum (backpressure on the teachers).
A batch whose delivery failed (its replica died before the step) goes back to the front
of its group's queue; a batch whose example ids the group already trained this pass is
dropped as a duplicate. No Ray calls here: the driver moves refs, this keeps the books.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass
class StreamItem:
    """One labelled batch from one teacher rank.

    Attributes:
        seq: position in the stream (production order).
        ref: object ref of the labelled batch (a ``LabelledBatch``).
        ids: int64 [B] example ids in it (small; kept on the driver for the books).
        version: teacher checkpoint version that labelled it.
        pass_index: the pass it belongs to.
        rows: the rows of the labelled batch to train on (None: all). A teacher group
            re-formed mid-pass replays the pass; rows it had already published are left
            out this way, so a replayed batch that only partly overlaps trains the rest.
    """

    seq: int
    ref: Any
    ids: np.ndarray
    version: int
    pass_index: int
    rows: np.ndarray | None = None


class IdSet:
    """A set of non-negative example ids as a growable bitmap: 1 bit per id up to the
    largest seen, instead of ~60 bytes per id in a Python set, so the books of a pass
    over 1e7 rows take 1.25 MB. (Written here rather than taken from a library: numpy
    has no growable bitset and a roaring-bitmap dependency is not worth one class.)"""

    def __init__(self) -> None:
        self._bits = np.zeros(0, np.uint8)
        self._count = 0

    def _bit(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ids >> 3, (1 << (ids & 7)).astype(np.uint8)

    @staticmethod
    def _sorted_unique(ids: np.ndarray) -> np.ndarray:
        # np.unique hashes (numpy 2): 65 us for a 512-id batch here, a sort 10 us; the
        # books do this for every batch published and acknowledged.
        ids = np.sort(np.asarray(ids, np.int64))
        if len(ids) > 1:
            ids = ids[np.concatenate(([True], ids[1:] != ids[:-1]))]
        return ids

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """bool [len(ids)]: which of ``ids`` are in the set."""
        ids = np.asarray(ids, np.int64)
        byte, mask = self._bit(ids)
        inside = byte < len(self._bits)
        out = np.zeros(len(ids), bool)
        out[inside] = (self._bits[byte[inside]] & mask[inside]) != 0
        return out

    def add(self, ids: np.ndarray) -> None:
        ids = self._sorted_unique(ids)
        if not len(ids):
            return
        if ids[0] < 0:
            raise ValueError(f"example ids must be >= 0, got {int(ids[0])}")
        need = int(ids[-1] >> 3) + 1
        if need > len(self._bits):
            grown = np.zeros(max(need, 2 * len(self._bits)), np.uint8)
            grown[:len(self._bits)] = self._bits
            self._bits = grown
        self._count += int((~self.contains(ids)).sum())
        byte, mask = self._bit(ids)
        # ids are sorted, so equal bytes are adjacent: OR their masks per byte, then set
        # each byte once (a fancy-indexed |= would keep only one bit of a shared byte)
        starts = np.flatnonzero(np.diff(byte, prepend=-1))
        self._bits[byte[starts]] |= np.bitwise_or.reduceat(mask, starts)

    def remove(self, ids: np.ndarray) -> None:
        ids = self._sorted_unique(ids)
        ids = ids[self.contains(ids)]
        if not len(ids):
            return
        self._count -= len(ids)
        byte, mask = self._bit(ids)
        starts = np.flatnonzero(np.diff(byte, prepend=-1))
        self._bits[byte[starts]] &= ~np.bitwise_or.reduceat(mask, starts)

    def issuperset(self, ids: np.ndarray) -> bool:
        return bool(self.contains(ids).all())

    def __len__(self) -> int:
        return self._count

    def to_array(self) -> np.ndarray:
        """The ids, ascending."""
        return np.flatnonzero(np.unpackbits(self._bits, bitorder="little"))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IdSet):
            return np.array_equal(self.to_array(), other.to_array())
        if isinstance(other, (set, frozenset)):
            return len(other) == len(self) and self.issuperset(np.fromiter(other, np.int64))
        return NotImplemented


@dataclass
class GroupBooks:
    queue: deque[StreamItem] = field(default_factory=deque)
    in_flight: dict[int, StreamItem] = field(default_factory=dict)
    delivered: int = 0
    acked: int = 0
    acked_rows: int = 0  # examples trained in this run (a resumed run: since the resume)
    lost: int = 0  # batches given back to be labelled again (lost with a node)
    redelivered: int = 0
    duplicates_dropped: int = 0
    max_depth: int = 0
    trained: dict[int, IdSet] = field(default_factory=dict)  # pass -> example ids
    examples_by_pass: dict[int, int] = field(default_factory=dict)  # pass -> acked rows
    acked_by_version: dict[int, int] = field(default_factory=dict)  # version -> batches

    @property
    def depth(self) -> int:
        return len(self.queue) + len(self.in_flight)


class SoftLabelStream:
    """Books of the stream for G groups, bounded by ``max_inflight`` per group."""

    def __init__(self, groups: list[str], max_inflight: int) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.max_inflight = max_inflight
        self.books = {g: GroupBooks() for g in groups}
        self.produced = 0
        self.produced_by_version: dict[int, int] = {}
        self.published: dict[int, IdSet] = {}  # pass -> ids handed to the groups
        self.replayed_rows = 0  # rows a re-formed teacher group labelled again, dropped
        self._seq = 0

    def has_room(self, n: int = 1) -> bool:
        """Whether ``n`` more batches fit every group's window."""
        return all(b.depth + n <= self.max_inflight for b in self.books.values())

    def publish(self, ref: Any, ids: np.ndarray, version: int, pass_index: int
                ) -> StreamItem | None:
        """Hand one labelled batch to every group (the same ref: one stored copy).

        Rows whose ids this pass already published (a re-formed teacher group replaying
        the pass) are left out; a batch with none left is dropped (None)."""
        seen = self.published.setdefault(pass_index, IdSet())
        new = ~seen.contains(ids)
        rows = None
        if not new.all():
            self.replayed_rows += int((~new).sum())
            if not new.any():
                return None
            rows, ids = np.flatnonzero(new), ids[new]
        seen.add(ids)
        item = StreamItem(self._seq, ref, ids, version, pass_index, rows)
        self._seq += 1
        self.produced += 1
        self.produced_by_version[version] = self.produced_by_version.get(version, 0) + 1
        for b in self.books.values():
            b.queue.append(item)
            b.max_depth = max(b.max_depth, b.depth)
        return item

    def next_for(self, group: str) -> StreamItem | None:
        """The next batch to deliver to ``group``, skipping duplicates; None if none."""
        b = self.books[group]
        while b.queue:
            item = b.queue.popleft()
            seen = b.trained.get(item.pass_index)
            if seen is not None:
                have = seen.contains(item.ids)
                if have.all():
                    b.duplicates_dropped += 1
                    continue
                if have.any():  # a resumed pass: this group trained some rows already
                    keep = ~have
                    rows = np.flatnonzero(keep) if item.rows is None else item.rows[keep]
                    item = replace(item, ids=item.ids[keep], rows=rows)
            b.in_flight[item.seq] = item
            b.delivered += 1
            return item
        return None

    def ack(self, group: str, item: StreamItem) -> None:
        """``group`` took an optimizer step on ``item``."""
        b = self.books[group]
        b.in_flight.pop(item.seq)
        b.acked += 1
        b.acked_rows += len(item.ids)
        b.acked_by_version[item.version] = b.acked_by_version.get(item.version, 0) + 1
        b.examples_by_pass[item.pass_index] = \
            b.examples_by_pass.get(item.pass_index, 0) + len(item.ids)
        b.trained.setdefault(item.pass_index, IdSet()).add(item.ids)

    def restore(self, group: str, pass_index: int, ids: np.ndarray) -> None:
        """``group`` trained ``ids`` of pass ``pass_index`` before a driver restart: the
        pass is replayed, and these rows are not delivered to it again."""
        b = self.books[group]
        b.trained[pass_index] = IdSet()
        b.trained[pass_index].add(ids)
        b.examples_by_pass[pass_index] = len(b.trained[pass_index])

    def lose(self, group: str, item: StreamItem) -> None:
        """``item``'s stored batch is lost (its node died) before ``group`` trained it:
        its ids go back to be published again by the pass's replay."""
        self.books[group].in_flight.pop(item.seq, None)
        self.books[group].lost += 1
        self.published[item.pass_index].remove(item.ids)

    def requeue_undelivered(self) -> None:
        """Before a re-formed label group replays the pass: every batch not delivered
        yet is dropped from the queues and its ids are published again by the replay
        (some may be stored on a lost node; telling which would need a fetch each)."""
        for b in self.books.values():
            while b.queue:
                item = b.queue.popleft()
                self.published[item.pass_index].remove(item.ids)
                b.lost += 1

    def unack(self, group: str, items: list[StreamItem]) -> None:
        """``group``'s model went back to a snapshot taken before it trained ``items``
        (acknowledged, in that order): take them off the books and deliver them again,
        first and in the same order."""
        b = self.books[group]
        for item in reversed(items):
            b.acked -= 1
            b.acked_rows -= len(item.ids)
            b.acked_by_version[item.version] -= 1
            b.examples_by_pass[item.pass_index] -= len(item.ids)
            b.trained[item.pass_index].remove(item.ids)
            b.queue.appendleft(item)
            b.redelivered += 1

    def redeliver(self, group: str, item: StreamItem) -> None:
        """The replica holding ``item`` died before the step: deliver it again, first."""
        b = self.books[group]
        if b.in_flight.pop(item.seq, None) is not None:
            b.queue.appendleft(item)
            b.redelivered += 1

    def drained(self) -> bool:
        return all(b.depth == 0 for b in self.books.values())

    def trained_ids(self, group: str, pass_index: int) -> IdSet:
        return self.books[group].trained.get(pass_index, IdSet())

    def counters(self) -> dict[str, Any]:
        """The report's ``stream`` section."""
        return {
            "produced": self.produced,
            # JSON keys are strings: version -> batches
            "produced_by_version": {str(v): n for v, n in
                                    sorted(self.produced_by_version.items())},
            "acked_by_version": {g: {str(v): n for v, n in sorted(b.acked_by_version.items())}
                                 for g, b in self.books.items()},
            "max_inflight": self.max_inflight,
            "delivered": {g: b.delivered for g, b in self.books.items()},
            "acked": {g: b.acked for g, b in self.books.items()},
            "acked_rows": {g: b.acked_rows for g, b in self.books.items()},
            "redelivered": sum(b.redelivered for b in self.books.values()),
            "redelivered_by_group": {g: b.redelivered for g, b in self.books.items()},
            "duplicates_dropped": sum(b.duplicates_dropped for b in self.books.values()),
            "max_depth": {g: b.max_depth for g, b in self.books.items()},
            "replayed_rows": self.replayed_rows,
            "relabelled_batches": {g: b.lost for g, b in self.books.items()},
        }
