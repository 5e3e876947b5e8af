"""The run's report: what every group learnt and what the run cost, as one typed
object with its JSON form (the report file) and its table (what the job prints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from recdistill.cluster.state import GroupState


@dataclass
class DriverTiming:
    """Wall seconds of the run and of its passes alone (no setup, no evaluation), and
    the driver's own work in the passes: the broker's cost."""

    run_wall_s: float = 0.0
    train_wall_s: float = 0.0
    busy_s: float = 0.0  # the driver's own time in the pass loops (not waiting)
    driver_cpu_s: float = 0.0  # the driver process's CPU (all threads) in the passes
    driver_loop_cpu_s: float = 0.0  # of which the loop's own thread


def student_summary(g: GroupState, params: dict[str, int],
                    test: dict[str, dict[str, float]], tasks: tuple[str, ...]
                    ) -> dict[str, Any]:
    """One group's part of the report, derived from its ledger and history."""
    ledger, history = g.ledger, g.history
    s, steps = g.cfg.student, ledger.stats.steps
    return {
        "kd": [t.name for t in s.losses if t.name != "hard_label"],
        "losses": [{"name": t.name, "weight": t.weight, "params": t.params}
                   for t in s.losses],
        "label_tasks": list(s.label_tasks or tasks),
        "test": test, "best_pass": history.best_pass,
        "valid_best": history.curve[history.best_pass - 1]["valid"],
        "examples_trained": sum(c["examples"] for c in history.curve),
        "examples_per_pass": [c["examples"] for c in history.curve],
        "parameters": params["serving"],
        "parameters_with_training_heads": params["total"],
        "replicas": g.cfg.replicas, "sharding": s.sharding, "restarts": g.actors.generation,
        "restored_from_snapshot": g.restores,
        # the pass after which the group stopped (GroupConfig.patience); None: it ran all
        "stopped_after_pass": g.stopped_after or None,
        "teacher_versions": sorted(ledger.by_version),
        "examples_by_version": {str(v): n for v, n in ledger.examples_by_version.items()},
        "mean_kd_scale": ledger.stats.kd_scale_sum / steps if steps else 1.0,
        # replica 0's seconds per step: reading its rows and the teacher outputs out of
        # the batch, and the optimizer step
        "seconds_per_batch": {k: v / max(1, steps) for k, v in ledger.stats.timing.items()},
        "curve": history.curve,
    }


@dataclass
class DistillReport:
    """What ``jobs.distill`` reports; ``to_json()`` is the report file."""

    teacher: dict[str, Any]
    students: dict[str, dict[str, Any]]
    stream: dict[str, Any]
    timing: DriverTiming
    resumed: dict[str, Any] | None = None
    # set by the job around the run
    dataset: str = ""
    data_skipped: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    soft_labels: str | None = None
    sweep: dict[str, Any] | None = None  # a [sweep]'s Pareto view (cluster.sweep.pareto)
    # where to watch the run: the dashboard's URL and auth token, TensorBoard's logdir
    monitoring: dict[str, Any] = field(default_factory=dict)

    @property
    def gains(self) -> dict[str, dict[str, dict[str, float | None]]]:
        return gains({"students": self.students, "teacher": self.teacher})

    def to_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in asdict(self).items()
               if k != "timing" and not (k == "sweep" and v is None)}
        t = self.timing
        doc.update(run_wall_s=t.run_wall_s, train_wall_s=t.train_wall_s,
                   driver_busy_s=t.busy_s, driver_cpu_s=t.driver_cpu_s,
                   driver_loop_cpu_s=t.driver_loop_cpu_s, gains=self.gains)
        doc["seeds"] = seed_summary(doc)
        return doc

    def table(self) -> str:
        return table(self.to_json())


def gains(report: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per group and task of a report's JSON form: AUC gain over ``baseline`` (the
    baseline of the same seed, ``baseline@k`` for ``group@k``) and transferability
    ``eta`` (also ``gap_recovered``), the share of the teacher-baseline AUC gap
    recovered: (student - baseline) / (teacher - baseline)."""
    students, teacher = report["students"], report["teacher"]
    if "baseline" not in students:
        return {}
    teach = teacher["test"]
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, s in students.items():
        k = base_name(name)[1]  # a seed's copy is compared with the baseline's
        base = students.get(f"baseline{SEED_MARK}{k}" if k else "baseline",
                            students["baseline"])["test"]
        out[name] = {}
        for task, m in s["test"].items():
            gain = m["auc"] - base[task]["auc"]
            gap = teach[task]["auc"] - base[task]["auc"]
            # Undefined (None) when the teacher is not better than the baseline.
            eta = gain / gap if gap > 0 else None
            out[name][task] = {"auc_gain_vs_baseline": gain, "gap_recovered": eta,
                               "eta": eta}
    return out


SEED_MARK = "@"  # group "pred_kd@2": group pred_kd with the run's seed + 2


def base_name(group: str) -> tuple[str, int]:
    """``pred_kd@2`` -> (``pred_kd``, 2); ``pred_kd`` -> (``pred_kd``, 0)."""
    name, _, k = group.partition(SEED_MARK)
    return name, int(k) if k else 0


def seed_summary(report: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per group (its seeds together) and task: test AUC mean and sd over the seeds;
    gain over ``baseline`` paired by seed (mean, paired sd, and whether the mean gain
    exceeds 2 paired sd); and eta, the mean gain over the teacher's lead on the mean
    baseline (None when the teacher is not better). {} without a baseline."""
    import numpy as np
    students, teacher = report["students"], report["teacher"]["test"]
    seeds: dict[str, dict[int, dict[str, Any]]] = {}
    for name, s in students.items():
        base, k = base_name(name)
        seeds.setdefault(base, {})[k] = s["test"]
    if "baseline" not in seeds:
        return {}
    baseline = seeds["baseline"]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for group, runs in seeds.items():
        out[group] = {}
        for task in teacher:
            ks = sorted(k for k in runs if k in baseline)
            auc = np.array([runs[k][task]["auc"] for k in ks])
            base = np.array([baseline[k][task]["auc"] for k in ks])
            diff = auc - base
            lead = teacher[task]["auc"] - base.mean()
            sd = float(diff.std(ddof=1)) if len(ks) > 1 else None
            gain = float(diff.mean())
            out[group][task] = {
                "seeds": len(ks), "auc_mean": float(auc.mean()),
                "auc_sd": float(auc.std(ddof=1)) if len(ks) > 1 else None,
                "gain_mean": gain, "gain_paired_sd": sd,
                "gain_over_2_paired_sd": bool(sd is not None and gain > 2 * sd),
                "teacher_lead": float(lead),
                "eta": gain / lead if lead > 0 else None}
            for metric in RANKING:  # per-key metrics, where the dataset has a key
                if metric in teacher[task]:
                    got = np.array([runs[k][task][metric] for k in ks])
                    d = got - np.array([baseline[k][task][metric] for k in ks])
                    msd = float(d.std(ddof=1)) if len(ks) > 1 else None
                    out[group][task][metric] = {
                        "mean": float(got.mean()), "gain_mean": float(d.mean()),
                        "gain_paired_sd": msd,
                        "gain_over_2_paired_sd": bool(msd is not None and d.mean() > 2 * msd)}
    return out


RANKING = ("gauc", "ndcg@10")  # the per-key metrics (student/ranking.py)


def _ranking_cells(t: dict[str, Any], group: str) -> str:
    """The GAUC and NDCG@10 cells of a markdown row: mean, and the paired gain."""
    cells = []
    for metric in RANKING:
        m = t.get(metric)
        if m is None:
            continue
        gain = "" if group == "baseline" else f" ({m['gain_mean']:+.4f}" + (
            f" ± {m['gain_paired_sd']:.4f})" if m["gain_paired_sd"] is not None else ")")
        cells.append(f" {m['mean']:.4f}{gain} |")
    return "".join(cells)


def table(report: dict[str, Any]) -> str:
    """Task x model: AUC, logloss, NE, AUC gain vs baseline, share of the gap recovered."""
    g = report.get("gains", {})
    ranked = [r for r in RANKING if r in next(iter(report["teacher"]["test"].values()))]
    lines = [f"{'task':<8}{'model':<14}{'params':>9}{'AUC':>8}{'logloss':>9}{'NE':>8}"
             + "".join(f"{'GAUC' if r == 'gauc' else 'NDCG@10':>8}" for r in ranked)
             + f"{'gain':>9}{'gap rec.':>10}"]

    def ranks(m: dict[str, Any]) -> str:
        return "".join(f"{m[r]:>8.4f}" for r in ranked)

    for task, m in report["teacher"]["test"].items():
        lines.append(f"{task:<8}{'teacher':<14}{report['teacher']['parameters']:>9,}"
                     f"{m['auc']:>8.4f}{m['logloss']:>9.4f}{m['ne']:>8.4f}{ranks(m)}")
        for name, s in report["students"].items():
            m = s["test"][task]
            extra = ""
            if name in g and name != "baseline":
                gg = g[name][task]
                rec = gg["gap_recovered"]
                extra = f"{gg['auc_gain_vs_baseline']:>+9.4f}" + (
                    f"{rec:>10.0%}" if rec is not None else f"{'n/a':>10}")
            lines.append(f"{'':<8}{name:<14}{s['parameters']:>9,}{m['auc']:>8.4f}"
                         f"{m['logloss']:>9.4f}{m['ne']:>8.4f}{ranks(m)}{extra}")
    summary = report.get("seeds") or {}
    n = max((t["seeds"] for g in summary.values() for t in g.values()), default=1)
    if n > 1:
        lines.append("")
        lines.append(f"over {n} seeds (gain paired by seed; eta = gain / teacher's lead "
                     "on the mean baseline):")
        lines.append(f"{'task':<8}{'model':<14}{'AUC mean':>9}{'sd':>8}{'gain':>9}"
                     f"{'paired sd':>10}{'eta':>7}  > 2 sd")
        for task in report["teacher"]["test"]:
            for name, per in summary.items():
                t = per[task]
                eta = f"{t['eta']:>7.2f}" if t["eta"] is not None else f"{'n/a':>7}"
                sd = f"{t['auc_sd']:>8.4f}" if t["auc_sd"] is not None else f"{'':>8}"
                psd = f"{t['gain_paired_sd']:>10.4f}" if t["gain_paired_sd"] is not None \
                    else f"{'':>10}"
                sig = "yes" if t["gain_over_2_paired_sd"] else "no"
                extra = "" if name == "baseline" else \
                    f"{t['gain_mean']:>+9.4f}{psd}{eta}  {sig}"
                lines.append(f"{task:<8}{name:<14}{t['auc_mean']:>9.4f}{sd}{extra}")
    return "\n".join(lines)


def markdown_table(report: dict[str, Any]) -> str:
    """The README's results table of a report: per task, the teacher (and committee
    members), then every group over its seeds: test AUC (mean, and sd with several
    seeds), gain over the baseline paired by seed (with its paired sd and whether it
    exceeds 2 of them) and eta."""
    summary = report.get("seeds") or seed_summary(report)
    n = max((t["seeds"] for g in summary.values() for t in g.values()), default=1)
    teacher = report["teacher"]
    ranked = [m for m in RANKING if m in next(iter(teacher["test"].values()))]
    head = "".join(f" {'GAUC' if m == 'gauc' else 'NDCG@10'} (paired gain) |"
                   for m in ranked)
    lines = [f"| task | model | params | test AUC (mean of {n}) | sd | gain vs baseline "
             f"| paired sd | > 2 sd | eta |{head}",
             "|---|---|---:|---:|---:|---:|---:|:-:|---:|" + "---:|" * len(ranked)]
    members = teacher.get("members", {})

    def plain(m: dict[str, Any]) -> str:  # a teacher's cells: AUC, GAUC, NDCG@10
        return f"{m['auc']:.4f} | | | | | |" + "".join(f" {m[r]:.4f} |" for r in ranked)

    for task in teacher["test"]:
        label = f"teacher ({len(members)} members, mean logits)" if members else "teacher"
        lines.append(f"| {task} | {label} | {teacher['parameters']:,} | "
                     f"{plain(teacher['test'][task])}")
        for name, m in members.items():
            lines.append(f"| {task} | member {name} | {m['parameters']:,} | "
                         f"{plain(m['test'][task])}")
        for group, per in summary.items():
            t = per[task]
            params = report["students"][group]["parameters"]
            sd = f"{t['auc_sd']:.4f}" if t["auc_sd"] is not None else ""
            if group == "baseline":
                lines.append(f"| {task} | {group} | {params:,} | {t['auc_mean']:.4f} | {sd} "
                             f"| | | | |{_ranking_cells(t, group)}")
                continue
            psd = f"{t['gain_paired_sd']:.4f}" if t["gain_paired_sd"] is not None else ""
            sig = ("yes" if t["gain_over_2_paired_sd"] else "no") if psd else ""
            eta = f"{t['eta']:.2f}" if t["eta"] is not None else "n/a"
            lines.append(f"| {task} | {group} | {params:,} | {t['auc_mean']:.4f} | {sd} | "
                         f"{t['gain_mean']:+.4f} | {psd} | {sig} | {eta} |"
                         f"{_ranking_cells(t, group)}")
    return "\n".join(lines)
