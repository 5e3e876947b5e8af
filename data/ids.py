"""Raw categorical values -> embedding ids, without or with one pass over train.

Two rules, chosen per feature in a dataset's ``[ids]`` table (``data/tabular.py``):

- ``hash``: id = 1 + (a stable 64-bit hash of the value's text) mod ``buckets``. Nothing
  is built from the data, so any block of any file is encoded on its own, and a value
  never seen in train still gets an id of its own bucket. The hash is pandas'
  ``hash_array`` (SipHash-2-4 with pandas' fixed key, vectorised in C); it does not
  depend on the process, the machine or the order of the values.
- ``vocab``: id = 1 + the value's place in a vocabulary of train's values (sorted by
  text), counted block by block; values seen fewer than ``min_count`` times are left
  out, and ``max_size`` keeps only the most frequent (ties by text). Unseen values get 0.

Id 0 (``OOV_ID``) is missing, padding, and for ``vocab`` unseen. A value's text is the
same whether a file stores it as an integer or as a string (``5``, ``"5"``, ``5.0`` with
nulls in the column), so a model trained on CSV scores Parquet of the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pandas.util import hash_array

from recdistill.data.spec import OOV_ID

KINDS = ("hash", "vocab")


@dataclass(frozen=True)
class IdRule:
    """How one feature's raw values become ids.

    Attributes:
        kind: ``hash`` or ``vocab``.
        buckets: hash buckets (ids 1..buckets); ``hash`` only.
        min_count: train occurrences a value needs to get an id; ``vocab`` only.
        max_size: most ids a vocabulary keeps (0: all); ``vocab`` only.
    """

    kind: str = "vocab"
    buckets: int = 1 << 20
    min_count: int = 1
    max_size: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {self.buckets}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")
        if self.max_size < 0:
            raise ValueError(f"max_size must be >= 0 (0: no limit), got {self.max_size}")


def as_text(values: Any) -> np.ndarray:
    """Raw values (a pandas Series or array) as an object array of their text, None
    where missing. Integral floats lose their ``.0`` (an integer column with nulls
    becomes float in pandas; its values are the integers' text)."""
    s = pd.Series(values, copy=False)
    if pd.api.types.is_float_dtype(s.dtype):
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        out = np.full(len(v), None, dtype=object)
        ok = np.isfinite(v)
        integral = ok & (v == np.floor(v))
        out[integral] = v[integral].astype(np.int64).astype(str)
        rest = ok & ~integral
        out[rest] = v[rest].astype(str)
        return out
    if pd.api.types.is_integer_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
        out = s.astype("string").to_numpy(dtype=object, na_value=None)
        return out
    out = s.to_numpy(dtype=object, na_value=None)
    if len(out) and not all(v is None or isinstance(v, str) for v in out[:64]):
        out = np.array([None if v is None or (isinstance(v, float) and np.isnan(v))
                        else str(v) for v in out], dtype=object)
    return out


def hash_ids(text: np.ndarray, buckets: int) -> np.ndarray:
    """``hash`` ids (int64, 1..buckets; 0 where ``text`` is None) of an object array
    of texts."""
    out = np.full(len(text), OOV_ID, np.int64)
    present = ~pd.isna(text)
    if present.any():
        h = hash_array(text[present].astype(object), categorize=True)
        out[present] = (h % np.uint64(buckets)).astype(np.int64) + 1
    return out


class Counter:
    """Train's value counts of one feature, merged block by block (the ``vocab`` pass)."""

    def __init__(self) -> None:
        self.counts: pd.Series = pd.Series(dtype=np.int64)

    @classmethod
    def of(cls, counts: pd.Series) -> Counter:
        """A counter holding ``counts`` (text -> count), merged elsewhere."""
        c = cls()
        c.counts = counts
        return c

    def add(self, text: np.ndarray) -> None:
        c = pd.Series(text, dtype=object).value_counts(dropna=True)
        c.index = c.index.astype(object)
        self.counts = c if self.counts.empty else self.counts.add(c, fill_value=0)

    def vocabulary(self, rule: IdRule) -> Vocabulary:
        c = self.counts.astype(np.int64)
        c = c[c >= rule.min_count]
        if rule.max_size and len(c) > rule.max_size:
            frame = pd.DataFrame({"v": c.index.astype(str), "n": c.to_numpy()})
            frame = frame.sort_values(["n", "v"], ascending=[False, True])
            c = c[frame["v"].to_numpy()[:rule.max_size]]
        return Vocabulary(sorted(str(v) for v in c.index))


class Vocabulary:
    """Sorted texts -> ids 1..len; looked up vectorised (``pandas.Index``)."""

    def __init__(self, values: list[str]) -> None:
        self.values = list(values)
        self._index = pd.Index(np.array(self.values, dtype=object))

    def __len__(self) -> int:
        return len(self.values)

    def ids(self, text: np.ndarray) -> np.ndarray:
        """Ids (int64) of an object array of texts; 0 for None and unseen values."""
        if not len(text):
            return np.zeros(0, np.int64)
        return (self._index.get_indexer(np.asarray(text, dtype=object)) + 1).astype(np.int64)


def encode(text: np.ndarray, rule: IdRule, vocab: Vocabulary | None) -> np.ndarray:
    """The ids of ``text`` under ``rule`` (``vocab``: the feature's vocabulary)."""
    if rule.kind == "hash":
        return hash_ids(text, rule.buckets)
    assert vocab is not None, "a vocab rule needs its vocabulary"
    return vocab.ids(text)


def cardinality(rule: IdRule, vocab: Vocabulary | None) -> int:
    """Ids a feature can take under ``rule``, OOV id 0 included."""
    return rule.buckets + 1 if rule.kind == "hash" else len(vocab or ()) + 1
