"""A training call's settlement: from the items a student group's replicas were given
and what each replica's call came to, what was trained, what is delivered again and what
must be labelled again. Pure: no Ray, no books (the ledger books a settlement)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recdistill.cluster.contracts import StepResult, TrainResult


@dataclass
class StreamItem:
    """One labelled batch from one label-source rank.

    Attributes:
        seq: position in the stream (production order).
        refs: object refs of the labelled batch (a ``LabelledBatch``), one per committee
            member, the lead's (which carries the inputs) first.
        ids: int64 [B] example ids in it (small; kept on the driver for the books).
        version: teacher checkpoint version that labelled it.
        pass_index: the pass it belongs to.
        key: ``(rank, seq in the rank's share of the pass)``: what the books count
            (``cluster/watermark.py``); the same rows whenever the pass is read again.
        rows: the rows of the labelled batch to train on (None: all): a student batch
            that is one slice of a larger labelled batch.
    """

    seq: int
    refs: tuple[Any, ...]
    ids: np.ndarray
    version: int
    pass_index: int
    key: tuple[int, int] = (0, 0)
    rows: np.ndarray | None = None


@dataclass(frozen=True)
class ReplicaOutcome:
    """What one replica's ``train_many`` call came to.

    Attributes:
        result: what it returned; None if it raised.
        lost_input: it raised because a batch it was given is gone (stored on a node
            that died): the replica is fine, it never stepped.
    """

    result: TrainResult | None = None
    lost_input: bool = False


@dataclass(frozen=True)
class Settlement:
    """What a finished training call did (see :func:`settle`).

    Attributes:
        trained: the items trained, in order, each with the replicas' steps on it.
        redeliver: items to deliver again, first and in this order.
        relabel: items whose stored batch is lost: labelled again by the pass's replay.
        retry_singly: the next this many training calls carry one batch each (to find which of
            a call's batches was lost).
        replica_failed: a replica died or a step failed: the group must be re-formed.
    """

    trained: tuple[tuple[StreamItem, tuple[StepResult, ...]], ...] = ()
    redeliver: tuple[StreamItem, ...] = ()
    relabel: tuple[StreamItem, ...] = ()
    retry_singly: int = 0
    replica_failed: bool = False


def settle(group: str, items: list[StreamItem], outcomes: list[ReplicaOutcome]
           ) -> Settlement:
    """Book one training call of ``group``: ``items`` given to every replica, ``outcomes`` one per
    replica.

    A step happened if any replica finished it (its all-reduce was done on every live
    replica); steps run in order, so those are a prefix of the items, and the rest are
    delivered again. When every replica could not fetch a batch (its node died), none
    stepped: a single batch is labelled again; of several, which was lost is not known,
    so they go again one per call. When every replica succeeded, the ids they trained
    must add up to the batch's.
    """
    results = [o.result for o in outcomes if o.result is not None]
    if all(o.lost_input for o in outcomes):
        if len(items) == 1:
            return Settlement(relabel=(items[0],))
        return Settlement(redeliver=tuple(items), retry_singly=len(items))
    failed = len(results) < len(outcomes) or any(r.error is not None for r in results)
    done = max((len(r.steps) for r in results), default=0)
    trained = []
    for i, item in enumerate(items[:done]):
        steps = tuple(r.steps[i] for r in results if len(r.steps) > i)
        if not failed:
            ids = np.concatenate([s.ids for s in steps])
            if not np.array_equal(np.sort(ids), np.sort(item.ids)):
                raise RuntimeError(f"group {group}: replicas trained ids that do not "
                                   f"match batch {item.seq}")
        trained.append((item, steps))
    return Settlement(trained=tuple(trained), redeliver=tuple(items[done:]),
                      replica_failed=failed)
