"""scale: 1e5-1e7 streamed synthetic rows through the online pipeline with every
process's RSS sampled, and a 1.08e9-parameter teacher over 2 ranks."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from recdistill.jobs.bench.common import ensure_bench_teacher, pred_kd_cfg


# The features of the 1e9-parameter teacher's stream a student embeds: all but the six
# with more than 1e5 ids (the student's tables are dense-Adam trained: 33.6 M rows of
# them would make its step, not the teacher, the thing measured).


_SMALL_FEATURES = tuple(f"c{i}" for i in (0, 1, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 16, 17, 18,
                                           19, 21, 22, 24, 25))


def _scale_run(cfg: Any, interval: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """One ``jobs.distill`` run on its own fresh local Ray cluster, memory sampled."""
    from recdistill.cluster.config import RunOptions
    from recdistill.cluster.resources import ResourceSampler
    from recdistill.jobs.distill import run
    with ResourceSampler(interval=interval) as sampler:
        t0 = time.perf_counter()
        report = run(cfg, RunOptions(progress=False)).to_json()
        wall = time.perf_counter() - t0
    mem = sampler.summary()
    st = next(iter(report["students"].values()))
    u = report["teacher"]["usage"]
    return {"rows": cfg.rows, "examples": st["examples_trained"],
            "online_examples_per_s": st["examples_trained"] / report["train_wall_s"],
            # the group's forward rate: the ranks run side by side
            "teacher_forward_examples_per_s":
                u["examples"] * report["teacher"]["ranks"] / max(u["forward_s"], 1e-9),
            "train_wall_s": report["train_wall_s"], "wall_s": wall,
            "test_auc": {t: m["auc"] for t, m in st["test"].items()},
            "memory": mem}, report


def _ensure_big_teacher(path: str, rows: int, dim: int = 32,
                        precision: str = "fp32") -> None:
    """Train (one short epoch on 2 Ray Train workers) a teacher at Criteo's
    cardinalities (33.6 M ids, capped at 1e7) at embedding width ``dim``: 1.08e9
    parameters at 32, 3.2e9 at 96 (whose fp32 tables do not train on 2 ranks of a
    24 GiB machine: ``precision = "fp16"``, ``teacher.embedding_precision``)."""
    import subprocess

    from recdistill.teacher.checkpoint import versions
    if versions(path):
        return
    print(f"  training the big teacher (embedding dim {dim}) into {path} (2 workers)",
          flush=True)
    subprocess.run([sys.executable, "-m", "recdistill.jobs.train_teacher", "--data", "synthetic",
                    "--rows", str(rows), "--max-cardinality", "10000000",
                    "--embedding-dim", str(dim), "--embedding-precision", precision,
                    "--epochs", "1", "--workers", "2",
                    "--checkpoint", path, "--report", f"{path}_report.json"], check=True)


def serve_big_teacher(path: str, rows: int, interval: float, dim: int = 32,
                      table_dtype: str = "fp32", precision: str = "fp32") -> dict[str, Any]:
    """The big teacher (trained first if missing, its tables in ``precision``) sharded
    over 2 ranks, its tables in ``table_dtype``, streaming ``rows`` synthetic rows to
    one ``pred_kd`` group; every process's RSS sampled."""
    import dataclasses

    from recdistill.cluster.config import TeacherGroupConfig
    _ensure_big_teacher(path, 20_000, dim, precision)
    base = pred_kd_cfg(data="synthetic-stream", rows=rows, passes=1,
                       max_cardinality=10_000_000,
                       teacher_group=TeacherGroupConfig(checkpoint=path, ranks=2,
                                                        table_dtype=table_dtype))
    group = base.groups[0]
    cfg = dataclasses.replace(base, groups=(dataclasses.replace(
        group, student=dataclasses.replace(group.student, features=_SMALL_FEATURES)),))
    r, report = _scale_run(cfg, interval)
    r["teacher_parameters"] = report["teacher"]["parameters"]
    r["teacher_ranks"] = 2
    r["table_dtype"] = table_dtype
    r["tables"] = report["teacher"]["labelling"]["tables"]
    print(f"  big teacher ({r['teacher_parameters']:,} parameters, 2 ranks, {table_dtype} "
          f"tables): {r['online_examples_per_s']:,.0f} ex/s online, teacher forward "
          f"{r['teacher_forward_examples_per_s']:,.0f} ex/s, peak RSS per rank "
          f"{r['memory']['roles']['TeacherRank']['peak_rss'] / 2**30:.2f} GiB", flush=True)
    return r


def bench_scale(teacher: str, sizes: list[int], big_teacher: str, big_rows: int,
                interval: float) -> dict[str, Any]:
    """Synthetic streams of each size through the whole online pipeline (one pass, one
    ``pred_kd`` group), each on a fresh cluster, RSS of every process sampled; then the
    1e9-parameter teacher sharded over 2 ranks serving a stream."""

    from recdistill.cluster.config import TeacherGroupConfig

    runs = []
    for rows in sizes:
        cfg = pred_kd_cfg(data="synthetic-stream", rows=rows, passes=1,
                           teacher_group=TeacherGroupConfig(checkpoint=teacher))
        ensure_bench_teacher(cfg)
        r, _ = _scale_run(cfg, interval)
        runs.append(r)
        m = r["memory"]
        print(f"  {rows:>11,} rows: {r['online_examples_per_s']:,.0f} ex/s, peak RSS total "
              f"{m['peak_total_rss'] / 2**30:.2f} GiB (private "
              f"{m['peak_total_private'] / 2**30:.2f}), "
              + ", ".join(f"{k} {m['roles'][k]['peak_rss'] / 2**20:,.0f} MiB (private "
                          f"{m['roles'][k]['peak_private'] / 2**20:,.0f})"
                          for k in ("driver", "TeacherRank", "StudentReplica", "raylet")
                          if k in m["roles"]), flush=True)
    first, last = runs[0]["memory"], runs[-1]["memory"]
    ratios = {"total": last["peak_total_rss"] / first["peak_total_rss"]}
    private = {"total": last["peak_total_private"] / first["peak_total_private"]}
    for k in ("driver", "TeacherRank", "StudentReplica", "raylet", "gcs_server"):
        if k in first["roles"] and k in last["roles"]:
            ratios[k] = last["roles"][k]["peak_rss"] / first["roles"][k]["peak_rss"]
            private[k] = last["roles"][k]["peak_private"] / first["roles"][k]["peak_private"]
    out: dict[str, Any] = {"runs": runs, "rss_ratio": max(ratios.values()),
                           "rss_ratio_by_role": ratios,
                           "private_rss_ratio": max(private.values()),
                           "private_rss_ratio_by_role": private,
                           "sizes": sizes}
    if big_teacher:
        out["big_teacher"] = serve_big_teacher(big_teacher, big_rows, interval)
    return out


def run(a: argparse.Namespace, teacher: str) -> dict[str, Any]:
    sizes = [int(x) for x in a.sizes.split(",") if x.strip()]
    return bench_scale(teacher, sizes, a.big_teacher, a.big_rows, a.interval)


def summary(r: dict[str, Any]) -> None:
    sizes = r["sizes"]
    print(f"peak RSS at {sizes[-1]:,} rows / at {sizes[0]:,} rows: "
          + ", ".join(f"{k} {v:.3f}x" for k, v in r["rss_ratio_by_role"].items()))
    print("the same for private RSS (RSS minus shared pages): "
          + ", ".join(f"{k} {v:.3f}x" for k, v in r["private_rss_ratio_by_role"].items()))
