"""Offline soft labels: the teacher's labels of a dataset, as Parquet parts with a manifest.

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

A part is a fixed slice of a split's rows (by row order), written into
``part-NNNNN.partial`` and renamed into place when complete; the manifest (rewritten
atomically after each part) lists only finished parts, so a restarted run skips them and
writes exactly the parts that are missing.

:class:`SoftLabelReader` serves these labels to the student groups with the interface
of a teacher rank, so offline and online distillation share every other line of code.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recdistill.cluster.pass_input import PassInput
from recdistill.cluster.codec import LabelledBatch, decode
from recdistill.cluster.process import enable_faulthandler
from recdistill.data.errors import DataError
from recdistill.data.spec import EvalSplit, ExampleTable, FeatureSpec

MANIFEST = "manifest.json"
FORMAT = 1
SPLITS = ("train", "valid", "test")


def part_dir(root: Path, split: str, part: int) -> Path:
    return root / split / f"part-{part:05d}"


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


def write_part(root: Path, split: str, part: int, table: pa.Table) -> list[str]:
    """Write one part through Ray Data, atomically; returns its file names."""
    import ray.data
    final = part_dir(root, split, part)
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    ray.data.from_arrow(table).write_parquet(str(partial))
    shutil.rmtree(final, ignore_errors=True)  # a part the manifest did not list
    os.replace(partial, final)
    return sorted(p.name for p in final.glob("*.parquet"))


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

    def save(self, root: Path) -> None:
        tmp = root / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=1))
        os.replace(tmp, root / MANIFEST)

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> "Manifest":
        p = Path(root) / MANIFEST
        if not p.is_file():
            raise DataError(f"{Path(root)}: not a soft-label directory (no {MANIFEST})")
        try:
            doc = json.loads(p.read_text())
            m = cls(**doc)
        except (ValueError, TypeError) as e:
            raise DataError(f"{p}: unreadable soft-label manifest ({e})") from e
        if m.format != FORMAT:
            raise DataError(f"{p}: format {m.format}, this version reads {FORMAT}")
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


def read_split(root: str | os.PathLike[str], split: str,
               features: tuple[str, ...] | None = None) -> SoftLabels:
    """A finished split's soft labels (all its parts), sorted by id."""
    m = Manifest.load(root)
    names = [k for k in m.parts if k.startswith(split + "/")]
    if not m.complete or not names:
        raise DataError(f"{root}: split {split!r} is not (fully) precomputed; run "
                        "jobs.precompute again to finish it")
    want = tuple(m.features) if features is None else features
    unknown = set(want) - set(m.features)
    if unknown:
        raise DataError(f"{root}: features {sorted(unknown)} were not precomputed; it has "
                        f"{sorted(m.features)}")
    tables = []
    for key in sorted(names):
        part = part_dir(Path(root), split, int(key.split("/")[1]))
        for f in m.parts[key]["files"]:
            tables.append(pq.read_table(part / f, columns=[
                "_id", "version", "logits", *[f"feature.{n}" for n in want],
                *[f"member.{n}" for n in m.members]]))
    t = pa.concat_tables(tables)
    ids = t.column("_id").to_numpy()
    order = np.argsort(ids, kind="stable")
    return SoftLabels(ids=ids[order], versions=t.column("version").to_numpy()[order],
                      logits=_column(t, "logits")[order],
                      features={n: _column(t, f"feature.{n}")[order] for n in want},
                      members={n: _column(t, f"member.{n}")[order] for n in m.members})


class SoftLabelReader(PassInput):
    """Serves precomputed soft labels with the interface of a teacher rank.

    Rank ``rank`` of ``world`` readers takes the same equal share of the shuffled input
    stream a teacher rank would, and attaches each row's stored labels instead of running
    the teacher: the student groups receive the same batches either way.
    """

    def __init__(self, rank: int, world: int, root: str, features: tuple[str, ...],
                 batch_size: int, *, prefetch: bool = False) -> None:
        enable_faulthandler()
        self.rank, self.world, self.root = rank, world, root
        self.features, self.batch_size = features, batch_size
        self.prefetch = prefetch
        self._splits: dict[str, SoftLabels] = {}

    def address(self) -> tuple[str, int]:
        return "", 0  # no process group: readers need no rendezvous

    def setup(self, addr: str, port: int) -> dict[str, Any]:
        m = Manifest.load(self.root)
        self.manifest = m
        self.train = read_split(self.root, "train", self.features)
        self.keys = tuple(m.keys)
        return {"spec": None, "version": m.version, "parameters": m.parameters,
                "feature_dims": dict(m.features), "keys": self.keys, "pid": os.getpid()}

    def label_next(self) -> tuple[Any, Any]:
        """(ids, LabelledBatch) of the next batch, labels from disk; (None, None) at the
        end of the pass."""
        arrays = self._next_arrays()
        if arrays is None:
            return None, None
        pos = self.train.rows(arrays.ids, f"{self.root} (train)")
        versions = np.unique(self.train.versions[pos])
        labelled = LabelledBatch(
            inputs=arrays, logits=self.train.logits[pos],
            features={k: self.train.features[k][pos] for k in self.features},
            version=int(versions.max()), logit_dtype=self.manifest.logit_dtype,
            feature_dtype=self.manifest.feature_dtype,
            members={k: v[pos] for k, v in self.train.members.items()})
        self._account(labelled)
        return arrays.ids, labelled

    def evaluate(self, split: EvalSplit, block: int, batch_size: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Stored teacher logits (float32) and labels of every row of block ``block`` of
        ``split``."""
        table = split.block(block)
        split = next((s for s in ("valid", "test", "train")
                      if self._covers(s, table.ids)), None)
        if split is None:
            raise DataError(f"{self.root}: no precomputed split holds these examples")
        labels = self._splits[split]
        pos = labels.rows(table.ids, f"{self.root} ({split})")
        return decode(labels.logits[pos], self.manifest.logit_dtype).numpy(), table.labels

    def _covers(self, split: str, ids: np.ndarray) -> bool:
        if split not in self._splits:
            self._splits[split] = self.train if split == "train" else \
                read_split(self.root, split, ())
        s = self._splits[split]
        pos = np.minimum(np.searchsorted(s.ids, ids), len(s.ids) - 1)
        return bool(np.all(s.ids[pos] == ids))



def spec_check(manifest: Manifest, spec: FeatureSpec, root: str, dataset: str = ""
               ) -> None:
    """The soft labels were made for this dataset (its fingerprint; its tasks only for
    a manifest without one)."""
    from recdistill.data.fingerprint import differences, fingerprint
    if manifest.fingerprint:
        found = differences(manifest.fingerprint, fingerprint(spec, dataset))
        if found:
            raise DataError(f"{root}: soft labels of another dataset than {dataset} "
                            f"({'; '.join(found)}); precompute them for this one")
    if tuple(manifest.tasks) != tuple(spec.tasks):
        raise DataError(f"{root}: soft labels for tasks {manifest.tasks}, the dataset has "
                        f"{list(spec.tasks)}")
