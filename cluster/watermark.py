"""The books of a pass by batch, not by example: what the stream published and what a
group trained, as per-rank watermarks.

A label-source rank reads its share of a pass in an order fixed by the pass's seed
(``cluster/data.py``), so its b-th labelled batch holds the same rows every time the
pass is read: again after a rank is re-formed, again after the driver resumes. A student
batch is named by ``(rank, seq)``, ``seq = b * slices + j`` for slice j of labelled
batch b. Batches are trained nearly in order, so the set of those done is every seq
below a watermark plus the few above it done out of order (at most the batches in
flight): memory per group and pass that does not grow with rows.
"""

from __future__ import annotations

from typing import Any

Key = tuple[int, int]  # (rank, seq)


class Watermark:
    """One rank's batches of a pass that are done: every seq below ``low``, and the
    ones in ``above`` (done out of order)."""

    __slots__ = ("low", "above")

    def __init__(self, low: int = 0, above: set[int] | None = None) -> None:
        self.low, self.above = low, set() if above is None else above

    def __contains__(self, seq: int) -> bool:
        return seq < self.low or seq in self.above

    def add(self, seq: int) -> None:
        self.above.add(seq)
        while self.low in self.above:
            self.above.remove(self.low)
            self.low += 1

    def remove(self, seq: int) -> None:
        """Take a done ``seq`` back (a group went back to a snapshot): below the
        watermark, the watermark comes down to it."""
        if seq >= self.low:
            self.above.remove(seq)
        else:
            self.above.update(range(seq + 1, self.low))
            self.low = seq


class PassBooks:
    """The batches of one pass that are done, per rank, and their examples."""

    def __init__(self) -> None:
        self.marks: dict[int, Watermark] = {}
        self.examples = 0

    def __contains__(self, key: Key) -> bool:
        mark = self.marks.get(key[0])
        return mark is not None and key[1] in mark

    def add(self, key: Key, examples: int) -> None:
        if key in self:
            raise ValueError(f"batch {key} is booked already")
        self.marks.setdefault(key[0], Watermark()).add(key[1])
        self.examples += examples

    def remove(self, key: Key, examples: int) -> None:
        if key not in self:
            raise ValueError(f"batch {key} is not booked")
        self.marks[key[0]].remove(key[1])
        self.examples -= examples

    def discard(self, key: Key, examples: int) -> None:
        """:meth:`remove` if booked (several groups may give one batch back)."""
        if key in self:
            self.remove(key, examples)

    def floor(self, ranks: int) -> int:
        """The first seq not done on some rank of ``ranks``: every rank's batches below it
        are done."""
        return min((self.marks[r].low if r in self.marks else 0) for r in range(ranks))

    @property
    def out_of_order(self) -> int:
        """Batches booked above the watermarks: what these books hold beyond one int per
        rank."""
        return sum(len(m.above) for m in self.marks.values())

    def copy(self) -> "PassBooks":
        out = PassBooks()
        out.marks = {r: Watermark(m.low, set(m.above)) for r, m in self.marks.items()}
        out.examples = self.examples
        return out

    def to_json(self) -> dict[str, Any]:
        return {"examples": self.examples,
                "marks": {str(r): [m.low, sorted(m.above)] for r, m in self.marks.items()}}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "PassBooks":
        out = cls()
        out.examples = int(doc["examples"])
        out.marks = {int(r): Watermark(int(low), {int(s) for s in above})
                     for r, (low, above) in doc["marks"].items()}
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PassBooks):
            return NotImplemented
        return self.to_json() == other.to_json()
