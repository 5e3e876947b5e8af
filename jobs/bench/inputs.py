"""input: what one pass's stream costs the machine before anything is labelled, with
each ``teacher_group.split``: seconds to its first batch, wall seconds to read it into
the batches a rank labels, and the CPU seconds every process on the machine spent
meanwhile."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from recdistill.jobs.bench.common import stats

SPLITS = ("stream", "rows")


def _machine_cpu_s() -> float:
    """CPU seconds all processes have used (every core), from the kernel's counters."""
    import psutil
    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + \
        getattr(t, "softirq", 0.0)


def _read(share: Any, batch_size: int, keys: tuple[str, ...]) -> tuple[int, float]:
    """(rows, seconds to the first batch) of one rank's share, read into the batches a
    teacher rank labels (decoded as the rank decodes them) and dropped."""
    from recdistill.cluster.pass_input import _PassReader
    t0 = time.perf_counter()
    first, rows = 0.0, 0
    reader = _PassReader(share, 0, batch_size, keys, threaded=False)
    while (b := reader.next()) is not None:
        if not rows:
            first = time.perf_counter() - t0
        rows += b.batch_size
    return rows, first


def bench_input(passes: int, repeats: int, ranks: int = 1) -> dict[str, Any]:
    """Each split's passes of MovieLens-100k read by ``ranks`` tasks (as teacher ranks
    read them, nothing labelled), interleaved pass by pass after one untimed pass
    each; per pass: first-batch seconds, wall seconds and the machine's CPU seconds."""
    import ray

    from recdistill.cluster.config import DistillConfig
    from recdistill.cluster.data import pass_shards, train_dataset
    from recdistill.cluster.session import start_local_ray
    from recdistill.jobs.common import load_dataset
    cfg = DistillConfig()
    data = load_dataset(cfg.data, split=cfg.split, seed=cfg.seed, rows=cfg.rows)
    start_local_ray(16, dashboard=False)
    read = ray.remote(num_cpus=1)(_read)
    got: dict[str, dict[str, list[float]]] = {s: {"first_s": [], "wall_s": [], "cpu_s": []}
                                              for s in SPLITS}
    try:
        ds = train_dataset(data.train)
        keys = tuple(data.train.sparse)
        for r in range(repeats * passes + 1):
            for split in SPLITS:
                c0, t0 = _machine_cpu_s(), time.perf_counter()
                shares = pass_shards(ds, data.train, cfg.seed, r, ranks, split)
                out = ray.get([read.remote(s, cfg.label_rows, keys) for s in shares],
                              timeout=600)
                wall, cpu = time.perf_counter() - t0, _machine_cpu_s() - c0
                if r == 0:  # untimed: the cluster's first Ray Data run of each
                    continue
                q = got[split]
                q["first_s"].append(max(f for _, f in out))
                q["wall_s"].append(wall)
                q["cpu_s"].append(cpu)
                print(f"  pass {r} {split}: {sum(n for n, _ in out):,} rows, first batch "
                      f"{q['first_s'][-1]:.2f} s, wall {wall:.2f} s, machine CPU {cpu:.2f} s",
                      flush=True)
    finally:
        ray.shutdown()
    res: dict[str, Any] = {"data": cfg.data, "examples": len(data.train), "ranks": ranks,
                           "batch_size": cfg.label_rows, "passes": repeats * passes}
    for split, q in got.items():
        res[split] = {k: stats(v) for k, v in q.items()}
    res["cpu_ratio"] = statistics.median(
        [a / b for a, b in zip(got["stream"]["cpu_s"], got["rows"]["cpu_s"])])
    return res


def run(a: argparse.Namespace, teacher: str) -> dict[str, Any]:
    return bench_input(a.passes, min(a.repeats, 5), ranks=a.ranks)


def summary(r: dict[str, Any]) -> None:
    print(f"input: {r['data']} ({r['examples']:,} rows), {r['ranks']} rank(s), "
          f"{r['batch_size']}-row batches, {r['passes']} passes per split")
    print(f"{'split':<8}{'first batch s':>15}{'wall s':>10}{'machine CPU s':>15}  (medians)")
    for split in SPLITS:
        q = r[split]
        print(f"{split:<8}{q['first_s']['median']:>15.2f}{q['wall_s']['median']:>10.2f}"
              f"{q['cpu_s']['median']:>15.2f}")
    print(f"machine CPU per pass, stream / rows: median {r['cpu_ratio']:.2f}")
