"""Per-task evaluation metrics from a mergeable state, so a split is scored block by block.

:class:`MetricState` holds, per task, sums and a histogram of the scores; states of
blocks (or of ranks) add up, and :meth:`MetricState.compute` gives the metrics of
everything added. Nothing in it grows with rows.

- logloss, normalised entropy (NE = logloss / entropy of the base rate, He et al. 2014)
  and calibration (sum of predicted probabilities / number of positives) are the sums
  TorchRec's NE and calibration metrics keep (its ``get_ne_states`` and
  ``get_calibration_states``, written here in numpy: every student replica adds up its
  blocks, and importing ``torchrec.metrics`` there cost each process ~1 s; tested
  equal), computed by TorchRec's ``compute_ne``, ``compute_logloss`` and
  ``compute_calibration`` where the states meet. TorchRec reports logloss in bits (log2);
  we report nats, the unit of ``torch.nn.functional.binary_cross_entropy``.
- AUC comes from a histogram of the logits in :data:`AUC_BINS` equal bins over
  [-:data:`LOGIT_RANGE`, +:data:`LOGIT_RANGE`] (outside values fall in the end bins),
  positives and negatives counted per bin. A pair of a positive and a negative in
  different bins is ordered as the exact AUC orders it; a pair in the same bin counts
  1/2, where the exact AUC counts 0, 1/2 or 1. So the histogram AUC is within
  ``auc_bound`` = sum_b pos_b * neg_b / (2 * P * N) of the exact one, a bound computed
  from the same state and reported with the AUC (typically 1e-6 to 1e-4). Written here
  because TorchRec's ``AUCMetric`` keeps every prediction of its window: its memory
  grows with the split.
- GAUC and NDCG@10 per user (or request) key, where the split has a key
  (``FeatureSpec.group_key``): ``student/ranking.py``. These need every row's (key,
  logit, label), 4 + 8 bytes per row and task: the one part of the state that grows
  with the evaluated split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

AUC_BINS = 1 << 17
LOGIT_RANGE = 16.0
_ETA = 1e-12  # TorchRec's NEMetric's clamp of probabilities

Metrics = dict[str, dict[str, float]]  # task -> metric -> value


@dataclass
class MetricState:
    """The mergeable state of T tasks' metrics (see the module docstring).

    Attributes:
        tasks: the task names, in column order.
        pos, neg: int64 [T, AUC_BINS] positives / negatives per logit bin.
        sums: float64 [T, 5] per task: cross-entropy (bits), examples, positives,
            negatives, sum of predicted probabilities.
        ranked: the (keys int64 [B], logits float32 [B, T], labels float32 [B, T]) of
            each block added with keys, for GAUC and NDCG@10.
    """

    tasks: tuple[str, ...]
    pos: np.ndarray
    neg: np.ndarray
    sums: np.ndarray
    ranked: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    @classmethod
    def empty(cls, tasks: tuple[str, ...] | list[str]) -> "MetricState":
        t = len(tasks)
        return cls(tuple(tasks), np.zeros((t, AUC_BINS), np.int64),
                   np.zeros((t, AUC_BINS), np.int64), np.zeros((t, 5)))

    @classmethod
    def of(cls, logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
           tasks: tuple[str, ...] | list[str]) -> "MetricState":
        state = cls.empty(tasks)
        state.update(logits, labels)
        return state

    @property
    def n(self) -> int:
        return int(self.sums[0, 1]) if len(self.tasks) else 0

    def update(self, logits: np.ndarray | torch.Tensor,
               labels: np.ndarray | torch.Tensor, keys: np.ndarray | None = None) -> None:
        """Add a block: ``logits`` [B, T] pre-sigmoid scores, ``labels`` [B, T] 0/1;
        ``keys`` [B], each row's user or request key (GAUC, NDCG@10)."""
        x, y = _f64(logits), _f64(labels)
        if keys is not None:
            if len(keys) != len(x):
                raise ValueError(f"{len(keys)} keys for {len(x)} rows")
            self.ranked.append((np.asarray(keys, np.int64), x.astype(np.float32),
                                y.astype(np.float32)))
        t = len(self.tasks)
        if x.shape != y.shape or x.ndim != 2 or x.shape[1] != t:
            raise ValueError(f"logits {tuple(x.shape)} and labels {tuple(y.shape)} "
                             f"must both be [N, {t}]")
        if not len(x):
            return
        x, y = x.T, y.T  # [T, B]
        p = 1.0 / (1.0 + np.exp(-x))
        q = np.clip(p, _ETA, 1 - _ETA)  # TorchRec's cross entropy, in bits
        ce = -y * np.log2(q) - (1.0 - y) * np.log2(1.0 - q)
        self.sums += np.stack([ce.sum(1), np.full(t, x.shape[1], np.float64), y.sum(1),
                               (1.0 - y).sum(1), p.sum(1)], axis=1)
        scaled = (x + LOGIT_RANGE) * (AUC_BINS / (2 * LOGIT_RANGE))
        bins = np.clip(scaled, 0, AUC_BINS - 1).astype(np.int64)
        positive = y > 0.5
        for i in range(t):
            self.pos[i] += np.bincount(bins[i][positive[i]], minlength=AUC_BINS)
            self.neg[i] += np.bincount(bins[i][~positive[i]], minlength=AUC_BINS)

    def merge(self, other: "MetricState") -> "MetricState":
        """This state plus ``other`` (in place; returns self)."""
        if other.tasks != self.tasks:
            raise ValueError(f"cannot merge metrics of tasks {other.tasks} into {self.tasks}")
        self.pos += other.pos
        self.neg += other.neg
        self.sums += other.sums
        self.ranked += other.ranked
        return self

    def compute(self) -> Metrics:
        """task -> {"auc", "auc_bound", "logloss" (nats), "ne", "calibration",
        "positive_rate", "n"}, and with keys "gauc", "ndcg@10" (and how many keys each
        averages over, "gauc_keys", "ndcg_keys")."""
        from torchrec.metrics.calibration import compute_calibration
        from torchrec.metrics.ne import compute_logloss, compute_ne
        if self.n == 0:
            raise ValueError("no examples to evaluate")
        s = torch.from_numpy(self.sums.copy())
        ce, num, pos, neg, pred = s.unbind(1)
        logloss = compute_logloss(ce, pos, neg.clone(), _ETA) * math.log(2.0)
        ne = compute_ne(ce, num, pos, neg, _ETA)
        calibration = compute_calibration(pred, pos)
        out: Metrics = {}
        for i, task in enumerate(self.tasks):
            auc, bound = _histogram_auc(self.pos[i], self.neg[i])
            out[task] = {"auc": auc, "auc_bound": bound, "logloss": float(logloss[i]),
                         "ne": float(ne[i]), "calibration": float(calibration[i]),
                         "positive_rate": float(pos[i] / num[i]), "n": int(num[i])}
        if self.ranked:
            from recdistill.student.ranking import ranking_metrics
            keys, x, y = (np.concatenate(parts) for parts in zip(*self.ranked))
            for task, m in ranking_metrics(keys, x, y, self.tasks).items():
                out[task].update(m)
        return out


def _f64(a: np.ndarray | torch.Tensor) -> np.ndarray:
    """A float64 numpy copy."""
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    return np.array(a, np.float64)


def _histogram_auc(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """(AUC, its bound against the exact AUC) from per-bin counts; (0.5, 0.5) where a
    class is missing (TorchRec's AUC is 0.5 there too)."""
    p, n = float(pos.sum()), float(neg.sum())
    if p == 0 or n == 0:
        return 0.5, 0.5
    below = np.cumsum(neg) - neg  # negatives in lower bins
    pos_f, neg_f = pos.astype(np.float64), neg.astype(np.float64)
    same = float(pos_f @ neg_f)
    auc = (float(pos_f @ below) + 0.5 * same) / (p * n)
    return auc, 0.5 * same / (p * n)


def task_metrics(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                 tasks: tuple[str, ...] | list[str]) -> Metrics:
    """Metrics of every task over the rows given (one block): see :class:`MetricState`.

    Args:
        logits: [N, T] pre-sigmoid scores.
        labels: [N, T] 0/1 labels.
        tasks: the T task names, column order.
    """
    return MetricState.of(logits, labels, tasks).compute()
