"""The soft-label stream: fan-out of labelled-batch refs to the student groups' ledgers.

The stream holds Ray object refs, never the data: the label source's output is stored
once in the object store and every group's replicas read that one copy. Each group has
a :class:`GroupLedger` (its queue, what is in flight, what it trained); ``max_inflight``
bounds a group's queued plus unacknowledged batches (backpressure on the label group).
The stream itself knows which batches it published in each pass (by ``(rank, seq)``,
``cluster/watermark.py``), so a re-formed label group replaying the pass publishes only
batches not handed out yet. No Ray calls here.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from recdistill.cluster.ledger import GroupLedger
from recdistill.cluster.settlement import Settlement, StreamItem
from recdistill.cluster.watermark import Key, PassBooks


class SoftLabelStream:
    """The books of the stream for G groups, bounded by ``max_inflight`` per group.

    ``slices``: the most student batches one labelled batch is cut into (a student
    batch's seq is ``labelled seq * slices + slice``). ``audit``: the ledgers also book
    every example id trained per pass (1 bit per row) and fail on one trained twice, a
    check of the books by batch that the tests turn on (default: the environment's
    ``RECDISTILL_AUDIT_IDS=1``, which subprocess jobs inherit)."""

    def __init__(self, groups: list[str], max_inflight: int, slices: int = 1,
                 audit: bool | None = None) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        if audit is None:
            audit = os.environ.get("RECDISTILL_AUDIT_IDS") == "1"
        self.max_inflight, self.slices = max_inflight, slices
        self.ledgers = {g: GroupLedger(audit={} if audit else None) for g in groups}
        self.retired: set[str] = set()  # groups that stopped: no more batches, no window
        self.produced_by_version: dict[int, int] = {}  # version -> batches published
        self.published: dict[int, PassBooks] = {}  # pass -> batches handed to the groups
        self.replayed_rows = 0  # rows a re-formed label group labelled again, dropped
        self.skipped_batches = 0  # labelled batches a replay did not read again
        self._seq = 0

    @property
    def produced(self) -> int:
        return sum(self.produced_by_version.values())

    @property
    def active(self) -> dict[str, GroupLedger]:
        """The ledgers of the groups still training."""
        return {g: b for g, b in self.ledgers.items() if g not in self.retired}

    def has_room(self, n: int = 1) -> bool:
        """Whether ``n`` more batches fit every training group's window."""
        return all(b.depth + n <= self.max_inflight for b in self.active.values())

    def retire(self, group: str) -> None:
        """``group`` stopped (between passes: nothing queued or in flight): it gets no
        more batches and no longer holds the others back."""
        if self.ledgers[group].depth:
            raise RuntimeError(f"group {group}: retired with batches queued or in flight")
        self.retired.add(group)

    def publish(self, refs: tuple[Any, ...], ids: np.ndarray, version: int, pass_index: int,
                key: Key, rows: np.ndarray | None = None) -> StreamItem | None:
        """Hand one student batch, ``key`` = (rank, seq), to every group (the same refs:
        one stored copy).

        ``rows``: the rows of the stored batch this student batch is (a slice of a
        larger labelled batch; ``ids`` are theirs); None: all of it. A batch this pass
        already published (a re-formed label group replaying the pass) is dropped
        (None)."""
        seen = self.published.setdefault(pass_index, PassBooks())
        if key in seen:
            self.replayed_rows += len(ids)
            return None
        seen.add(key, len(ids))
        item = StreamItem(self._seq, refs, ids, version, pass_index, key, rows)
        self._seq += 1
        self.produced_by_version[version] = self.produced_by_version.get(version, 0) + 1
        for ledger in self.active.values():
            ledger.enqueue(item)
        return item

    def publish_slices(self, refs: tuple[Any, ...], ids: np.ndarray, batch_size: int,
                       version: int, pass_index: int, rank: int, seq: int) -> None:
        """Labelled batch ``seq`` of ``rank`` (label_batch_size rows) as student
        batches of its row ranges of ``batch_size``, each the same stored object; one
        that is a single student batch goes whole."""
        if len(ids) > self.slices * batch_size:
            raise ValueError(f"a labelled batch of {len(ids)} rows is more than "
                             f"{self.slices} student batches of {batch_size}")
        for j, start in enumerate(range(0, len(ids), batch_size)):
            stop = min(start + batch_size, len(ids))
            whole = start == 0 and stop == len(ids)
            self.publish(refs, ids[start:stop], version, pass_index,
                         (rank, seq * self.slices + j),
                         rows=None if whole else np.arange(start, stop))

    def skip(self, pass_index: int, ranks: int) -> int:
        """Labelled batches of each rank's share of ``pass_index`` that every training
        group has trained: a replay of the pass (a re-formed label group, a resumed
        driver) starts after them (counted in ``skipped_batches``)."""
        floors = [b.books(pass_index).floor(ranks) for b in self.active.values()]
        skip = min(floors, default=0) // self.slices
        self.skipped_batches += skip * ranks
        return skip

    def next_for(self, group: str) -> StreamItem | None:
        """The next batch to deliver to ``group``, skipping duplicates; None if none."""
        return self.ledgers[group].next_item()

    def apply(self, group: str, settlement: Settlement) -> None:
        """Book a settled training call of ``group``; batches lost with a node have their ids
        published again by the pass's replay."""
        for item in self.ledgers[group].apply(settlement):
            self.published[item.pass_index].discard(item.key, len(item.ids))

    def requeue_undelivered(self) -> None:
        """Before a re-formed label group replays the pass: every batch not delivered
        yet leaves the queues and its ids are published again by the replay (some may
        be stored on a lost node; telling which would need a fetch each)."""
        for ledger in self.ledgers.values():
            for item in ledger.drop_queue():
                self.published[item.pass_index].discard(item.key, len(item.ids))

    def drained(self) -> bool:
        return all(b.depth == 0 for b in self.active.values())


    def counters(self) -> dict[str, Any]:
        """The report's ``stream`` section, derived from the ledgers."""
        groups = self.ledgers.items()
        return {
            "produced": self.produced,
            # JSON keys are strings: version -> batches
            "produced_by_version": {str(v): n for v, n in
                                    sorted(self.produced_by_version.items())},
            "acked_by_version": {g: {str(v): n for v, n in b.acked_by_version.items()}
                                 for g, b in groups},
            "max_inflight": self.max_inflight,
            "delivered": {g: b.delivered for g, b in groups},
            "acked": {g: b.acked for g, b in groups},
            "acked_rows": {g: b.acked_rows for g, b in groups},
            "redelivered": sum(b.redelivered for _, b in groups),
            "redelivered_by_group": {g: b.redelivered for g, b in groups},
            "duplicates_dropped": sum(b.duplicates_dropped for _, b in groups),
            "max_depth": {g: b.max_depth for g, b in groups},
            "replayed_rows": self.replayed_rows,
            "skipped_batches": self.skipped_batches,
            "relabelled_batches": {g: b.relabelled for g, b in groups},
        }
