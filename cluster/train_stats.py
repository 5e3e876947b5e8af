"""Train's counting pass (``vocab`` vocabularies, dense mean and standard deviation,
rows) as a Ray Data aggregation over its files: each file is read and checked in a Ray
task (the same block reader and checks as the pass in one process), its value counts
and dense sums become rows, and ``groupby(...).sum()`` adds them up across files and
nodes. The driver then holds what it must anyway: the vocabularies.

It is :func:`recdistill.data.tabular.load_tabular`'s ``count_train``;
``recdistill stats`` runs it and keeps the result beside the dataset TOML, where every
job finds it."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import pandas as pd

from recdistill.data.files import Source
from recdistill.data.tabular import StatsPart, finish_stats
from recdistill.data.transform import RowTransform

DENSE = ""  # the key column of the dense sums' rows (no column of a dataset is "")


def _rows(part: StatsPart) -> pd.DataFrame:
    """A part as rows (key, value, count, x): one per counted value of a vocab column,
    and under key ``DENSE`` the rows (``n``), each dense column's sum (``t<i>``) and sum
    of squares (``s<i>``) in ``x``."""
    frames = [pd.DataFrame({"key": col, "value": counts.index.astype(str),
                            "count": counts.to_numpy(np.int64), "x": 0.0})
              for col, counts in part.counts.items()]
    dense = [("n", part.n, 0.0)] + [(f"t{i}", 0, float(v)) for i, v in enumerate(part.total)] \
        + [(f"s{i}", 0, float(v)) for i, v in enumerate(part.squares)]
    frames.append(pd.DataFrame({"key": DENSE, "value": [d[0] for d in dense],
                                "count": np.array([d[1] for d in dense], np.int64),
                                "x": [d[2] for d in dense]}))
    return pd.concat(frames, ignore_index=True)


def count_with_ray_data(train: Source, part_of: Callable[[Source], StatsPart],
                        t: RowTransform) -> int:
    """Train's statistics into ``t`` by a Ray Data aggregation (one task per file, on
    the cluster Ray is connected to); its rows. A bad file fails the pass naming its
    file, row and column (``DataError``, as the pass in one process)."""
    import ray

    def counted(batch: pd.DataFrame) -> pd.DataFrame:
        return pd.concat([_rows(part_of(dataclasses.replace(train, paths=(path,))))
                          for path in batch["path"]], ignore_index=True)

    files = ray.data.from_items([{"path": p} for p in train.paths],
                                override_num_blocks=len(train.paths))
    summed = files.map_batches(counted, batch_size=1, batch_format="pandas") \
        .groupby(["key", "value"]).sum(["count", "x"])
    frame = summed.to_pandas()
    count_col, x_col = "sum(count)", "sum(x)"
    dense = frame[frame["key"] == DENSE].set_index("value")
    d = len(t.dense)
    counts = {col: pd.Series(g[count_col].to_numpy(np.int64),
                             index=pd.Index(g["value"].to_numpy(object), dtype=object))
              for col, g in frame[frame["key"] != DENSE].groupby("key")}
    vocab_cols = [c for c in t.categorical if t.rules[c].kind == "vocab"]
    counts = {c: counts.get(c, pd.Series(dtype=np.int64)) for c in vocab_cols}
    part = StatsPart(counts,
                     np.array([dense.at[f"t{i}", x_col] for i in range(d)], np.float64),
                     np.array([dense.at[f"s{i}", x_col] for i in range(d)], np.float64),
                     int(dense.at["n", count_col]))
    return finish_stats(part, t)
