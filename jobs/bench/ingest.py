"""ingest: a Criteo-like file dataset (``data/criteo.py``: raw string ids, Parquet in many
files) through the whole online job at each ``--ingest-sizes`` train rows, streamed,
and the smallest also held in memory; every process's RSS and the object store sampled."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from recdistill.jobs.bench.common import ensure_bench_teacher, pred_kd_cfg
from recdistill.jobs.bench.scale import _scale_run

EVAL_ROWS = 50_000  # valid and test rows at every size: the job's memory is train's
BUCKETS = 100_000  # hash buckets per feature (the student and teacher tables)
ROLES = ("driver", "TeacherRank", "StudentReplica", "ray_data", "raylet", "gcs_server")


def _write(root: Path, sizes: list[int]) -> None:
    """train-<rows>/ for each size (one Parquet file per 250k rows, at least 8), and
    the shared valid/ and test/; written once (``.done`` marks a finished directory)."""
    from recdistill.data.criteo import block
    import pyarrow.parquet as pq
    import numpy as np
    parts = [(f"train-{n}", n, max(8, n // 250_000), 1000 + i) for i, n in enumerate(sizes)]
    parts += [("valid", EVAL_ROWS, 1, 1), ("test", EVAL_ROWS, 1, 2)]
    for name, rows, files, seed in parts:
        d = root / name
        if (d / ".done").exists():
            continue
        print(f"  writing {rows:,} Criteo-like rows into {files} files of {d}", flush=True)
        d.mkdir(parents=True, exist_ok=True)
        for f, chunk in enumerate(np.array_split(np.arange(rows), files)):
            pq.write_table(block(len(chunk), seed * 100_003 + f, 10_000_000),
                           d / f"part-{f:05d}.parquet", row_group_size=65_536)
        (d / ".done").touch()


def _point(root: Path, rows: int, read: str) -> Path:
    """The one dataset TOML (one path: one teacher fingerprint for every size), pointed
    at ``rows``' train directory and read as ``read``."""
    from recdistill.data.criteo import DENSE, SPARSE, TASKS
    toml = root / "dataset.toml"
    toml.write_text(
        f'train = "train-{rows}"\nvalid = "valid"\ntest = "test"\nread = "{read}"\n'
        f"dense = {list(DENSE)}\nsparse = {list(SPARSE)}\ntasks = {list(TASKS)}\n"
        f'[ids]\nkind = "hash"\nbuckets = {BUCKETS}\n'.replace("'", '"'))
    return toml


def _cfg(toml: Path, teacher: str) -> Any:
    """One teacher rank (embedding width 16, one epoch on the first 1e6 train rows when
    trained first), one ``pred_kd`` group of 2 replicas with row-wise sharded tables,
    one pass."""
    from recdistill.cluster.config import TeacherGroupConfig
    from recdistill.teacher.config import TeacherConfig
    cfg = pred_kd_cfg(data=str(toml), passes=1,
                      teacher=TeacherConfig(embedding_dim=16, epochs=1),
                      teacher_group=TeacherGroupConfig(checkpoint=teacher))
    g = cfg.groups[0]
    return dataclasses.replace(cfg, groups=(dataclasses.replace(
        g, replicas=2, student=dataclasses.replace(g.student, sharding="row_wise")),))


def run(a: argparse.Namespace, teacher: str) -> dict[str, Any]:
    sizes = [int(x) for x in a.ingest_sizes.split(",") if x.strip()]
    root = Path(a.ingest_dir)
    _write(root, sizes)
    ensure_bench_teacher(_cfg(_point(root, sizes[0], "stream"), teacher))
    runs: dict[str, Any] = {}
    for rows, read in [(n, "stream") for n in sizes] + [(sizes[0], "memory")]:
        print(f"  {rows:,} rows, read = {read}", flush=True)
        r, _ = _scale_run(_cfg(_point(root, rows, read), teacher), a.interval)
        r["read"] = read
        runs[f"{read}_{rows}"] = r
        r["peak_rss"] = _peaks(r["memory"])
        r["peak_private"] = _peaks(r["memory"], "peak_private")
        print(f"    {r['online_examples_per_s']:,.0f} ex/s, peak RSS "
              + ", ".join(f"{k} {v / 2**20:,.0f} MiB" for k, v in r["peak_rss"].items()),
              flush=True)
    small, big = runs[f"stream_{sizes[0]}"], runs[f"stream_{sizes[-1]}"]
    # A process's memory as Ray measures it (RSS less shared pages: the object store's
    # pages count in every process that touched them, and once, as the store, here);
    # the RSS with them too, for comparison.
    heap, with_shared = ({k: big[key][k] / max(small[key][k], 1) for k in small[key]
                          if k in big[key]} for key in ("peak_private", "peak_rss"))
    return {"sizes": sizes, "runs": runs, "buckets": BUCKETS, "eval_rows": EVAL_ROWS,
            f"rss_ratio_{_tag(sizes[-1])}_vs_{_tag(sizes[0])}": heap,
            f"rss_with_shared_ratio_{_tag(sizes[-1])}_vs_{_tag(sizes[0])}": with_shared,
            f"throughput_ratio_{_tag(sizes[-1])}_vs_{_tag(sizes[0])}":
                big["online_examples_per_s"] / small["online_examples_per_s"],
            "streamed_vs_in_memory": small["online_examples_per_s"]
                / runs[f"memory_{sizes[0]}"]["online_examples_per_s"]}


def _peaks(memory: dict[str, Any], key: str = "peak_rss") -> dict[str, int]:
    """Peak ``key`` (``peak_rss``, or ``peak_private``: RSS less shared pages) per role
    of ``ROLES`` (Ray Data's operator and split-coordinator processes together as
    ``ray_data``), and the object store's peak, in bytes."""
    out: dict[str, int] = {}
    for name, r in memory["roles"].items():
        role = "ray_data" if "(" in name or name.startswith(("Split", "ReadRange")) \
            else name
        if role in ROLES:
            out[role] = max(out.get(role, 0), r[key])
    if memory.get("peak_object_store") is not None:
        out["object_store"] = memory["peak_object_store"]
    return out


def _tag(n: int) -> str:
    """1000000 -> 1e6."""
    e = len(str(n)) - 1
    return f"1e{e}" if n == 10 ** e else str(n)


def table(r: dict[str, Any]) -> str:
    """The runs as the Markdown table README.md and BENCHMARKS.md show: examples/s, the
    pass's wall time, and each role's peak memory as Ray counts a worker's (RSS less
    shared pages), with the object store's peak."""
    def mib(run: dict[str, Any], role: str) -> str:
        v = run["peak_private"].get(role)
        return "-" if v is None else f"{v / 2**20:,.0f} MiB"
    lines = ["| train rows, read | examples/s | pass wall | test AUC (click) | driver | "
             "teacher rank | student replica | Ray Data (largest) | object store peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, run in r["runs"].items():  # "<read>_<train rows>"
        lines.append(
            f"| {_tag(int(name.split('_')[1]))}, {run['read']} | {run['online_examples_per_s']:,.0f} | "
            f"{run['train_wall_s']:.0f} s | {next(iter(run['test_auc'].values())):.4f} | "
            + " | ".join(mib(run, k) for k in ("driver", "TeacherRank", "StudentReplica",
                                              "ray_data", "object_store")) + " |")
    return "\n".join(lines)


def summary(r: dict[str, Any]) -> None:
    print(table(r))
    for key, value in r.items():
        if key.startswith(("rss_ratio", "rss_with_shared_ratio")):
            print(f"{key}: " + ", ".join(f"{k} {v:.3f}x" for k, v in value.items()))
        elif key.startswith("throughput_ratio") or key == "streamed_vs_in_memory":
            print(f"{key}: {value:.3f}")
