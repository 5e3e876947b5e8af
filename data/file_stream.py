"""Training rows of files, read where they are used and never all in one process.

A :class:`FileStream` plans a split's files into chunks (a Parquet row group; a CSV
file) from the files' footers and sizes alone. Chunk ``c`` is read, checked and encoded
through the dataset's :class:`RowTransform` by whoever asks for it (a Ray Data task,
``cluster/data.py``): a pass shuffles the chunk order and each chunk's rows, so memory
is bounded by a few chunks, not by the split. Example ids are row positions in the
split (files in sorted order), the same ids an in-memory load of the split gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recdistill.data.errors import DataError
from recdistill.data.files import BLOCK_ROWS, Source, csv_blocks, file_kind, open_parquet
from recdistill.data.spec import ExampleTable
from recdistill.data.transform import RowTransform


@dataclass(frozen=True)
class Chunk:
    """Rows ``[first_row, first_row + rows)`` (0-based) of file ``path``: Parquet row
    group ``group``, or the whole CSV file (``group`` -1); its first example id."""

    path: str
    group: int
    first_row: int
    rows: int
    first_id: int


def plan(source: Source, columns: list[str], first_id: int = 0) -> list[Chunk]:
    """The split's chunks, in file order, each file's schema checked for ``columns``,
    example ids from ``first_id``. Parquet: from each file's footer (read once); CSV:
    one chunk per file, its rows counted (one read of the file)."""
    chunks: list[Chunk] = []
    first: dict[str, pa.DataType] = {}
    next_id = first_id
    for path in source.paths:
        if file_kind(path) == "parquet":
            meta = open_parquet(source, path, columns, first).metadata
            row = 0
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                chunks.append(Chunk(path, g, row, n, next_id))
                row, next_id = row + n, next_id + n
        else:
            next(csv_blocks(source, path, columns, 1, None), None)  # its header
            with source.fs.open_input_stream(path) as stream:
                n = sum(len(b) for b in pd.read_csv(stream, usecols=[0], dtype=str,
                                                    chunksize=BLOCK_ROWS))
            chunks.append(Chunk(path, -1, 0, n, next_id))
            next_id += n
    return chunks


class FileStream:
    """A split's rows as chunks read on demand (see the module docstring).

    Args:
        source: the split's files.
        transform: raw columns -> examples (train's vocabularies and dense stats).
        chunks: :func:`plan` of ``source``.
    """

    def __init__(self, source: Source, transform: RowTransform, chunks: list[Chunk]
                 ) -> None:
        self.source, self.transform, self.chunks = source, transform, tuple(chunks)
        self.rows = sum(c.rows for c in chunks)

    def __len__(self) -> int:
        return self.rows

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)

    @property
    def chunk_sizes(self) -> list[int]:
        return [c.rows for c in self.chunks]

    @property
    def n_blocks(self) -> int:
        """Blocks evaluation scores one at a time (as ``ExampleTable.n_blocks``): chunks."""
        return len(self.chunks)

    def block(self, i: int) -> ExampleTable:
        return self.chunk(i)

    def num_batches(self, batch_size: int, world: int = 1) -> int:
        """Batches per rank of a pass (as ``ExampleTable.num_batches``)."""
        return -(-(len(self) // world) // batch_size)

    def _frame(self, chunk: Chunk) -> tuple[str, pd.DataFrame, np.ndarray]:
        from recdistill.data.tabular import check_block
        shown = self.source.show(chunk.path)
        columns = self.transform.columns
        if chunk.group < 0:
            frames = list(csv_blocks(self.source, chunk.path, columns, BLOCK_ROWS, None))
            frame = pd.concat([f for f, _ in frames], ignore_index=True)
            rows = np.concatenate([r for _, r in frames])
        else:
            try:
                f = pq.ParquetFile(self.source.fs.open_input_file(chunk.path))
                frame = f.read_row_group(chunk.group, columns=columns).to_pandas()
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types here
                raise DataError(f"cannot read Parquet row group {chunk.group}: {e}",
                                path=shown) from None
            rows = np.arange(chunk.first_row + 1, chunk.first_row + 1 + len(frame))
        if len(frame) != chunk.rows:
            raise DataError(f"has {len(frame)} rows where it had {chunk.rows} when the "
                            "job started (a file changed while it was read)", path=shown)
        check_block(frame, rows, shown, self.transform)
        return shown, frame, rows

    def chunk(self, c: int, seed: int | None = None) -> ExampleTable:
        """Chunk ``c``'s examples; with ``seed``, in an order drawn from ``(seed, c)``
        (the within-chunk half of a pass's shuffle; the pass shuffles the chunk order)."""
        ch = self.chunks[c]
        _, frame, _ = self._frame(ch)
        t = self.transform.table(frame, ch.first_id)
        if seed is None:
            return t
        return t.take(np.random.default_rng([seed, c]).permutation(len(t))).to_table()
