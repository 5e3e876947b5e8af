"""Typed results that cross the actor boundary: a replica's steps, a labelling round."""

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
class LabelRound:
    """One labelling round of the K ranks, fetched: ``(ids, batch ref)`` in production
    order (batch i of every rank, then batch i + 1) and whether the pass ended in it."""

    batches: list[tuple[np.ndarray, Any]]
    ended: bool

    @classmethod
    def from_ids(cls, ids_lists: list[list[np.ndarray | None]], calls: list[list[Any]]
                 ) -> "LabelRound":
        """From each rank's ``label_many`` ids list and its call's refs (the ids-list
        ref, then one ref per batch)."""
        if len({tuple(ids is None for ids in rank_ids) for rank_ids in ids_lists}) > 1:
            raise RuntimeError("label-group ranks ran out of data unevenly")
        batches = [(rank_ids[i], call[1 + i]) for i in range(len(ids_lists[0]))
                   for rank_ids, call in zip(ids_lists, calls) if rank_ids[i] is not None]
        return cls(batches, ids_lists[0][-1] is None)
