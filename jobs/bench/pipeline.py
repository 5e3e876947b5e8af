"""pipeline: one group trained online vs the teacher alone and the student alone, and
where a batch's time goes."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from recdistill.jobs.bench.common import pred_kd_cfg, rates_table, stats, teacher_alone


def _held_student_cls() -> type:
    """A student replica training from labelled batches held in its own memory (the
    pipeline suite's "student alone")."""
    from recdistill.cluster.replica import StudentReplica

    class HeldStudent(StudentReplica):
        def hold(self, refs: list[Any]) -> list[float]:
            """Fetch the batches (one ``ray.get`` each: the transfer a replica pays per
            batch online) and keep them; returns the seconds of each fetch."""
            import ray
            self.held, took = [], []
            for ref in refs:
                t = time.perf_counter()
                self.held.append(ray.get(ref))
                took.append(time.perf_counter() - t)
            return took

        def train_held(self, passes: int, batch_size: int) -> tuple[float, int]:
            """(seconds, examples) to train every held batch ``passes`` times, in
            student batches of ``batch_size`` rows (row ranges of a labelled batch, as
            online)."""
            import numpy as np
            t = time.perf_counter()
            for _ in range(passes):
                for b in self.held:
                    n = b.inputs.batch_size
                    for start in range(0, n, batch_size):
                        self.train_on(b, b.version,
                                      np.arange(start, min(start + batch_size, n)))
            return time.perf_counter() - t, passes * sum(b.inputs.batch_size
                                                         for b in self.held)

    return HeldStudent


def bench_pipeline(teacher: str, passes: int, repeats: int) -> dict[str, Any]:
    """Online examples/s of one group vs the teacher alone and the student alone, at
    the same CPU allotment (1 CPU each), interleaved per repeat on one Ray cluster."""
    import dataclasses

    import ray

    from recdistill.cluster.config import RunOptions, TeacherGroupConfig
    from recdistill.cluster.session import start_local_ray
    from recdistill.cluster.teachers import ensure_teacher, teacher_dims
    from recdistill.jobs.common import load_dataset
    from recdistill.jobs.distill import run
    from recdistill.jobs.train_teacher import run as train_teacher
    cfg = pred_kd_cfg(passes=passes, teacher_group=TeacherGroupConfig(checkpoint=teacher))
    group = cfg.groups[0]
    data = load_dataset(cfg.data, split=cfg.split, seed=cfg.seed, rows=cfg.rows)
    start_local_ray(16, dashboard=False)
    online, online_1, online_u, online_ur = [], [], [], []
    alone_t, alone_s, eff = [], [], []
    prof: dict[str, list[float]] = {}
    # The same run with one batch per actor call: what batches_per_call saves the broker.
    cfg_1 = dataclasses.replace(cfg, stream=dataclasses.replace(cfg.stream,
                                                                batches_per_call=1))
    # The same run labelling in student-sized batches without prefetching the passes'
    # input, each pass split by Ray Data's streaming_split (the behaviour before those
    # settings existed); and the same with the ranks reading their rows (split = rows),
    # which shows how much of the difference is the split's.
    cfg_u = dataclasses.replace(cfg, teacher_group=dataclasses.replace(
        cfg.teacher_group, label_batch_size=cfg.teacher_group.batch_size, prefetch=False,
        calls_in_flight=1, split="stream"))
    cfg_ur = dataclasses.replace(cfg_u, teacher_group=dataclasses.replace(
        cfg_u.teacher_group, split="rows"))
    try:
        ensure_teacher(cfg, train_teacher)
        dims = teacher_dims(cfg, data.spec)
        cls = ray.remote(_held_student_cls())
        # Untimed: the cluster's first run starts Ray Data's own actors and worker
        # processes (measured here: ~40% slower), which would land on the first setup.
        run(cfg, RunOptions(progress=False))

        def online_run(c: Any, rates: list[float]) -> dict[str, Any]:
            """One job of config ``c``; its group's examples/s appended to ``rates``."""
            report = run(c, RunOptions(progress=False)).to_json()
            rates.append(report["students"][group.name]["examples_trained"]
                         / report["train_wall_s"])
            return report

        for r in range(repeats):
            report = online_run(cfg, online)
            st, u = report["students"][group.name], report["teacher"]["usage"]
            report_1 = online_run(cfg_1, online_1)
            online_run(cfg_u, online_u)
            online_run(cfg_ur, online_ur)
            alone = teacher_alone(cfg, data, keep=True)
            n, ua = alone["examples"], alone["usage"]
            refs = alone["kept"][0]
            alone_t.append(n / alone["wall_s"])
            student = cls.options(num_cpus=group.cpus).remote(group, data.spec, dims, 0, 1)
            ray.get(student.setup.remote("", 0))
            fetch = ray.get(student.hold.remote(refs))
            # the first pass's batches, trained `passes` times
            took, examples = ray.get(student.train_held.remote(
                passes, cfg.teacher_group.batch_size))
            alone_s.append(examples / took)
            ray.kill(student, no_restart=True)
            # serialisation: a batch into the object store, as a task's return is stored
            sample = ray.get(refs[:20])
            put = []
            for b in sample:
                t = time.perf_counter()
                ray.put(b)
                put.append(time.perf_counter() - t)
            eff.append(online[-1] / min(alone_t[-1], alone_s[-1]))
            # every figure per student batch (batch_size rows); a labelled batch holds
            # `slices` of them
            bs, slices = cfg.teacher_group.batch_size, cfg.slices_per_label_batch
            batches = report["stream"]["produced"]
            step = st["seconds_per_batch"]
            for key, value in (("teacher_alone_input", ua["input_s"] * bs / ua["examples"]),
                               ("teacher_alone_forward",
                                ua["forward_s"] * bs / ua["examples"]),
                               ("teacher_input", u["input_s"] * bs / u["examples"]),
                               ("teacher_forward", u["forward_s"] * bs / u["examples"]),
                               ("teacher_encode", u["encode_s"] * bs / u["examples"]),
                               ("serialise", statistics.median(put) / slices),
                               ("broker_driver_cpu", report["driver_cpu_s"] / batches),
                               ("broker_driver_busy", report["driver_busy_s"] / batches),
                               ("broker_driver_cpu_1_per_call", report_1["driver_cpu_s"]
                                / report_1["stream"]["produced"]),
                               ("transfer", statistics.median(fetch) / slices),
                               ("student_prepare", step["prepare_s"]),
                               ("student_step", step["step_s"])):
                prof.setdefault(key, []).append(value)
            print(f"  repeat {r}: online {online[-1]:,.0f} ex/s (1 batch per call: "
                  f"{online_1[-1]:,.0f}; unbatched, no prefetch: {online_u[-1]:,.0f}, "
                  f"the same with split = rows: {online_ur[-1]:,.0f}), "
                  "teacher alone "
                  f"{alone_t[-1]:,.0f}, student alone {alone_s[-1]:,.0f}, efficiency "
                  f"{eff[-1]:.3f}", flush=True)
    finally:
        ray.shutdown()
    per_batch = {k: stats(v) for k, v in prof.items()}
    return {"data": cfg.data, "group": group.name, "batch_size": cfg.teacher_group.batch_size,
            "passes": passes, "repeats": repeats,
            "batches_per_call": cfg.stream.batches_per_call,
            "online_examples_per_s": stats(online),
            "online_1_per_call_examples_per_s": stats(online_1),
            "label_rows": cfg.label_rows, "prefetch": cfg.teacher_group.prefetch,
            "online_unbatched_examples_per_s": stats(online_u),
            "speedup_vs_unbatched": statistics.median(
                [a / b for a, b in zip(online, online_u)]),
            "speedup_vs_unbatched_per_repeat": [a / b for a, b in zip(online, online_u)],
            "online_unbatched_rows_examples_per_s": stats(online_ur),
            "speedup_vs_unbatched_rows": statistics.median(
                [a / b for a, b in zip(online, online_ur)]),
            "teacher_alone_examples_per_s": stats(alone_t),
            "student_alone_examples_per_s": stats(alone_s),
            "efficiency": statistics.median(eff), "efficiency_per_repeat": eff,
            "seconds_per_batch": per_batch,
            "broker_vs_student_step": statistics.median(
                [b / s for b, s in zip(prof["broker_driver_cpu"], prof["student_step"])]),
            "broker_vs_student_step_1_per_call": statistics.median(
                [b / s for b, s in zip(prof["broker_driver_cpu_1_per_call"],
                                       prof["student_step"])])}


def run(a: argparse.Namespace, teacher: str) -> dict[str, Any]:
    return bench_pipeline(teacher, a.passes, min(a.repeats, 5))


def summary(r: dict[str, Any]) -> None:
    print(f"pipeline: group {r['group']}, {r['data']}, batch {r['batch_size']}, "
          f"{r['passes']} passes, {r['repeats']} repeats")
    rates_table(r, [("online", "online_examples_per_s"),
                    ("online, 1/call", "online_1_per_call_examples_per_s"),
                    ("online, unbatched", "online_unbatched_examples_per_s"),
                    ("unbatched, rows", "online_unbatched_rows_examples_per_s"),
                    ("teacher alone", "teacher_alone_examples_per_s"),
                    ("student alone", "student_alone_examples_per_s")], 16)
    print(f"online / online unbatched without prefetch: median "
          f"{r['speedup_vs_unbatched']:.3f} ("
          f"{', '.join(f'{x:.3f}' for x in r['speedup_vs_unbatched_per_repeat'])}); "
          f"vs the same with split = rows: {r['speedup_vs_unbatched_rows']:.3f}")
    print(f"efficiency online / min(alone): median {r['efficiency']:.3f} "
          f"({', '.join(f'{x:.3f}' for x in r['efficiency_per_repeat'])})")
    print("milliseconds per batch (median):")
    for k, q in r["seconds_per_batch"].items():
        print(f"  {k:<20}{q['median'] * 1e3:>8.2f}")
    print(f"broker (driver CPU) / student step: {r['broker_vs_student_step']:.3f} at "
          f"{r['batches_per_call']} batches per call, "
          f"{r['broker_vs_student_step_1_per_call']:.3f} at 1")