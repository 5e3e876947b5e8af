"""The driver's checkpoint of a run.

One file, ``<state_dir>/driver_state.pt``, written atomically (a crash mid-write leaves
the previous one) at pass ends and every ``checkpoint_every`` labelling calls. It
holds every group's state (a plain group's replica 0's, or a sharded group's DCP
directory), the batches each group trained of the current pass (per-rank watermarks, a
few ints: ``cluster/watermark.py``), its history and its ledger's counts per teacher
version, and the teacher version the run labels with. It loads with
``weights_only=True``: tensors and plain types only, the history and the books as JSON
text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from recdistill.cluster.contracts import DcpState, StateDict
from recdistill.cluster.ledger import VersionCount
from recdistill.cluster.config import DistillConfig, RunOptions
from recdistill.cluster.recovery import Executor
from recdistill.cluster.state import Every, GroupHistory, GroupState
from recdistill.cluster.watermark import PassBooks
from recdistill.data import storage
from recdistill.teacher.checkpoint import CheckpointError

STATE_FILE = "driver_state.pt"
FORMAT = 4  # 4: a pass's books by batch (watermarks), not by example id


def share_layout(cfg: DistillConfig) -> dict[str, int]:
    """What fixes which rows each batch ``(rank, seq)`` of a pass holds: a mid-pass
    checkpoint's books are valid only for the same (with the same data and seed)."""
    tg = cfg.teacher_group
    return {"ranks": tg.ranks, "label_rows": cfg.label_rows, "batch_size": tg.batch_size,
            "shuffle_buffer_rows": tg.shuffle_buffer_rows, "seed": cfg.seed}


@dataclass
class GroupCheckpoint:
    """One group in the driver checkpoint."""

    state: StateDict | DcpState
    trained: PassBooks  # the batches trained of the checkpoint's pass
    history: GroupHistory
    restarts: int
    restores: int
    by_version: dict[int, VersionCount]
    stopped_after: int = 0
    guard: dict[str, list[Any]] = field(default_factory=dict)  # name -> [pass, why]

    @classmethod
    def capture(cls, g: GroupState, state: StateDict | DcpState, pass_index: int
                ) -> "GroupCheckpoint":
        """``g`` now, with ``state`` just read from its replicas."""
        # The state comes after the training calls queued to the group: it holds the
        # ledger's batches plus those calls'.
        trained = g.ledger.books(pass_index).copy()
        for item in g.actors.in_flight():
            trained.add(item.key, len(item.ids))
        return cls(state, trained, g.history, g.actors.generation, g.restores,
                   g.ledger.by_version, g.stopped_after,
                   {k: [p, g.guard_why.get(k, "")] for k, p in g.guard_log.items()})


@dataclass
class RunCheckpoint:
    """The run at a pass end (``pass_done``) or mid-pass (0-based ``pass_index``)."""

    pass_index: int
    pass_done: bool
    teacher_checkpoint: str
    soft_labels: str
    groups: dict[str, GroupCheckpoint]
    layout: dict[str, int]  # share_layout of the run that wrote it

    def restore(self, groups: dict[str, GroupState]) -> int:
        """Put the checkpoint's counters, books and histories back (before the groups
        start: their actors are named by generation); returns the first pass to run."""
        for name, saved in self.groups.items():
            g = groups[name]
            g.actors.generation, g.restores = saved.restarts, saved.restores
            g.stopped_after = saved.stopped_after
            g.guard_log = {k: int(v[0]) for k, v in saved.guard.items()}
            g.guard_why = {k: str(v[1]) for k, v in saved.guard.items()}
            g.history = saved.history
            g.ledger.restore(saved.by_version, None if self.pass_done else self.pass_index,
                             saved.trained)
        return self.pass_index + (1 if self.pass_done else 0)

    def summary(self) -> dict[str, Any]:
        """The report's ``resumed``: the 1-based pass, and what each group had trained
        of it."""
        return {"pass": self.pass_index + 1, "pass_done": self.pass_done,
                "trained_in_pass": {n: s.trained.examples for n, s in self.groups.items()}}

    def save(self, path: str) -> None:
        doc = {"format": FORMAT, "pass": self.pass_index, "pass_done": self.pass_done,
               "teacher_checkpoint": self.teacher_checkpoint,
               "soft_labels": self.soft_labels, "layout": json.dumps(self.layout),
               "groups": {name: {
                   "state_kind": "dcp" if isinstance(g.state, DcpState) else "dict",
                   "state": g.state.path if isinstance(g.state, DcpState) else g.state.state,
                   "trained": json.dumps(g.trained.to_json()),
                   # plain JSON text: the file loads with weights_only=True
                   "history": json.dumps({
                       "curve": g.history.curve, "best_auc": g.history.best_auc,
                       "best_pass": g.history.best_pass, "restarts": g.restarts,
                       "restores": g.restores, "stopped_after": g.stopped_after,
                       "guard": g.guard,
                       "by_version": {str(v): [c.batches, c.examples]
                                      for v, c in g.by_version.items()}})}
                   for name, g in self.groups.items()}}
        storage.torch_save(doc, path)  # written whole: a crash leaves the previous one

    @classmethod
    def load(cls, path: str, groups: list[str], soft_labels: str,
             layout: dict[str, int] | None = None) -> "RunCheckpoint":
        """Read ``path``, checking it was written for these groups and label source (and,
        mid-pass, for the same ``layout`` of the pass's batches)."""
        where = storage.shown(path)  # as messages name it: no credentials
        if not storage.is_file(path):
            raise CheckpointError(f"{where}: no driver checkpoint to resume from")
        try:
            doc = storage.torch_load(path)
        except Exception as e:  # noqa: BLE001 - truncated, tampered or not ours
            raise CheckpointError(f"{where}: cannot read the driver checkpoint: {e}") from None
        if doc.get("format") != FORMAT:
            raise CheckpointError(f"{where}: format {doc.get('format')}, this version reads "
                                  f"{FORMAT}")
        if sorted(doc["groups"]) != sorted(groups):
            raise CheckpointError(f"{where}: holds groups {sorted(doc['groups'])}, the "
                                  f"config has {sorted(groups)}")
        if doc["soft_labels"] != soft_labels:
            raise CheckpointError(f"{where}: was written with soft_labels = "
                                  f"{doc['soft_labels']!r}, not {soft_labels!r}")
        saved = json.loads(doc["layout"])
        if layout is not None and not doc["pass_done"] and saved != layout:
            diff = ", ".join(f"{k} {saved.get(k)} -> {v}" for k, v in layout.items()
                             if saved.get(k) != v)
            raise CheckpointError(f"{where}: interrupted mid-pass with other batches than "
                                  f"this config makes ({diff}); resume with the same "
                                  "teacher_group and seed")
        out = {}
        for name, d in doc["groups"].items():
            kept = json.loads(d["history"])
            out[name] = GroupCheckpoint(
                state=DcpState(d["state"]) if d["state_kind"] == "dcp"
                else StateDict(d["state"]), trained=PassBooks.from_json(json.loads(d["trained"])),
                history=GroupHistory(kept["curve"], kept["best_auc"], kept["best_pass"]),
                restarts=kept["restarts"], restores=kept["restores"],
                by_version={int(v): VersionCount(*c) for v, c in kept["by_version"].items()},
                stopped_after=kept["stopped_after"], guard=kept.get("guard", {}))
        return cls(doc["pass"], doc["pass_done"], doc["teacher_checkpoint"],
                   doc["soft_labels"], out, saved)


class Checkpointer:
    """Writes the driver checkpoint at each pass end and every ``checkpoint_every``
    labelling calls collected (:attr:`calls` counts them); nothing without a
    ``state_dir``."""

    def __init__(self, options: RunOptions, layout: dict[str, int]) -> None:
        self.path = storage.join(options.state_dir, STATE_FILE) if options.state_dir \
            else None
        self.soft_labels, self.layout = options.soft_labels, layout
        self.calls = Every(options.checkpoint_every if self.path else 0)

    def write(self, executor: Executor, pass_index: int, pass_done: bool) -> None:
        """Every group's state now (read through the executor), atomically."""
        if self.path is None:
            return
        groups = {n: GroupCheckpoint.capture(g, executor.on_group(n, lambda a: a.state()),
                                             pass_index)
                  for n, g in executor.groups.items()}
        source = "" if self.soft_labels else executor.labels.source.source
        RunCheckpoint(pass_index, pass_done, source, self.soft_labels, groups,
                      self.layout).save(self.path)
