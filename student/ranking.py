"""Per-key ranking metrics: GAUC and NDCG@k over the rows of each user (or request).

A recommender ranks items within a user's candidates, so beside the global AUC the
report gives, per task:

- **GAUC** (Zhou et al., "Deep Interest Network", KDD 2018): the AUC of each key's
  rows, averaged over keys weighted by their rows (impressions); keys whose rows are
  all positive or all negative have no AUC and are left out. Ties count 1/2, as in the
  exact AUC.
- **NDCG@k** (Jarvelin & Kekalainen 2002, binary gains): per key,
  DCG@k = sum_{i < k} y_(i) / log2(i + 2) over its rows ranked by score, divided by
  the DCG of the ideal order; the mean over keys with at least one positive.

Both are computed from (key, score, label) of every row at once, vectorised over keys
with numpy (sorts and bincounts, no loop over keys): TorchRec's ``GAUCMetric`` and
``NDCGMetric`` keep every prediction of their window too and assume a batch holds
whole sessions; here a key's rows may come from any block of the split.
"""

from __future__ import annotations

import numpy as np


def _key_index(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per row of sorted ``keys``, its key's index; each key's first row)."""
    start = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, bool)
    return np.cumsum(start) - 1, np.flatnonzero(start)


def gauc(keys: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """(GAUC, the number of keys it averages over); (nan, 0) where no key has both a
    positive and a negative."""
    order = np.lexsort((scores, keys))
    k, s, y = keys[order], scores[order], labels[order].astype(np.float64)
    kid, first = _key_index(k)
    pos_in_key = np.arange(len(k)) - first[kid]
    # tied scores within a key share the mean of their ranks (1-based, ascending)
    run = np.r_[True, (k[1:] != k[:-1]) | (s[1:] != s[:-1])] if len(k) else np.zeros(0, bool)
    rid = np.cumsum(run) - 1
    run_first, run_len = np.flatnonzero(run), np.bincount(rid)
    rank = pos_in_key[run_first][rid] + (run_len[rid] - 1) / 2.0 + 1.0
    rows = np.bincount(kid).astype(np.float64)
    pos = np.bincount(kid, weights=y)
    neg = rows - pos
    ok = (pos > 0) & (neg > 0)
    if not ok.any():
        return float("nan"), 0
    rank_sum = np.bincount(kid, weights=y * rank)
    auc = (rank_sum[ok] - pos[ok] * (pos[ok] + 1) / 2.0) / (pos[ok] * neg[ok])
    return float((auc * rows[ok]).sum() / rows[ok].sum()), int(ok.sum())


def ndcg_at(keys: np.ndarray, scores: np.ndarray, labels: np.ndarray, k: int = 10
            ) -> tuple[float, int]:
    """(mean NDCG@k over keys with a positive, the number of such keys); (nan, 0) where
    none has one. Equal scores keep the rows' order."""
    order = np.lexsort((-scores, keys))
    key, y = keys[order], labels[order].astype(np.float64)
    kid, first = _key_index(key)
    pos_in_key = np.arange(len(key)) - first[kid]
    top = pos_in_key < k
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = np.bincount(kid[top], weights=y[top] * discount[pos_in_key[top]],
                      minlength=len(first))
    positives = np.bincount(kid, weights=y, minlength=len(first)).astype(np.int64)
    ideal = np.r_[0.0, np.cumsum(discount)][np.minimum(positives, k)]
    ok = positives > 0
    if not ok.any():
        return float("nan"), 0
    return float((dcg[ok] / ideal[ok]).mean()), int(ok.sum())


def ranking_metrics(keys: np.ndarray, logits: np.ndarray, labels: np.ndarray,
                    tasks: tuple[str, ...], k: int = 10) -> dict[str, dict[str, float]]:
    """task -> {"gauc", "gauc_keys", "ndcg@k", "ndcg_keys"} of rows [N] keys, [N, T]
    logits and labels (NaN labels: rows without that task's label, left out)."""
    out = {}
    for i, task in enumerate(tasks):
        have = ~np.isnan(labels[:, i])
        args = (keys[have], logits[have, i], labels[have, i])
        g, g_keys = gauc(*args)
        n, n_keys = ndcg_at(*args, k=k)
        out[task] = {"gauc": g, "gauc_keys": g_keys, f"ndcg@{k}": n, "ndcg_keys": n_keys}
    return out
