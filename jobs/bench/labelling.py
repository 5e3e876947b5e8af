"""labelling: the teacher's labelling rate against its forward alone, per table dtype,
and the largest teacher served on 2 ranks of this machine."""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections import defaultdict
from typing import Any

from recdistill.jobs.bench.common import pred_kd_cfg, stats, teacher_alone

DTYPES = ("fp32", "fp16", "int8", "int4")


def _held_teacher_cls() -> type:
    """A teacher rank that also labels batches held in its own memory (its forward
    alone: no input stream, no actor call per batch)."""
    from recdistill.cluster.actors import TeacherRank

    class HeldTeacher(TeacherRank):
        def hold(self, refs: list[Any]) -> int:
            """Keep the inputs of these labelled batches (fetched once, untimed)."""
            import ray
            self.held = [ray.get(r).inputs for r in refs]
            return sum(b.batch_size for b in self.held)

        def forward_held(self, times: int = 3) -> float:
            """Seconds to label every held batch once (forward and encoding, as in
            ``label_next``): the median of ``times`` rounds (one round moves by +-15%
            on this machine)."""
            took = []
            for _ in range(times):
                t = time.perf_counter()
                for b in self.held:
                    self._label(b)
                took.append(time.perf_counter() - t)
            return statistics.median(took)

        def logits_held(self, n: int) -> Any:
            """fp32 logits of the first ``n`` held batches."""
            import numpy as np
            import torch
            with torch.no_grad():
                return np.concatenate([
                    self.model(*_inputs(self, b)).logits.numpy() for b in self.held[:n]])

    return HeldTeacher


def _inputs(rank: Any, arrays: Any) -> tuple[Any, Any]:
    batch = arrays.select(rank.model_keys).to_batch()
    return batch.dense, batch.sparse


def _alone(cfg: Any, data: Any, cls: type, keep: int) -> dict[str, Any]:
    """Teacher alone (``common.teacher_alone``), then on the same ranks their forward
    alone on the first pass's batches held in memory, and the fp32 logits of the first
    ``keep`` held batches of rank 0."""
    import ray

    from recdistill.cluster.calls import CALL_TIMEOUT_S

    def forward_alone(labels: Any, res: dict[str, Any]) -> dict[str, Any]:
        held = ray.get([a.hold.remote(refs) for a, refs in zip(labels.actors, res["kept"])],
                       timeout=CALL_TIMEOUT_S)
        fwd = ray.get([a.forward_held.remote() for a in labels.actors],
                      timeout=CALL_TIMEOUT_S)
        logits = ray.get(labels.actors[0].logits_held.remote(keep),
                         timeout=CALL_TIMEOUT_S) if keep else None
        # the ranks label side by side: the group's rate is the slowest rank's
        return {"forward": sum(held) / max(fwd), "logits": logits}

    res = teacher_alone(cfg, data, cls, keep=True, then=forward_alone)
    return {"alone": res["examples"] / res["wall_s"], "forward": res["forward"],
            "first_round_s": res["first_round_s"], "usage": res["usage"],
            "tables": res["info"].get("tables", {}), "logits": res["logits"],
            "parameters": int(res["info"]["parameters"])}


def bench_labelling(teacher: str, passes: int, repeats: int, seeds: int,
                    student_passes: int = 8) -> dict[str, Any]:
    """Teacher alone vs its forward alone (input overhead) at the default labelling
    settings and at student-sized batches without prefetch; per table dtype: bytes per
    table parameter, peak RSS per rank, labelling examples/s, max |logit difference| to
    fp32 and the ``pred_kd`` students' test AUC (``seeds`` seeds) against fp32 labels."""
    import numpy as np
    import ray

    from recdistill.cluster.config import RunOptions, TeacherGroupConfig, with_seeds
    from recdistill.cluster.session import start_local_ray
    from recdistill.cluster.teachers import ensure_teacher
    from recdistill.jobs.common import load_dataset
    from recdistill.jobs.distill import run
    from recdistill.jobs.train_teacher import run as train_teacher
    base = pred_kd_cfg(passes=passes, teacher_group=TeacherGroupConfig(checkpoint=teacher))
    data = load_dataset(base.data, split=base.split, seed=base.seed, rows=base.rows)
    unbatched = dataclasses.replace(base, teacher_group=dataclasses.replace(
        base.teacher_group, label_batch_size=base.teacher_group.batch_size, prefetch=False,
        calls_in_flight=1, split="stream"))
    start_local_ray(16, dashboard=False)
    held = _held_teacher_cls()
    out: dict[str, Any] = {"data": base.data, "passes": passes, "repeats": repeats,
                           "student_passes": student_passes,
                           "label_rows": base.label_rows,
                           "batch_size": base.teacher_group.batch_size}
    try:
        ensure_teacher(base, train_teacher)
        _alone(base, data, held, keep=0)  # untimed: the cluster's first Ray Data run
        rates: dict[str, dict[str, list[float]]] = {}
        per_dtype: dict[str, dict[str, Any]] = {}
        ref_logits = None
        for r in range(repeats):
            for name, cfg in [("default", base), ("unbatched", unbatched)] + [
                    (f"dtype_{d}", dataclasses.replace(base, teacher_group=dataclasses.replace(
                        base.teacher_group, table_dtype=d))) for d in DTYPES if d != "fp32"]:
                res = _alone(cfg, data, held, keep=4 if r == 0 else 0)
                q = rates.setdefault(name, defaultdict(list))
                u = res["usage"]
                q["decode"].append(u["decode_s"] * 1e3 / u["batches"])
                # where a labelled batch's time goes, per batch of label_rows rows: the
                # rank's wall per batch after the first round, its forward and encoding
                # (every batch) online and on the held batches, and its process's CPU
                # (every thread)
                rows = u["examples"] / u["batches"]
                q["wall_ms"].append(rows * 1e3 / res["alone"])
                q["forward_ms"].append((u["forward_s"] + u["encode_s"]) * 1e3 / u["batches"])
                q["held_forward_ms"].append(rows * 1e3 / res["forward"])
                q["cpu_ms"].append(u["cpu_s"] * 1e3 / u["batches"])
                q["first"].append(res["first_round_s"])
                q["alone"].append(res["alone"])
                q["forward"].append(res["forward"])
                q["overhead"].append(1 - res["alone"] / res["forward"])
                if r == 0:
                    dtype = name[6:] if name.startswith("dtype_") else "fp32"
                    if name == "default":
                        ref_logits = res["logits"]
                    if name != "unbatched":
                        t = res["tables"]
                        per_dtype[dtype] = {
                            "bytes_per_parameter": t["bytes"] / t["parameters"],
                            "peak_rss_bytes": t["peak_rss_bytes"],
                            "rss_bytes": t["rss_bytes"],
                            "max_abs_logit_diff": float(np.abs(res["logits"]
                                                               - ref_logits).max())}
                print(f"  repeat {r} {name}: alone {res['alone']:,.0f} ex/s, forward alone "
                      f"{res['forward']:,.0f}, overhead {q['overhead'][-1]:.3f}", flush=True)
        for name, q in rates.items():
            out[name] = {"alone_examples_per_s": stats(q["alone"]),
                         "forward_examples_per_s": stats(q["forward"]),
                         "input_overhead": statistics.median(q["overhead"]),
                         "input_overhead_per_repeat": q["overhead"],
                         # Arrow -> numpy per labelled batch, and the first pass's
                         # stream start (before the clock)
                         "decode_ms_per_batch": stats(q["decode"]),
                         "ms_per_batch": {k: stats(q[k]) for k in (
                             "wall_ms", "forward_ms", "held_forward_ms", "cpu_ms")},
                         "first_round_s": stats(q["first"])}
        out["input_overhead"] = out["default"]["input_overhead"]
        # the students, from fp32 and from each dtype's labels, seeds paired
        aucs: dict[str, list[float]] = {}
        for d in DTYPES:  # the job's default passes: the students as users train them
            cfg = dataclasses.replace(base, passes=student_passes, seeds=seeds,
                                      groups=with_seeds(base.groups, seeds),
                                      teacher_group=dataclasses.replace(
                                          base.teacher_group, table_dtype=d))
            report = run(cfg, RunOptions(progress=False)).to_json()
            task = data.spec.tasks[-1]
            aucs[d] = [s["test"][task]["auc"] for _, s in sorted(report["students"].items())]
            per_dtype[d]["labelling_examples_per_s"] = out[
                "default" if d == "fp32" else f"dtype_{d}"]["alone_examples_per_s"]["median"]
            print(f"  students from {d} labels: test AUC ({task}) {aucs[d]}", flush=True)
        for d in DTYPES:
            diffs = [a - b for a, b in zip(aucs[d], aucs["fp32"])]
            per_dtype[d].update(
                student_test_auc=aucs[d], auc_delta=statistics.mean(diffs),
                auc_delta_per_seed=diffs,
                bytes_ratio=per_dtype["fp32"]["bytes_per_parameter"]
                / per_dtype[d]["bytes_per_parameter"])
            out[d] = per_dtype[d]
        out["auc_task"] = data.spec.tasks[-1]
        out["seeds"] = seeds
    finally:
        ray.shutdown()
    return out


def run(a: argparse.Namespace, teacher: str) -> dict[str, Any]:
    out = bench_labelling(teacher, a.passes, min(a.repeats, 5), a.seeds, a.student_passes)
    if a.served_teacher:
        from recdistill.jobs.bench.scale import serve_big_teacher
        served = serve_big_teacher(a.served_teacher, a.served_rows, a.interval,
                                   dim=a.served_dim, table_dtype="int8",
                                   precision="fp16")
        out["served"] = served
        out["max_parameters_served"] = served["teacher_parameters"]
    return out


def summary(r: dict[str, Any]) -> None:
    print(f"labelling: {r['data']}, {r['passes']} passes, {r['repeats']} repeats, label "
          f"batch {r['label_rows']} rows (student batch {r['batch_size']})")
    for name in ("default", "unbatched"):
        q = r[name]
        print(f"  {name:<10} alone {q['alone_examples_per_s']['median']:>10,.0f} ex/s, "
              f"forward alone {q['forward_examples_per_s']['median']:>10,.0f}, input "
              f"overhead {q['input_overhead']:.3f}, decode "
              f"{q['decode_ms_per_batch']['median']:.2f} ms per labelled batch, first "
              f"round {q['first_round_s']['median']:.2f} s")
        m = {k: v["median"] for k, v in q["ms_per_batch"].items()}
        print(f"    ms per labelled batch: wall {m['wall_ms']:.1f}, forward online "
              f"{m['forward_ms']:.1f}, held {m['held_forward_ms']:.1f}, rank CPU "
              f"{m['cpu_ms']:.1f}")
    if "served" in r:
        q = r["served"]
        print(f"largest teacher served: {r['max_parameters_served']:,} parameters, 2 ranks, "
              f"int8 tables: {q['online_examples_per_s']:,.0f} ex/s online, peak RSS per "
              f"rank {q['memory']['roles']['TeacherRank']['peak_rss'] / 2**30:.2f} GiB")
    print(f"{'dtype':<6}{'bytes/param':>12}{'x fp32':>8}{'peak RSS GiB':>14}"
          f"{'max |dlogit|':>14}{'AUC delta':>11}")
    for d in DTYPES:
        q = r[d]
        print(f"{d:<6}{q['bytes_per_parameter']:>12.3f}{q['bytes_ratio']:>8.2f}"
              f"{q['peak_rss_bytes'] / 2**30:>14.2f}{q['max_abs_logit_diff']:>14.5f}"
              f"{q['auc_delta']:>+11.5f}")
