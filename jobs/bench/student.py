"""student: the student's step on plain tables under dense Adam (``sharding = "none"``)
vs TorchRec-sharded tables with FBGEMM's fused row-wise Adagrad (``row_wise``), as the
vocabulary grows; and the online pipeline on the synthetic Criteo stream with each."""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Any

from recdistill.jobs.bench.common import distill_runs, ensure_bench_teacher, pred_kd_cfg, stats

CARDINALITIES = (10_000, 1_000_000, 10_000_000)
DENSE_CARDINALITIES = (10_000, 1_000_000)  # at 1e7 one dense step takes seconds


def _step_models(batch_rows: int, steps: int) -> dict[str, Any]:
    """(model, optimizer, objective, batches) per (path, cardinality)."""
    import torch

    from recdistill.data.synthetic import SyntheticConfig, generate_chunk
    from recdistill.student.config import StudentConfig
    from recdistill.student.losses import build_objective
    from recdistill.student.model import StudentModel, count_parameters
    from recdistill.student.sharding import make_sharded_optimizer, shard_student
    from recdistill.student.train import make_student_optimizer
    from recdistill.teacher.sharding import init_distributed
    pg = init_distributed(torch.device("cpu"))
    out = {}
    for path, cards in (("dense", DENSE_CARDINALITIES), ("sharded", CARDINALITIES)):
        for card in cards:
            syn = SyntheticConfig(rows=batch_rows * steps, max_cardinality=card)
            spec = syn.spec()
            cfg = StudentConfig(name="s", embedding_dim=8, hidden=(64, 32), lr=5e-3,
                                sharding="none" if path == "dense" else "row_wise")
            model = StudentModel(spec, cfg, table_device="cpu" if path == "dense" else "meta")
            params = count_parameters(model)
            if path == "dense":
                net, opt = model, make_student_optimizer(model, cfg)
            else:
                net = shard_student(model, cfg, pg, torch.device("cpu"), 0)
                opt = make_sharded_optimizer(net, cfg)
            table = generate_chunk(dataclasses.replace(syn, chunk_rows=batch_rows * steps), 0)
            batches = [b.to_batch() for b in table.iter_batches(batch_rows,
                                                                keys=model.feature_names)]
            out[(path, card)] = (net, opt, build_objective(cfg, spec.tasks), batches, params)
    return out


def bench_steps(batch_rows: int = 512, repeats: int = 15, warmup: int = 3) -> dict[str, Any]:
    """Median seconds per student step of each (path, cardinality), interleaved step by
    step on the same seeded batches (ids drawn at each cardinality)."""
    from recdistill.student.train import student_step
    models = _step_models(batch_rows, repeats + warmup)
    times: dict[tuple[str, int], list[float]] = {k: [] for k in models}
    for i in range(repeats + warmup):
        for key, (net, opt, objective, batches, _) in models.items():
            t = time.perf_counter()
            student_step(net, opt, objective, batches[i], None)
            if i >= warmup:
                times[key].append(time.perf_counter() - t)
    rows = {f"{path}@{card:.0e}": {"step_s": stats(times[(path, card)]),
                                   "parameters": models[(path, card)][4]}
            for path, card in models}
    ratio = [b / a for a, b in zip(times[("sharded", 10_000)],
                                   times[("sharded", 10_000_000)])]
    speedup = [d / s for d, s in zip(times[("dense", 1_000_000)],
                                     times[("sharded", 1_000_000)])]
    return {"steps": rows, "batch_rows": batch_rows, "repeats": repeats,
            "step_ratio_1e7_vs_1e4": statistics.median(ratio),
            "speedup_vs_dense_at_1e6": statistics.median(speedup)}


def bench_online(teacher: str, rows: int, repeats: int) -> dict[str, Any]:
    """One pass of the synthetic Criteo stream (26 features capped at 1e6 ids), the same
    teacher, one ``pred_kd`` group on dense vs sharded tables, interleaved per repeat."""
    from recdistill.cluster.config import TeacherGroupConfig
    base = pred_kd_cfg(data="synthetic-stream", rows=rows, passes=1,
                       max_cardinality=1_000_000,
                       teacher_group=TeacherGroupConfig(checkpoint=teacher))
    ensure_bench_teacher(base)
    group = base.groups[0]
    runs = []
    for r in range(repeats):
        for sharding in ("none", "row_wise"):
            cfg = dataclasses.replace(base, groups=(dataclasses.replace(
                group, student=dataclasses.replace(group.student, sharding=sharding)),))
            runs.append((f"{sharding}@{r}", cfg))
    rate: dict[str, list[float]] = {"none": [], "row_wise": []}
    auc: dict[str, list[float]] = {"none": [], "row_wise": []}
    for name, report in distill_runs(runs, teacher):
        s = report["students"]["pred_kd"]
        key = name.split("@")[0]
        rate[key].append(s["examples_trained"] / report["train_wall_s"])
        auc[key].append(s["test"]["click"]["auc"])
    return {"rows": rows, "max_cardinality": 1_000_000, "repeats": repeats,
            "dense": {"online_examples_per_s": stats(rate["none"]),
                      "test_auc_click": stats(auc["none"])},
            "sharded": {"online_examples_per_s": stats(rate["row_wise"]),
                        "test_auc_click": stats(auc["row_wise"])},
            "online_speedup": statistics.median(
                [b / a for a, b in zip(rate["none"], rate["row_wise"])])}


def run(a: argparse.Namespace, teacher: str) -> dict[str, Any]:
    out = bench_steps(repeats=a.repeats)
    print(f"  steps done: sharded 1e7/1e4 {out['step_ratio_1e7_vs_1e4']:.2f}x, "
          f"dense/sharded at 1e6 {out['speedup_vs_dense_at_1e6']:.1f}x", flush=True)
    out["online"] = bench_online(teacher, a.online_rows, min(a.repeats, 3))
    return out


def summary(r: dict[str, Any]) -> None:
    print(f"student step, {r['batch_rows']}-row batches, emb 8, MLP 64-32, "
          f"{r['repeats']} steps interleaved:")
    print(f"{'path@max_cardinality':<24}{'parameters':>14}{'median ms':>11}{'min':>8}"
          f"{'max':>8}")
    for name, v in r["steps"].items():
        q = v["step_s"]
        print(f"{name:<24}{v['parameters']:>14,}{q['median'] * 1e3:>11.2f}"
              f"{q['min'] * 1e3:>8.2f}{q['max'] * 1e3:>8.2f}")
    print(f"sharded step at 1e7 / at 1e4: {r['step_ratio_1e7_vs_1e4']:.2f}x; dense / "
          f"sharded at 1e6: {r['speedup_vs_dense_at_1e6']:.1f}x (paired per step)")
    o = r["online"]
    print(f"online, synthetic Criteo stream ({o['rows']:,} rows, ids capped at 1e6), "
          f"{o['repeats']} repeats: dense {o['dense']['online_examples_per_s']['median']:,.0f}"
          f" ex/s, sharded {o['sharded']['online_examples_per_s']['median']:,.0f} ex/s: "
          f"{o['online_speedup']:.2f}x")
