"""Benchmarks, measured side by side in one run (the machine is shared and noisy).

    python -m jobs.bench --suite lookup [--json out.json] [--rows 100000] [--dim 64]

Suites:
  lookup  teacher embedding forward + backward + update: TorchRec's sharded path
          (DistributedModelParallel -> FBGEMM table-batched embeddings, row-wise Adagrad
          fused into backward) vs plain ``torch.nn.EmbeddingBag`` tables with
          ``torch.optim.Adagrad``, both with sparse gradients (the strong baseline) and
          with dense ones (the default of nn.EmbeddingBag), on the same tables and
          batches. All run interleaved, repeat by repeat; medians, min and max are
          reported, and ratios are taken per repeat.
  fanout  teacher CPU seconds per example (its whole process: input, forward, encoding,
          handing batches to the object store) when 1, 2 and 4 student groups consume
          the same stream; the configurations run interleaved, repeat by repeat, one
          pass over MovieLens-100k each. ``ratio_4_vs_1`` is paired per repeat.
  transport  bytes per example of the soft labels (logits + requested features) through
          the object store in float32, float16 and bfloat16, and the test AUC of the
          ``pred_kd`` and ``feat_kd`` students trained from each (MovieLens-100k, the
          default 8 passes, one seed: the runs are deterministic).

    python -m jobs.bench --suite fanout [--repeats 3]
    python -m jobs.bench --suite transport
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

SUITES = ("lookup", "fanout", "transport")


def _batches(n_tables: int, rows: int, batch: int, max_pool: int, count: int,
             seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(values, lengths) per batch, key-major, Zipf ids (synthetic data's sampler)."""
    from data.synthetic import _zipf_ids
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        lengths = rng.integers(1, max_pool + 1, size=n_tables * batch)
        values = _zipf_ids(rng, int(lengths.sum()), rows, 1.05)
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

    from teacher.config import TeacherConfig
    from teacher.sharding import shard_teacher

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


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _distill_runs(configs: list[tuple[str, Any]], teacher: str) -> list[tuple[str, dict]]:
    """Run ``jobs.distill`` for each (name, config) on one local Ray cluster."""
    import dataclasses

    import ray

    from jobs.common import start_local_ray
    from jobs.distill import run
    out = []
    start_local_ray(16, dashboard=False)
    try:
        for name, cfg in configs:
            cfg = dataclasses.replace(cfg, teacher_group=dataclasses.replace(
                cfg.teacher_group, checkpoint=teacher))
            t0 = time.perf_counter()
            report = run(cfg, progress=False)
            print(f"  {name}: {time.perf_counter() - t0:.0f}s", flush=True)
            out.append((name, report))
    finally:
        ray.shutdown()
    return out


def bench_fanout(teacher: str, repeats: int) -> dict[str, Any]:
    import dataclasses

    from cluster.config import DistillConfig, default_groups
    groups = default_groups()
    runs = [(f"{n}@{r}", dataclasses.replace(DistillConfig(passes=1), groups=groups[:n]))
            for r in range(repeats) for n in (1, 2, 4)]
    per: dict[int, list[float]] = {1: [], 2: [], 4: []}
    for name, report in _distill_runs(runs, teacher):
        u = report["teacher"]["usage"]
        per[int(name.split("@")[0])].append(u["cpu_s"] / u["examples"])
    ratios = [b / a for a, b in zip(per[1], per[4])]
    return {"groups": {str(n): {"teacher_cpu_s_per_example": _stats(v)}
                       for n, v in per.items()},
            "ratio_4_vs_1": statistics.median(ratios), "ratio_4_vs_1_per_repeat": ratios,
            "ratio_2_vs_1": statistics.median([b / a for a, b in zip(per[1], per[2])]),
            "repeats": repeats, "passes": 1}


def bench_transport(teacher: str) -> dict[str, Any]:
    import dataclasses

    from cluster.config import DistillConfig, StreamConfig, default_groups
    groups = tuple(g for g in default_groups() if g.student.name in ("pred_kd", "feat_kd"))
    runs = [(d, DistillConfig(groups=groups, stream=StreamConfig(logit_dtype=d,
                                                                 feature_dtype=d)))
            for d in ("float32", "float16", "bfloat16")]
    out: dict[str, Any] = {}
    for dtype, report in _distill_runs(runs, teacher):
        u = report["teacher"]["usage"]
        first = next(iter(report["students"]["pred_kd"]["test"]))
        out[dtype] = {"label_bytes_per_example": u["label_bytes"] / u["examples"],
                      "input_bytes_per_example": u["input_bytes"] / u["examples"],
                      "task": first,
                      "test_auc": {g: report["students"][g]["test"][first]["auc"]
                                   for g in ("pred_kd", "feat_kd")}}
    f32 = out["float32"]
    for d in ("float16", "bfloat16"):
        out[d]["bytes_ratio"] = f32["label_bytes_per_example"] / out[d]["label_bytes_per_example"]
        out[d]["auc_delta"] = {g: out[d]["test_auc"][g] - f32["test_auc"][g]
                               for g in f32["test_auc"]}
    out["bytes_ratio"] = out["float16"]["bytes_ratio"]
    out["auc_delta"] = max(abs(v) for v in out["float16"]["auc_delta"].values())
    return out


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=SUITES, default="lookup")
    p.add_argument("--json", help="write results here")
    p.add_argument("--rows", type=int, default=100_000, help="rows per table")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=15,
                   help="lookup: timed steps; fanout: repeats of each configuration")
    p.add_argument("--teacher-checkpoint", default="runs/bench/teacher",
                   help="fanout, transport: the teacher (trained first if missing)")
    a = p.parse_args(argv)
    from jobs.common import quiet_library_warnings
    quiet_library_warnings()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    results: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv)}
    if a.suite == "lookup":
        r = bench_lookup(a.rows, a.dim, repeats=a.repeats)
        results["lookup"] = r
        print(f"lookup: {r['tables']} tables x {r['rows']:,} rows x dim {r['dim']}, batch "
              f"{r['batch']}, pooling {r['pooling']}, {r['repeats']} repeats")
        print(f"{'kernel':<34}{'median ex/s':>14}{'min':>12}{'max':>12}")
        for name, key in (("TorchRec DMP + FBGEMM fused TBE", "fused_examples_per_s"),
                          ("EmbeddingBag(sparse) + Adagrad", "plain_sparse_examples_per_s"),
                          ("EmbeddingBag(dense) + Adagrad", "plain_dense_examples_per_s")):
            s = r[key]
            print(f"{name:<34}{s['median']:>14,.0f}{s['min']:>12,.0f}{s['max']:>12,.0f}")
        for kind in ("sparse", "dense"):
            q = r[f"ratio_vs_{kind}"]
            print(f"fused / plain {kind}, paired per repeat: median {q['median']:.2f}x "
                  f"(min {q['min']:.2f}, max {q['max']:.2f})")
    if a.suite == "fanout":
        r = bench_fanout(a.teacher_checkpoint, min(a.repeats, 5))
        results["fanout"] = r
        print(f"fanout: teacher CPU seconds per example, 1 pass of MovieLens-100k, "
              f"{r['repeats']} repeats")
        print(f"{'groups':<8}{'median us/ex':>14}{'min':>10}{'max':>10}")
        for n, v in r["groups"].items():
            q = v["teacher_cpu_s_per_example"]
            print(f"{n:<8}{q['median'] * 1e6:>14.1f}{q['min'] * 1e6:>10.1f}"
                  f"{q['max'] * 1e6:>10.1f}")
        print(f"4 groups / 1 group, paired per repeat: median {r['ratio_4_vs_1']:.3f}x "
              f"({', '.join(f'{x:.3f}' for x in r['ratio_4_vs_1_per_repeat'])})")
    if a.suite == "transport":
        r = bench_transport(a.teacher_checkpoint)
        results["transport"] = r
        print(f"{'dtype':<10}{'label B/ex':>11}{'input B/ex':>11}{'pred_kd AUC':>13}"
              f"{'feat_kd AUC':>13}")
        for d in ("float32", "float16", "bfloat16"):
            q = r[d]
            print(f"{d:<10}{q['label_bytes_per_example']:>11.1f}"
                  f"{q['input_bytes_per_example']:>11.1f}{q['test_auc']['pred_kd']:>13.4f}"
                  f"{q['test_auc']['feat_kd']:>13.4f}")
        print(f"fp32 / fp16 bytes: {r['bytes_ratio']:.2f}x; largest |AUC delta| fp16 vs "
              f"fp32: {r['auc_delta']:.4f}")
    if a.json:
        from jobs.common import write_json_atomic
        write_json_atomic(a.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
