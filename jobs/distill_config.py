"""The distill job's configuration: its TOML file (:func:`load_config`) and its command
line (:func:`parse_args`), parsed into a frozen ``DistillConfig`` and ``RunOptions``.
Errors name the file and the key as the file spells it, before any actor starts."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from recdistill.cluster.config import (DistillConfig, GroupConfig, MemberConfig, RunOptions,
                                       TeacherGroupConfig, default_groups, default_teachers,
                                       with_seeds)
from recdistill.cluster.session import JOIN_TIMEOUT_S
from recdistill.common.registry import load_plugins
from recdistill.data.configs import from_mapping
from recdistill.data.errors import ConfigError
from recdistill.jobs.common import (add_data_arguments, add_labelling_arguments,
                                    add_plugin_argument, check_sections, read_toml,
                                    run_locations)
from recdistill.teacher.config import TeacherConfig

SECTIONS = tuple(f.name for f in dataclasses.fields(DistillConfig))  # the file's keys
# a [[groups]] table's keys of the group itself; the rest are its student's
GROUP_KEYS = tuple(f.name for f in dataclasses.fields(GroupConfig) if f.name != "student")


def _group(i: int, table: Any) -> GroupConfig:
    """One ``[[groups]]`` table; errors name it ``groups.<name>`` as the file does
    (``groups[i]`` while it has no name)."""
    if not isinstance(table, dict):
        raise ConfigError(f"groups[{i}]: expected a table")
    name = table.get("name")
    where = f"groups.{name}" if isinstance(name, str) and name else f"groups[{i}]"
    outer = {k: table[k] for k in GROUP_KEYS if k in table}
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
                patience: int | None = None, checkpoint: str | None = None, version: str | None = None,
                seeds: int | None = None, kd_guard: bool | None = None,
                label_batch_size: int | None = None, table_dtype: str | None = None,
                prefetch: bool | None = None, teacher_gpus: float | None = None,
                gpus: float | None = None) -> DistillConfig:
    """A DistillConfig from an optional TOML file plus command-line overrides (None:
    not given): ``ranks``, ``checkpoint``, ``version``, ``label_batch_size``,
    ``table_dtype``, ``prefetch`` and ``teacher_gpus`` (its ``gpus``) of the teacher
    group, ``replicas``, ``patience`` and ``gpus`` of every group, the rest top-level
    fields.

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
                                ("table_dtype", table_dtype), ("prefetch", prefetch),
                                ("gpus", teacher_gpus))
              if v is not None}
        if tg:
            cfg = dataclasses.replace(cfg, teacher_group=dataclasses.replace(
                cfg.teacher_group, **tg))
        group = {k: v for k, v in (("replicas", replicas), ("patience", patience),
                                   ("gpus", gpus))
                 if v is not None}
        if group:
            cfg = dataclasses.replace(cfg, groups=tuple(
                dataclasses.replace(g, **group) for g in cfg.groups))
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


def parse_args(argv: list[str] | None, description: str = ""
               ) -> tuple[DistillConfig, RunOptions, bool]:
    """The job's config, how to run it, and whether to print the README table, from the
    command line ``argv`` (None: this process's); ``description`` heads ``--help``."""
    p = argparse.ArgumentParser(prog="recdistill distill", description=description,
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
    p.add_argument("--teacher-gpus", type=float, help="GPUs per teacher rank "
                   "(teacher_group.gpus; 0: CPU)")
    p.add_argument("--gpus", type=float, help="GPUs per replica of every group (groups' gpus)")
    p.add_argument("--patience", type=int,
                   help="every group stops once its validation AUC has not improved for "
                        "N passes (groups.patience; 0: never)")
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
    p.add_argument("--storage", default="runs/distill",
                   help="where every file of the run goes: report.json, state/, "
                        "students/, tensorboard/, teacher/ (unless --teacher-checkpoint "
                        "or the config names one); a local path (made absolute here: on "
                        "a cluster, one every node sees) or a URI, s3://bucket/prefix or "
                        "gs://..., credentials and endpoint from the environment "
                        "(default: %(default)s)")
    p.add_argument("--report", default=None,
                   help="JSON report path (default: runs/distill/report.json, or "
                        "<storage>/report.json)")
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
                   help="driver checkpoint every N labelling calls, and at each pass end "
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
                      seed=a.seed, ranks=a.ranks, replicas=a.replicas, patience=a.patience,
                      checkpoint=a.checkpoint, version=a.version, seeds=a.seeds,
                      kd_guard=a.kd_guard, label_batch_size=a.label_batch_size,
                      table_dtype=a.table_dtype, prefetch=a.prefetch,
                      teacher_gpus=a.teacher_gpus, gpus=a.gpus)
    cfg, where = run_locations(cfg, a.storage, report=a.report, plot=a.plot,
                               state_dir=a.state_dir, artifacts=a.students_dir,
                               tensorboard=a.tensorboard, soft_labels=a.soft_labels,
                               teacher_named=a.checkpoint is not None)
    return cfg, RunOptions(checkpoint_every=a.checkpoint_every, resume=a.resume,
                           progress=not a.no_progress, address=a.address,
                           join_timeout_s=a.join_timeout, verbose=a.verbose,
                           **where), a.readme_table
