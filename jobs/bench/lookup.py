"""lookup: the teacher's embedding path (TorchRec + FBGEMM fused kernels) vs plain
``nn.EmbeddingBag`` tables, forward + backward + update on the same tables and batches."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from recdistill.jobs.bench.common import rates_table


def _batches(n_tables: int, rows: int, batch: int, max_pool: int, count: int,
             seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(values, lengths) per batch, key-major, Zipf ids (synthetic data's sampler)."""
    from recdistill.data.synthetic import zipf_ids
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        lengths = rng.integers(1, max_pool + 1, size=n_tables * batch)
        values = zipf_ids(rng, int(lengths.sum()), rows, 1.05)
        out.append((torch.from_numpy(values), torch.from_numpy(lengths.astype(np.int32))))
    return out


def _timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_lookup(rows: int, dim: int, n_tables: int = 26, batch: int = 2048,
                 max_pool: int = 20, repeats: int = 15, warmup: int = 3) -> dict[str, Any]:
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from recdistill.teacher.config import TeacherConfig
    from recdistill.teacher.sharding import shard_teacher

    keys = [f"f{i}" for i in range(n_tables)]
    tables = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=dim, num_embeddings=rows,
                                 feature_names=[k], pooling=PoolingType.SUM)
              for i, k in enumerate(keys)]

    class Tables(nn.Module):  # the shape teacher.sharding expects: tables under `.ebc`
        def __init__(self) -> None:
            super().__init__()
            self.ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))

        def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
            return self.ebc(kjt).values()

    cfg = TeacherConfig(embedding_dim=dim, embedding_lr=0.01)
    fused = shard_teacher(Tables(), cfg, device=torch.device("cpu"))  # type: ignore[arg-type]
    plains = {}
    for kind in ("sparse", "dense"):
        bags = nn.ModuleList([nn.EmbeddingBag(rows, dim, mode="sum", sparse=kind == "sparse")
                              for _ in keys])
        plains[kind] = (bags, torch.optim.Adagrad(bags.parameters(), lr=0.01))
    batches = _batches(n_tables, rows, batch, max_pool, repeats + warmup, seed=0)
    weight = torch.randn(batch, n_tables * dim)  # a fixed upstream gradient

    def fused_step(values: torch.Tensor, lengths: torch.Tensor) -> None:
        kjt = KeyedJaggedTensor.from_lengths_sync(keys, values, lengths)
        (fused(kjt) * weight).sum().backward()  # the update happens inside backward

    def plain_step(kind: str, values: torch.Tensor, lengths: torch.Tensor) -> None:
        plain, plain_opt = plains[kind]
        per_key = lengths.view(n_tables, batch)
        splits = per_key.sum(dim=1).tolist()
        pooled = []
        for bag, v, ln in zip(plain, torch.split(values, splits), per_key):
            offsets = torch.zeros(batch, dtype=torch.int64)
            offsets[1:] = torch.cumsum(ln[:-1].long(), 0)
            pooled.append(bag(v, offsets))
        plain_opt.zero_grad()
        (torch.cat(pooled, dim=1) * weight).sum().backward()
        plain_opt.step()

    times: dict[str, list[float]] = {"fused": [], "sparse": [], "dense": []}
    for i, (values, lengths) in enumerate(batches):
        step = {"fused": _timed(lambda: fused_step(values, lengths)),
                "sparse": _timed(lambda: plain_step("sparse", values, lengths)),
                "dense": _timed(lambda: plain_step("dense", values, lengths))}
        if i >= warmup:
            for k, t in step.items():
                times[k].append(t)

    def stats(ts: list[float]) -> dict[str, float]:
        eps = [batch / t for t in ts]
        return {"median": statistics.median(eps), "min": min(eps), "max": max(eps)}

    def ratio(kind: str) -> dict[str, float]:
        r = [p / f for f, p in zip(times["fused"], times[kind])]
        return {"median": statistics.median(r), "min": min(r), "max": max(r)}

    return {"rows": rows, "dim": dim, "tables": n_tables, "batch": batch,
            "pooling": f"uniform 1..{max_pool}", "repeats": repeats,
            "fused_examples_per_s": stats(times["fused"]),
            "plain_sparse_examples_per_s": stats(times["sparse"]),
            "plain_dense_examples_per_s": stats(times["dense"]),
            "ratio": ratio("sparse")["median"],  # vs the strong (sparse) baseline
            "ratio_vs_sparse": ratio("sparse"), "ratio_vs_dense": ratio("dense")}


def run(a: argparse.Namespace, teacher: str) -> dict[str, Any]:
    return bench_lookup(a.rows, a.dim, repeats=a.repeats)


def summary(r: dict[str, Any]) -> None:
    print(f"lookup: {r['tables']} tables x {r['rows']:,} rows x dim {r['dim']}, batch "
          f"{r['batch']}, pooling {r['pooling']}, {r['repeats']} repeats")
    rates_table(r, [("TorchRec DMP + FBGEMM fused TBE", "fused_examples_per_s"),
                    ("EmbeddingBag(sparse) + Adagrad", "plain_sparse_examples_per_s"),
                    ("EmbeddingBag(dense) + Adagrad", "plain_dense_examples_per_s")], 34)
    for kind in ("sparse", "dense"):
        q = r[f"ratio_vs_{kind}"]
        print(f"fused / plain {kind}, paired per repeat: median {q['median']:.2f}x "
              f"(min {q['min']:.2f}, max {q['max']:.2f})")