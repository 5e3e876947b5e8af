"""Soak: a long online distillation on streamed synthetic data, memory sampled throughout.

    python -m jobs.soak [--rows 300000] [--passes 4] [--interval 5] [--out runs/soak]

Runs ``jobs.distill`` (the default four student groups) on ``--data synthetic-stream``
for ``--passes`` passes of ``--rows`` rows (about 12 minutes on the 2-core development
machine) on a fresh local cluster, samples every process's RSS and the object store's
usage every ``--interval`` seconds (``cluster.resources``), and writes ``soak.json`` (the
curve, the peaks, the distill report's stream counters) and ``soak.png``. Bounded means
the peaks of the last third of the run are no higher than those of the middle third
(the first third includes start-up); the JSON says so per role.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from recdistill.jobs.common import quiet_library_warnings, write_json_atomic


def _peaks(curve: list[dict[str, Any]], lo: float, hi: float,
           key: str) -> dict[str, float]:
    """Peaks over samples with lo <= t < hi: the total of ``key`` (``rss`` or
    ``private``), the object store, and per role."""
    part = [c for c in curve if lo <= c["t"] < hi]
    by = "by_role" if key == "rss" else "by_role_private"
    out: dict[str, float] = {
        "total": max((c[f"total_{key}"] for c in part), default=0),
        "object_store": max((c["object_store"] or 0 for c in part), default=0)}
    for c in part:
        for role, b in c.get(by, {}).items():
            out[role] = max(out.get(role, 0), b)
    return out


SERIES = ("total", "object_store", "TeacherRank", "StudentReplica", "driver", "raylet",
          "gcs_server")


def bounded(curve: list[dict[str, Any]]) -> dict[str, Any]:
    """Compare the last third's peaks with the middle third's, per series, for RSS and
    for private RSS (RSS less the shared pages, e.g. the object store's arena)."""
    end = curve[-1]["t"] if curve else 0.0
    out: dict[str, Any] = {}
    for key in ("rss", "private"):
        mid = _peaks(curve, end / 3, 2 * end / 3, key)
        last = _peaks(curve, 2 * end / 3, end + 1, key)
        out[key] = {"middle_third_peaks": mid, "last_third_peaks": last,
                    "growth": {k: last[k] / mid[k] for k in SERIES
                               if mid.get(k) and k in last}}
    return out


def plot(curve: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ts = [c["t"] / 60 for c in curve]
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    roles = sorted({r for c in curve for r in c["by_role"]},
                   key=lambda r: -max(c["by_role"].get(r, 0) for c in curve))
    for i, r in enumerate(roles[:6]):
        a.plot(ts, [c["by_role"].get(r, 0) / 2**20 for c in curve], label=r, color=f"C{i}")
        a.plot(ts, [c["by_role_private"].get(r, 0) / 2**20 for c in curve], ls="--",
               color=f"C{i}")
    a.set_title("RSS by role (MiB, summed over a role's processes; dashed: private)")
    a.set_xlabel("minutes")
    a.legend(fontsize=7)
    a.grid(alpha=0.3)
    b.plot(ts, [c["total_rss"] / 2**30 for c in curve], label="all processes: RSS (GiB)")
    b.plot(ts, [c["total_private"] / 2**30 for c in curve],
           label="all processes: private RSS (GiB)")
    b.plot(ts, [(c["object_store"] or 0) / 2**30 for c in curve],
           label="object store in use (GiB)")
    b.set_xlabel("minutes")
    b.legend()
    b.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="recdistill soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=300_000, help="streamed rows per pass")
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--teacher-checkpoint", default="runs/bench/teacher_synthetic",
                   help="synthetic teacher (trained first on 1e5+ rows if missing)")
    p.add_argument("--out", default="runs/soak", help="directory for soak.json, soak.png")
    a = p.parse_args(argv)
    quiet_library_warnings()
    from recdistill.cluster.config import DistillConfig, RunOptions, TeacherGroupConfig
    from recdistill.cluster.resources import ResourceSampler
    from recdistill.jobs.distill import run
    cfg = DistillConfig(data="synthetic-stream", rows=a.rows, passes=a.passes,
                        teacher_group=TeacherGroupConfig(checkpoint=a.teacher_checkpoint))
    t0 = time.perf_counter()
    with ResourceSampler(interval=a.interval) as sampler:
        report = run(cfg, RunOptions()).to_json()
    curve = sampler.curve()
    out = {"command": " ".join(sys.argv), "wall_s": time.perf_counter() - t0,
           "rows_per_pass": a.rows, "passes": a.passes, "interval_s": a.interval,
           "summary": sampler.summary(), "bounded": bounded(curve),
           "stream": report["stream"], "train_wall_s": report["train_wall_s"],
           "examples_trained": {g: s["examples_trained"]
                                for g, s in report["students"].items()},
           "curve": curve}
    root = Path(a.out)
    write_json_atomic(root / "soak.json", out)
    plot(curve, root / "soak.png")
    print(f"soak: {out['wall_s'] / 60:.1f} min, {len(curve)} samples; peak RSS (all "
          f"processes) {out['summary']['peak_total_rss'] / 2**30:.2f} GiB, private "
          f"{out['summary']['peak_total_private'] / 2**30:.2f} GiB")
    for key in ("rss", "private"):
        g = out["bounded"][key]["growth"]
        print(f"  {key}: last third / middle third peaks: "
              + ", ".join(f"{k} {v:.3f}" for k, v in g.items()))
    print(f"wrote {root / 'soak.json'} and {root / 'soak.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
