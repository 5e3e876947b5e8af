"""Typed objects that cross the actor boundary: a replica's steps, a labelling call in
flight and its fetched result, and a student group's saved states. The driver tells them
apart by type, never by probing dict keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class StepResult:
    """One optimizer step of one replica on its share of a batch.

    Attributes:
        ids: int64 [b] example ids this replica trained in the step.
        loss: loss term -> value (``loss``: the weighted total).
        version: teacher version of the batch.
        kd_scale: the staleness weight applied to the KD terms.
        timing: ``prepare_s`` (reading rows and teacher outputs out of the batch) and
            ``step_s`` (forward, backward, optimizer step), wall seconds.
        agreement: share of the step's rows where student and teacher are on the same
            side of 0.5 (every task).
    """

    ids: np.ndarray
    loss: dict[str, float]
    version: int
    kd_scale: float
    timing: dict[str, float]
    agreement: float = 0.0


@dataclass(frozen=True)
class TrainResult:
    """What one ``train_many`` call did: the steps done, in order, and the error that
    ended the call after them (a peer died in an all-reduce), if one did."""

    steps: list[StepResult]
    error: str | None = None


@dataclass(frozen=True)
class RankCall:
    """One rank's labelling call in flight.

    Attributes:
        ids: the ref of its list of example-id arrays (one per batch; None once the pass
            ran out): done when the call is.
        batches: one ref per labelled batch (a ``LabelledBatch``), in order.
    """

    ids: Any
    batches: tuple[Any, ...]


LabelCall = tuple[RankCall, ...]  # one labelling call: the same call on every rank


@dataclass(frozen=True)
class LabelResult:
    """One labelling call of the K ranks, fetched: ``(rank, i, ids, refs)`` in
    production order (batch i of the call from every rank, then batch i + 1), ``refs``
    one per committee member (the lead's first; one for a single teacher), and whether
    the pass ended in it."""

    batches: list[tuple[int, int, np.ndarray, tuple[Any, ...]]]
    ended: bool

    @property
    def per_rank(self) -> int:
        """Batches each rank labelled in the call (the ranks run in lockstep)."""
        return max((i + 1 for _, i, _, _ in self.batches), default=0)

    @classmethod
    def from_ids(cls, ids_lists: list[list[np.ndarray | None]], call: LabelCall
                 ) -> "LabelResult":
        """From each rank's ``label_many`` ids list and its call's refs."""
        if len({tuple(ids is None for ids in rank_ids) for rank_ids in ids_lists}) > 1:
            raise RuntimeError("label-group ranks ran out of data unevenly")
        batches = [(k, i, rank_ids[i], (rank.batches[i],))
                   for i in range(len(ids_lists[0]))
                   for k, (rank_ids, rank) in enumerate(zip(ids_lists, call))
                   if rank_ids[i] is not None]
        return cls(batches, ids_lists[0][-1] is None)


@dataclass(frozen=True)
class StateBlob:
    """A replica's state as ``torch.save`` bytes (uint8 [n]): a plain group's whole
    state, or one sharded replica's own part (its shards). Ray moves an array as one
    buffer; a dict of tensors would be pickled tensor by tensor in the driver."""

    data: np.ndarray


@dataclass(frozen=True)
class ShardedParts:
    """A sharded group's snapshot: replica j's ``StateBlob`` is ``parts[j]`` (object refs
    while the driver keeps it, blobs once read; the group re-forms with the same M)."""

    parts: tuple[Any, ...]


@dataclass(frozen=True)
class DcpState:
    """A sharded group's state as a torch.distributed.checkpoint directory (every
    replica wrote its shards); a group of any size loads it."""

    path: str


@dataclass(frozen=True)
class StateDict:
    """A plain group's state: ``{"model", "optimizer", "best"}`` tensors."""

    state: dict[str, Any]


# What a group starts from: a snapshot or survivor's blob, a sharded snapshot's parts,
# or a driver checkpoint's state.
GroupSave = StateBlob | ShardedParts | DcpState | StateDict
