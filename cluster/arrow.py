"""Ray Data's Arrow layout of examples: an :class:`ExampleTable` as an Arrow table and
back, and a Ray Data ``pyarrow`` batch as :class:`BatchArrays`.

Dense features and labels become fixed-size list columns, every sparse feature a list
column (one bag per row), so a batch converts with a few zero-copy Arrow calls.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recdistill.data.spec import BatchArrays, ExampleTable

ID, DENSE, LABELS = "_id", "_dense", "_labels"


def to_arrow(table: ExampleTable) -> pa.Table:
    n = len(table)

    def fixed(values: np.ndarray) -> pa.Array:
        width = values.shape[1]
        flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, width) if width else \
            pa.array([[]] * n, type=pa.list_(pa.float32(), 0))

    columns = {ID: pa.array(table.ids.astype(np.int64)), DENSE: fixed(table.dense),
               LABELS: fixed(table.labels)}
    for name, (offsets, values) in table.sparse.items():
        columns[name] = pa.LargeListArray.from_arrays(pa.array(offsets.astype(np.int64)),
                                                      pa.array(values.astype(np.int64)))
    return pa.table(columns)


def _fixed_to_numpy(col: pa.ChunkedArray | pa.Array, n: int) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    width = arr.type.list_size
    if width == 0:
        return np.zeros((n, 0), np.float32)
    return pc.list_flatten(arr).to_numpy(zero_copy_only=False).reshape(n, width)


def _bag(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A list column -> (each row's bag length, the values of every bag, int64)."""
    arr = col.combine_chunks()
    return (pc.list_value_length(arr).to_numpy(zero_copy_only=False),
            pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.int64, copy=False))


def _rows(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dense, labels, ids) of an Arrow table of :func:`to_arrow`'s layout."""
    n = table.num_rows
    return (_fixed_to_numpy(table.column(DENSE), n).astype(np.float32, copy=False),
            _fixed_to_numpy(table.column(LABELS), n).astype(np.float32, copy=False),
            table.column(ID).to_numpy().astype(np.int64, copy=False))


def arrow_to_table(table: pa.Table) -> ExampleTable:
    """An Arrow table of :func:`to_arrow`'s layout -> the :class:`ExampleTable` (every
    sparse column)."""
    sparse = {}
    for k in table.column_names:
        if k not in (ID, DENSE, LABELS):
            lengths, values = _bag(table.column(k))
            offsets = np.zeros(table.num_rows + 1, np.int64)
            np.cumsum(lengths, out=offsets[1:])
            sparse[k] = (offsets, values)
    return ExampleTable(*_rows(table), sparse=sparse)


def arrow_to_batch(batch: pa.Table, keys: tuple[str, ...]) -> BatchArrays:
    """A Ray Data ``pyarrow`` batch -> BatchArrays holding the sparse features ``keys``."""
    bags = [_bag(batch.column(k)) for k in keys]
    return BatchArrays.key_major(*_rows(batch), keys, [ln for ln, _ in bags],
                                 [v for _, v in bags])
