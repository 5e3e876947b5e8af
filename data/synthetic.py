"""Synthetic Criteo-like data of any size, generated in chunks, seeded and reproducible.

13 dense count-like features, 26 categorical features with Zipf-distributed ids, and
2-3 correlated binary tasks drawn from a planted nonlinear model. Chunk ``c`` depends
only on ``(seed, c)``, so any chunk can be regenerated alone, and streaming any number
of rows holds one chunk in memory at a time. Per-id effects come from a hash of
``(seed, feature, id)`` instead of a stored table, so memory does not grow with the
cardinalities either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from recdistill.data.errors import ConfigError
from recdistill.data.spec import Dataset, ExampleTable, FeatureSpec, SparseFeature

# Criteo Kaggle's cardinalities (33.8 M ids in all), capped by max_cardinality: the
# default cap of 1e5 gives 0.84 M ids; a cap of 1e7 gives 33.6 M, a 1.08e9-parameter
# teacher at embedding dim 32.
_CRITEO_CARDINALITIES = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145,
                         5683, 8351593, 3194, 27, 14992, 5461306, 10, 5652, 2173, 4,
                         7046547, 18, 15, 286181, 105, 142572)
# Chunk keys of the evaluation rows of a streamed dataset: far above any training chunk.
_EVAL_CHUNK_BASE = 1 << 30
TASKS = ("click", "like", "convert")


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of a synthetic dataset.

    Attributes:
        rows: total examples (train + valid + test for ``synthetic_dataset``).
        chunk_rows: examples per generated chunk; bounds memory while streaming.
        n_dense: dense features (Criteo: 13).
        n_sparse: categorical features (Criteo: 26).
        max_cardinality: cap on every feature's number of ids.
        zipf_exponent: s of the id distribution P(id = k) ~ k^-s.
        n_tasks: 2 (click, like) or 3 (click, like, convert).
        seed: the seed everything derives from.
    """

    rows: int = 100_000
    chunk_rows: int = 65_536
    n_dense: int = 13
    n_sparse: int = 26
    max_cardinality: int = 100_000
    zipf_exponent: float = 1.05
    n_tasks: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("rows", "chunk_rows", "n_sparse", "max_cardinality"):
            if getattr(self, key) < 1:
                raise ConfigError(f"synthetic.{key} must be >= 1, got {getattr(self, key)}")
        if self.n_dense < 2:
            raise ConfigError(f"synthetic.n_dense must be >= 2, got {self.n_dense}")
        if self.n_sparse < 4:
            raise ConfigError(f"synthetic.n_sparse must be >= 4, got {self.n_sparse}")
        if self.n_tasks not in (2, 3):
            raise ConfigError(f"synthetic.n_tasks must be 2 or 3, got {self.n_tasks}")
        if not self.zipf_exponent > 0:
            raise ConfigError(f"synthetic.zipf_exponent must be > 0, got {self.zipf_exponent}")

    def cardinalities(self) -> tuple[int, ...]:
        base = _CRITEO_CARDINALITIES
        # id 0 is the OOV id, so a feature with c distinct values has c + 1 ids.
        return tuple(min(base[i % len(base)], self.max_cardinality) + 1
                     for i in range(self.n_sparse))

    def spec(self) -> FeatureSpec:
        return FeatureSpec(
            dense=tuple(f"d{i}" for i in range(self.n_dense)),
            sparse=tuple(SparseFeature(f"c{i}", c)
                         for i, c in enumerate(self.cardinalities())),
            tasks=TASKS[:self.n_tasks])

    @property
    def n_chunks(self) -> int:
        return -(-self.rows // self.chunk_rows)


_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a well-mixed uint64 hash of each element."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _id_effect(seed: int, feature: int, ids: np.ndarray) -> np.ndarray:
    """A fixed N(0, 1) draw per (seed, feature, id), computed by hashing, not stored."""
    with np.errstate(over="ignore"):
        key = ids.astype(np.uint64) * np.uint64(1_000_003) \
            + np.uint64(feature * 7919 + seed * 104_729 + 1)
    h1 = _splitmix(key)
    h2 = _splitmix(h1)
    u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    u2 = (h2 >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def zipf_ids(rng: np.random.Generator, n: int, card: int, s: float) -> np.ndarray:
    """Ids in [1, card) with P(k) ~ k^-s (inverse CDF of the bounded power law)."""
    values = card - 1
    if values <= 1:
        return np.ones(n, np.int64)
    u = rng.random(n)
    if abs(s - 1.0) < 1e-9:
        x = np.exp(u * np.log(values + 1.0))
    else:
        x = (u * ((values + 1.0) ** (1.0 - s) - 1.0) + 1.0) ** (1.0 / (1.0 - s))
    return np.clip(x.astype(np.int64), 1, values)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def generate_chunk(cfg: SyntheticConfig, chunk: int) -> ExampleTable:
    """Chunk ``chunk`` (rows ``[chunk * chunk_rows, ...)``) of the dataset."""
    if not 0 <= chunk < cfg.n_chunks:
        raise IndexError(f"chunk {chunk} outside [0, {cfg.n_chunks})")
    start = chunk * cfg.chunk_rows
    return _rows(cfg, chunk, start, min(cfg.chunk_rows, cfg.rows - start))


def _rows(cfg: SyntheticConfig, key: int, start: int, n: int) -> ExampleTable:
    """``n`` rows drawn with the generator seeded by ``(seed, key)``, ids from ``start``."""
    rng = np.random.default_rng([cfg.seed, key])
    cards = cfg.cardinalities()

    # Dense: log-normal counts, as Criteo's integer features, fed in as log1p.
    raw = np.floor(np.exp(rng.normal(1.0, 1.2, size=(n, cfg.n_dense))))
    dense = np.log1p(raw)
    z = (dense - 1.2) / 0.9

    ids = np.stack([zipf_ids(rng, n, c, cfg.zipf_exponent) for c in cards], axis=1)
    # Feature f's ids carry effects of size 1 / (1 + f / 4): a few strong, many weak.
    eff = np.stack([_id_effect(cfg.seed, f, ids[:, f]) / (1.0 + f / 4.0)
                    for f in range(cfg.n_sparse)], axis=1)

    # Planted model: additive id effects, a dense linear part, and nonlinear
    # interactions (id x id, dense x dense, id x dense) a factorisation or cross
    # network can find but a linear model cannot.
    w_dense = np.linspace(0.4, -0.3, cfg.n_dense)
    click = (0.45 * eff.sum(axis=1) / np.sqrt(cfg.n_sparse / 4.0) + z @ w_dense * 0.5
             + 0.8 * eff[:, 0] * eff[:, 1] + 0.6 * np.tanh(z[:, 0] * z[:, 1])
             + 0.5 * eff[:, 2] * z[:, 2] - 1.0)
    like = (1.2 * click + 0.6 * eff[:, 3] - 0.5 * eff[:, 1] * z[:, 1]
            + 0.4 * np.sin(2.0 * z[:, 3]) + 0.3)
    y_click = rng.random(n) < _sigmoid(click + rng.normal(0, 0.3, n))
    y_like = rng.random(n) < _sigmoid(like + rng.normal(0, 0.3, n))
    labels = [y_click, y_like]
    if cfg.n_tasks == 3:
        conv = 0.8 * like + 0.5 * eff[:, 0] - 1.5
        labels.append(y_click & (rng.random(n) < _sigmoid(conv)))

    offsets = np.arange(n + 1, dtype=np.int64)
    return ExampleTable(
        dense=dense.astype(np.float32),
        labels=np.stack(labels, axis=1).astype(np.float32),
        ids=np.arange(start, start + n, dtype=np.int64),
        sparse={f"c{f}": (offsets, ids[:, f].copy()) for f in range(cfg.n_sparse)})


def iter_chunks(cfg: SyntheticConfig, first: int = 0, stop: int | None = None
                ) -> Iterator[ExampleTable]:
    """Chunks ``[first, stop)`` (default all), generated one at a time."""
    for c in range(first, cfg.n_chunks if stop is None else min(stop, cfg.n_chunks)):
        yield generate_chunk(cfg, c)


def _concat(tables: list[ExampleTable]) -> ExampleTable:
    first = tables[0]
    n = sum(len(t) for t in tables)
    return ExampleTable(
        dense=np.concatenate([t.dense for t in tables]),
        labels=np.concatenate([t.labels for t in tables]),
        ids=np.concatenate([t.ids for t in tables]),
        sparse={k: (np.arange(n + 1, dtype=np.int64),
                    np.concatenate([t.sparse[k][1] for t in tables]))
                for k in first.sparse})


def synthetic_dataset(cfg: SyntheticConfig) -> Dataset:
    """The whole dataset in memory, split 80/10/10 by row order (for modest sizes)."""
    table = _concat(list(iter_chunks(cfg)))
    n = len(table)
    cut = [int(n * 0.8), int(n * 0.9)]
    parts = np.split(np.arange(n), cut)

    def rows(idx: np.ndarray) -> ExampleTable:
        m = len(idx)
        return ExampleTable(table.dense[idx], table.labels[idx], table.ids[idx],
                            {k: (np.arange(m + 1, dtype=np.int64), v[idx])
                             for k, (_, v) in table.sparse.items()})

    return Dataset(cfg.spec(), *(rows(p) for p in parts),
                   name=f"synthetic-{cfg.rows}-seed{cfg.seed}")


@dataclass(frozen=True)
class SyntheticStream:
    """Training rows that are never all in memory: chunk ``c`` is generated where it is
    read (a Ray Data task, see ``cluster.data``), from ``(seed, c)`` alone.

    Attributes:
        cfg: ``cfg.rows`` is the number of training rows.
    """

    cfg: SyntheticConfig

    def __len__(self) -> int:
        return self.cfg.rows

    @property
    def n_chunks(self) -> int:
        return self.cfg.n_chunks

    @property
    def chunk_sizes(self) -> list[int]:
        c = self.cfg
        return [min(c.chunk_rows, c.rows - i * c.chunk_rows) for i in range(c.n_chunks)]

    def num_batches(self, batch_size: int, world: int = 1) -> int:
        """Batches per rank of a pass (as ``ExampleTable.num_batches``)."""
        return -(-(len(self) // world) // batch_size)

    def chunk(self, c: int, seed: int | None = None) -> ExampleTable:
        """Chunk ``c``; with ``seed``, its rows in an order drawn from ``(seed, c)`` (the
        within-chunk half of a pass's shuffle; the pass shuffles the chunk order too)."""
        t = generate_chunk(self.cfg, c)
        if seed is None:
            return t
        order = np.random.default_rng([seed, c]).permutation(len(t))
        n = len(order)
        return ExampleTable(t.dense[order], t.labels[order], t.ids[order],
                            {k: (np.arange(n + 1, dtype=np.int64), v[order])
                             for k, (_, v) in t.sparse.items()})


def synthetic_stream_dataset(cfg: SyntheticConfig, eval_rows: int = 50_000) -> Dataset:
    """``cfg.rows`` training rows streamed (:class:`SyntheticStream`), and validation and
    test sets of ``eval_rows`` rows each in memory, from the same planted model (ids
    after the training ids). Memory does not grow with ``cfg.rows``."""
    if eval_rows < 1:
        raise ConfigError(f"eval_rows must be >= 1, got {eval_rows}")
    valid = _rows(cfg, _EVAL_CHUNK_BASE, cfg.rows, eval_rows)
    test = _rows(cfg, _EVAL_CHUNK_BASE + 1, cfg.rows + eval_rows, eval_rows)
    return Dataset(cfg.spec(), SyntheticStream(cfg), valid, test,  # type: ignore[arg-type]
                   name=f"synthetic-stream-{cfg.rows}-seed{cfg.seed}")
