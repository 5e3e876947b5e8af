"""Any Parquet or CSV dataset described by a small TOML file.

```toml
train = "train.parquet"                 # a file, a directory, a glob or a URI (s3://...)
valid = "valid.parquet"                 # relative paths are relative to this file
test = "test.parquet"
dense = ["age", "hours"]                # numeric columns
sparse = ["workclass", "education"]     # categorical columns, raw values (str or int)
multi_hot = { genres = "|" }            # categorical columns holding several values
tasks = ["income"]                      # label columns, 0/1
skip_bad_rows = false                   # true: leave malformed rows out, counted

[ids]                                   # raw values -> ids (data/ids.py), optional
kind = "hash"                           # or "vocab"; default: vocab for a single file,
buckets = 1048576                       #   hash for a directory, glob or URI
[ids.workclass]                         # per column: overrides the keys above
kind = "vocab"
min_count = 2                           # values seen fewer times in train -> id 0
max_size = 0                            # keep the most frequent (0: all)
```

Splits are read file by file in blocks (``data/files.py``). ``vocab`` ids come from one
counting pass over train (ids 1..V sorted by value; unseen or missing -> id 0); ``hash``
ids need no pass. Dense columns are standardised with train's mean and standard
deviation. Every error names the file, and where it applies the row (CSV: the line
number, header = line 1; Parquet: the 1-based data row) and the column. The TOML file is
parsed as data; nothing in it runs.

With ``skip_bad_rows = true`` malformed rows (a CSV line with the wrong number of
fields, a non-numeric dense value, a label other than 0/1, an empty multi-hot value) are
left out instead, and ``Dataset.skipped`` counts them per split and reason, with the
first few places; the jobs print the counts and put them in their reports.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from recdistill.data.configs import from_mapping
from recdistill.data.errors import ConfigError, DataError
from recdistill.data.file_stream import FileStream, plan
from recdistill.data.files import (BLOCK_ROWS, Source, blocks, check_schemas, file_kind,
                                   resolve)
from recdistill.data.ids import Counter, IdRule, cardinality
from recdistill.data.spec import Dataset, ExampleTable, FeatureSpec, SparseFeature
from recdistill.data.train_stats import cached_stats
from recdistill.data.transform import RowTransform, multi_texts, numeric

_KEYS = {"train": str, "valid": str, "test": str, "dense": list, "sparse": list,
         "multi_hot": dict, "tasks": list, "skip_bad_rows": bool, "ids": dict,
         "read": str, "group_key": str}
READS = ("auto", "memory", "stream")
AUTO_STREAM_ROWS = 2_000_000  # "auto" streams a Parquet train split of more rows
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
    group = desc.get("group_key", "")
    if group and seen.get(group) != "sparse":
        raise DataError(f"group_key: {group!r} must be one of the 'sparse' columns "
                        f"{desc.get('sparse', [])}", path=str(toml_path))
    return desc


def _show(value: Any) -> str:
    """A cell value as a person would write it (2, not np.int64(2))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _row(rows: np.ndarray, i: int) -> int | None:
    return int(rows[i]) if rows[i] >= 0 else None


def _check(bad: np.ndarray, message: str, frame: pd.DataFrame, col: str, path: str,
           rows: np.ndarray) -> None:
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(message.format(_show(frame[col].iloc[i])), path=str(path),
                        row=_row(rows, i), column=col)


def _bad_rows(frame: pd.DataFrame, dense: list[str], tasks: list[str],
              multi: dict[str, str]) -> dict[tuple[str, str], np.ndarray]:
    """(reason, column) -> bool mask of the rows that fail that check."""
    out = {}
    for c in dense:
        out[("expected a number, got {}", c)] = ~np.isfinite(numeric(frame, c))
    for c in tasks:
        v = numeric(frame, c)
        out[("label must be 0 or 1, got {}", c)] = ~((v == 0) | (v == 1))
    for c, sep in multi.items():
        out[("empty multi-hot value", c)] = multi_texts(frame[c], sep)[0] == 0
    return out


def check_block(frame: pd.DataFrame, rows: np.ndarray, shown: str,
                t: RowTransform) -> None:
    """Fail on the block's first bad row, naming file ``shown``, its row and column."""
    for (message, col), mask in _bad_rows(frame, list(t.dense), list(t.tasks),
                                          t.multi_hot).items():
        _check(mask, message, frame, col, shown, rows)


def _id_rules(desc: dict[str, Any], cats: list[str], default: str,
              toml_path: Path) -> dict[str, IdRule]:
    """Each categorical column's id rule from the ``[ids]`` table: its keys are the
    defaults, a sub-table per column overrides them."""
    table = desc.get("ids", {})
    base = {k: v for k, v in table.items() if not isinstance(v, dict)}
    rules = {}
    for c, v in table.items():
        if isinstance(v, dict) and c not in cats:
            raise DataError(f"ids.{c}: not a sparse or multi_hot column; those are "
                            f"{cats}", path=str(toml_path))
    for c in cats:
        where = f"ids.{c}" if isinstance(table.get(c), dict) else "ids"
        try:
            rules[c] = from_mapping(IdRule, {"kind": default, **base, **table.get(c, {})},
                                    where)
        except (ConfigError, ValueError) as e:
            msg = str(e) if str(e).startswith(where) else f"{where}: {e}"
            raise DataError(msg, path=str(toml_path)) from None
    return rules


def _split_blocks(source: Source, columns: list[str], dense: list[str], tasks: list[str],
                  multi: dict[str, str], skip: bool, block_rows: int,
                  skipped: dict[str, Any] | None) -> Iterator[pd.DataFrame]:
    """The split's checked blocks: a bad row fails naming its place or, with ``skip``,
    is left out and counted into ``skipped`` (when given)."""
    wrong_width: list[list[str]] | None = [] if skip else None
    reasons: dict[str, int] = {}
    first: list[str] = []
    dropped, shown, n = 0, source.show(source.paths[0]), 0
    for shown, frame, rows in blocks(source, columns, block_rows=block_rows,
                                     skipped=wrong_width):
        bad = _bad_rows(frame, dense, tasks, multi)
        if skip:
            drop = np.zeros(len(frame), bool)
            for (message, col), mask in bad.items():
                if mask.any():
                    key = f"{col}: {message.format('').strip().rstrip(',')}"
                    reasons[key] = reasons.get(key, 0) + int(mask.sum())
                    first += [f"{shown} row {_row(rows, i)}, column {col!r}"
                              if len(source.paths) > 1 else
                              f"row {_row(rows, i)}, column {col!r}"
                              for i in np.flatnonzero(mask & ~drop)[:_FIRST]]
                drop |= mask
            dropped += int(drop.sum())
            frame = frame[~drop].reset_index(drop=True)
        else:
            for (message, col), mask in bad.items():
                _check(mask, message, frame, col, shown, rows)
        n += len(frame)
        if len(frame):
            yield frame
    if skip and skipped is not None and (dropped or wrong_width):
        if wrong_width:
            reasons = {"wrong number of fields": len(wrong_width), **reasons}
            first.insert(0, f"{len(wrong_width)} line(s) with the wrong number of fields")
        skipped[source.named_by] = {"rows": dropped + len(wrong_width or []),
                                    "reasons": reasons, "first": first[:_FIRST],
                                    "file": shown if len(source.paths) == 1
                                    else source.given}
    if n == 0:
        raise DataError("file has no rows" + (" left after skipping bad rows" if skip
                                              else ""), path=shown)


@dataclass
class StatsPart:
    """Train's counting pass over some of its rows: each vocab column's value counts
    (text -> count), the dense columns' sums and sums of squares, the rows. Parts of
    different rows add up (``data.ids.Counter`` merges counts; sums add)."""

    counts: dict[str, pd.Series]
    total: np.ndarray
    squares: np.ndarray
    n: int


def stats_part(blocks: Iterator[pd.DataFrame], t: RowTransform) -> StatsPart:
    """The counting pass over ``blocks`` (checked blocks of train)."""
    counters = {c: Counter() for c in t.categorical if t.rules[c].kind == "vocab"}
    total, squares, n = np.zeros(len(t.dense)), np.zeros(len(t.dense)), 0
    for frame in blocks:
        for c, counter in counters.items():
            counter.add(t.texts(frame, c)[1])
        dense = t.raw_dense(frame)
        total += dense.sum(axis=0)
        squares += (dense * dense).sum(axis=0)
        n += len(frame)
    return StatsPart({c: k.counts for c, k in counters.items()}, total, squares, n)


def finish_stats(part: StatsPart, t: RowTransform) -> int:
    """Train's vocabularies (by ``t``'s rules) and dense mean and standard deviation
    from all of train's counts and sums, into ``t``; train's rows."""
    t.vocabs = {c: Counter.of(counts).vocabulary(t.rules[c])
                for c, counts in part.counts.items()}
    t.mean, t.std = np.zeros(len(t.dense)), np.ones(len(t.dense))  # no dense: nothing
    if part.n:
        t.mean = part.total / part.n
        t.std = np.sqrt(np.maximum(part.squares / part.n - t.mean ** 2, 0.0)) + 1e-6
    return part.n


def _stats(blocks: Iterator[pd.DataFrame], t: RowTransform) -> int:
    """One pass over train in this process: its vocabularies and dense mean and
    standard deviation (from sums), into ``t``; train's rows."""
    return finish_stats(stats_part(blocks, t), t)


def _gather(blocks: Iterator[pd.DataFrame], t: RowTransform, limit: int | None = None
            ) -> tuple[np.ndarray, np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """A split's (raw dense, labels, column -> (offsets, ids)), its first ``limit``
    rows (all if None)."""
    parts, n = [], 0
    for frame in blocks:
        if limit is not None and n + len(frame) > limit:
            frame = frame.iloc[:limit - n].reset_index(drop=True)
        parts.append(t.raw(frame))
        n += len(frame)
        if limit is not None and n >= limit:
            break
    return (np.concatenate([d for d, _, _ in parts]),
            np.concatenate([y for _, y, _ in parts]),
            {c: (np.concatenate([[0], np.cumsum(np.concatenate(
                [s[c][0] for _, _, s in parts]))]).astype(np.int64),
                 np.concatenate([s[c][1] for _, _, s in parts]).astype(np.int64))
             for c in t.categorical})


# count_train(train, part_of, t): train's counting pass elsewhere (Ray Data over its
# files: ``cluster/train_stats.py``), ``part_of`` giving a source's ``StatsPart``
CountTrain = Callable[[Source, Callable[[Source], StatsPart], RowTransform], int]


def load_tabular(toml_path: str | Path, *, block_rows: int = BLOCK_ROWS,
                 read: str | None = None, train_rows: int | None = None,
                 instead_of_stream: int | None = None,
                 count_train: CountTrain | None = None) -> Dataset:
    """Load the dataset a TOML description names; see the module docstring.

    ``read`` overrides the TOML's ``read``; ``train_rows``: hold only train's first rows
    in memory, with the transform of the whole split; ``instead_of_stream``: where train
    would stream, do that with this many rows instead (a streamed dataset's teacher);
    ``count_train``: how a streamed train's counting pass runs when its statistics are
    not kept yet (None: in this process, block by block)."""
    toml_path = Path(toml_path)
    desc = _describe(toml_path)
    dense_cols: list[str] = list(desc.get("dense", []))
    sparse_cols: list[str] = list(desc.get("sparse", []))
    multi: dict[str, str] = dict(desc.get("multi_hot", {}))
    tasks: list[str] = list(desc["tasks"])
    cat_cols = sparse_cols + list(multi)
    columns = dense_cols + cat_cols + tasks
    skip = bool(desc.get("skip_bad_rows", False))
    read = read or desc.get("read", "auto")
    if read not in READS:
        raise DataError(f"key 'read' must be one of {list(READS)}, got {read!r}",
                        path=str(toml_path))

    sources = {split: resolve(desc[split], toml_path.parent, split)
               for split in ("train", "valid", "test")}
    train = sources["train"]
    # Hashing by default where train is more than one local file (a directory, a glob,
    # a URI): data that may not fit one process; vocabularies for a single file.
    one_file = not train.uri and train.paths == (str((toml_path.parent /
                                                      desc["train"]).resolve()),)
    rules = _id_rules(desc, cat_cols, "vocab" if one_file else "hash", toml_path)
    t = RowTransform(tuple(dense_cols), tuple(sparse_cols), multi, tuple(tasks), rules)
    # The chunks from the footers (each file's schema checked there): what a stream
    # reads, and for "auto" how many rows train has (a CSV's are unknown unread).
    chunks = plan(train, columns) if read == "stream" or (read == "auto" and all(
        file_kind(p) == "parquet" for p in train.paths)) else None
    stream = read == "stream" or (chunks is not None and
                                  sum(c.rows for c in chunks) > AUTO_STREAM_ROWS)
    if stream and instead_of_stream is not None:
        stream, train_rows = False, instead_of_stream
        read = f"its first {instead_of_stream:,} rows instead of a stream"
    if stream and skip:
        raise DataError("skip_bad_rows = true needs the rows in memory (a streamed pass "
                        "counts on each file's rows); set read = \"memory\" or clean the "
                        "files", path=str(toml_path))

    def blocks_of(split: str, skipped: dict[str, Any] | None) -> Iterator[pd.DataFrame]:
        return _split_blocks(sources[split], columns, dense_cols, tasks, multi, skip,
                             block_rows, skipped)

    skipped: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    stats_from = ""
    if stream or train_rows is not None:  # train's stats first, from one pass
        # over the columns they need and the labels, each row of those checked (every
        # file's schema first, if planning did not), so a bad value fails here, before
        # anything is written;
        # a hashed multi-hot value that is empty fails where a pass reads it
        if chunks is None:
            check_schemas(train, columns)
        need = dense_cols + [c for c in cat_cols if rules[c].kind == "vocab"] + tasks
        multi_need = {c: s for c, s in multi.items() if c in need}

        def checked(src: Source) -> Iterator[pd.DataFrame]:  # the columns the pass reads
            return _split_blocks(src, need, dense_cols, tasks, multi_need, False,
                                 block_rows, None)

        def count() -> int:
            if count_train is not None:  # elsewhere (Ray Data): a part per source
                return count_train(train, lambda src: stats_part(checked(src), t), t)
            return _stats(checked(train), t)
        n_train, stats_from = cached_stats(toml_path.parent, train, t, count)
        train_part: Any = FileStream(train, t, chunks) if stream else \
            _gather(blocks_of("train", skipped), t, train_rows)
    else:  # all in memory: the exact numpy mean and std of the loaded rows
        if any(r.kind == "vocab" for r in rules.values()):
            _stats(blocks_of("train", None), t)
        raw["train"] = _gather(blocks_of("train", skipped), t)
        t.mean = raw["train"][0].mean(axis=0)
        t.std = raw["train"][0].std(axis=0) + 1e-6
        n_train = len(raw["train"][1])
    tables: dict[str, Any] = {}
    next_id = n_train  # train's ids are 0..n_train-1, streamed or not
    for split in ("valid", "test"):
        if stream:  # scored block by block where it is read, ids after train's
            tables[split] = FileStream(sources[split], t,
                                       plan(sources[split], columns, next_id))
            next_id += len(tables[split])
        else:
            raw[split] = _gather(blocks_of(split, skipped), t)
    for split, (dense_raw, labels, sparse) in raw.items():
        first = 0 if split == "train" else next_id
        tables[split] = ExampleTable(
            dense=t.standardise(dense_raw), labels=labels,
            ids=np.arange(first, first + len(labels), dtype=np.int64), sparse=sparse)
        next_id += 0 if split == "train" else len(labels)
    if "train" not in tables:
        tables["train"] = train_part if stream else ExampleTable(
            t.standardise(train_part[0]), train_part[1],
            np.arange(len(train_part[1]), dtype=np.int64), train_part[2])

    spec = FeatureSpec(
        dense=tuple(dense_cols),
        sparse=tuple(SparseFeature(c, cardinality(rules[c], t.vocabs.get(c)),
                                   multi_valued=c in multi) for c in cat_cols),
        tasks=tuple(tasks), group_key=desc.get("group_key", ""))
    why = (read if instead_of_stream is not None and train_rows == instead_of_stream
           else f"read = {read!r}") + (f": more than {AUTO_STREAM_ROWS:,} Parquet rows"
                                       if read == "auto" and stream else "")
    kinds: dict[str, list[str]] = {}
    for c, r in rules.items():
        kinds.setdefault(f"{r.kind} into {r.buckets:,} buckets" if r.kind == "hash"
                         else r.kind, []).append(c)
    reading = "" if one_file and not stream and train_rows is None else (
        f"train: {len(train.paths)} file(s), {n_train:,} rows, "
        f"{'streamed' if stream else 'in memory'} ({why}); ids: " + "; ".join(
            f"{k} ({', '.join(cs) if len(cs) <= 3 else f'{len(cs)} columns'})"
            for k, cs in kinds.items())) + (f"; {stats_from}" if stats_from else "")
    return Dataset(spec, tables["train"], tables["valid"], tables["test"],
                   name=str(toml_path), skipped=skipped, transform=t, reading=reading)
