"""The teacher -> student contract: what one teacher forward hands to the students."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.utils._pytree as pytree

FEATURE_NAMES = ("pooled_embeddings", "interaction", "last_hidden")


@dataclass
class TeacherOutputs:
    """Per-task logits and named hidden features of one batch.

    Attributes:
        logits: [B, T] pre-sigmoid scores, one column per task (dataset task order).
        features: name -> [B, d_name] hidden tensors. The teacher produces
            ``pooled_embeddings`` ([B, F * D], the concatenated pooled embeddings),
            ``interaction`` ([B, C], the cross network's output) and ``last_hidden``
            ([B, H], the input of the task heads).
        version: teacher checkpoint version that produced them (0 for an untrained or
            in-memory teacher).
        members: a committee's per-member logits, name -> [B, T] (``logits`` is then
            their mean); empty for a single teacher.
    """

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    version: int = 0
    members: dict[str, torch.Tensor] = field(default_factory=dict)

    def detach(self) -> TeacherOutputs:
        return TeacherOutputs(self.logits.detach(),
                              {k: v.detach() for k, v in self.features.items()},
                              self.version, {k: v.detach() for k, v in self.members.items()})

    def to(self, device: torch.device, non_blocking: bool = False) -> TeacherOutputs:
        """On ``device`` (from pinned memory, ``non_blocking`` copies overlap)."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)
        return TeacherOutputs(move(self.logits), {k: move(v) for k, v in self.features.items()},
                              self.version, {k: move(v) for k, v in self.members.items()})

    def pin_memory(self) -> TeacherOutputs:
        return TeacherOutputs(self.logits.pin_memory(),
                              {k: v.pin_memory() for k, v in self.features.items()},
                              self.version, {k: v.pin_memory() for k, v in self.members.items()})

    def select(self, names: tuple[str, ...] | list[str]) -> TeacherOutputs:
        """Keep only the named features; unknown names raise with the known ones."""
        missing = [n for n in names if n not in self.features]
        if missing:
            raise KeyError(f"teacher features {missing} not produced; it has "
                           f"{sorted(self.features)}")
        return TeacherOutputs(self.logits, {n: self.features[n] for n in names},
                              self.version, self.members)


# DistributedDataParallel finds a forward's output tensors with torch's pytree; an
# unregistered dataclass hides them, and with static_graph (TorchRec's default) the dense
# gradients then never get all-reduced across ranks.
pytree.register_dataclass(TeacherOutputs)
