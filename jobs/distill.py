"""The main job: online distillation from a sharded teacher to several student groups.

``python -m jobs.distill`` with no arguments starts a single-node Ray cluster on
127.0.0.1 (or joins ``--address`` / ``RAY_ADDRESS``), trains the teacher on
MovieLens-100k if its checkpoint is missing, distils the default student groups
(baseline, pred_kd, feat_kd, multitask_kd) online for the configured passes, evaluates
every group and the teacher on test, prints a table and writes a JSON report and a PNG
of learning curves.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

from recdistill.cluster.config import (DistillConfig, GroupConfig, MemberConfig, RunOptions,
                                       TeacherGroupConfig, default_groups, default_teachers,
                                       with_seeds)
from recdistill.cluster.pipeline import Hooks, OnlineDistillation
from recdistill.cluster.report import DistillReport
from recdistill.data.configs import from_mapping, to_mapping
from recdistill.data.errors import ConfigError, DataError
from recdistill.jobs.common import (JOIN_TIMEOUT_S, add_data_arguments, add_labelling_arguments,
                                    add_plugin_argument, check_sections, dashboard_line,
                                    exit_process, join_ray, load_dataset, load_plugins,
                                    quiet_library_warnings, ray_dashboard, read_toml,
                                    start_local_ray, write_json_atomic)
from recdistill.teacher.checkpoint import CheckpointError
from recdistill.teacher.config import TeacherConfig

ACTORS_PER_CPU = 8  # the most actor processes a local cluster starts per core
SECTIONS = tuple(f.name for f in dataclasses.fields(DistillConfig))  # the file's keys


def _group(i: int, table: Any) -> GroupConfig:
    """One ``[[groups]]`` table; errors name it ``groups.<name>`` as the file does
    (``groups[i]`` while it has no name)."""
    if not isinstance(table, dict):
        raise ConfigError(f"groups[{i}]: expected a table")
    name = table.get("name")
    where = f"groups.{name}" if isinstance(name, str) and name else f"groups[{i}]"
    outer = {k: table[k] for k in ("replicas", "cpus", "snapshot_every") if k in table}
    student = {k: v for k, v in table.items() if k not in outer}
    try:
        return from_mapping(GroupConfig, {"student": student, **outer}, where)
    except ConfigError as e:  # name keys as the file spells them
        raise ConfigError(str(e).replace(f"{where}.student.", f"{where}.")) from None


def _members(tables: Any, teacher: dict[str, Any]) -> tuple[MemberConfig, ...]:
    """``[[teachers]]``: each a ``name``, an optional ``checkpoint`` and teacher-config
    keys over the ``[teacher]`` table's; errors name ``teachers.<name>.<key>``."""
    if not isinstance(tables, list):
        raise ConfigError("teachers: expected an array of tables ([[teachers]])")
    out = []
    for i, table in enumerate(tables):
        if not isinstance(table, dict):
            raise ConfigError(f"teachers[{i}]: expected a table")
        name = table.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"teachers[{i}].name: expected a non-empty string")
        where = f"teachers.{name}"
        model = {k: v for k, v in table.items() if k not in ("name", "checkpoint")}
        checkpoint = table.get("checkpoint", "")
        if not isinstance(checkpoint, str):
            raise ConfigError(f"{where}.checkpoint: expected a string")
        out.append(MemberConfig(name, checkpoint,
                                from_mapping(TeacherConfig, {**teacher, **model}, where)))
    return tuple(out)


def load_config(path: str | None, *, data: str | None = None, split: str | None = None,
                rows: int | None = None, max_cardinality: int | None = None,
                passes: int | None = None, seed: int | None = None,
                ranks: int | None = None, replicas: int | None = None,
                checkpoint: str | None = None, version: str | None = None,
                seeds: int | None = None, kd_guard: bool | None = None,
                label_batch_size: int | None = None, table_dtype: str | None = None,
                prefetch: bool | None = None) -> DistillConfig:
    """A DistillConfig from an optional TOML file plus command-line overrides (None:
    not given): ``ranks``, ``checkpoint``, ``version``, ``label_batch_size``,
    ``table_dtype`` and ``prefetch`` of the teacher group,
    ``replicas`` of every group, the rest top-level fields.

    Fails before any actor starts, naming the file and the key as the file spells it
    (``groups.pred_kd.losses[0].params.temperature``).
    """
    from recdistill.student.losses import resolve_terms
    try:
        cfg = _parse(path, seed)
        for g in cfg.groups:  # loss names and parameters, before any data is read
            resolve_terms(g.student)
        tg = {k: v for k, v in (("ranks", ranks), ("checkpoint", checkpoint),
                                ("version", version), ("label_batch_size", label_batch_size),
                                ("table_dtype", table_dtype), ("prefetch", prefetch))
              if v is not None}
        if tg:
            cfg = dataclasses.replace(cfg, teacher_group=dataclasses.replace(
                cfg.teacher_group, **tg))
        if replicas is not None:
            cfg = dataclasses.replace(cfg, groups=tuple(
                dataclasses.replace(g, replicas=replicas) for g in cfg.groups))
        top = {k: v for k, v in (("data", data), ("split", split), ("rows", rows),
                                 ("max_cardinality", max_cardinality), ("passes", passes),
                                 ("seed", seed), ("seeds", seeds), ("kd_guard", kd_guard))
               if v is not None}
        cfg = dataclasses.replace(cfg, **top)
        return dataclasses.replace(cfg, groups=with_seeds(cfg.groups, cfg.seeds))
    except ConfigError as e:
        if path and not str(e).startswith(str(path)):
            raise ConfigError(f"{path}: {e}") from None
        raise


def _parse(path: str | None, seed: int | None) -> DistillConfig:
    """The file's config; ``seed`` (the command line's) seeds the groups that set none."""
    doc: dict[str, Any] = dict(read_toml(path)) if path else {}
    check_sections(doc, SECTIONS, path or "config")
    groups = doc.pop("groups", None)
    teachers = doc.pop("teachers", None)
    cfg = from_mapping(DistillConfig, doc, "")
    # No [[teachers]]: the default committee; `teachers = []`: the one teacher.
    cfg = dataclasses.replace(cfg, teachers=default_teachers(cfg.teacher) if teachers is None
                              else _members(teachers, doc.get("teacher", {})))
    run_seed = seed if seed is not None else doc.get("seed")
    if cfg.sweep is not None:  # the grid's groups, then any [[groups]] of the file
        from recdistill.cluster.sweep import sweep_groups
        sweep = cfg.sweep if run_seed is None or "seed" in doc.get("sweep", {}) \
            else dataclasses.replace(cfg.sweep, seed=run_seed)
        extra = [_group(i, g) for i, g in enumerate(groups)] if groups else []
        return dataclasses.replace(cfg, sweep=sweep,
                                   groups=sweep_groups(sweep) + tuple(extra))
    if groups is None:
        return cfg if run_seed is None else dataclasses.replace(
            cfg, groups=default_groups(run_seed))
    if not isinstance(groups, list) or not groups:
        raise ConfigError("groups: expected a non-empty array of tables ([[groups]])")
    parsed = [_group(i, g) for i, g in enumerate(groups)]
    if run_seed is not None:  # the run's seed, unless a group sets its own
        parsed = [g if "seed" in table else dataclasses.replace(
            g, student=dataclasses.replace(g.student, seed=run_seed))
            for g, table in zip(parsed, groups)]
    return dataclasses.replace(cfg, groups=tuple(parsed))


def parse_args(argv: list[str] | None) -> tuple[DistillConfig, RunOptions, bool]:
    """The job's config, how to run it, and whether to print the README table."""
    p = argparse.ArgumentParser(prog="recdistill distill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML file (see jobs/configs/distill_movielens.toml)")
    add_data_arguments(p)
    add_plugin_argument(p)
    p.add_argument("--passes", type=int, help="passes over train")
    p.add_argument("--seed", type=int)
    p.add_argument("--seeds", type=int,
                   help="run every group with N student seeds (seed, seed + 1, ...) as "
                        "extra groups of the same stream; the report adds mean, sd, the "
                        "gain's paired sd and eta over them")
    p.add_argument("--teacher-ranks", type=int, dest="ranks", help="K teacher actors")
    add_labelling_arguments(p)
    p.add_argument("--no-prefetch", dest="prefetch", action="store_false", default=None,
                   help="start each pass's input stream only when the pass starts "
                        "(teacher_group.prefetch = false)")
    p.add_argument("--replicas", type=int, help="M replicas in every student group")
    p.add_argument("--teacher-checkpoint", dest="checkpoint",
                   help="teacher checkpoint: a train_teacher root of versions or one "
                        "version's directory (trained first if missing)")
    p.add_argument("--teacher-version", dest="version",
                   help="version of a checkpoint root: best (default), latest or a step")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", ""),
                   help="join this Ray cluster: its GCS address (host:6379) or 'auto' "
                        "(default: RAY_ADDRESS, else start a local one)")
    p.add_argument("--join-timeout", type=float, default=JOIN_TIMEOUT_S,
                   help="seconds joining --address may take before the job gives up "
                        f"(default {JOIN_TIMEOUT_S:.0f})")
    p.add_argument("--report", default="runs/distill/report.json", help="JSON report path")
    p.add_argument("--plot", default="", help="PNG path (default: beside the report)")
    p.add_argument("--students-dir", default=None,
                   help="where every group's best student is written, <dir>/<group>/ "
                        "(default: 'students' beside the report; '' for none)")
    p.add_argument("--tensorboard", default=None,
                   help="TensorBoard event files of the run, one run per group (default: "
                        "'tensorboard' beside the report; '' for none): `tensorboard "
                        "--logdir DIR`")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--state-dir", default=None,
                   help="where the driver checkpoints the run (default: 'state' beside "
                        "the report; '' for no checkpoints)")
    p.add_argument("--checkpoint-every", type=int,
                   default=RunOptions.checkpoint_every,
                   help="driver checkpoint every N labelling rounds, and at each pass end "
                        "(default %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the driver checkpoint in --state-dir (after the "
                        "driver died): same teacher version, every group's state, the "
                        "interrupted pass read again with trained rows skipped")
    p.add_argument("--soft-labels", default="",
                   help="train from soft labels jobs.precompute wrote here, not the live "
                        "teacher")
    p.add_argument("--no-kd-guard", dest="kd_guard", action="store_false", default=None,
                   help="keep KD on where the baseline reached the teacher (kd_guard)")
    p.add_argument("--verbose", action="store_true",
                   help="keep Ray's own log lines (start-up, token auth) in the output")
    p.add_argument("--readme-table", action="store_true",
                   help="also print the README's results table (markdown) of the report")
    a = p.parse_args(argv)
    load_plugins(a.plugin)
    cfg = load_config(a.config, data=a.data, split=a.split, rows=a.rows,
                      max_cardinality=a.max_cardinality, passes=a.passes,
                      seed=a.seed, ranks=a.ranks, replicas=a.replicas,
                      checkpoint=a.checkpoint, version=a.version, seeds=a.seeds,
                      kd_guard=a.kd_guard, label_batch_size=a.label_batch_size,
                      table_dtype=a.table_dtype, prefetch=a.prefetch)
    state_dir = a.state_dir if a.state_dir is not None else str(
        Path(a.report).parent / "state")
    students_dir = a.students_dir if a.students_dir is not None else str(
        Path(a.report).parent / "students")
    tensorboard = a.tensorboard if a.tensorboard is not None else (
        str(Path(a.report).parent / "tensorboard") if a.report else "")
    return cfg, RunOptions(soft_labels=a.soft_labels, state_dir=state_dir,
                           artifacts=students_dir,
                           checkpoint_every=a.checkpoint_every, resume=a.resume,
                           progress=not a.no_progress, address=a.address,
                           join_timeout_s=a.join_timeout,
                           report=a.report, plot=a.plot, verbose=a.verbose,
                           tensorboard=tensorboard), a.readme_table


def start_ray(address: str, cfg: DistillConfig, join_timeout_s: float = JOIN_TIMEOUT_S,
              verbose: bool = False) -> None:
    """Join ``address`` (giving up after ``join_timeout_s``), or start a single-node
    cluster bound to 127.0.0.1."""
    import ray
    needed = len(cfg.members) * cfg.teacher_group.ranks * cfg.teacher_group.cpus + sum(
        g.replicas * g.cpus for g in cfg.groups)
    if address:
        # worker output stays in the workers' logs (the dashboard shows them) unless --verbose
        join_ray(address, timeout_s=join_timeout_s, log_to_driver=verbose)
        have = ray.cluster_resources().get("CPU", 0.0)
        # Actors reserve their CPUs; Ray Data's tasks need at least one more.
        if have < needed + 1:
            ray.shutdown()
            raise ConfigError(
                f"the cluster at {address} has {have:g} CPUs; this job's actors reserve "
                f"{needed:g} (teacher_group.cpus x ranks + groups' cpus x replicas) and Ray "
                f"Data needs 1 more: start it with `ray start --head --num-cpus "
                f"{int(needed) + 2}` or lower the cpus in the config")
        return
    # Logical CPUs: the actors mostly wait on each other, so the job may reserve more
    # than the machine has (each actor runs one intra-op thread); on top of the actors'
    # share, Ray Data's read and shuffle tasks need CPUs of their own or they never run.
    # But each actor is a process of its own: past ACTORS_PER_CPU per core they only
    # thrash (and hold ~0.5 GiB each); say so before any starts.
    actors = len(cfg.members) * cfg.teacher_group.ranks + sum(g.replicas for g in cfg.groups)
    cores = os.cpu_count() or 1
    if actors > ACTORS_PER_CPU * cores:
        raise ConfigError(
            f"this job needs {actors} actor processes ({len(cfg.groups)} groups' "
            f"replicas and {len(cfg.members)} x {cfg.teacher_group.ranks} teacher ranks); "
            f"this machine's {cores} CPUs hold at most {ACTORS_PER_CPU * cores} "
            f"({ACTORS_PER_CPU} per CPU): sweep fewer sizes or settings, run fewer "
            f"--seeds, or join a larger cluster with --address")
    start_local_ray(int(needed + 0.999) + max(2, os.cpu_count() or 1), verbose=verbose)


def teacher_dims(cfg: DistillConfig, spec: Any) -> dict[str, int]:
    """Width of each teacher feature (the lead member's: a committee's features are its
    lead's): from the checkpoint if there is one, else the config."""
    from recdistill.teacher.checkpoint import read_meta, resolve
    from recdistill.teacher.model import feature_dims
    lead = cfg.members[0]
    tcfg = read_meta(resolve(lead.checkpoint, cfg.teacher_group.version))[1] \
        if member_exists(lead.checkpoint) else lead.teacher
    return feature_dims(spec, tcfg)


def validate_students(cfg: DistillConfig, spec: Any, dims: dict[str, int]) -> None:
    """Build every student once here, so a bad group fails before any actor starts; and
    every teacher member's tower that is not the built-in one (a registered arch), so
    one that breaks the contract fails the same way."""
    from recdistill.student.losses import build_objective
    from recdistill.student.model import StudentModel
    from recdistill.teacher.model import feature_dims
    for m in cfg.members:
        if m.teacher.arch != "builtin" and not member_exists(m.checkpoint):
            feature_dims(spec, m.teacher)
    for g in cfg.groups:
        unknown = set(g.student.label_tasks) - set(spec.tasks)
        if unknown:
            raise ConfigError(f"groups.{g.name}.label_tasks: unknown tasks "
                              f"{sorted(unknown)}; tasks are {list(spec.tasks)}")
        objective = build_objective(g.student, spec.tasks)
        StudentModel(spec, g.student, dims, uncertainty=objective.uncertainty)


def member_exists(checkpoint: str) -> bool:
    """Whether a teacher checkpoint (a version directory or a root holding versions) is
    there to load; a path holding something else fails (``CheckpointError``)."""
    from recdistill.teacher.checkpoint import check_absent_or_checkpoint
    return check_absent_or_checkpoint(checkpoint)


def teacher_exists(cfg: DistillConfig) -> bool:
    """Whether every configured teacher (the one, or each committee member) is there."""
    return all(member_exists(m.checkpoint) for m in cfg.members)


def match_teacher(cfg: DistillConfig, data: Any) -> DistillConfig:
    """The config with teacher checkpoints made for ``data``, checked before any actor
    starts: a teacher (or committee member) trained on another dataset fails naming
    its checkpoint and the difference, unless its path derives from the default
    ``teacher_group.checkpoint`` and ``train_if_missing`` holds; then this dataset's
    teachers live at the default path keyed by the dataset (trained there if missing).
    A missing checkpoint without ``train_if_missing`` fails here too."""
    from recdistill.data.fingerprint import differences, fingerprint, keyed_path
    from recdistill.teacher.checkpoint import read_meta, resolve
    tg = cfg.teacher_group
    fp = fingerprint(data.spec, data.name)

    def mismatches(c: DistillConfig) -> list[tuple[str, Path, list[str]]]:
        out = []
        for m in c.members:
            if not member_exists(m.checkpoint):
                if not tg.train_if_missing:
                    raise CheckpointError(f"{m.checkpoint}: teacher checkpoint not found "
                                          "and teacher_group.train_if_missing is false")
                continue
            path = resolve(m.checkpoint, tg.version)
            spec, _, info = read_meta(path)
            found = differences(info.get("fingerprint") or fingerprint(spec, ""), fp)
            if found:
                out.append((m.name, path, found))
        return out

    def fail(found: list[tuple[str, Path, list[str]]]) -> CheckpointError:
        _, path, what = found[0]
        return CheckpointError(
            f"{path}: this teacher was trained on another dataset than {data.name} "
            f"({'; '.join(what)}); give --teacher-checkpoint a teacher of this dataset "
            "or a new directory to train one in")

    found = mismatches(cfg)
    if not found:
        return cfg
    default = TeacherGroupConfig.checkpoint
    explicit = {m.name for m in cfg.teachers if m.checkpoint}
    if tg.checkpoint != default or not tg.train_if_missing or \
            any(name in explicit for name, _, _ in found):
        raise fail(found)
    keyed = dataclasses.replace(cfg, teacher_group=dataclasses.replace(
        tg, checkpoint=keyed_path(default, fp)))
    found = mismatches(keyed)
    if found:
        raise fail(found)
    print(f"teacher checkpoint {default} is of another dataset; {data.name}'s teacher "
          f"is {keyed.teacher_group.checkpoint}", flush=True)
    return keyed


def ensure_teacher(cfg: DistillConfig) -> None:
    """Train each missing teacher (the one, or each committee member) as a Ray task,
    side by side."""
    import ray
    from ray.util.queue import Queue

    from recdistill.jobs.train_teacher import TrainTeacherArgs
    missing = [m for m in cfg.members if not member_exists(m.checkpoint)]
    if not missing:
        return
    if not cfg.teacher_group.train_if_missing:
        raise CheckpointError(f"{missing[0].checkpoint}: teacher checkpoint not found and "
                              "teacher_group.train_if_missing is false")
    # A streamed dataset trains its teacher on up to 1e6 in-memory rows of the same
    # generator (same feature spec).
    data, rows = (("synthetic", min(cfg.rows, 1_000_000)) if cfg.data == "synthetic-stream"
                  else (cfg.data, cfg.rows))
    task = ray.remote(num_cpus=1)(_train_teacher)
    # The training tasks' progress lines come to this driver through a queue (a small
    # Ray actor), so they are in the job's own output, terminal or not; Ray's forwarding
    # of worker output is off (it would bring every library's chatter with them).
    lines = Queue(actor_options={"num_cpus": 0})
    pending = []
    for m in missing:
        print(f"teacher checkpoint {m.checkpoint} not found: training "
              f"{'the teacher' if len(cfg.members) == 1 else 'member ' + m.name} into it "
              "first", flush=True)
        job = TrainTeacherArgs(data=data, split=cfg.split, rows=rows,
                               max_cardinality=cfg.max_cardinality, data_seed=cfg.seed,
                               checkpoint=m.checkpoint, report=m.checkpoint + "_report.json")
        prefix = "teacher" if len(cfg.members) == 1 else f"teacher {m.name}"
        pending.append(task.remote(job, m.teacher, lines, prefix))
    try:
        while pending:
            done, pending = ray.wait(pending, timeout=0.5)
            _drain(lines)
            ray.get(done)  # a failed training raises here
        _drain(lines)
    finally:
        ray.kill(lines.actor)


def _drain(lines: Any) -> None:
    for line in lines.get_nowait_batch(lines.qsize()):
        print(line, flush=True)


def _train_teacher(job: Any, tcfg: Any, lines: Any, prefix: str) -> None:
    import torch.distributed as dist

    from recdistill.jobs.train_teacher import run
    quiet_library_warnings()
    try:
        run(job, tcfg, echo=lambda msg: lines.put(f"{prefix}: {msg}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run(cfg: DistillConfig, options: RunOptions = RunOptions(),
        hooks: Hooks = Hooks()) -> DistillReport:
    """The whole job; returns the report. Ray is started (or joined at
    ``options.address``) and shut down here; the report and its PNG are written where
    ``options`` says."""
    import ray
    from recdistill.cluster.run_state import STATE_FILE, RunCheckpoint
    from recdistill.cluster.soft_labels import Manifest, spec_check
    t0 = time.perf_counter()
    if options.resume:  # nothing to resume from fails now, before data, Ray or a teacher
        RunCheckpoint.load(Path(options.state_dir) / STATE_FILE,
                           [g.name for g in cfg.groups], options.soft_labels)
    data = load_dataset(cfg.data, split=cfg.split, seed=cfg.seed, rows=cfg.rows,
                        max_cardinality=cfg.max_cardinality)
    soft = options.soft_labels
    manifest = Manifest.load(soft) if soft else None
    if manifest is not None:
        spec_check(manifest, data.spec, soft, data.name)
        missing = set(cfg.requested_features) - set(manifest.features)
        if missing:
            raise ConfigError(f"students request teacher features {sorted(missing)} that "
                              f"{soft} does not hold (it has "
                              f"{sorted(manifest.features)}); precompute with this config")
        dims = dict(manifest.features)
    else:
        cfg = match_teacher(cfg, data)
        dims = teacher_dims(cfg, data.spec)
    validate_students(cfg, data.spec, dims)  # before any actor starts
    own_cluster = not ray.is_initialized()
    if own_cluster:
        start_ray(options.address, cfg, options.join_timeout_s, options.verbose)
    monitoring: dict[str, Any] = {"dashboard": ray_dashboard()}
    print(dashboard_line(monitoring["dashboard"]), flush=True)
    if options.tensorboard:
        monitoring["tensorboard"] = options.tensorboard
        print(f"TensorBoard: tensorboard --logdir {options.tensorboard}", flush=True)
    pipeline = None
    try:
        if manifest is None:
            ensure_teacher(cfg)
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
        png = Path(options.plot) if options.plot else Path(options.report).with_suffix(".png")
        from recdistill.jobs.figure import plot, plot_pareto
        plot(doc, png)
        if report.sweep is not None:
            plot_pareto(doc, png.with_name(png.stem + "_pareto.png"))
    return report


def main(argv: list[str] | None = None) -> int:
    quiet_library_warnings()
    try:
        cfg, options, readme_table = parse_args(argv)
        report = run(cfg, options)
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
              f"{options.plot or Path(options.report).with_suffix('.png')}")
    else:
        print(f"wall {report.wall_s:.0f}s; no report written (--report '')")
    if options.artifacts:
        print(f"students: {options.artifacts}/<group>/ (recdistill predict --student ...)")
    return 0


if __name__ == "__main__":
    exit_process(main())
