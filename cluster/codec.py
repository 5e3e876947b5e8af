"""The labelled batch: what a label source puts in the object store for one batch, and
the transport codec of its tensors (fp16 / bf16 / fp32 as numpy; bfloat16 travels as
its int16 bits, since numpy has no bfloat16)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from recdistill.data.spec import BatchArrays
from recdistill.teacher.outputs import TeacherOutputs


def encode(t: torch.Tensor, dtype: str) -> np.ndarray:
    """A tensor in the transport dtype, as numpy (bfloat16 travels as its int16 bits)."""
    if dtype == "bfloat16":
        return t.detach().to(torch.bfloat16).view(torch.int16).cpu().numpy()
    return t.detach().to(getattr(torch, dtype)).cpu().numpy()


def decode(a: np.ndarray, dtype: str) -> torch.Tensor:
    """``encode``'s array back as a float32 tensor."""
    t = torch.from_numpy(np.array(a))  # ray.get gives read-only arrays: copy the slice
    if dtype == "bfloat16":
        t = t.view(torch.bfloat16)
    return t.float()


@dataclass
class LabelledBatch:
    """What one label-source rank puts in the object store for one batch.

    Attributes:
        inputs: the examples (features, labels, ids); None in a committee member's
            labels of the lead's batch (the inputs travel once, in the lead's).
        logits: [B, T] teacher logits in ``logit_dtype``.
        features: name -> [B, d] requested teacher features in ``feature_dtype``.
        version: teacher checkpoint version.
        logit_dtype: transport dtype of the logits.
        feature_dtype: transport dtype of the features.
        member: the committee member that labelled it ("" for a single teacher).
        members: a committee's per-member logits when one batch carries them all
            (soft labels precomputed by a committee: ``logits`` is their mean).
    """

    inputs: BatchArrays | None
    logits: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    version: int = 0
    logit_dtype: str = "float16"
    feature_dtype: str = "float16"
    member: str = ""
    members: dict[str, np.ndarray] = field(default_factory=dict)

    def teacher_outputs(self, rows: slice | np.ndarray = slice(None)) -> TeacherOutputs:
        return TeacherOutputs(
            logits=decode(self.logits[rows], self.logit_dtype),
            features={k: decode(v[rows], self.feature_dtype)
                      for k, v in self.features.items()},
            version=self.version,
            members={k: decode(v[rows], self.logit_dtype) for k, v in self.members.items()})

    @property
    def label_bytes(self) -> int:
        """Bytes of the soft labels (logits, features, members' logits) in it."""
        return self.logits.nbytes + sum(v.nbytes for v in self.features.values()) + \
            sum(v.nbytes for v in self.members.values())


def committee_outputs(batches: tuple[LabelledBatch, ...],
                      rows: slice | np.ndarray = slice(None)) -> TeacherOutputs:
    """What the students see of one batch labelled by a committee (the lead's first):
    the mean of the members' logits (fp32, after decoding), each feature as every
    member's tensor side by side (the lead's columns first: the committee's
    representation, of which the mean logit is a linear function), and every member's
    logits by name in ``members``. One batch: the lead's outputs."""
    outputs = [b.teacher_outputs(rows) for b in batches]
    if len(batches) == 1:
        return outputs[0]
    return TeacherOutputs(
        logits=torch.stack([o.logits for o in outputs]).mean(dim=0),
        features={k: torch.cat([o.features[k] for o in outputs], dim=1)
                  for k in outputs[0].features},
        version=outputs[0].version,
        members={b.member: o.logits for b, o in zip(batches, outputs)})
