"""The driver's checkpoint of a run, and each group's training history kept in it.

One file, ``<state_dir>/driver_state.pt``, written atomically (a crash mid-write leaves
the previous one) at pass ends and every ``checkpoint_every`` labelling rounds. It
holds every group's state (replica 0's), the example ids each group trained in the
current pass, its history and its ledger's counts per teacher version, and the teacher
version the run labels with. It loads with ``weights_only=True``: tensors and plain
types only, the history as JSON text.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recdistill.cluster.groups import StudentGroup
from recdistill.cluster.ledger import GroupLedger, VersionCount
from recdistill.teacher.checkpoint import CheckpointError

STATE_FILE = "driver_state.pt"
FORMAT = 2


@dataclass
class GroupHistory:
    """What the driver learnt about a group over the passes: its validation curve and
    its best pass (by the first task's validation AUC)."""

    curve: list[dict[str, Any]] = field(default_factory=list)
    best_auc: float = -1.0
    best_pass: int = -1

    def record(self, pass_number: int, valid: dict[str, dict[str, float]],
               train_loss: dict[str, float], examples: int, first_task: str) -> bool:
        """Add pass ``pass_number`` (1-based); whether it is the best so far."""
        self.curve.append({"pass": pass_number, "valid": valid, "train_loss": train_loss,
                           "examples": examples})
        if valid[first_task]["auc"] > self.best_auc:
            self.best_auc, self.best_pass = valid[first_task]["auc"], pass_number
            return True
        return False


@dataclass
class GroupCheckpoint:
    """One group in the driver checkpoint."""

    state: dict[str, Any]
    trained: np.ndarray  # int64 ids trained in the checkpoint's pass
    history: GroupHistory
    restarts: int
    restores: int
    by_version: dict[int, VersionCount]

    @classmethod
    def capture(cls, g: StudentGroup, state: dict[str, Any], ledger: GroupLedger,
                history: GroupHistory, pass_index: int) -> "GroupCheckpoint":
        """``g`` now, with ``state`` just read from its replica 0."""
        # The state comes after the rounds queued to the group: it holds the ledger's
        # ids plus those rounds'.
        trained = np.unique(np.concatenate(
            [ledger.trained_ids(pass_index).to_array()]
            + [item.ids for item in g.in_flight()])).astype(np.int64)
        return cls(state, trained, history, g.generation, g.restores, ledger.by_version)


@dataclass
class RunCheckpoint:
    """The run at a pass end (``pass_done``) or mid-pass (0-based ``pass_index``)."""

    pass_index: int
    pass_done: bool
    teacher_checkpoint: str
    soft_labels: str
    groups: dict[str, GroupCheckpoint]

    def restore(self, groups: dict[str, StudentGroup], ledgers: dict[str, GroupLedger],
                history: dict[str, GroupHistory]) -> int:
        """Put the checkpoint's counters, books and histories back (before the groups
        start: their actors are named by generation); returns the first pass to run."""
        for name, saved in self.groups.items():
            groups[name].generation, groups[name].restores = saved.restarts, saved.restores
            history[name] = saved.history
            ledgers[name].restore(saved.by_version,
                                  None if self.pass_done else self.pass_index, saved.trained)
        return self.pass_index + (1 if self.pass_done else 0)

    def summary(self) -> dict[str, Any]:
        """The report's ``resumed``: the 1-based pass, and what each group had trained
        of it."""
        return {"pass": self.pass_index + 1, "pass_done": self.pass_done,
                "trained_in_pass": {n: int(len(s.trained)) for n, s in self.groups.items()}}

    def save(self, path: Path) -> None:
        doc = {"format": FORMAT, "pass": self.pass_index, "pass_done": self.pass_done,
               "teacher_checkpoint": self.teacher_checkpoint,
               "soft_labels": self.soft_labels,
               "groups": {name: {
                   "state": g.state, "trained": torch.from_numpy(g.trained),
                   # plain JSON text: the file loads with weights_only=True
                   "history": json.dumps({
                       "curve": g.history.curve, "best_auc": g.history.best_auc,
                       "best_pass": g.history.best_pass, "restarts": g.restarts,
                       "restores": g.restores,
                       "by_version": {str(v): [c.batches, c.examples]
                                      for v, c in g.by_version.items()}})}
                   for name, g in self.groups.items()}}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(doc, tmp)
        os.replace(tmp, path)  # a crash mid-write leaves the previous one

    @classmethod
    def load(cls, path: Path, groups: list[str], soft_labels: str) -> "RunCheckpoint":
        """Read ``path``, checking it was written for these groups and label source."""
        if not path.is_file():
            raise CheckpointError(f"{path}: no driver checkpoint to resume from")
        try:
            doc = torch.load(path, weights_only=True)
        except Exception as e:  # noqa: BLE001 - truncated, tampered or not ours
            raise CheckpointError(f"{path}: cannot read the driver checkpoint: {e}") from None
        if doc.get("format") != FORMAT:
            raise CheckpointError(f"{path}: format {doc.get('format')}, this version reads "
                                  f"{FORMAT}")
        if sorted(doc["groups"]) != sorted(groups):
            raise CheckpointError(f"{path}: holds groups {sorted(doc['groups'])}, the "
                                  f"config has {sorted(groups)}")
        if doc["soft_labels"] != soft_labels:
            raise CheckpointError(f"{path}: was written with soft_labels = "
                                  f"{doc['soft_labels']!r}, not {soft_labels!r}")
        out = {}
        for name, d in doc["groups"].items():
            kept = json.loads(d["history"])
            out[name] = GroupCheckpoint(
                state=d["state"], trained=d["trained"].numpy(),
                history=GroupHistory(kept["curve"], kept["best_auc"], kept["best_pass"]),
                restarts=kept["restarts"], restores=kept["restores"],
                by_version={int(v): VersionCount(*c) for v, c in kept["by_version"].items()})
        return cls(doc["pass"], doc["pass_done"], doc["teacher_checkpoint"],
                   doc["soft_labels"], out)
