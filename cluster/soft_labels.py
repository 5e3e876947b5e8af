"""Offline soft labels served as a label source: :class:`SoftLabelReader` has the
interface of a teacher rank and attaches each row's stored labels (written by
``jobs.precompute``; the layout and reading are ``cluster/soft_label_files.py``), so
offline and online distillation share every other line of code.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import numpy as np

from recdistill.cluster.codec import LabelledBatch, decode
from recdistill.cluster.pass_input import PassInput
from recdistill.cluster.process import enable_faulthandler
from recdistill.cluster.soft_label_files import (SPLITS, Manifest, SoftLabels, labels_table,
                                                 part_dir, part_slices, read_parts,
                                                 read_split, split_parts, write_part)
from recdistill.data.errors import DataError
from recdistill.data.spec import EvalSplit, FeatureSpec

# A split of at most this many rows is read whole by a reader; a larger one part by
# part as its batches need them, this many rows of parts held at most.
HOLD_ROWS = 2_000_000

__all__ = ["SPLITS", "Manifest", "SoftLabelReader", "SoftLabels", "labels_table", "part_dir",
           "part_slices", "read_split", "spec_check", "write_part"]


class SplitLabels:
    """A split's soft labels for a reader: all of them where the split has at most
    ``hold_rows`` rows, else part by part as asked for (each part is one range of example
    ids, so a batch of a streamed pass, a chunk's rows, needs one or two), at most
    ``hold_rows`` rows of parts held, the least recently used let go."""

    def __init__(self, m: Manifest, root: str, split: str, features: tuple[str, ...],
                 hold_rows: int = HOLD_ROWS) -> None:
        self.m, self.root, self.split = m, root, split
        names, self.want = split_parts(m, root, split, features)
        order = np.argsort([m.parts[k]["first_id"] for k in names])
        self.names = [names[i] for i in order]
        self.first = np.array([m.parts[k]["first_id"] for k in self.names], np.int64)
        self.rows = np.array([m.parts[k]["rows"] for k in self.names], np.int64)
        self.hold_rows = hold_rows
        self._held: OrderedDict[int, SoftLabels] = OrderedDict()
        self._whole = read_parts(m, root, split, self.names, self.want) \
            if self.rows.sum() <= hold_rows else None
        self.parts_read = 1 if self._whole is not None else 0

    def covers(self, ids: np.ndarray) -> bool:
        """Whether every id lies in one of the split's parts' ranges."""
        p = np.searchsorted(self.first, ids, side="right") - 1
        return bool(len(ids)) and bool(np.all((p >= 0) & (ids < self.first[np.maximum(p, 0)]
                                                              + self.rows[np.maximum(p, 0)])))

    def _part(self, i: int) -> SoftLabels:
        if i in self._held:
            self._held.move_to_end(i)
            return self._held[i]
        labels = read_parts(self.m, self.root, self.split, [self.names[i]], self.want)
        self.parts_read += 1
        self._held[i] = labels
        while len(self._held) > 1 and sum(len(v.ids) for v in self._held.values()) \
                > self.hold_rows:
            self._held.popitem(last=False)
        return labels

    def take(self, ids: np.ndarray, where: str) -> SoftLabels:
        """The labels of ``ids``, in their order; every id must have one."""
        if self._whole is not None:
            return self._whole.at(self._whole.rows(ids, where))
        p = np.searchsorted(self.first, ids, side="right") - 1
        out: SoftLabels | None = None
        if (p < 0).any():
            raise DataError(f"{where}: no soft label for example id(s) "
                            f"{ids[p < 0][:5].tolist()} (precomputed for another dataset "
                            "or split?)")
        for i in np.unique(p):
            sel = np.flatnonzero(p == i)
            labels = self._part(int(i))
            got = labels.at(labels.rows(ids[sel], where))
            out = got.placed(sel, len(ids), out)
        assert out is not None
        return out


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
        self._splits: dict[str, SplitLabels] = {}

    def address(self) -> tuple[str, int]:
        return "", 0  # no process group: readers need no rendezvous

    def setup(self, addr: str, port: int) -> dict[str, Any]:
        m = Manifest.load(self.root)
        self.manifest = m
        self.train = SplitLabels(m, self.root, "train", self.features)
        self.keys = tuple(m.keys)
        return {"spec": None, "version": m.version, "parameters": m.parameters,
                "feature_dims": dict(m.features), "keys": self.keys, "pid": os.getpid()}

    def label_next(self) -> tuple[Any, Any]:
        """(ids, LabelledBatch) of the next batch, labels from disk; (None, None) at the
        end of the pass."""
        arrays = self._next_arrays()
        if arrays is None:
            return None, None
        got = self.train.take(arrays.ids, f"{self.root} (train)")
        labelled = LabelledBatch(
            inputs=arrays, logits=got.logits, features=got.features,
            version=int(got.versions.max()), logit_dtype=self.manifest.logit_dtype,
            feature_dtype=self.manifest.feature_dtype, members=got.members)
        self._account(labelled)
        return arrays.ids, labelled

    def evaluate(self, split: EvalSplit, block: int, batch_size: int, group_key: str = ""
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Stored teacher logits (float32), labels and ``group_key`` ids (or None) of
        every row of block ``block`` of ``split``."""
        table = split.block(block)
        for name in ("valid", "test", "train"):
            if name not in self._splits:
                self._splits[name] = self.train if name == "train" else \
                    SplitLabels(self.manifest, self.root, name, ())
            if self._splits[name].covers(table.ids):
                got = self._splits[name].take(table.ids, f"{self.root} ({name})")
                return (decode(got.logits, self.manifest.logit_dtype).numpy(), table.labels,
                        table.group_keys(group_key) if group_key else None)
        raise DataError(f"{self.root}: no precomputed split holds these examples")



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
