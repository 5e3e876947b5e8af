"""TOML datasets of four shapes, generated with a planted signal, to check that what
holds on MovieLens holds on data of other shapes (``python -m data.shapes``).

- ``dense_tabular``: 16 dense columns, 3 low-cardinality categoricals, one task (an
  income-style table).
- ``id_heavy``: user and item ids with thousands of values, a small context feature,
  two tasks (an interaction log).
- ``multi_hot``: a bag of tags per row, a few ids, two tasks.
- ``id_drift``: ``id_heavy``'s users and items, but each user's taste drifts over the
  rows (which are in time order, so valid and test come after train): what a model
  memorises of an id early is partly wrong later. Validation peaks within a few passes
  and a larger teacher is barely better than a student.

Labels come from a hidden model: a logistic score made of linear terms, pairwise
interactions between latent vectors of the categorical values (what embeddings learn),
and a non-linear function of the dense columns, so a larger model has more to find than
a small one. Everything is seeded: one seed, one dataset. The files are Parquet beside a
``dataset.toml`` that ``--data`` takes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SHAPES = ("dense_tabular", "id_heavy", "multi_hot", "id_drift")


def _latent(rng: np.random.Generator, n: int, d: int = 4, scale: float = 1.0) -> np.ndarray:
    return rng.normal(0, scale, (n, d))


def _zipf(rng: np.random.Generator, n: int, card: int, a: float = 1.2) -> np.ndarray:
    """Ids 0..card-1 with a long tail (popular values first)."""
    ranks = np.arange(1, card + 1)
    p = ranks ** -a
    return rng.choice(card, n, p=p / p.sum())


def frames(shape: str, rows: int, seed: int = 0) -> tuple[dict[str, pd.DataFrame], str]:
    """``(split -> frame, dataset TOML text)`` of ``rows`` rows of ``shape`` (80/10/10)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {}
    score = {"y": np.zeros(rows), "z": np.zeros(rows)}
    if shape == "dense_tabular":
        x = rng.normal(size=(rows, 16))
        for j in range(16):
            cols[f"x{j}"] = x[:, j].round(3)
        w = rng.normal(0, 0.4, 16)
        score["y"] += x @ w + 0.8 * np.sin(2 * x[:, 0]) * x[:, 1] + 0.5 * x[:, 2] * x[:, 3]
        cats = {"c0": 8, "c1": 20, "c2": 50}
        latents = {c: _latent(rng, k) for c, k in cats.items()}
        ids = {c: rng.integers(0, k, rows) for c, k in cats.items()}
        for c in cats:
            cols[c] = np.array([f"{c}_{i}" for i in ids[c]])
        score["y"] += 0.6 * np.sum(latents["c0"][ids["c0"]] * latents["c1"][ids["c1"]], 1)
        score["y"] += 0.3 * latents["c2"][ids["c2"]][:, 0] * x[:, 4]
        toml = ('dense = [' + ", ".join(f'"x{j}"' for j in range(16)) + ']\n'
                'sparse = ["c0", "c1", "c2"]\ntasks = ["y"]\n')
        tasks = ["y"]
    elif shape == "id_drift":
        n_users, n_items = 3000, 2000
        user, item = _zipf(rng, rows, n_users, 1.05), _zipf(rng, rows, n_items, 1.1)
        before, after = _latent(rng, n_users, 8, 0.5), _latent(rng, n_users, 8, 0.5)
        v, bias_i = _latent(rng, n_items, 8, 0.5), rng.normal(0, 0.5, n_items)
        angle = (np.pi / 2) * np.arange(rows) / rows  # a quarter turn over the rows
        taste = before[user] * np.cos(angle)[:, None] + after[user] * np.sin(angle)[:, None]
        inter = np.sum(taste * v[item], 1)
        score["y"] += bias_i[item] + 1.5 * inter
        score["z"] += 0.7 * bias_i[item] + 1.2 * inter - 1.0
        cols.update(user=user, item=item, hour=rng.integers(0, 24, rows).astype(float))
        toml = ('dense = ["hour"]\nsparse = ["user", "item"]\ntasks = ["y", "z"]\n'
                'group_key = "user"\n')
        tasks = ["y", "z"]
    elif shape == "id_heavy":
        n_users, n_items = 3000, 2000
        user, item = _zipf(rng, rows, n_users, 1.05), _zipf(rng, rows, n_items, 1.1)
        ctx = rng.integers(0, 6, rows)
        u, v, c = _latent(rng, n_users, 8, 0.5), _latent(rng, n_items, 8, 0.5), \
            _latent(rng, 6, 8, 0.5)
        bias_u, bias_i = rng.normal(0, 0.5, n_users), rng.normal(0, 0.5, n_items)
        inter = np.sum(u[user] * v[item], 1) + 0.5 * np.sum(v[item] * c[ctx], 1)
        score["y"] += bias_u[user] + bias_i[item] + 1.5 * inter
        score["z"] += 0.7 * bias_i[item] + 1.2 * inter - 1.0
        cols.update(user=user, item=item, ctx=np.array([f"ctx{i}" for i in ctx]),
                    hour=rng.integers(0, 24, rows).astype(float))
        toml = ('dense = ["hour"]\nsparse = ["user", "item", "ctx"]\ntasks = ["y", "z"]\n'
                'group_key = "user"\n')
        tasks = ["y", "z"]
    else:  # multi_hot
        n_tags, n_items = 300, 800
        item = _zipf(rng, rows, n_items, 1.1)
        lengths = rng.integers(1, 6, rows)
        tags = [rng.choice(n_tags, k, replace=False) for k in lengths]
        t_lat, i_lat = _latent(rng, n_tags, 6, 0.6), _latent(rng, n_items, 6, 0.6)
        pooled = np.stack([t_lat[t].mean(0) for t in tags])
        region = rng.integers(0, 12, rows)
        r_lat = _latent(rng, 12, 6, 0.6)
        inter = np.sum(pooled * i_lat[item], 1) + np.sum(pooled * r_lat[region], 1)
        score["y"] += 2.0 * inter
        score["z"] += 1.5 * np.sum(i_lat[item] * r_lat[region], 1) + inter - 0.8
        cols.update(item=item, region=region,
                    tags=np.array(["|".join(f"t{x}" for x in t) for t in tags]),
                    age=rng.normal(35, 10, rows).round(0))
        toml = ('dense = ["age"]\nsparse = ["item", "region"]\nmulti_hot = { tags = "|" }\n'
                'tasks = ["y", "z"]\n')
        tasks = ["y", "z"]
    for t in tasks:
        p = 1 / (1 + np.exp(-(score[t] - np.median(score[t]))))
        cols[t] = (rng.random(rows) < p).astype(int)
    df = pd.DataFrame(cols)
    cut = [int(rows * 0.8), int(rows * 0.9)]
    parts = {"train": df.iloc[:cut[0]], "valid": df.iloc[cut[0]:cut[1]],
             "test": df.iloc[cut[1]:]}
    head = 'train = "train.parquet"\nvalid = "valid.parquet"\ntest = "test.parquet"\n'
    return {k: v.reset_index(drop=True) for k, v in parts.items()}, head + toml


def write(root: str | Path, shape: str, rows: int, seed: int = 0) -> Path:
    """Write dataset ``shape`` under ``root``; returns its ``dataset.toml``."""
    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    parts, toml = frames(shape, rows, seed)
    for split, frame in parts.items():
        frame.to_parquet(out / f"{split}.parquet", index=False)
    path = out / "dataset.toml"
    path.write_text(toml)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.shapes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shape", choices=SHAPES)
    p.add_argument("out", help="directory to write train/valid/test.parquet and "
                               "dataset.toml into")
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(write(a.out, a.shape, a.rows, a.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
