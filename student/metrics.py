"""Per-task evaluation metrics, computed by ``torchrec.metrics``.

AUC, logloss, normalised entropy (NE = logloss / entropy of the base rate, He et al.
2014) and calibration (sum of predicted probabilities / number of positives) come from
TorchRec's RecMetrics, the ones its training loops log. TorchRec reports logloss in bits
(log2); we report nats, the unit of ``torch.nn.functional.binary_cross_entropy``.
"""

from __future__ import annotations

import math

import torch
from torchrec.metrics.auc import AUCMetric
from torchrec.metrics.calibration import CalibrationMetric
from torchrec.metrics.metrics_config import RecTaskInfo
from torchrec.metrics.ne import NEMetric

def task_metrics(logits: torch.Tensor, labels: torch.Tensor,
                 tasks: tuple[str, ...] | list[str]) -> dict[str, dict[str, float]]:
    """Metrics of every task over a whole split.

    Args:
        logits: [N, T] pre-sigmoid scores.
        labels: [N, T] 0/1 labels.
        tasks: the T task names, column order.

    Returns:
        task -> {"auc", "logloss" (nats), "ne", "calibration", "positive_rate", "n"}.
    """
    if logits.shape != labels.shape or logits.dim() != 2 or logits.shape[1] != len(tasks):
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} "
                         f"must both be [N, {len(tasks)}]")
    n = int(logits.shape[0])
    if n == 0:
        raise ValueError("no examples to evaluate")
    probs = torch.sigmoid(logits.detach().double().cpu())
    y = labels.detach().double().cpu()
    infos = [RecTaskInfo(name=t, label_name=t, prediction_name=t, weight_name=t)
             for t in tasks]
    preds = {t: probs[:, i] for i, t in enumerate(tasks)}
    labs = {t: y[:, i] for i, t in enumerate(tasks)}
    weights = {t: torch.ones(n, dtype=torch.float64) for t in tasks}
    out: dict[str, dict[str, float]] = {t: {} for t in tasks}
    for cls, kwargs in ((AUCMetric, {}), (NEMetric, {"include_logloss": True}),
                        (CalibrationMetric, {})):
        # One process holds the whole split (callers gather first), so world_size=1 and
        # a window as large as the split: "window" values are then whole-split values.
        metric = cls(world_size=1, my_rank=0, batch_size=n, tasks=infos, window_size=n,
                     **kwargs)
        metric.update(predictions=preds, labels=labs, weights=weights)
        for key, value in metric.compute().items():
            # keys look like "ne-like|window_logloss"
            task = key.split("-", 1)[1].split("|", 1)[0]
            name = key.split("|", 1)[1]
            if not name.startswith("window_"):
                continue
            name = name[len("window_"):]
            v = float(value.reshape(-1)[0])
            out[task][name] = v * math.log(2.0) if name == "logloss" else v
    for i, t in enumerate(tasks):
        out[t]["positive_rate"] = float(y[:, i].mean())
        out[t]["n"] = n
    return out
