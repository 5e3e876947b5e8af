"""Ray Data input: an ExampleTable as an Arrow-backed Ray Dataset, and back to batches.

Dense features and labels become fixed-size list columns, every sparse feature a list
column (one bag per row), so a Ray Data batch in ``pyarrow`` format converts to a
:class:`BatchArrays` with a few zero-copy Arrow calls.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from data.spec import BatchArrays, ExampleTable

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


def to_ray_dataset(table: ExampleTable) -> ray.data.Dataset:
    """The table as a Ray Dataset held in the object store."""
    return ray.data.from_arrow(to_arrow(table))


def _fixed_to_numpy(col: pa.ChunkedArray | pa.Array, n: int) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    width = arr.type.list_size
    if width == 0:
        return np.zeros((n, 0), np.float32)
    return pc.list_flatten(arr).to_numpy(zero_copy_only=False).reshape(n, width)


def arrow_to_batch(batch: pa.Table, keys: tuple[str, ...]) -> BatchArrays:
    """A Ray Data ``pyarrow`` batch -> BatchArrays holding the sparse features ``keys``."""
    n = batch.num_rows
    lengths, values = [], []
    for k in keys:
        col = batch.column(k).combine_chunks()
        lengths.append(pc.list_value_length(col).to_numpy(zero_copy_only=False))
        values.append(pc.list_flatten(col).to_numpy(zero_copy_only=False))
    return BatchArrays(
        dense=_fixed_to_numpy(batch.column(DENSE), n).astype(np.float32, copy=False),
        labels=_fixed_to_numpy(batch.column(LABELS), n).astype(np.float32, copy=False),
        ids=batch.column(ID).to_numpy().astype(np.int64, copy=False),
        keys=keys,
        values=np.concatenate(values).astype(np.int64) if values else np.zeros(0, np.int64),
        lengths=np.concatenate(lengths).astype(np.int32) if lengths else np.zeros(0, np.int32))
