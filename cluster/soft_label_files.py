"""Offline soft labels on disk: the teacher's labels of a dataset, as Parquet parts with a
manifest, and reading them back.

Layout of a soft-label directory (``jobs.precompute`` writes it):

    manifest.json            teacher checkpoint + version, tasks, features and their
                             widths, dtypes, and every finished part (rows, files)
    train/part-00000/*.parquet   written by Ray Data (``Dataset.write_parquet``)
    train/part-00001/...
    valid/part-00000/...
    test/part-00000/...

Each row: ``_id`` (the example id), ``version`` (the teacher version that labelled it),
``logits`` (a fixed-size list of one logit per task) and one fixed-size list column per
requested feature, in the transport dtype (float16 / float32 as Parquet half / single
floats; bfloat16 as its int16 bits, as on the online stream).

A part is a fixed slice of a split's rows (by row order; a streamed split's chunk), so
its example ids are one contiguous range. It is written into ``part-NNNNN.partial``
with ``part.json`` (its rows, first example id and files) and renamed into place when
complete: a part under its final name is finished. Under a storage URI (``s3://``,
which has no rename) it is written in place with ``part.json`` last: a part is finished
when its ``part.json`` is there. The manifest is written twice, when
the run starts (no parts) and when it ends (every part, ``complete``); in between, and
for a restarted run, :meth:`Manifest.load` lists the finished parts from their
``part.json``, so a restart writes exactly the parts that are missing and no write
grows with the parts written before it.

``cluster/soft_labels.py`` serves them to the student groups.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recdistill.data import storage
from recdistill.data.errors import DataError

MANIFEST = "manifest.json"
FORMAT = 2  # 2: each part's first example id (readers find a batch's part by id)
SPLITS = ("train", "valid", "test")


def part_dir(root: str, split: str, part: int) -> str:
    return storage.join(root, split, f"part-{part:05d}")


def part_slices(n: int, part_rows: int) -> list[slice]:
    """Row slices of a split of ``n`` rows, ``part_rows`` each (the last may be shorter)."""
    return [slice(s, min(s + part_rows, n)) for s in range(0, n, part_rows)]


def _fixed(values: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def labels_table(ids: np.ndarray, version: int, logits: np.ndarray,
                 features: dict[str, np.ndarray],
                 members: dict[str, np.ndarray] | None = None) -> pa.Table:
    """One Arrow table of soft labels (arrays in their transport dtype); a committee's
    ``logits`` are its members' mean, each member's in ``member.<name>``."""
    cols: dict[str, pa.Array] = {"_id": pa.array(ids.astype(np.int64)),
                                 "version": pa.array(np.full(len(ids), version, np.int64)),
                                 "logits": _fixed(logits)}
    for name, values in features.items():
        cols[f"feature.{name}"] = _fixed(values)
    for name, values in (members or {}).items():
        cols[f"member.{name}"] = _fixed(values)
    return pa.table(cols)


PART = "part.json"


def write_part(root: str, split: str, part: int, table: pa.Table) -> dict[str, Any]:
    """Write one part (example ids one contiguous range) through Ray Data, atomically;
    returns its manifest entry: rows, first example id, files."""
    import ray.data
    final = part_dir(root, split, part)
    local = storage.local_path(final) is not None
    target = final + ".partial" if local else final  # an object store: in place
    storage.rmtree(target)
    fs, path = storage.filesystem(target)
    ray.data.from_arrow(table).write_parquet(path, filesystem=fs)
    ids = table.column("_id")
    entry = {"rows": table.num_rows, "first_id": int(pc.min(ids).as_py()),
             "files": [n for n in storage.listdir(target) if n.endswith(".parquet")]}
    storage.write_text(storage.join(target, PART), json.dumps(entry))  # the marker, last
    if local:
        os.replace(target, final)
    return entry


def finished_parts(root: str) -> dict[str, dict[str, Any]]:
    """The parts under their final names ("train/00003" -> entry), from their
    ``part.json``."""
    out = {}
    for split in SPLITS:
        for name in storage.listdir(storage.join(root, split)):
            entry = storage.join(root, split, name, PART)
            if re.fullmatch(r"part-\d+", name) and storage.is_file(entry):
                out[f"{split}/{name[5:]}"] = json.loads(storage.read_text(entry))
    return out


@dataclass
class Manifest:
    """What a soft-label directory holds; see the module docstring."""

    checkpoint: str
    version: int
    tasks: list[str]
    features: dict[str, int]
    logit_dtype: str
    feature_dtype: str
    part_rows: int
    dataset: str
    rows: dict[str, int]
    keys: list[str]       # the sparse features the teacher read (the batches carry them)
    parameters: int       # the teacher's
    parts: dict[str, dict[str, Any]]  # "train/00003" -> {"rows": n, "files": [...]}
    complete: bool = False
    format: int = FORMAT
    # data.fingerprint of the dataset labelled ({} in manifests written before it)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    # a committee's member names (their logits in member.<name>); [] for one teacher
    members: list[str] = field(default_factory=list)
    # the teacher's tables when it labelled (teacher_group.table_dtype)
    table_dtype: str = "fp32"

    def save(self, root: str) -> None:
        """Written when a run starts and when it ends (see the module docstring)."""
        storage.write_text(storage.join(root, MANIFEST), json.dumps(self.__dict__, indent=1))

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> "Manifest":
        p = storage.join(root, MANIFEST)
        if not storage.is_file(p):
            raise DataError(f"{storage.shown(root)}: not a soft-label directory (no "
                            f"{MANIFEST})")
        try:
            doc = json.loads(storage.read_text(p))
            m = cls(**doc)
        except (ValueError, TypeError) as e:
            raise DataError(f"{storage.shown(p)}: unreadable soft-label manifest ({e})") from e
        if m.format != FORMAT:
            raise DataError(f"{storage.shown(p)}: format {m.format}, this version reads "
                            f"{FORMAT}")
        if not m.complete:  # a run under way or stopped: its finished parts are on disk
            m.parts = finished_parts(os.fspath(root))
        return m

    def done(self, split: str, part: int) -> bool:
        return f"{split}/{part:05d}" in self.parts


@dataclass
class SoftLabels:
    """One split's soft labels in memory, sorted by example id.

    Attributes:
        ids: int64 [N], sorted.
        versions: int64 [N].
        logits: [N, T] in ``logit_dtype``'s storage form.
        features: name -> [N, d] in ``feature_dtype``'s storage form.
    """

    ids: np.ndarray
    versions: np.ndarray
    logits: np.ndarray
    features: dict[str, np.ndarray]
    members: dict[str, np.ndarray] = field(default_factory=dict)

    def at(self, pos: np.ndarray) -> "SoftLabels":
        """The labels at positions ``pos``, in that order."""
        return SoftLabels(self.ids[pos], self.versions[pos], self.logits[pos],
                          {k: v[pos] for k, v in self.features.items()},
                          {k: v[pos] for k, v in self.members.items()})

    def placed(self, rows: np.ndarray, n: int, into: "SoftLabels | None") -> "SoftLabels":
        """These labels at rows ``rows`` of ``into`` (a new one of ``n`` rows if None)."""
        def put(dst: np.ndarray | None, src: np.ndarray) -> np.ndarray:
            if dst is None:
                dst = np.zeros((n, *src.shape[1:]), src.dtype)
            dst[rows] = src
            return dst
        old = into or SoftLabels(None, None, None, {}, {})  # type: ignore[arg-type]
        return SoftLabels(put(old.ids, self.ids), put(old.versions, self.versions),
                          put(old.logits, self.logits),
                          {k: put(old.features.get(k), v) for k, v in self.features.items()},
                          {k: put(old.members.get(k), v) for k, v in self.members.items()})

    def rows(self, ids: np.ndarray, where: str) -> np.ndarray:
        """Positions of ``ids``; every id must have a label."""
        pos = np.searchsorted(self.ids, ids)
        pos = np.minimum(pos, len(self.ids) - 1)
        missing = self.ids[pos] != ids
        if missing.any():
            raise DataError(f"{where}: no soft label for example id(s) "
                            f"{ids[missing][:5].tolist()} (precomputed for another dataset "
                            "or split?)")
        return pos


def _column(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name).combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)


def split_parts(m: Manifest, root: str | os.PathLike[str], split: str,
           features: tuple[str, ...] | None) -> tuple[list[str], tuple[str, ...]]:
    """A finished split's part keys, sorted, and the features to read."""
    names = sorted(k for k in m.parts if k.startswith(split + "/"))
    if not m.complete or not names:
        raise DataError(f"{root}: split {split!r} is not (fully) precomputed; run "
                        "jobs.precompute again to finish it")
    want = tuple(m.features) if features is None else features
    unknown = set(want) - set(m.features)
    if unknown:
        raise DataError(f"{root}: features {sorted(unknown)} were not precomputed; it has "
                        f"{sorted(m.features)}")
    return names, want


def read_split(root: str | os.PathLike[str], split: str,
               features: tuple[str, ...] | None = None) -> SoftLabels:
    """A finished split's soft labels (all its parts), sorted by id."""
    m = Manifest.load(root)
    names, want = split_parts(m, root, split, features)
    return read_parts(m, root, split, names, want)


def read_parts(m: Manifest, root: str | os.PathLike[str], split: str, names: list[str],
          want: tuple[str, ...]) -> SoftLabels:
    """Parts ``names`` of a split, sorted by id."""
    tables = []
    for key in names:
        part = part_dir(os.fspath(root), split, int(key.split("/")[1]))
        for f in m.parts[key]["files"]:
            fs, path = storage.filesystem(storage.join(part, f))
            tables.append(pq.read_table(path, filesystem=fs, columns=[
                "_id", "version", "logits", *[f"feature.{n}" for n in want],
                *[f"member.{n}" for n in m.members]]))
    t = pa.concat_tables(tables)
    ids = t.column("_id").to_numpy()
    order = np.argsort(ids, kind="stable")
    return SoftLabels(ids=ids[order], versions=t.column("version").to_numpy()[order],
                      logits=_column(t, "logits")[order],
                      features={n: _column(t, f"feature.{n}")[order] for n in want},
                      members={n: _column(t, f"member.{n}")[order] for n in m.members})
