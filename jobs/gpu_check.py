"""The GPU checks in one run, for a machine with a GPU (under 10 minutes on one):

1. ``pytest -m gpu``: the nccl-sharded teacher against the CPU model, DeepSpeed ZeRO-2
   bf16 on CUDA, a plain student replica on its GPU against the CPU one, a row-wise
   sharded replica stepping with FBGEMM's fused Adam;
2. the online job on MovieLens (one pass, the default committee and groups, one replica
   each), on CPU and then with every actor on the GPU (fractions of one device:
   ``--teacher-gpus`` per rank, ``--gpus`` per replica), and the sharded groups' config
   on the GPU; each run books every example id (``RECDISTILL_AUDIT_IDS``: a batch
   trained twice fails the job) and must have trained each group on every train row
   exactly once;
3. a table of examples/s and test AUC per run, and their JSON (``--json``).

    python -m jobs.gpu_check [--out runs/gpu_check] [--json runs/gpu_check/gpu_check.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# the default committee's 3 ranks and its 4 groups' replicas share one device
RUNS = {"cpu": [],
        "gpu": ["--teacher-gpus", "0.25", "--gpus", "0.0625"],
        "gpu_sharded": ["--config", "jobs/configs/distill_movielens_sharded.toml",
                        "--teacher-gpus", "0.25", "--gpus", "0.0625"]}


def _run(cmd: list[str], env: dict[str, str]) -> float:
    print("$ " + " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t


def _summary(report: dict[str, Any], passes: int) -> dict[str, Any]:
    """Examples/s over the run's training, test AUC per group and task, and whether
    every group trained each train row once per pass (the stream's acked rows)."""
    from recdistill.data.movielens import load_movielens
    rows = len(load_movielens().train.ids) * passes
    acked = report["stream"]["acked_rows"]
    return {"examples_per_s": sum(acked.values()) / report["train_wall_s"],
            "exactly_once": all(v == rows for v in acked.values()),
            "test_auc": {g: {t: m["auc"] for t, m in s["test"].items() if isinstance(m, dict)}
                         for g, s in report["students"].items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/gpu_check", help="where the runs write")
    p.add_argument("--json", default="", help="the summary's JSON path "
                   "(default: <out>/gpu_check.json)")
    p.add_argument("--passes", type=int, default=1)
    a = p.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here", file=sys.stderr)
        return 2
    out = Path(a.out).resolve()
    env = {**os.environ, "RECDISTILL_AUDIT_IDS": "1"}
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "passes": a.passes}
    result["pytest_gpu_s"] = _run([sys.executable, "-m", "pytest", "-q", "-m", "gpu",
                                   "tests/unit/test_gpu.py"], env)
    for name, extra in RUNS.items():
        report = out / name / "report.json"
        wall = _run([sys.executable, "-m", "jobs.distill", "--passes", str(a.passes),
                     "--replicas", "1", "--teacher-checkpoint", str(out / "teacher"),
                     "--report", str(report), "--no-progress", *extra], env)
        result[name] = {"wall_s": wall, **_summary(json.loads(report.read_text()),
                                                   a.passes)}
    result["gpu_vs_cpu_examples_per_s"] = (result["gpu"]["examples_per_s"]
                                           / result["cpu"]["examples_per_s"])
    path = Path(a.json) if a.json else out / "gpu_check.json"
    path.write_text(json.dumps(result, indent=2))
    print("| run | examples/s | exactly once | wall | test AUC (pred_kd like/love) |")
    print("|---|---|---|---|---|")
    for name in RUNS:
        r = result[name]
        auc = r["test_auc"].get("pred_kd", {})
        print(f"| {name} | {r['examples_per_s']:,.0f} | {r['exactly_once']} | "
              f"{r['wall_s']:.0f} s | {auc.get('like', float('nan')):.4f} / "
              f"{auc.get('love', float('nan')):.4f} |")
    print(f"GPU vs CPU examples/s: {result['gpu_vs_cpu_examples_per_s']:.2f}x; {path}")
    return 0 if all(result[n]["exactly_once"] for n in RUNS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
