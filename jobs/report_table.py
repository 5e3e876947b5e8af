"""Print the README's results table (markdown) of ``jobs.distill`` reports.

``python -m jobs.report_table runs/demo/report.json`` prints the table of a report, so
the figures in the README are the ones its run wrote (``jobs.distill --readme-table``
prints the same after a run).
"""

from __future__ import annotations

import argparse
import json
import sys

from recdistill.cluster.report import markdown_table


def valid_table(report: dict) -> str:
    """Per group (seeds together): validation AUC of its best pass, mean over seeds."""
    from recdistill.cluster.report import base_name
    tasks = list(report["teacher"]["valid"])
    teacher = {t: report["teacher"]["valid"][t]["auc"] for t in tasks}
    per: dict[str, list[list[float]]] = {}
    for name, s in report["students"].items():
        per.setdefault(base_name(name)[0], []).append(
            [s["valid_best"][t]["auc"] for t in tasks])
    lines = [f"| group | {' | '.join(f'valid {t}' for t in tasks)} | mean |",
             "|---|" + "---:|" * (len(tasks) + 1),
             f"| teacher | {' | '.join(f'{teacher[t]:.4f}' for t in tasks)} | |"]
    for group, runs in per.items():
        means = [sum(r[i] for r in runs) / len(runs) for i in range(len(tasks))]
        lines.append(f"| {group} | {' | '.join(f'{m:.4f}' for m in means)} | "
                     f"{sum(means) / len(means):.4f} |")
    return "\n".join(lines)


def sweep_table(report: dict) -> str:
    """A ``[sweep]`` run's Pareto view: per student size, the no-KD and KD students'
    serving parameters and test AUC, and the KD gain at that size."""
    view = report["sweep"]
    lines = [f"| student | params | KD | test AUC {view['task']} | gain vs no-KD same size "
             "| on the frontier |", "|---|---:|:-:|---:|---:|:-:|",
             f"| teacher | {report['teacher']['parameters']:,} | | "
             f"{view['teacher_test_auc']:.4f} | | |"]
    for p in sorted(view["points"], key=lambda p: (p["parameters"], p["kd"])):
        gain = f"{p['gain_vs_same_size']:+.4f}" if p["gain_vs_same_size"] is not None else ""
        lines.append(f"| {p['group']} | {p['parameters']:,} | {'yes' if p['kd'] else 'no'} "
                     f"| {p['test_auc']:.4f} | {gain} | {'yes' if p['frontier'] else ''} |")
    return "\n".join(lines)


def compare_table(a: dict, b: dict) -> str:
    """Two reports of the same groups (e.g. dense vs sharded tables): per group and
    task, the test AUC (mean over seeds) of each and the difference."""
    lines = ["| task | group | A: test AUC | B: test AUC | B - A |", "|---|---|---:|---:|---:|"]
    for task in a["teacher"]["test"]:
        for group in a["seeds"]:
            x, y = a["seeds"][group][task]["auc_mean"], b["seeds"][group][task]["auc_mean"]
            lines.append(f"| {task} | {group} | {x:.4f} | {y:.4f} | {y - x:+.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="recdistill report-table", description=__doc__)
    p.add_argument("reports", nargs="+", help="jobs.distill report JSON files")
    p.add_argument("--valid", action="store_true",
                   help="the groups' validation AUC (their best pass, mean over seeds: "
                        "what settings are chosen by) instead of the test table")
    p.add_argument("--sweep", action="store_true",
                   help="a [sweep] run's Pareto table (sizes, KD or not, test AUC)")
    p.add_argument("--compare", action="store_true",
                   help="two reports of the same groups: A's and B's test AUC side by side")
    a = p.parse_args(argv)
    if a.compare:
        if len(a.reports) != 2:
            print("error: --compare takes two reports", file=sys.stderr)
            return 2
        docs = []
        for path in a.reports:
            with open(path) as f:
                docs.append(json.load(f))
        print(f"A: {a.reports[0]}, B: {a.reports[1]}\n")
        print(compare_table(*docs))
        return 0
    for path in a.reports:
        try:
            with open(path) as f:
                report = json.load(f)
        except (OSError, ValueError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 2
        print(f"{report.get('dataset', path)} ({path}):\n")
        print(valid_table(report) if a.valid else sweep_table(report)
              if a.sweep else markdown_table(report))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
