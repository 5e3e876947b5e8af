"""The files of a dataset split, and their rows block by block.

A split is named by one file, a directory (its ``.parquet`` / ``.pq`` / ``.csv`` files,
subdirectories included, names starting with ``.`` or ``_`` left out),
a glob (``train/part-*.parquet``) or a URI of any of these (``file://``, ``s3://``,
``gs://``, ... through pyarrow's filesystems, which take credentials from the
environment as pyarrow documents). Files are read in the order of their sorted paths, in
blocks of at most ``block_rows`` rows (Parquet: only the columns asked for; CSV:
pandas' ``chunksize``, the columns kept afterwards), so no split is held whole to read
it.

Each file's schema is checked before its first block is read: a missing column, or a
Parquet column whose type differs from the split's first file, names the file and the
column. Row numbers in errors are as a person counts them in that file (CSV: the line,
header = line 1; Parquet: the 1-based data row).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recdistill.data.errors import DataError

SUFFIXES = (".parquet", ".pq", ".csv")
BLOCK_ROWS = 65_536
_GLOB = re.compile(r"[*?\[]")
_CSV_LINE = re.compile(r"line (\d+)")
_CSV_FIELDS = re.compile(r"Expected (\d+) fields in line \d+, saw (\d+)")  # pandas' wording


@dataclass(frozen=True)
class Source:
    """The files of one split: ``paths`` on ``fs``, named by ``named_by`` as ``given``."""

    named_by: str
    given: str
    fs: Any
    paths: tuple[str, ...]
    uri: str = ""  # the scheme prefix ("s3://") of a URI source, "" for local paths

    def show(self, path: str) -> str:
        """``path`` as errors name it."""
        return f"{self.uri}{path}" if self.uri else path


def file_kind(path: str) -> str:
    """``csv`` or ``parquet``, by the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"unsupported file type {suffix!r}; use .csv or .parquet",
                        path=path)
    return "csv" if suffix == ".csv" else "parquet"


def resolve(given: str, base: Path, named_by: str) -> Source:
    """The files ``given`` names (relative paths against ``base``); raises DataError
    naming the key when there are none."""
    uri = ""
    if "://" in given:
        try:
            fs, path = pafs.FileSystem.from_uri(given)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
            raise DataError(f"cannot open {given!r} (named by {named_by!r}): {e}") from None
        uri = "" if isinstance(fs, pafs.LocalFileSystem) else given.split("://", 1)[0] + "://"
    else:
        fs, path = pafs.LocalFileSystem(), str((base / given).resolve())
    if _GLOB.search(path):
        parent = path[:_GLOB.search(path).start()].rsplit("/", 1)[0] or "/"
        found = fs.get_file_info(pafs.FileSelector(parent, recursive=True,
                                                   allow_not_found=True))
        paths = [f.path for f in found if f.type == pafs.FileType.File
                 and fnmatch.fnmatch(f.path, path)]
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            paths = [path]
        elif info.type == pafs.FileType.Directory:
            # recursive: partitioned layouts (day=7/part-0.parquet) are directories too
            found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            paths = [f.path for f in found if f.type == pafs.FileType.File
                     and Path(f.path).suffix.lower() in SUFFIXES
                     and not Path(f.path).name.startswith((".", "_"))]
        else:
            raise DataError(f"file not found (named by {named_by!r})",
                            path=(uri + path) if uri else path)
    if not paths:
        raise DataError(f"no .parquet or .csv files (named by {named_by!r})",
                        path=(uri + path) if uri else path)
    for p in paths:
        file_kind(p)
    return Source(named_by, given, fs, tuple(sorted(paths)), uri)


def _arrow_kind(t: pa.DataType) -> str:
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) \
            or pa.types.is_decimal(t) or pa.types.is_null(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or \
            pa.types.is_string_view(t) or pa.types.is_dictionary(t):
        return "string"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return "list"
    return str(t)


def open_parquet(source: Source, path: str, columns: list[str],
                 first: dict[str, pa.DataType]) -> pq.ParquetFile:
    """The Parquet file (its footer read), its schema checked: every column there, of
    the same kind of type as in the split's first file (``first``: column -> type,
    filled here)."""
    shown = source.show(path)
    try:
        f = pq.ParquetFile(source.fs.open_input_file(path))
        schema = f.schema_arrow
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types here
        raise DataError(f"cannot read Parquet: {e}", path=shown) from None
    for c in columns:
        if c not in schema.names:
            raise DataError(f"unknown column (not in the file; it has {schema.names})",
                            path=shown, column=c)
        t = schema.field(c).type
        t0 = first.setdefault(c, t)
        if _arrow_kind(t) != _arrow_kind(t0):
            raise DataError(f"column type {t} where the split's first file "
                            f"{source.show(source.paths[0])} has {t0}", path=shown,
                            column=c)
    return f


def check_schemas(source: Source, columns: list[str]) -> None:
    """Every Parquet file of the split has ``columns``, of one kind of type (its
    footer alone is read); a CSV file's header has them."""
    first: dict[str, pa.DataType] = {}
    for path in source.paths:
        if file_kind(path) == "parquet":
            open_parquet(source, path, columns, first)
        else:
            next(csv_blocks(source, path, columns, 1, None), None)


def _parquet_blocks(source: Source, path: str, columns: list[str], block_rows: int,
                    first: dict[str, pa.DataType]
                    ) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    shown = source.show(path)
    f = open_parquet(source, path, columns, first)
    start = 1
    try:
        for rb in f.iter_batches(batch_size=block_rows, columns=columns):
            frame = rb.to_pandas()
            yield frame, np.arange(start, start + len(frame))
            start += len(frame)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read Parquet: {e}", path=shown) from None


def csv_blocks(source: Source, path: str, columns: list[str], block_rows: int,
                skipped: list[list[str]] | None
                ) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    shown = source.show(path)
    try:
        with source.fs.open_input_stream(path) as stream:
            header = pd.read_csv(stream, dtype=str, nrows=0).columns.tolist()
    except pd.errors.EmptyDataError:
        raise DataError("file is empty", path=shown) from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"unknown column (not in the file; it has {header})", path=shown,
                        column=missing[0])
    kw: dict[str, Any] = {}
    if skipped is not None:
        kw = {"engine": "python",
              "on_bad_lines": lambda fields: skipped.append(fields)}  # None: drop
    before = len(skipped or ())
    line = 2  # line 1 is the header
    with source.fs.open_input_stream(path) as stream:
        try:
            for frame in pd.read_csv(stream, dtype=str, keep_default_na=False,
                                     na_values=[""], chunksize=block_rows, **kw):
                if skipped is not None and len(skipped) > before:
                    rows = np.full(len(frame), -1)  # kept lines are no longer contiguous
                else:
                    rows = np.arange(line, line + len(frame))
                line += len(frame)
                yield frame[columns].reset_index(drop=True), rows
        except pd.errors.ParserError as e:
            m = _CSV_LINE.search(str(e))
            fields = _CSV_FIELDS.search(str(e))
            what = (f"{fields.group(2)} fields where the header has {fields.group(1)}"
                    if fields else "cannot be split into the header's fields")
            raise DataError(f"malformed row: {what} (a stray comma or quote? "
                            "skip_bad_rows = true leaves such rows out)", path=shown,
                            row=int(m.group(1)) if m else None) from None


def blocks(source: Source, columns: list[str], *, block_rows: int = BLOCK_ROWS,
           skipped: list[list[str]] | None = None
           ) -> Iterator[tuple[str, pd.DataFrame, np.ndarray]]:
    """(file as errors name it, block of ``columns``, each row's number in its file),
    file after file. ``skipped``: CSV lines with the wrong number of fields are left out
    and appended there instead of failing."""
    first: dict[str, pa.DataType] = {}
    for path in source.paths:
        if file_kind(path) == "csv":
            it = csv_blocks(source, path, columns, block_rows, skipped)
        else:
            it = _parquet_blocks(source, path, columns, block_rows, first)
        for frame, rows in it:
            yield source.show(path), frame, rows
