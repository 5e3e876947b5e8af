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
          the student's row/teacher-output preparation and optimizer step. Beside the
          default, the same job as it ran before the labelling settings (512-row
          labelling, no prefetch, ``split = "stream"``: ``speedup_vs_unbatched``) and
          that job with ``split = "rows"`` (``speedup_vs_unbatched_rows``).
  transport  bytes per example of the soft labels (logits + requested features) through
          the object store in float32, float16 and bfloat16, and the test AUC of the
          ``pred_kd`` and ``feat_kd`` students trained from each (MovieLens-100k, the
          default 8 passes, one seed: the runs are deterministic).
  committee  what the teacher committee costs: teacher CPU seconds per example (every
          member's process) and online examples/s of one ``pred_kd`` group with the
          first 1, 2 and 3 members of the default committee, interleaved per repeat,
          one pass over MovieLens-100k each.
  student  a student's step (512-row batches, emb 8, MLP 64-32, one thread) on plain
          tables under dense Adam vs TorchRec row-wise-sharded tables with FBGEMM's
          fused row-wise Adagrad, at max_cardinality 1e4, 1e6 and 1e7 (dense: 1e4, 1e6),
          interleaved step by step; and the online pipeline on the synthetic Criteo
          stream (ids capped at 1e6, the same teacher) with each, interleaved per repeat.
  labelling  the teacher labelling alone (as the online driver calls it) vs its forward
          alone on the same batches held in memory: ``input_overhead`` = 1 - alone /
          forward, at the default labelling settings and as before them (student-sized
          batches, no prefetch, ``split = "stream"``: ``unbatched``); per table dtype
          (fp32, fp16, int8, int4): bytes per table parameter, peak and current RSS of
          rank 0, labelling
          examples/s, max |logit difference| to fp32 on fixed batches, and the
          ``pred_kd`` students' test AUC trained from that dtype's labels against fp32
          labels, ``--seeds`` seeds paired (MovieLens-100k).
  input   one pass of MovieLens-100k's stream read by ``--ranks`` tasks as teacher
          ranks read it, nothing labelled, with ``teacher_group.split = stream``
          (``streaming_split``) and ``rows`` interleaved pass by pass: seconds to the
          first batch, wall seconds, and the CPU seconds of every process on the
          machine meanwhile (``input.cpu_ratio``: stream / rows, per pass).
  scale   ``--data synthetic-stream`` of each ``--sizes`` rows through the whole online
          pipeline (one pass, ``pred_kd``), each on a fresh local cluster, the RSS of
          every process and the object store sampled (``cluster.resources``); then a
          1.08e9-parameter teacher sharded over 2 ranks serving ``--big-rows`` rows.
  ingest  a Criteo-like file dataset (26 raw string id columns hashed into 1e5 buckets,
          13 dense, 2 tasks; Parquet, one file per 250k rows) at each ``--ingest-sizes``
          train rows through the job (one pass, one teacher rank, one row-wise sharded
          ``pred_kd`` group of 2 replicas), train streamed, and the smallest also read
          into memory; peak memory per role as Ray counts a worker's (RSS less shared
          pages) and the object store's (``ingest.rss_ratio_*``; with shared pages,
          ``ingest.rss_with_shared_ratio_*``), ``ingest.throughput_ratio_*``,
          ``ingest.streamed_vs_in_memory``.
  ids     MovieLens-100k's baseline student (true labels, no teacher) on each way of
          making table rows of raw ids: the vocabulary, the vocabulary renumbered (the
          noise floor of any numbering), the ``hash`` rule at 16x and 64x
          buckets per value (64x also with its first rows at the vocabulary's scale),
          TorchRec's managed-collision remap (MCH, LFU) onto 2x the
          values; test AUC paired by seed against the vocabulary, and the share of test
          lookups that collide (``ids.schemes[s]``).

    python -m jobs.bench --suite pipeline [--repeats 3] [--passes 2]
    python -m jobs.bench --suite labelling [--repeats 3] [--passes 2] [--seeds 3]
    python -m jobs.bench --suite input [--repeats 3] [--passes 2] [--ranks 1]
    python -m jobs.bench --suite fanout [--repeats 3]
    python -m jobs.bench --suite transport
    python -m jobs.bench --suite committee [--repeats 3]
    python -m jobs.bench --suite student [--repeats 15] [--online-rows 30000]
    python -m jobs.bench --suite scale [--sizes 100000,1000000,10000000]
    python -m jobs.bench --suite ingest [--ingest-sizes 1000000,10000000]
    python -m jobs.bench --suite ids [--seeds 10] [--student-passes 8]
"""

from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType

import torch

from recdistill.jobs.bench import (committee, fanout, ids, ingest, inputs, labelling,
                                   lookup, pipeline, scale, student, transport)
from recdistill.jobs.bench.common import machine

# One module per suite: ``run(args, teacher) -> dict`` and ``summary(result)``.
SUITES: dict[str, ModuleType] = {"lookup": lookup, "pipeline": pipeline, "fanout": fanout,
                                 "transport": transport, "scale": scale,
                                 "committee": committee, "student": student,
                                 "labelling": labelling, "input": inputs, "ingest": ingest,
                                 "ids": ids}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="recdistill bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="lookup")
    p.add_argument("--json", help="write results here")
    p.add_argument("--rows", type=int, default=100_000, help="rows per table")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=15,
                   help="lookup: timed steps; fanout: repeats of each configuration")
    p.add_argument("--teacher-checkpoint", default="",
                   help="pipeline, fanout, transport: the MovieLens teacher (default "
                        "runs/bench/teacher); scale: the synthetic one (default "
                        "runs/bench/teacher_synthetic); student: one on ids capped at 1e6 "
                        "(default runs/bench/teacher_synthetic_1e6); trained first if "
                        "missing")
    p.add_argument("--passes", type=int, default=2,
                   help="pipeline, labelling: passes per run")
    p.add_argument("--seeds", type=int, default=3,
                   help="labelling: student seeds trained from each table dtype's labels; "
                        "ids: seeds of each id scheme")
    p.add_argument("--student-passes", type=int, default=8,
                   help="labelling, ids: passes of the students trained")
    p.add_argument("--sizes", default="100000,1000000,10000000",
                   help="scale: training rows of each run, comma-separated")
    p.add_argument("--big-teacher", default="runs/bench/teacher_1b",
                   help="scale: the 1.08e9-parameter teacher (trained first if missing; "
                        "empty skips it)")
    p.add_argument("--big-rows", type=int, default=200_000,
                   help="scale: rows the 1e9 teacher serves")
    p.add_argument("--served-teacher", default="runs/bench/teacher_3b",
                   help="labelling: the largest teacher, served with int8 tables on 2 "
                        "ranks (trained first if missing, with fp16 tables; empty "
                        "skips it)")
    p.add_argument("--served-dim", type=int, default=96,
                   help="labelling: its embedding width (96: 3.2e9 parameters)")
    p.add_argument("--served-rows", type=int, default=50_000,
                   help="labelling: synthetic rows it streams to a student group")
    p.add_argument("--ranks", type=int, default=1,
                   help="input: ranks reading each pass")
    p.add_argument("--online-rows", type=int, default=30_000,
                   help="student: training rows of each online run")
    p.add_argument("--ingest-sizes", default="1000000,10000000",
                   help="ingest: training rows of each streamed run, comma-separated")
    p.add_argument("--ingest-dir", default="runs/bench/ingest",
                   help="ingest: where the Criteo-like files are written (once)")
    p.add_argument("--interval", type=float, default=1.0,
                   help="scale: seconds between memory samples")
    a = p.parse_args(argv)
    from recdistill.jobs.common import quiet_library_warnings, write_json_atomic
    quiet_library_warnings()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    teacher = a.teacher_checkpoint or {
        "scale": "runs/bench/teacher_synthetic",
        "student": "runs/bench/teacher_synthetic_1e6",
        "ingest": "runs/bench/teacher_criteo"}.get(a.suite, "runs/bench/teacher")
    suite = SUITES[a.suite]
    result = suite.run(a, teacher)
    suite.summary(result)
    if a.json:
        write_json_atomic(a.json, {"machine": machine(), "command": " ".join(sys.argv),
                                   a.suite: result})
    return 0
