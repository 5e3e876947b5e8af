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

from cluster.config import DistillConfig, GroupConfig, default_groups
from data.configs import from_mapping, to_mapping
from data.errors import ConfigError, DataError
from jobs.common import (check_sections, load_dataset, quiet_library_warnings, read_toml,
                         start_local_ray, write_json_atomic)
from teacher.checkpoint import CheckpointError

SECTIONS = ("data", "split", "rows", "max_cardinality", "passes", "seed", "teacher",
            "teacher_group",
            "stream", "groups", "eval_batch_size")


def _group(i: int, table: dict[str, Any]) -> GroupConfig:
    where = f"groups[{i}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    outer = {k: table[k] for k in ("replicas", "cpus", "snapshot_every") if k in table}
    student = {k: v for k, v in table.items() if k not in outer}
    try:
        return from_mapping(GroupConfig, {"student": student, **outer}, where)
    except ConfigError as e:  # name keys as the file spells them
        raise ConfigError(str(e).replace(f"{where}.student.", f"{where}.")) from None


def load_config(path: str | None, **overrides: Any) -> DistillConfig:
    """A DistillConfig from an optional TOML file plus command-line overrides.

    Fails, naming the key, before any actor starts. Overrides: ``ranks``, ``checkpoint``
    and ``version`` (teacher group), ``replicas`` (every group), and any top-level field.
    """
    doc: dict[str, Any] = dict(read_toml(path)) if path else {}
    check_sections(doc, SECTIONS, path or "config")
    groups = doc.pop("groups", None)
    cfg = from_mapping(DistillConfig, doc, "config")
    seed = overrides.get("seed")
    if groups is not None:
        if not isinstance(groups, list) or not groups:
            raise ConfigError("groups: expected a non-empty array of tables ([[groups]])")
        parsed = [_group(i, g) for i, g in enumerate(groups)]
        if seed is not None or "seed" in doc:  # the run's seed, unless a group sets its own
            run_seed = cfg.seed if seed is None else seed
            parsed = [g if "seed" in table else dataclasses.replace(
                g, student=dataclasses.replace(g.student, seed=run_seed))
                for g, table in zip(parsed, groups)]
        cfg = dataclasses.replace(cfg, groups=tuple(parsed))
    elif seed is not None or "seed" in doc:
        cfg = dataclasses.replace(cfg, groups=default_groups(cfg.seed if seed is None else seed))
    tg = {k: overrides.pop(k) for k in ("ranks", "checkpoint", "version")
          if overrides.get(k) is not None}
    if tg:
        cfg = dataclasses.replace(cfg, teacher_group=dataclasses.replace(cfg.teacher_group,
                                                                         **tg))
    replicas = overrides.pop("replicas", None)
    if replicas is not None:
        cfg = dataclasses.replace(cfg, groups=tuple(
            dataclasses.replace(g, replicas=replicas) for g in cfg.groups))
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def parse_args(argv: list[str] | None) -> tuple[DistillConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(prog="python -m jobs.distill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML file (see jobs/configs/distill_movielens.toml)")
    p.add_argument("--data", help="movielens (default), synthetic, or a dataset .toml")
    p.add_argument("--split", help="MovieLens split (default user_time)")
    p.add_argument("--rows", type=int, help="synthetic rows")
    p.add_argument("--max-cardinality", type=int, dest="max_cardinality",
                   help="cap on synthetic ids per feature (default 100000)")
    p.add_argument("--passes", type=int, help="passes over train")
    p.add_argument("--seed", type=int)
    p.add_argument("--teacher-ranks", type=int, dest="ranks", help="K teacher actors")
    p.add_argument("--replicas", type=int, help="M replicas in every student group")
    p.add_argument("--teacher-checkpoint", dest="checkpoint",
                   help="teacher checkpoint: a train_teacher root of versions or one "
                        "version's directory (trained first if missing)")
    p.add_argument("--teacher-version", dest="version",
                   help="version of a checkpoint root: best (default), latest or a step")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", ""),
                   help="join this Ray cluster: its GCS address (host:6379) or 'auto' "
                        "(default: RAY_ADDRESS, else start a local one)")
    p.add_argument("--report", default="runs/distill/report.json", help="JSON report path")
    p.add_argument("--plot", default="", help="PNG path (default: beside the report)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--state-dir", default=None,
                   help="where the driver checkpoints the run (default: 'state' beside "
                        "the report; '' for no checkpoints)")
    p.add_argument("--checkpoint-every", type=int, default=500,
                   help="driver checkpoint every N teacher rounds, and at each pass end")
    p.add_argument("--resume", action="store_true",
                   help="continue from the driver checkpoint in --state-dir (after the "
                        "driver died): same teacher version, every group's state, the "
                        "interrupted pass read again with trained rows skipped")
    p.add_argument("--soft-labels", default="",
                   help="train from soft labels jobs.precompute wrote here, not the live "
                        "teacher")
    a = p.parse_args(argv)
    cfg = load_config(a.config, data=a.data, split=a.split, rows=a.rows,
                      max_cardinality=a.max_cardinality, passes=a.passes,
                      seed=a.seed, ranks=a.ranks, replicas=a.replicas,
                      checkpoint=a.checkpoint, version=a.version)
    return cfg, a


def start_ray(address: str, cfg: DistillConfig) -> None:
    """Join ``address``, or start a single-node cluster bound to 127.0.0.1."""
    import ray
    needed = cfg.teacher_group.ranks * cfg.teacher_group.cpus + sum(
        g.replicas * g.cpus for g in cfg.groups)
    if address:
        ray.init(address=address, log_to_driver=True)
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
    start_local_ray(int(needed + 0.999) + max(2, os.cpu_count() or 1))


def teacher_dims(cfg: DistillConfig, spec: Any) -> dict[str, int]:
    """Width of each teacher feature: from the checkpoint if there is one, else the config."""
    from teacher.checkpoint import read_meta, resolve
    from teacher.model import feature_dims
    tg = cfg.teacher_group
    tcfg = read_meta(resolve(tg.checkpoint, tg.version))[1] if teacher_exists(cfg) \
        else cfg.teacher
    return feature_dims(spec, tcfg)


def validate_students(cfg: DistillConfig, spec: Any, dims: dict[str, int]) -> None:
    """Build every student once here, so a bad group fails before any actor starts."""
    from student.losses import build_objective
    from student.model import StudentModel
    for g in cfg.groups:
        unknown = set(g.student.label_tasks) - set(spec.tasks)
        if unknown:
            raise ConfigError(f"groups.{g.name}.label_tasks: unknown tasks "
                              f"{sorted(unknown)}; tasks are {list(spec.tasks)}")
        objective = build_objective(g.student, spec.tasks)
        StudentModel(spec, g.student, dims, uncertainty=objective.uncertainty)


def teacher_exists(cfg: DistillConfig) -> bool:
    """Whether the configured teacher checkpoint (a version directory or a root holding
    versions) is there to load."""
    from teacher.checkpoint import META_FILE, versions
    ckpt = Path(cfg.teacher_group.checkpoint)
    return (ckpt / META_FILE).is_file() or bool(versions(ckpt))


def ensure_teacher(cfg: DistillConfig) -> None:
    """Train the teacher as a Ray task if its checkpoint is missing."""
    import ray
    from jobs.train_teacher import TrainTeacherArgs
    ckpt = Path(cfg.teacher_group.checkpoint)
    if teacher_exists(cfg):
        return
    if not cfg.teacher_group.train_if_missing:
        raise CheckpointError(f"{ckpt}: teacher checkpoint not found and "
                              "teacher_group.train_if_missing is false")
    print(f"teacher checkpoint {ckpt} not found: training the teacher first", flush=True)
    # A streamed dataset trains its teacher on up to 1e6 in-memory rows of the same
    # generator (same feature spec).
    data, rows = (("synthetic", min(cfg.rows, 1_000_000)) if cfg.data == "synthetic-stream"
                  else (cfg.data, cfg.rows))
    job = TrainTeacherArgs(data=data, split=cfg.split, rows=rows,
                           max_cardinality=cfg.max_cardinality,
                           checkpoint=str(ckpt), report=str(ckpt) + "_report.json")
    task = ray.remote(num_cpus=1)(_train_teacher)
    ray.get(task.remote(job, cfg.teacher))


def _train_teacher(job: Any, tcfg: Any) -> None:
    import torch.distributed as dist

    from jobs.train_teacher import run
    quiet_library_warnings()
    try:
        run(job, tcfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def gains(report: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Per group and task: AUC gain over ``baseline`` and share of the teacher-baseline
    AUC gap recovered, (student - baseline) / (teacher - baseline)."""
    students = report["students"]
    if "baseline" not in students:
        return {}
    base, teacher = students["baseline"]["test"], report["teacher"]["test"]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, s in students.items():
        out[name] = {}
        for task, m in s["test"].items():
            gain = m["auc"] - base[task]["auc"]
            gap = teacher[task]["auc"] - base[task]["auc"]
            # Undefined (None) when the teacher is not better than the baseline.
            out[name][task] = {"auc_gain_vs_baseline": gain,
                               "gap_recovered": gain / gap if gap > 0 else None}
    return out


def table(report: dict[str, Any]) -> str:
    """Task x model: AUC, logloss, NE, AUC gain vs baseline, share of the gap recovered."""
    g = report.get("gains", {})
    lines = [f"{'task':<8}{'model':<14}{'params':>9}{'AUC':>8}{'logloss':>9}{'NE':>8}"
             f"{'gain':>9}{'gap rec.':>10}"]
    tasks = list(report["teacher"]["test"])
    for task in tasks:
        m = report["teacher"]["test"][task]
        lines.append(f"{task:<8}{'teacher':<14}{report['teacher']['parameters']:>9,}"
                     f"{m['auc']:>8.4f}{m['logloss']:>9.4f}{m['ne']:>8.4f}")
        for name, s in report["students"].items():
            m = s["test"][task]
            extra = ""
            if name in g and name != "baseline":
                gg = g[name][task]
                rec = gg["gap_recovered"]
                extra = f"{gg['auc_gain_vs_baseline']:>+9.4f}" + (
                    f"{rec:>10.0%}" if rec is not None else f"{'n/a':>10}")
            lines.append(f"{'':<8}{name:<14}{s['parameters']:>9,}{m['auc']:>8.4f}"
                         f"{m['logloss']:>9.4f}{m['ne']:>8.4f}{extra}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> Path:
    """Learning curves: validation AUC and training loss per pass, one line per group."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = list(report["teacher"]["valid"])
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(5 * (len(tasks) + 1), 4))
    for ax, task in zip(axes, tasks):
        for name, s in report["students"].items():
            xs = [c["pass"] for c in s["curve"]]
            ax.plot(xs, [c["valid"][task]["auc"] for c in s["curve"]], marker="o", label=name)
        ax.axhline(report["teacher"]["valid"][task]["auc"], color="black", ls="--",
                   label="teacher")
        ax.set_title(f"validation AUC: {task}")
        ax.set_xlabel("pass")
        ax.grid(alpha=0.3)
    axes[0].legend()
    ax = axes[-1]
    for name, s in report["students"].items():
        xs = [c["pass"] for c in s["curve"]]
        ax.plot(xs, [c["train_loss"].get("loss", float("nan")) for c in s["curve"]],
                marker="o", label=name)
    ax.set_title("training objective (mean per pass)")
    ax.set_xlabel("pass")
    ax.grid(alpha=0.3)
    fig.suptitle(f"recdistill on {report['dataset']}: teacher "
                 f"{report['teacher']['parameters']:,} params")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def run(cfg: DistillConfig, address: str = "", report_path: str = "",
        plot_path: str = "", progress: bool = True, after_ack: Any = None,
        soft_labels: str = "", state_dir: str = "", checkpoint_every: int = 500,
        resume: bool = False) -> dict[str, Any]:
    """The whole job; returns the report. Ray is started (or joined) and shut down here.

    ``soft_labels``: train from a directory ``jobs.precompute`` wrote instead of the
    live teacher. ``state_dir``: where the driver checkpoints the run (at pass ends and
    every ``checkpoint_every`` teacher rounds; "" for nowhere); ``resume`` continues
    from that checkpoint.
    """
    import ray

    from cluster.pipeline import OnlineDistillation
    from cluster.soft_labels import Manifest, spec_check
    t0 = time.perf_counter()
    data = load_dataset(cfg.data, split=cfg.split, seed=cfg.seed, rows=cfg.rows,
                        max_cardinality=cfg.max_cardinality)
    manifest = Manifest.load(soft_labels) if soft_labels else None
    if manifest is not None:
        spec_check(manifest, data.spec, soft_labels)
        missing = set(cfg.requested_features) - set(manifest.features)
        if missing:
            raise ConfigError(f"students request teacher features {sorted(missing)} that "
                              f"{soft_labels} does not hold (it has "
                              f"{sorted(manifest.features)}); precompute with this config")
        dims = dict(manifest.features)
    else:
        dims = teacher_dims(cfg, data.spec)
    validate_students(cfg, data.spec, dims)  # before any actor starts
    own_cluster = not ray.is_initialized()
    if own_cluster:
        start_ray(address, cfg)
    pipeline = None
    try:
        if manifest is None:
            ensure_teacher(cfg)
            dims = teacher_dims(cfg, data.spec)
        pipeline = OnlineDistillation(cfg, data, dims, progress=progress, after_ack=after_ack,
                                      soft_labels=soft_labels, state_dir=state_dir,
                                      checkpoint_every=checkpoint_every, resume=resume)
        body = pipeline.run()
    finally:
        if pipeline is not None:
            pipeline.shutdown()
        if own_cluster:
            ray.shutdown()
    report = {"dataset": data.name, "data_skipped": data.skipped, **body,
              "wall_s": time.perf_counter() - t0,
              "config": to_mapping(cfg), "soft_labels": soft_labels or None}
    report["gains"] = gains(report)
    if report_path:
        write_json_atomic(report_path, report)
        plot(report, Path(plot_path) if plot_path else Path(report_path).with_suffix(".png"))
    return report


def main(argv: list[str] | None = None) -> int:
    quiet_library_warnings()
    try:
        cfg, a = parse_args(argv)
        if a.checkpoint_every < 0:
            raise ConfigError(f"--checkpoint-every must be >= 0, got {a.checkpoint_every}")
        state_dir = a.state_dir if a.state_dir is not None else str(
            Path(a.report).parent / "state")
        if a.resume and not state_dir:
            raise ConfigError("--resume needs a --state-dir to resume from")
        report = run(cfg, a.address, a.report, a.plot, progress=not a.no_progress,
                     soft_labels=a.soft_labels, state_dir=state_dir,
                     checkpoint_every=a.checkpoint_every, resume=a.resume)
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(report))
    s = report["stream"]
    if report.get("resumed"):
        r = report["resumed"]
        print(f"resumed in pass {r['pass']} ({'after' if r['pass_done'] else 'during'} "
              f"it); rows each group had trained in it: {r['trained_in_pass']}")
    print(f"stream: {s['produced']} batches produced, acked {s['acked']}, "
          f"re-delivered {s['redelivered']}, duplicates dropped {s['duplicates_dropped']}")
    print(f"wall {report['wall_s']:.0f}s; report {a.report}, curves "
          f"{a.plot or Path(a.report).with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
