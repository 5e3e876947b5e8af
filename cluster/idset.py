"""A set of example ids as a growable bitmap: the ledgers' record of what was published
and trained in each pass."""

from __future__ import annotations

import numpy as np


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
        # np.unique hashes (numpy 2), several times slower than a sort for a batch's ids
        # (BENCHMARKS.md, "The books"); the books do this for every batch published and
        # acknowledged.
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
