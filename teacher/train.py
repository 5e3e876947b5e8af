"""Teacher training and inference steps over a (sharded) teacher.

Works the same on one process and on N ranks: each rank reads its own share of every
split (``ExampleTable.iter_batches(rank=, world=)``), so the ranks run the same number of
steps and meet in the model's all-to-alls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from recdistill.data.spec import Batch, BatchArrays, ExampleTable
from recdistill.teacher.outputs import TeacherOutputs


@dataclass
class Predictions:
    """Logits of a whole split, de-duplicated and sorted by example id.

    Attributes:
        ids: int64 [N].
        logits: float32 [N, T].
        labels: float32 [N, T].
    """

    ids: np.ndarray
    logits: np.ndarray
    labels: np.ndarray


def multitask_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over tasks and examples of BCE-with-logits; logits and labels are [B, T]."""
    return F.binary_cross_entropy_with_logits(logits, labels)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> float:
    """One step: forward, multi-task BCE, backward (table rows update in backward), step."""
    out: TeacherOutputs = model(batch.dense, batch.sparse)
    loss = multitask_bce(out.logits, batch.labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def device_batches(batches: Iterable[BatchArrays], device: torch.device) -> Iterator[Batch]:
    for arrays in batches:
        yield arrays.to_batch().to(device)


@torch.no_grad()
def predict(model: nn.Module, table: ExampleTable, keys: tuple[str, ...],
            batch_size: int, device: torch.device,
            group: dist.ProcessGroup | None = None) -> Predictions:
    """Teacher logits for every row of ``table``, gathered on every rank.

    Each rank scores its padded share; the shares are all-gathered and de-duplicated by
    example id, so every rank returns the same full-split result.
    """
    was_training = model.training
    model.eval()
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    rank = dist.get_rank(group) if dist.is_initialized() else 0
    ids, logits, labels = [], [], []
    for batch in device_batches(table.iter_batches(batch_size, keys=keys, rank=rank,
                                                   world=world, pad=True), device):
        out: TeacherOutputs = model(batch.dense, batch.sparse)
        ids.append(batch.ids)
        logits.append(out.logits.float())
        labels.append(batch.labels)
    model.train(was_training)
    local = torch.cat([torch.cat(ids).double().unsqueeze(1),
                       torch.cat(logits).double(), torch.cat(labels).double()], dim=1)
    if world > 1:
        # Padded shares are equally long, so a plain all_gather fits.
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local, group=group)
        local = torch.cat(parts)
    arr = local.cpu().numpy()
    all_ids = arr[:, 0].astype(np.int64)
    _, first = np.unique(all_ids, return_index=True)  # sorted ids, padding dropped
    t = (arr.shape[1] - 1) // 2
    return Predictions(ids=all_ids[first], logits=arr[first, 1:1 + t].astype(np.float32),
                       labels=arr[first, 1 + t:].astype(np.float32))
