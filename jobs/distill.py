"""The main job: online distillation from a sharded teacher to several student groups.

``python -m jobs.distill`` with no arguments starts a single-node Ray cluster on
127.0.0.1 (or joins ``--address`` / ``RAY_ADDRESS``), trains the teacher on
MovieLens-100k if its checkpoint is missing, distils the default student groups
(baseline, pred_kd, feat_kd, multitask_kd) online for the configured passes, evaluates
every group and the teacher on test, prints a table and writes a JSON report and a PNG
of learning curves.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from recdistill.cluster.config import DistillConfig, RunOptions, TeacherGroupConfig
from recdistill.cluster.interrupts import signal_of, stop_on_signals, where_stopped
from recdistill.cluster.pipeline import Hooks, OnlineDistillation
from recdistill.cluster.report import DistillReport
from recdistill.cluster.session import dashboard_line, exit_process, ray_dashboard, start_ray
from recdistill.cluster.teachers import ensure_teacher, resolve_labels, teacher_dims
from recdistill.data import storage
from recdistill.data.configs import to_mapping
from recdistill.data.errors import ConfigError, DataError
from recdistill.jobs.common import (command_line, load_dataset, quiet_library_warnings,
                                    write_json_atomic)
from recdistill.jobs.distill_config import parse_args
from recdistill.jobs.train_teacher import run as train_teacher
from recdistill.teacher.checkpoint import CheckpointError


def run(cfg: DistillConfig, options: RunOptions = RunOptions(),
        hooks: Hooks = Hooks()) -> DistillReport:
    """The whole job; returns the report. Ray is started (or joined at
    ``options.address``) and shut down here; the report and its PNG are written where
    ``options`` says."""
    import ray
    from recdistill.cluster.run_state import STATE_FILE, RunCheckpoint, share_layout
    t0 = time.perf_counter()
    if options.storage:  # a bucket or directory the job cannot write fails now, named
        storage.probe(options.storage)
    if options.resume:  # nothing to resume from fails now, before data, Ray or a teacher
        RunCheckpoint.load(storage.join(options.state_dir, STATE_FILE),
                           [g.name for g in cfg.groups], options.soft_labels,
                           share_layout(cfg))
    data = load_dataset(cfg.data, split=cfg.split, seed=cfg.seed, rows=cfg.rows,
                        max_cardinality=cfg.max_cardinality)
    soft = options.soft_labels
    cfg, dims = resolve_labels(  # before any actor starts
        cfg, data, soft, storage.join(options.storage, "teacher") if options.storage
        else TeacherGroupConfig.checkpoint)
    own_cluster = not ray.is_initialized()
    if own_cluster:
        start_ray(options.address, cfg, options.join_timeout_s, options.verbose,
                  teacher=not soft)
    monitoring: dict[str, Any] = {}
    pipeline = None
    try:
        monitoring["dashboard"] = ray_dashboard()
        print(dashboard_line(monitoring["dashboard"]), flush=True)
        if options.tensorboard:
            monitoring["tensorboard"] = options.tensorboard
            print(f"TensorBoard: tensorboard --logdir {options.tensorboard}", flush=True)
        if not soft:
            ensure_teacher(cfg, train_teacher)
            dims = teacher_dims(cfg, data.spec)
        pipeline = OnlineDistillation(cfg, data, dims, options, hooks)
        report = pipeline.run()
    finally:
        if pipeline is not None:
            pipeline.shutdown()
        if own_cluster:
            ray.shutdown()
    report = dataclasses.replace(report, dataset=data.name, data_skipped=data.skipped,
                                 wall_s=time.perf_counter() - t0, config=to_mapping(cfg),
                                 soft_labels=soft or None, monitoring=monitoring)
    if cfg.sweep is not None:
        from recdistill.cluster.sweep import pareto
        report = dataclasses.replace(report, sweep=pareto(report.to_json()))
    if options.report:
        doc = report.to_json()
        write_json_atomic(options.report, doc)
        png = options.plot or options.report.removesuffix(".json") + ".png"
        from recdistill.jobs.figure import plot, plot_pareto
        plot(doc, png)
        if report.sweep is not None:
            plot_pareto(doc, png.removesuffix(".png") + "_pareto.png")
    return report


def stopped_line(e: KeyboardInterrupt, parsed: tuple[DistillConfig, RunOptions, bool] | None,
                 argv: list[str] | None, since: float) -> str:
    """The one line a run stopped by SIGINT or SIGTERM ends with: where its driver
    checkpoint has it, and the command that continues it (or starts it again)."""
    how = f"stopped by {signal_of(e).name}"
    if parsed is None:
        return f"{how} before the run started"
    cfg, options, _ = parsed
    where = where_stopped(options.state_dir, [g.name for g in cfg.groups],
                          options.soft_labels, cfg.passes, since, options.resume)
    cmd = command_line(argv, "recdistill distill")
    if where is None:
        why = ("; it keeps no driver checkpoint (--state-dir '')" if not options.state_dir
               else " before its first driver checkpoint")
        return f"{how}{why}; start it again with: {shlex.join(cmd)}"
    if "--resume" not in cmd:
        cmd.append("--resume")
    return f"{how} {where}; continue with: {shlex.join(cmd)}"


def main(argv: list[str] | None = None) -> int:
    """``recdistill distill``; the exit status: 2 for a config, data or checkpoint error,
    128 + the signal's number for SIGINT (130) and SIGTERM (143), each said in one line
    on stderr."""
    quiet_library_warnings()
    since, parsed = time.time(), None
    with stop_on_signals():
        try:
            parsed = parse_args(argv, __doc__ or "")
            report = run(parsed[0], parsed[1])
        except (ConfigError, DataError, CheckpointError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:  # SIGINT, or SIGTERM as Terminated
            print(stopped_line(e, parsed, argv, since), file=sys.stderr, flush=True)
            return 128 + signal_of(e)
    cfg, options, readme_table = parsed
    print(report.table())
    if readme_table:
        from recdistill.cluster.report import markdown_table
        print()
        print(markdown_table(report.to_json()))
    s = report.stream
    if report.resumed:
        r = report.resumed
        print(f"resumed in pass {r['pass']} ({'after' if r['pass_done'] else 'during'} "
              f"it); rows each group had trained in it: {r['trained_in_pass']}")
    print(f"stream: {s['produced']} batches produced, acked {s['acked']}, "
          f"re-delivered {s['redelivered']}, duplicates dropped {s['duplicates_dropped']}")
    if options.report:
        print(f"wall {report.wall_s:.0f}s; report {options.report}, figure "
              f"{options.plot or options.report.removesuffix('.json') + '.png'}")
    else:
        print(f"wall {report.wall_s:.0f}s; no report written (--report '')")
    if options.artifacts:
        print(f"students: {options.artifacts}/<group>/ (recdistill predict --student ...)")
    return 0


if __name__ == "__main__":
    exit_process(main())
