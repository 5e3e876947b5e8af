"""Print the README's results table (markdown) of ``jobs.distill`` reports.

``python -m jobs.report_table runs/demo/report.json`` prints the table of a report, so
the figures in the README are the ones its run wrote (``jobs.distill --readme-table``
prints the same after a run).
"""

from __future__ import annotations

import argparse
import json
import sys

from cluster.report import markdown_table


def valid_table(report: dict) -> str:
    """Per group (seeds together): validation AUC of its best pass, mean over seeds."""
    from cluster.report import base_name
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.report_table", description=__doc__)
    p.add_argument("reports", nargs="+", help="jobs.distill report JSON files")
    p.add_argument("--valid", action="store_true",
                   help="the groups' validation AUC (their best pass, mean over seeds: "
                        "what settings are chosen by) instead of the test table")
    a = p.parse_args(argv)
    for path in a.reports:
        try:
            with open(path) as f:
                report = json.load(f)
        except (OSError, ValueError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 2
        print(f"{report.get('dataset', path)} ({path}):\n")
        print(valid_table(report) if a.valid else markdown_table(report))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
