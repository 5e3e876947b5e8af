"""How a raw row of a tabular dataset becomes an example, kept with a trained student.

A :class:`RowTransform` holds the columns (dense, categorical, multi-hot separators,
labels), each categorical column's id rule (``data/ids.py``) with its vocabulary, and
train's dense mean and standard deviation. ``data/tabular.py`` builds one while loading
a dataset; a student artifact saves it (``transform.json`` and one Parquet file per
vocabulary), so ``recdistill predict`` scores raw files the way the student was trained.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recdistill.data import storage
from recdistill.data.errors import DataError
from recdistill.data.ids import IdRule, Vocabulary, as_text, encode
from recdistill.data.spec import ExampleTable

FILE = "transform.json"
FORMAT = 1


def numeric(frame: pd.DataFrame, col: str) -> np.ndarray:
    """A column as float64, NaN where a value is not a number."""
    return pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)


def multi_texts(column: pd.Series, sep: str) -> tuple[np.ndarray, np.ndarray]:
    """A multi-hot column's (values per row, the values' texts): split at ``sep``,
    empty parts dropped, a missing cell has none."""
    lists = pc.split_pattern(pa.array(as_text(column), type=pa.string()), sep)
    per_row = lists.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    flat = lists.flatten().to_numpy(zero_copy_only=False).astype(object)
    keep = flat != ""
    lengths = np.bincount(np.repeat(np.arange(len(column)), per_row)[keep],
                          minlength=len(column)).astype(np.int64)
    return lengths, flat[keep]


@dataclass
class RowTransform:
    """Raw columns -> model inputs. ``mean``/``std`` are train's (None until known)."""

    dense: tuple[str, ...]
    sparse: tuple[str, ...]
    multi_hot: dict[str, str]
    tasks: tuple[str, ...]
    rules: dict[str, IdRule]
    vocabs: dict[str, Vocabulary] = field(default_factory=dict)
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @property
    def categorical(self) -> list[str]:
        return list(self.sparse) + list(self.multi_hot)

    @property
    def columns(self) -> list[str]:
        return list(self.dense) + self.categorical + list(self.tasks)

    def texts(self, frame: pd.DataFrame, col: str) -> tuple[np.ndarray, np.ndarray]:
        """(values per row, their texts) of a categorical column; a single-valued
        column has one value per row, None where missing."""
        if col in self.multi_hot:
            return multi_texts(frame[col], self.multi_hot[col])
        return np.ones(len(frame), np.int64), as_text(frame[col])

    def raw_dense(self, frame: pd.DataFrame) -> np.ndarray:
        """A checked block's dense columns as stored (float64 [rows, D])."""
        return (np.stack([numeric(frame, c) for c in self.dense], axis=1)
                if self.dense else np.zeros((len(frame), 0)))

    def raw(self, frame: pd.DataFrame
            ) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """A checked block's (dense float64 as stored, labels float32, column ->
        (ids per row, ids))."""
        dense = self.raw_dense(frame)
        labels = np.stack([numeric(frame, c) for c in self.tasks], axis=1
                          ).astype(np.float32)
        cats = {}
        for c in self.categorical:
            lengths, text = self.texts(frame, c)
            cats[c] = (lengths, encode(text, self.rules[c], self.vocabs.get(c)))
        return dense, labels, cats

    def standardise(self, dense: np.ndarray) -> np.ndarray:
        assert self.mean is not None and self.std is not None, "train's stats first"
        return ((dense - self.mean) / self.std).astype(np.float32)

    def table(self, frame: pd.DataFrame, first_id: int = 0) -> ExampleTable:
        """A checked block as examples with ids ``first_id, first_id + 1, ...``."""
        dense, labels, cats = self.raw(frame)
        return ExampleTable(
            dense=self.standardise(dense), labels=labels,
            ids=np.arange(first_id, first_id + len(frame), dtype=np.int64),
            sparse={c: (np.concatenate([[0], np.cumsum(ln)]).astype(np.int64), v)
                    for c, (ln, v) in cats.items()})

    def save(self, root: str | Path) -> None:
        """``root/transform.json`` and ``root/vocab-<i>.parquet`` per vocabulary (a local
        directory or a storage URI)."""
        files = {}
        for i, (c, v) in enumerate(self.vocabs.items()):
            files[c] = f"vocab-{i}.parquet"
            buf = io.BytesIO()
            pq.write_table(pa.table({"value": pa.array(v.values, pa.string())}), buf)
            storage.write_bytes(storage.join(root, files[c]), buf.getvalue())
        doc = {"format": FORMAT, "dense": list(self.dense), "sparse": list(self.sparse),
               "multi_hot": self.multi_hot, "tasks": list(self.tasks),
               "ids": {c: asdict(r) for c, r in self.rules.items()}, "vocab_files": files,
               "mean": [] if self.mean is None else [float(x) for x in self.mean],
               "std": [] if self.std is None else [float(x) for x in self.std]}
        storage.write_text(storage.join(root, FILE), json.dumps(doc, indent=1))

    @classmethod
    def load(cls, root: str | Path) -> RowTransform:
        try:
            doc = json.loads(storage.read_text(storage.join(root, FILE)))
            assert doc["format"] == FORMAT, f"format {doc['format']}, not {FORMAT}"
            vocabs = {c: Vocabulary(pq.read_table(io.BytesIO(storage.read_bytes(
                storage.join(root, f)))).column("value").to_pylist())
                      for c, f in doc["vocab_files"].items()}
            return cls(tuple(doc["dense"]), tuple(doc["sparse"]), dict(doc["multi_hot"]),
                       tuple(doc["tasks"]), {c: IdRule(**r) for c, r in doc["ids"].items()},
                       vocabs, np.array(doc["mean"], np.float64),
                       np.array(doc["std"], np.float64))
        except Exception as e:  # noqa: BLE001 - any bad field: a bad file
            raise DataError(f"unreadable id and column transform ({e})",
                            path=storage.shown(storage.join(root, FILE))) from None
