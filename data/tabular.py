"""Any Parquet or CSV dataset described by a small TOML file.

```toml
train = "train.parquet"                 # paths relative to this file; .parquet or .csv
valid = "valid.parquet"
test = "test.parquet"
dense = ["age", "hours"]                # numeric columns
sparse = ["workclass", "education"]     # categorical columns, raw values (str or int)
multi_hot = { genres = "|" }            # categorical columns holding several values
tasks = ["income"]                      # label columns, 0/1
skip_bad_rows = false                   # true: leave malformed rows out, counted
```

Vocabularies come from train (ids 1..V, unseen or missing values -> id 0); dense
columns are standardised with train's mean and standard deviation. Every error names the
file, and where it applies the row (CSV: the line number, header = line 1; Parquet: the
1-based data row) and the column. The TOML file is parsed as data; nothing in it runs.

With ``skip_bad_rows = true`` malformed rows (a CSV line with the wrong number of
fields, a non-numeric dense value, a label other than 0/1, an empty multi-hot value) are
left out instead, and ``Dataset.skipped`` counts them per split and reason, with the
first few places; the jobs print the counts and put them in their reports.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from recdistill.data.errors import DataError
from recdistill.data.spec import Dataset, ExampleTable, FeatureSpec, SparseFeature

_KEYS = {"train": str, "valid": str, "test": str, "dense": list, "sparse": list,
         "multi_hot": dict, "tasks": list, "skip_bad_rows": bool}
_FIRST = 5  # places of skipped rows kept per split
_REQUIRED = ("train", "valid", "test", "tasks")


def _describe(toml_path: Path) -> dict[str, Any]:
    if not toml_path.is_file():
        raise DataError("dataset description not found", path=str(toml_path))
    try:
        desc = tomllib.loads(toml_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"not valid TOML: {e}", path=str(toml_path)) from None
    for key in desc:
        if key not in _KEYS:
            raise DataError(f"unknown key {key!r}; known keys are {sorted(_KEYS)}",
                            path=str(toml_path))
    for key in _REQUIRED:
        if key not in desc:
            raise DataError(f"missing key {key!r}", path=str(toml_path))
    for key, kind in _KEYS.items():
        if key in desc and not isinstance(desc[key], kind):
            raise DataError(f"key {key!r} must be a {kind.__name__}, got "
                            f"{type(desc[key]).__name__}", path=str(toml_path))
    for key in ("dense", "sparse", "tasks"):
        if not all(isinstance(c, str) and c for c in desc.get(key, [])):
            raise DataError(f"key {key!r} must list column names", path=str(toml_path))
    for col, sep in desc.get("multi_hot", {}).items():
        if not isinstance(sep, str) or not sep:
            raise DataError(f"multi_hot.{col}: separator must be a non-empty string",
                            path=str(toml_path))
    if not desc["tasks"]:
        raise DataError("key 'tasks' must name at least one label column",
                        path=str(toml_path))
    seen: dict[str, str] = {}
    for key in ("dense", "sparse", "multi_hot", "tasks"):
        for col in desc.get(key, []):
            if col in seen:
                raise DataError(f"column {col!r} is listed in both {seen[col]!r} and "
                                f"{key!r}", path=str(toml_path))
            seen[col] = key
    return desc


_CSV_LINE = re.compile(r"line (\d+)")
_CSV_FIELDS = re.compile(r"Expected (\d+) fields in line \d+, saw (\d+)")  # pandas' wording


def _read_frame(path: Path, columns: list[str], named_by: str,
                skipped: list[list[str]] | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """The needed columns as object/str frame and each data row's number in the file.

    ``skipped``: CSV lines with the wrong number of fields are left out and appended
    there (pandas' python engine hands them over without their line numbers), instead
    of failing."""
    if not path.is_file():
        raise DataError(f"file not found (named by {named_by!r})", path=str(path))
    suffix = path.suffix.lower()
    if suffix == ".csv":
        kw: dict[str, Any] = {}
        if skipped is not None:
            kw = {"engine": "python",
                  "on_bad_lines": lambda fields: skipped.append(fields)}  # None: drop
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], **kw)
        except pd.errors.ParserError as e:
            m = _CSV_LINE.search(str(e))
            fields = _CSV_FIELDS.search(str(e))
            what = (f"{fields.group(2)} fields where the header has {fields.group(1)}"
                    if fields else "cannot be split into the header's fields")
            raise DataError(f"malformed row: {what} (a stray comma or quote? "
                            "skip_bad_rows = true leaves such rows out)", path=str(path),
                            row=int(m.group(1)) if m else None) from None
        except pd.errors.EmptyDataError:
            raise DataError("file is empty", path=str(path)) from None
        first_row = 2  # line 1 is the header
        if skipped:  # line numbers of the kept rows are no longer contiguous: unknown
            rows = np.full(len(frame), -1)
        else:
            rows = np.arange(first_row, first_row + len(frame))
    elif suffix in (".parquet", ".pq"):
        try:
            frame = pq.read_table(path).to_pandas()
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types here
            raise DataError(f"cannot read Parquet: {e}", path=str(path)) from None
        rows = np.arange(1, 1 + len(frame))
    else:
        raise DataError(f"unsupported file type {suffix!r}; use .csv or .parquet",
                        path=str(path))
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"unknown column (not in the file; it has {list(frame.columns)})",
                        path=str(path), column=missing[0])
    return frame[columns].reset_index(drop=True), rows


def _show(value: Any) -> str:
    """A cell value as a person would write it (2, not np.int64(2))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _row(rows: np.ndarray, i: int) -> int | None:
    return int(rows[i]) if rows[i] >= 0 else None


def _check(bad: np.ndarray, message: str, frame: pd.DataFrame, col: str, path: Path,
           rows: np.ndarray) -> None:
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(message.format(_show(frame[col].iloc[i])), path=str(path),
                        row=_row(rows, i), column=col)


def _numeric_values(frame: pd.DataFrame, col: str) -> np.ndarray:
    return pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)


def _bad_rows(frame: pd.DataFrame, dense: list[str], tasks: list[str],
              multi: dict[str, str]) -> dict[tuple[str, str], np.ndarray]:
    """(reason, column) -> bool mask of the rows that fail that check."""
    out = {}
    for c in dense:
        out[("expected a number, got {}", c)] = ~np.isfinite(_numeric_values(frame, c))
    for c in tasks:
        v = _numeric_values(frame, c)
        out[("label must be 0 or 1, got {}", c)] = ~((v == 0) | (v == 1))
    for c, sep in multi.items():
        out[("empty multi-hot value", c)] = np.array(
            [not _parts(v, sep) for v in frame[c].tolist()], bool)
    return out


def _parts(v: Any, sep: str | None) -> list[str]:
    """A cell's categorical values: none if missing, else the value or its parts."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return []
    return [str(v)] if sep is None else [p for p in str(v).split(sep) if p != ""]


def _tokens(frame: pd.DataFrame, col: str, sep: str | None) -> list[list[str]]:
    return [_parts(v, sep) for v in frame[col].tolist()]


def load_tabular(toml_path: str | Path) -> Dataset:
    """Load the dataset a TOML description names; see the module docstring."""
    toml_path = Path(toml_path)
    desc = _describe(toml_path)
    dense_cols: list[str] = list(desc.get("dense", []))
    sparse_cols: list[str] = list(desc.get("sparse", []))
    multi: dict[str, str] = dict(desc.get("multi_hot", {}))
    tasks: list[str] = list(desc["tasks"])
    cat_cols = sparse_cols + list(multi)
    columns = dense_cols + cat_cols + tasks

    skip = bool(desc.get("skip_bad_rows", False))
    parsed, skipped = {}, {}
    for split in ("train", "valid", "test"):
        path = (toml_path.parent / desc[split]).resolve()
        wrong_width: list[list[str]] | None = [] if skip else None
        frame, rows = _read_frame(path, columns, split, wrong_width)
        bad = _bad_rows(frame, dense_cols, tasks, multi)
        if skip:
            drop = np.zeros(len(frame), bool)
            reasons: dict[str, int] = {}
            first: list[str] = []
            if wrong_width:
                reasons["wrong number of fields"] = len(wrong_width)
                first.append(f"{len(wrong_width)} line(s) with the wrong number of fields")
            for (message, col), mask in bad.items():
                if mask.any():
                    reasons[f"{col}: {message.format('').strip().rstrip(',')}"] = \
                        int(mask.sum())
                    first += [f"row {_row(rows, i)}, column {col!r}"
                              for i in np.flatnonzero(mask & ~drop)[:_FIRST]]
                drop |= mask
            if drop.any() or wrong_width:
                skipped[split] = {"rows": int(drop.sum()) + len(wrong_width or []),
                                  "reasons": reasons, "first": first[:_FIRST],
                                  "file": str(path)}
            frame, rows = frame[~drop].reset_index(drop=True), rows[~drop]
        else:
            for (message, col), mask in bad.items():
                _check(mask, message, frame, col, path, rows)
        if len(frame) == 0:
            raise DataError("file has no rows" + (" left after skipping bad rows" if skip
                                                  else ""), path=str(path))
        parsed[split] = {
            "dense": np.stack([_numeric_values(frame, c) for c in dense_cols], axis=1)
            if dense_cols else np.zeros((len(frame), 0)),
            "labels": np.stack([_numeric_values(frame, c) for c in tasks],
                               axis=1).astype(np.float32),
            "cats": {c: _tokens(frame, c, multi.get(c)) for c in cat_cols},
            "n": len(frame),
        }

    vocabs = {c: {v: i + 1 for i, v in enumerate(sorted({t for row in
                                                          parsed["train"]["cats"][c]
                                                          for t in row}))}
              for c in cat_cols}
    mu = parsed["train"]["dense"].mean(axis=0)
    sd = parsed["train"]["dense"].std(axis=0) + 1e-6
    next_id = 0
    tables = {}
    for split in ("train", "valid", "test"):
        p = parsed[split]
        sparse = {}
        for c in cat_cols:
            vocab = vocabs[c]
            lengths = np.array([len(row) for row in p["cats"][c]], np.int64)
            values = np.array([vocab.get(t, 0) for row in p["cats"][c] for t in row],
                              np.int64)
            if c not in multi:  # a missing single value becomes the OOV id
                values = np.array([vocab.get(row[0], 0) if row else 0
                                   for row in p["cats"][c]], np.int64)
                lengths = np.ones(p["n"], np.int64)
            sparse[c] = (np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), values)
        tables[split] = ExampleTable(
            dense=((p["dense"] - mu) / sd).astype(np.float32),
            labels=p["labels"], ids=np.arange(next_id, next_id + p["n"], dtype=np.int64),
            sparse=sparse)
        next_id += p["n"]

    spec = FeatureSpec(
        dense=tuple(dense_cols),
        sparse=tuple(SparseFeature(c, len(vocabs[c]) + 1, multi_valued=c in multi)
                     for c in cat_cols),
        tasks=tuple(tasks))
    return Dataset(spec, tables["train"], tables["valid"], tables["test"],
                   name=str(toml_path), skipped=skipped)
