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
          handing batches to the object store) when 1, 2 and 4 student groups (copies
          of ``feat_kd``, so the stream carries the same logits and features) consume
          the same stream; the configurations run interleaved, repeat by repeat, one
          pass over MovieLens-100k each. ``ratio_4_vs_1`` is paired per repeat.
  pipeline  examples/s of one student group (``pred_kd``) trained online from the live
          teacher, vs the teacher alone (labelling with nobody consuming) and the
          student alone (training from the labelled batches held in its memory), 1 CPU
          each, interleaved per repeat; efficiency = online / min(alone). And where a
          batch's time goes: teacher input, forward, encoding; serialising it into the
          object store; the driver's (broker's) CPU; the replica's fetch (transfer);
          the student's row/teacher-output preparation and optimizer step.
  transport  bytes per example of the soft labels (logits + requested features) through
          the object store in float32, float16 and bfloat16, and the test AUC of the
          ``pred_kd`` and ``feat_kd`` students trained from each (MovieLens-100k, the
          default 8 passes, one seed: the runs are deterministic).
  scale   ``--data synthetic-stream`` of each ``--sizes`` rows through the whole online
          pipeline (one pass, ``pred_kd``), each on a fresh local cluster, the RSS of
          every process and the object store sampled (``cluster.resources``); then a
          1.08e9-parameter teacher sharded over 2 ranks serving ``--big-rows`` rows.

    python -m jobs.bench --suite pipeline [--repeats 3] [--passes 2]
    python -m jobs.bench --suite fanout [--repeats 3]
    python -m jobs.bench --suite transport
    python -m jobs.bench --suite scale [--sizes 100000,1000000,10000000]
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

SUITES = ("lookup", "pipeline", "fanout", "transport", "scale")


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
    # The same stream in every configuration: copies of the feat_kd group (logits and
    # the 128-wide last_hidden travel). Mixing group kinds would change what the
    # teacher encodes and ships, not just how many groups read it.
    feat = next(g for g in default_groups() if g.student.name == "feat_kd")
    groups = tuple(dataclasses.replace(feat, student=dataclasses.replace(
        feat.student, name=f"feat_kd_{i}")) for i in range(4))
    runs = [(f"{n}@{r}", dataclasses.replace(DistillConfig(passes=1), groups=groups[:n]))
            for r in range(repeats) for n in (1, 2, 4)]
    per: dict[int, list[float]] = {1: [], 2: [], 4: []}
    # the same work split by stage (wall seconds per example inside the teacher rank):
    # if the forward, whose work does not depend on the groups, grows as much as the
    # total, the growth is contention for the cores, not work
    stages: dict[int, dict[str, list[float]]] = {n: {} for n in per}
    for name, report in _distill_runs(runs, teacher):
        n = int(name.split("@")[0])
        u = report["teacher"]["usage"]
        per[n].append(u["cpu_s"] / u["examples"])
        for key in ("input_s", "forward_s", "encode_s"):
            stages[n].setdefault(key, []).append(u[key] / u["examples"])
    ratios = [b / a for a, b in zip(per[1], per[4])]
    return {"groups": {str(n): {"teacher_cpu_s_per_example": _stats(v),
                                "seconds_per_example": {k: _stats(x)
                                                        for k, x in stages[n].items()}}
                       for n, v in per.items()},
            "ratio_4_vs_1": statistics.median(ratios), "ratio_4_vs_1_per_repeat": ratios,
            "ratio_2_vs_1": statistics.median([b / a for a, b in zip(per[1], per[2])]),
            "forward_ratio_4_vs_1": statistics.median(
                [b / a for a, b in zip(stages[1]["forward_s"], stages[4]["forward_s"])]),
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


def _pred_kd_cfg(**kw: Any) -> Any:
    """A distill config with the one ``pred_kd`` group (the pipeline and scale suites')."""
    from cluster.config import DistillConfig, default_groups
    groups = tuple(g for g in default_groups() if g.student.name == "pred_kd")
    return DistillConfig(groups=groups, **kw)


def _held_student_cls() -> type:
    """A student replica training from labelled batches held in its own memory (the
    pipeline suite's "student alone")."""
    from cluster.actors import StudentReplica

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

        def train_held(self, passes: int) -> float:
            t = time.perf_counter()
            for _ in range(passes):
                for b in self.held:
                    self.train_on(b, b.version)
            return time.perf_counter() - t

    return HeldStudent


def _teacher_alone(cfg: Any, data: Any, keep: bool
                   ) -> tuple[float, int, list[Any], dict[str, float]]:
    """(wall seconds, examples, refs of the first pass's batches if ``keep``, rank 0's
    usage): the teacher group labelling ``cfg.passes`` passes with nobody consuming
    them, called as the online driver calls it (one lockstep round at a time)."""
    import ray

    from cluster.data import pass_dataset, train_dataset
    from cluster.pipeline import labelled_batches, start_teacher_group
    teachers, _ = start_teacher_group(cfg)
    kept: list[Any] = []
    try:
        ds = train_dataset(data.train)
        t0, n = time.perf_counter(), 0
        for p in range(cfg.passes):
            shards = pass_dataset(ds, data.train, cfg.seed * 1000 + p) \
                .streaming_split(len(teachers), equal=True)
            ray.get([t.start_pass.remote(s) for t, s in zip(teachers, shards)])
            per_call = cfg.stream.batches_per_call
            while True:
                calls = [t.label_many.options(num_returns=per_call + 1).remote(per_call)
                         for t in teachers]
                batches, done = labelled_batches(calls)
                n += sum(len(ids) for ids, _ in batches)
                if keep and p == 0:
                    kept += [ref for _, ref in batches]
                if done:
                    break
        wall = time.perf_counter() - t0
        return wall, n, kept, ray.get(teachers[0].usage.remote())
    finally:
        for t in teachers:
            ray.kill(t, no_restart=True)


def bench_pipeline(teacher: str, passes: int, repeats: int) -> dict[str, Any]:
    """Online examples/s of one group vs the teacher alone and the student alone, at
    the same CPU allotment (1 CPU each), interleaved per repeat on one Ray cluster."""
    import dataclasses

    import ray

    from cluster.config import TeacherGroupConfig
    from jobs.common import load_dataset, start_local_ray
    from jobs.distill import ensure_teacher, run, teacher_dims
    cfg = _pred_kd_cfg(passes=passes, teacher_group=TeacherGroupConfig(checkpoint=teacher))
    group = cfg.groups[0]
    data = load_dataset(cfg.data, split=cfg.split, seed=cfg.seed, rows=cfg.rows)
    start_local_ray(16, dashboard=False)
    online, online_1, alone_t, alone_s, eff = [], [], [], [], []
    prof: dict[str, list[float]] = {}
    # The same run with one batch per actor call: what batches_per_call saves the broker.
    cfg_1 = dataclasses.replace(cfg, stream=dataclasses.replace(cfg.stream,
                                                                batches_per_call=1))
    try:
        ensure_teacher(cfg)
        dims = teacher_dims(cfg, data.spec)
        cls = ray.remote(_held_student_cls())
        for r in range(repeats):
            report = run(cfg, progress=False)
            st, u = report["students"][group.name], report["teacher"]["usage"]
            online.append(st["examples_trained"] / report["train_wall_s"])
            report_1 = run(cfg_1, progress=False)
            online_1.append(report_1["students"][group.name]["examples_trained"]
                            / report_1["train_wall_s"])
            wall, n, refs, ua = _teacher_alone(cfg, data, keep=True)
            alone_t.append(n / wall)
            student = cls.options(num_cpus=group.cpus).remote(group, data.spec, dims, 0, 1)
            ray.get(student.setup.remote("", 0))
            fetch = ray.get(student.hold.remote(refs))
            # the first pass's batches, trained `passes` times: n examples in all
            alone_s.append(n / ray.get(student.train_held.remote(passes)))
            ray.kill(student, no_restart=True)
            # serialisation: a batch into the object store, as a task's return is stored
            sample = ray.get(refs[:20])
            put = []
            for b in sample:
                t = time.perf_counter()
                ray.put(b)
                put.append(time.perf_counter() - t)
            eff.append(online[-1] / min(alone_t[-1], alone_s[-1]))
            batches = u["batches"]
            step = st["seconds_per_batch"]
            for key, value in (("teacher_alone_input", ua["input_s"] / ua["batches"]),
                               ("teacher_alone_forward", ua["forward_s"] / ua["batches"]),
                               ("teacher_input", u["input_s"] / batches),
                               ("teacher_forward", u["forward_s"] / batches),
                               ("teacher_encode", u["encode_s"] / batches),
                               ("serialise", statistics.median(put)),
                               ("broker_driver_cpu", report["driver_cpu_s"] / batches),
                               ("broker_driver_busy", report["driver_busy_s"] / batches),
                               ("broker_driver_cpu_1_per_call", report_1["driver_cpu_s"]
                                / report_1["teacher"]["usage"]["batches"]),
                               ("transfer", statistics.median(fetch)),
                               ("student_prepare", step["prepare_s"]),
                               ("student_step", step["step_s"])):
                prof.setdefault(key, []).append(value)
            print(f"  repeat {r}: online {online[-1]:,.0f} ex/s (1 batch per call: "
                  f"{online_1[-1]:,.0f}), teacher alone "
                  f"{alone_t[-1]:,.0f}, student alone {alone_s[-1]:,.0f}, efficiency "
                  f"{eff[-1]:.3f}", flush=True)
    finally:
        ray.shutdown()
    per_batch = {k: _stats(v) for k, v in prof.items()}
    return {"data": cfg.data, "group": group.name, "batch_size": cfg.teacher_group.batch_size,
            "passes": passes, "repeats": repeats,
            "batches_per_call": cfg.stream.batches_per_call,
            "online_examples_per_s": _stats(online),
            "online_1_per_call_examples_per_s": _stats(online_1),
            "teacher_alone_examples_per_s": _stats(alone_t),
            "student_alone_examples_per_s": _stats(alone_s),
            "efficiency": statistics.median(eff), "efficiency_per_repeat": eff,
            "seconds_per_batch": per_batch,
            "broker_vs_student_step": statistics.median(
                [b / s for b, s in zip(prof["broker_driver_cpu"], prof["student_step"])]),
            "broker_vs_student_step_1_per_call": statistics.median(
                [b / s for b, s in zip(prof["broker_driver_cpu_1_per_call"],
                                       prof["student_step"])])}


# The features of the 1e9-parameter teacher's stream a student embeds: all but the six
# with more than 1e5 ids (the student's tables are dense-Adam trained: 33.6 M rows of
# them would make its step, not the teacher, the thing measured).
_SMALL_FEATURES = tuple(f"c{i}" for i in (0, 1, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 16, 17, 18,
                                           19, 21, 22, 24, 25))


def _scale_run(cfg: Any, interval: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """One ``jobs.distill`` run on its own fresh local Ray cluster, memory sampled."""
    from cluster.resources import ResourceSampler
    from jobs.distill import run
    with ResourceSampler(interval=interval) as sampler:
        t0 = time.perf_counter()
        report = run(cfg, progress=False)
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


def _ensure_big_teacher(path: str, rows: int) -> None:
    """Train (one short epoch on 2 Ray Train workers) the 1.08e9-parameter teacher:
    Criteo's cardinalities (33.6 M ids, capped at 1e7) at embedding dim 32."""
    import subprocess

    from teacher.checkpoint import versions
    if versions(path):
        return
    print(f"  training the 1e9-parameter teacher into {path} (2 workers)", flush=True)
    subprocess.run([sys.executable, "-m", "jobs.train_teacher", "--data", "synthetic",
                    "--rows", str(rows), "--max-cardinality", "10000000",
                    "--embedding-dim", "32", "--epochs", "1", "--workers", "2",
                    "--checkpoint", path, "--report", f"{path}_report.json"], check=True)


def bench_scale(teacher: str, sizes: list[int], big_teacher: str, big_rows: int,
                interval: float) -> dict[str, Any]:
    """Synthetic streams of each size through the whole online pipeline (one pass, one
    ``pred_kd`` group), each on a fresh cluster, RSS of every process sampled; then the
    1e9-parameter teacher sharded over 2 ranks serving a stream."""
    import dataclasses

    from cluster.config import TeacherGroupConfig
    import ray

    from jobs.common import start_local_ray
    from jobs.distill import ensure_teacher, teacher_exists
    runs = []
    for rows in sizes:
        cfg = _pred_kd_cfg(data="synthetic-stream", rows=rows, passes=1,
                           teacher_group=TeacherGroupConfig(checkpoint=teacher))
        if not teacher_exists(cfg):  # trained outside the measured runs
            start_local_ray(4, dashboard=False)
            try:
                ensure_teacher(cfg)
            finally:
                ray.shutdown()
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
        _ensure_big_teacher(big_teacher, 20_000)
        base = _pred_kd_cfg(data="synthetic-stream", rows=big_rows, passes=1,
                            max_cardinality=10_000_000,
                            teacher_group=TeacherGroupConfig(checkpoint=big_teacher,
                                                             ranks=2))
        group = base.groups[0]
        cfg = dataclasses.replace(base, groups=(dataclasses.replace(
            group, student=dataclasses.replace(group.student, features=_SMALL_FEATURES)),))
        r, report = _scale_run(cfg, interval)
        r["teacher_parameters"] = report["teacher"]["parameters"]
        r["teacher_ranks"] = 2
        out["big_teacher"] = r
        print(f"  1e9 teacher ({r['teacher_parameters']:,} parameters, 2 ranks): "
              f"{r['online_examples_per_s']:,.0f} ex/s online, teacher forward "
              f"{r['teacher_forward_examples_per_s']:,.0f} ex/s, peak RSS per rank "
              f"{r['memory']['roles']['TeacherRank']['peak_rss'] / 2**30:.2f} GiB", flush=True)
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
    p.add_argument("--teacher-checkpoint", default="",
                   help="pipeline, fanout, transport: the MovieLens teacher (default "
                        "runs/bench/teacher); scale: the synthetic one (default "
                        "runs/bench/teacher_synthetic); trained first if missing")
    p.add_argument("--passes", type=int, default=2, help="pipeline: passes per run")
    p.add_argument("--sizes", default="100000,1000000,10000000",
                   help="scale: training rows of each run, comma-separated")
    p.add_argument("--big-teacher", default="runs/bench/teacher_1b",
                   help="scale: the 1.08e9-parameter teacher (trained first if missing; "
                        "empty skips it)")
    p.add_argument("--big-rows", type=int, default=200_000,
                   help="scale: rows the 1e9 teacher serves")
    p.add_argument("--interval", type=float, default=1.0,
                   help="scale: seconds between memory samples")
    a = p.parse_args(argv)
    from jobs.common import quiet_library_warnings
    quiet_library_warnings()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    results: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv)}
    teacher = a.teacher_checkpoint or ("runs/bench/teacher_synthetic" if a.suite == "scale"
                                       else "runs/bench/teacher")
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
        r = bench_fanout(teacher, min(a.repeats, 5))
        results["fanout"] = r
        print(f"fanout: teacher CPU seconds per example, 1 pass of MovieLens-100k, "
              f"{r['repeats']} repeats")
        print(f"{'groups':<8}{'median us/ex':>14}{'min':>10}{'max':>10}")
        for n, v in r["groups"].items():
            q = v["teacher_cpu_s_per_example"]
            print(f"{n:<8}{q['median'] * 1e6:>14.1f}{q['min'] * 1e6:>10.1f}"
                  f"{q['max'] * 1e6:>10.1f}")
        print(f"4 groups / 1 group, paired per repeat: median {r['ratio_4_vs_1']:.3f}x "
              f"({', '.join(f'{x:.3f}' for x in r['ratio_4_vs_1_per_repeat'])}); "
              f"the teacher's forward alone: {r['forward_ratio_4_vs_1']:.3f}x")
        for n, v in r["groups"].items():
            q = v["seconds_per_example"]
            print(f"  {n} groups, us/example (median): " + ", ".join(
                f"{k[:-2]} {x['median'] * 1e6:.1f}" for k, x in q.items()))
    if a.suite == "transport":
        r = bench_transport(teacher)
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
    if a.suite == "pipeline":
        r = bench_pipeline(teacher, a.passes, min(a.repeats, 5))
        results["pipeline"] = r
        print(f"pipeline: group {r['group']}, {r['data']}, batch {r['batch_size']}, "
              f"{r['passes']} passes, {r['repeats']} repeats")
        print(f"{'':<16}{'median ex/s':>13}{'min':>10}{'max':>10}")
        for name, key in (("online", "online_examples_per_s"),
                          ("online, 1/call", "online_1_per_call_examples_per_s"),
                          ("teacher alone", "teacher_alone_examples_per_s"),
                          ("student alone", "student_alone_examples_per_s")):
            q = r[key]
            print(f"{name:<16}{q['median']:>13,.0f}{q['min']:>10,.0f}{q['max']:>10,.0f}")
        print(f"efficiency online / min(alone): median {r['efficiency']:.3f} "
              f"({', '.join(f'{x:.3f}' for x in r['efficiency_per_repeat'])})")
        print("milliseconds per batch (median):")
        for k, q in r["seconds_per_batch"].items():
            print(f"  {k:<20}{q['median'] * 1e3:>8.2f}")
        print(f"broker (driver CPU) / student step: {r['broker_vs_student_step']:.3f} at "
              f"{r['batches_per_call']} batches per call, "
              f"{r['broker_vs_student_step_1_per_call']:.3f} at 1")
    if a.suite == "scale":
        sizes = [int(x) for x in a.sizes.split(",") if x.strip()]
        r = bench_scale(teacher, sizes, a.big_teacher, a.big_rows, a.interval)
        results["scale"] = r
        print(f"peak RSS at {sizes[-1]:,} rows / at {sizes[0]:,} rows: "
              + ", ".join(f"{k} {v:.3f}x" for k, v in r["rss_ratio_by_role"].items()))
        print("the same for private RSS (RSS minus shared pages): "
              + ", ".join(f"{k} {v:.3f}x" for k, v in r["private_rss_ratio_by_role"].items()))
    if a.json:
        from jobs.common import write_json_atomic
        write_json_atomic(a.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
