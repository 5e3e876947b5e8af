"""The ledger: the only place where a student group's batches are counted.

One :class:`GroupLedger` per group holds the batches queued for it, delivered to its
replicas, trained (acknowledged), re-delivered, dropped as duplicates and given back to
be labelled again; the batches it trained in each pass (per-rank watermarks,
``cluster/watermark.py``: memory that does not grow with rows); what it trained per
teacher version; and what it trained since its last snapshot. Every count the report shows is
derived from these (there is no second count to drift from them).

What a finished training call did comes from ``cluster/settlement.py``'s :func:`settle`;
the ledger books it. No Ray here: the driver moves refs, this keeps the books.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

from recdistill.cluster.contracts import StepResult
from recdistill.cluster.idset import IdSet
from recdistill.cluster.settlement import Settlement, StreamItem
from recdistill.cluster.watermark import PassBooks


@dataclass
class VersionCount:
    batches: int = 0
    examples: int = 0


@dataclass
class StepStats:
    """Sums over the steps booked (replica 0's result of each): the optimizer's work,
    so a step later undone by a snapshot restore still counts here."""

    steps: int = 0
    kd_scale_sum: float = 0.0
    timing: dict[str, float] = field(default_factory=dict)  # prepare_s, step_s
    # Running sums, not per-batch lists: the driver's memory must not grow with rows.
    pass_loss: dict[str, float] = field(default_factory=dict)  # this pass, per term
    pass_steps: int = 0
    # the run's sums (TensorBoard's curves take means over the steps between samples)
    loss_sum: dict[str, float] = field(default_factory=dict)
    agreement_sum: float = 0.0

    def add(self, step: StepResult) -> None:
        self.steps += 1
        self.pass_steps += 1
        self.kd_scale_sum += step.kd_scale
        self.agreement_sum += step.agreement
        for key, value in step.timing.items():
            self.timing[key] = self.timing.get(key, 0.0) + value
        for term, value in step.loss.items():
            self.pass_loss[term] = self.pass_loss.get(term, 0.0) + value
            self.loss_sum[term] = self.loss_sum.get(term, 0.0) + value

    def end_pass(self) -> dict[str, float]:
        """This pass's mean loss per term; starts the next pass's sums."""
        n = max(1, self.pass_steps)
        means = {t: v / n for t, v in self.pass_loss.items()}
        self.pass_loss, self.pass_steps = {}, 0
        return means


@dataclass
class GroupLedger:
    """The books of one student group; see the module docstring."""

    queue: deque[StreamItem] = field(default_factory=deque)
    in_flight: dict[int, StreamItem] = field(default_factory=dict)
    trained: dict[int, PassBooks] = field(default_factory=dict)  # pass -> its batches
    # pass -> every example id trained (SoftLabelStream's audit: a check of the books by
    # example that the tests turn on; None: off)
    audit: dict[int, IdSet] | None = None
    # version -> what was trained from it (a resumed run: since the run's start)
    by_version: dict[int, VersionCount] = field(default_factory=dict)
    at_resume: VersionCount = field(default_factory=VersionCount)
    delivered: int = 0
    redelivered: int = 0
    duplicates_dropped: int = 0
    relabelled: int = 0  # batches given back to be labelled again (lost with a node)
    max_depth: int = 0
    # Batches trained since the last snapshot, in order, and the seqs of the batches in
    # flight when it was taken (an actor runs its calls in order: the snapshot has them).
    since_snapshot: list[StreamItem] = field(default_factory=list)
    in_snapshot: set[int] = field(default_factory=set)
    retry_singly: int = 0
    stats: StepStats = field(default_factory=StepStats)

    # ------------------------------------------------------------ derived counts
    @property
    def depth(self) -> int:
        """Batches queued or unacknowledged: what ``max_inflight`` bounds."""
        return len(self.queue) + len(self.in_flight)

    @property
    def acked(self) -> int:
        """Batches trained in this run (a resumed run: since the resume)."""
        return sum(v.batches for v in self.by_version.values()) - self.at_resume.batches

    @property
    def acked_rows(self) -> int:
        return sum(v.examples for v in self.by_version.values()) - self.at_resume.examples

    @property
    def acked_by_version(self) -> dict[int, int]:
        return {v: c.batches for v, c in sorted(self.by_version.items())}

    @property
    def examples_by_version(self) -> dict[int, int]:
        return {v: c.examples for v, c in sorted(self.by_version.items())}

    @property
    def examples_by_pass(self) -> dict[int, int]:
        return {p: books.examples for p, books in self.trained.items()}

    def books(self, pass_index: int) -> PassBooks:
        return self.trained.get(pass_index) or PassBooks()

    # ---------------------------------------------------------------- delivery
    def enqueue(self, item: StreamItem) -> None:
        self.queue.append(item)
        self.max_depth = max(self.max_depth, self.depth)

    def next_item(self) -> StreamItem | None:
        """The next batch to deliver, skipping duplicates; None if none is queued."""
        while self.queue:
            item = self.queue.popleft()
            if item.key in self.books(item.pass_index):  # a replayed or resumed pass
                self.duplicates_dropped += 1
                continue
            self.in_flight[item.seq] = item
            self.delivered += 1
            return item
        return None

    def take_call(self, most: int) -> list[StreamItem]:
        """Up to ``most`` batches for one training call (one while retrying singly)."""
        items: list[StreamItem] = []
        while len(items) < (1 if self.retry_singly else most):
            item = self.next_item()
            if item is None:
                break
            items.append(item)
        if items:
            self.retry_singly = max(0, self.retry_singly - 1)
        return items

    # ----------------------------------------------------------------- booking
    def ack(self, item: StreamItem, step: StepResult | None = None) -> None:
        """The group took an optimizer step on ``item`` (``step``: replica 0's result).
        Training an example twice in a pass is a bug, and fails here."""
        self.in_flight.pop(item.seq)
        books = self.trained.setdefault(item.pass_index, PassBooks())
        if item.key in books:
            raise RuntimeError(f"batch {item.seq} (rank, seq {item.key}): trained twice "
                               f"in pass {item.pass_index + 1}")
        books.add(item.key, len(item.ids))
        if self.audit is not None:
            seen = self.audit.setdefault(item.pass_index, IdSet())
            if seen.contains(item.ids).any():
                raise RuntimeError(f"batch {item.seq}: examples trained twice in pass "
                                   f"{item.pass_index + 1}")
            seen.add(item.ids)
        count = self.by_version.setdefault(item.version, VersionCount())
        count.batches += 1
        count.examples += len(item.ids)
        if item.seq in self.in_snapshot:
            self.in_snapshot.discard(item.seq)
        else:
            self.since_snapshot.append(item)
        if step is not None:
            self.stats.add(step)

    def redeliver(self, item: StreamItem) -> None:
        """``item`` was delivered but not trained: deliver it again, first."""
        if self.in_flight.pop(item.seq, None) is not None:
            self.queue.appendleft(item)
            self.redelivered += 1

    def apply(self, s: Settlement) -> list[StreamItem]:
        """Book a settled training call; returns the items to label again (the stream unpublishes
        their ids)."""
        for item, steps in s.trained:
            self.ack(item, steps[0])
        for item in reversed(s.redeliver):  # to the front, in their order
            self.redeliver(item)
        for item in s.relabel:
            self.in_flight.pop(item.seq, None)
            self.relabelled += 1
        self.retry_singly += s.retry_singly
        return list(s.relabel)

    def drop_queue(self) -> list[StreamItem]:
        """Before a re-formed label group replays the pass: the undelivered batches leave
        the queue (some may be stored on a lost node); returns them."""
        dropped = list(self.queue)
        self.queue.clear()
        self.relabelled += len(dropped)
        return dropped

    # --------------------------------------------------------------- snapshots
    def snapshot_taken(self, in_flight: list[StreamItem]) -> None:
        """A snapshot of the group's state was taken after the calls carrying
        ``in_flight`` were queued (so it includes them)."""
        self.since_snapshot = []
        self.in_snapshot = {item.seq for item in in_flight}

    def unack(self, items: list[StreamItem]) -> None:
        """The model went back to a state from before it trained ``items`` (acknowledged,
        in that order): take them off the books and deliver them again, first and in
        the same order."""
        for item in reversed(items):
            count = self.by_version[item.version]
            count.batches -= 1
            count.examples -= len(item.ids)
            self.trained[item.pass_index].remove(item.key, len(item.ids))
            if self.audit is not None:
                self.audit[item.pass_index].remove(item.ids)
            self.queue.appendleft(item)
            self.redelivered += 1

    def rollback_to_snapshot(self) -> None:
        """The group restarts from its last snapshot: what it trained since goes again."""
        self.unack(self.since_snapshot)
        self.since_snapshot, self.in_snapshot = [], set()

    # ------------------------------------------------------------------ resume
    def restore(self, by_version: dict[int, VersionCount], pass_index: int | None = None,
                books: PassBooks | None = None) -> None:
        """The state of a driver checkpoint: ``by_version``, what the group trained in
        the run so far; ``books``, the batches it trained of ``pass_index``, the pass
        being replayed (not delivered to it again)."""
        self.by_version = {v: replace(c) for v, c in by_version.items()}
        self.at_resume = VersionCount(sum(c.batches for c in by_version.values()),
                                      sum(c.examples for c in by_version.values()))
        if pass_index is not None and books is not None:
            self.trained[pass_index] = books.copy()
