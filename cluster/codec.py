"""The labelled batch: what a label source puts in the object store for one batch, and
the transport codec of its tensors (fp16 / bf16 / fp32 as numpy; bfloat16 travels as
its int16 bits, since numpy has no bfloat16)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from data.spec import BatchArrays
from teacher.outputs import TeacherOutputs


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
        inputs: the examples (features, labels, ids).
        logits: [B, T] teacher logits in ``logit_dtype``.
        features: name -> [B, d] requested teacher features in ``feature_dtype``.
        version: teacher checkpoint version.
        logit_dtype: transport dtype of the logits.
        feature_dtype: transport dtype of the features.
    """

    inputs: BatchArrays
    logits: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    version: int = 0
    logit_dtype: str = "float16"
    feature_dtype: str = "float16"

    def teacher_outputs(self, rows: slice | np.ndarray = slice(None)) -> TeacherOutputs:
        return TeacherOutputs(
            logits=decode(self.logits[rows], self.logit_dtype),
            features={k: decode(v[rows], self.feature_dtype)
                      for k, v in self.features.items()},
            version=self.version)

    @property
    def label_bytes(self) -> int:
        """Bytes of the soft labels (logits and features) in it."""
        return self.logits.nbytes + sum(v.nbytes for v in self.features.values())
