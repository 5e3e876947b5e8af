"""A Criteo-like click log written as many Parquet files, for ingest at scale.

Criteo's terabyte click logs have 13 integer features (counts), 26 categorical features
of raw hashed ids and a click label. This writes data of that shape with a planted
signal: ids drawn Zipf-like from each feature's cardinality in Criteo 1TB (the numbers
TorchRec's DLRM example passes as ``--num_embeddings_per_feature``), capped at
``max_cardinality``; counts log-normal; two tasks (``click`` and ``conversion``, a
conversion only after a click) from a logistic model of a few ids and counts. The id of
a value is its text (a scrambled 32-bit number), as in the real logs, so a job must map
raw values to ids (``[ids]`` in the TOML). Everything is seeded and written file by file:
memory does not grow with ``rows``.

    python -m data.criteo runs/criteo --rows 1000000 --files 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# Criteo 1TB's distinct values per categorical feature (TorchRec's DLRM example).
CARDINALITIES = (45833188, 36746, 17245, 7413, 20243, 3, 7114, 1441, 62, 29275261,
                 1572176, 345138, 10, 2209, 11267, 128, 4, 974, 14, 48937457, 11316796,
                 40094537, 452104, 12606, 104, 35)
DENSE = tuple(f"int_{i}" for i in range(13))
SPARSE = tuple(f"cat_{i}" for i in range(26))
TASKS = ("click", "conversion")
_SIGNAL = (0, 2, 3, 9, 14, 19, 22)  # features whose ids move the click


def _mix(x: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of ``x + salt``: a fixed pseudo-random uint64 per value."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(salt) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _effect(ids: np.ndarray, salt: int) -> np.ndarray:
    """A value's planted effect on the click logit, ~N(0, 1) by Box-Muller on its hash."""
    h = _mix(ids, salt)
    u1 = ((h >> np.uint64(11)).astype(np.float64) + 1.0) / 2.0 ** 53
    u2 = (_mix(ids, salt + 1) >> np.uint64(11)).astype(np.float64) / 2.0 ** 53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)


def block(rows: int, seed: int, max_cardinality: int) -> pa.Table:
    """``rows`` seeded rows of the log as an Arrow table."""
    rng = np.random.default_rng(seed)
    cols: dict[str, pa.Array] = {}
    dense = np.floor(rng.lognormal(1.0, 1.2, (rows, len(DENSE)))).astype(np.int64)
    logit = -1.2 + 0.25 * (np.log1p(dense[:, 0]) - 1.0) - 0.2 * (np.log1p(dense[:, 3]) - 1.5)
    for i, name in enumerate(DENSE):
        cols[name] = pa.array(dense[:, i])
    ranks = {}
    for i, (name, card) in enumerate(zip(SPARSE, CARDINALITIES)):
        card = min(card, max_cardinality)
        # Zipf-like ranks: a few values are most of the rows, as in click logs
        rank = np.minimum(np.floor(card ** rng.random(rows)) - 1, card - 1).astype(np.int64)
        ranks[name] = rank
        if i in _SIGNAL:
            logit += 0.45 * _effect(rank, 7 + i)
        cols[name] = pc.cast(pa.array((_mix(rank, i) >> np.uint64(32)).astype(np.int64)),
                             pa.string())
    click = rng.random(rows) < 1 / (1 + np.exp(-logit))
    conv_logit = -1.0 + 0.6 * _effect(ranks["cat_3"], 99)
    conversion = click & (rng.random(rows) < 1 / (1 + np.exp(-conv_logit)))
    cols["click"] = pa.array(click.astype(np.int8))
    cols["conversion"] = pa.array(conversion.astype(np.int8))
    return pa.table(cols)


def write(root: str | Path, rows: int, *, files: int = 16, eval_rows: int = 0,
          seed: int = 0, max_cardinality: int = 10_000_000) -> Path:
    """Write train/ (``files`` Parquet files of ``rows`` rows in all), valid/ and test/
    (``eval_rows`` each, default ``rows // 20``) and a ``dataset.toml`` that hashes the
    ids; the TOML's path."""
    root = Path(root)
    eval_rows = eval_rows or max(rows // 20, 1000)
    parts = {"train": (rows, files), "valid": (eval_rows, max(files // 8, 1)),
             "test": (eval_rows, max(files // 8, 1))}
    for s, (split, (n, k)) in enumerate(parts.items()):
        (root / split).mkdir(parents=True, exist_ok=True)
        for f, chunk in enumerate(np.array_split(np.arange(n), k)):
            pq.write_table(block(len(chunk), seed * 100_003 + s * 10_007 + f,
                                 max_cardinality),
                           root / split / f"part-{f:05d}.parquet", row_group_size=65_536)
    toml = root / "dataset.toml"
    toml.write_text(
        'train = "train"\nvalid = "valid"\ntest = "test"\n'
        f"dense = {list(DENSE)}\nsparse = {list(SPARSE)}\ntasks = {list(TASKS)}\n"
        "[ids]\nkind = \"hash\"\nbuckets = 1000000\n".replace("'", '"'))
    return toml


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.criteo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--files", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-cardinality", type=int, default=10_000_000)
    a = p.parse_args(argv)
    print(write(a.root, a.rows, files=a.files, seed=a.seed,
                max_cardinality=a.max_cardinality))
    return 0


if __name__ == "__main__":
    sys.exit(main())
