"""The ``recdistill`` command: one entry point for every job.

    recdistill distill --passes 4
    recdistill train-teacher --config teacher_movielens
    recdistill bench --suite labelling
    recdistill <command> --help

Each command is the job module of the same name (``recdistill distill`` runs
``recdistill.jobs.distill``; ``python -m jobs.distill`` from a checkout is the same job).
The module is imported only when its command runs, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module under recdistill.jobs, one line for the help)
COMMANDS: dict[str, tuple[str, str]] = {
    "distill": ("distill", "train student groups from the teacher (online, or from "
                           "precomputed labels); starts a local Ray cluster if none"),
    "train-teacher": ("train_teacher", "train the sharded teacher on its own "
                                       "(TorchRec tables, DDP or DeepSpeed dense tower)"),
    "precompute": ("precompute", "label a dataset once with the teacher and store the soft "
                                 "labels for offline distillation"),
    "predict": ("predict", "score rows with a distilled student artifact"),
    "stats": ("stats", "count a dataset TOML's train statistics (vocabularies, mean, std) "
                       "with Ray Data, kept for every job"),
    "bench": ("bench", "benchmarks, measured side by side in one run"),
    "submit": ("submit", "submit a distill job to a running Ray cluster (Ray Jobs)"),
    "soak": ("soak", "long run with injected failures (exactly-once check)"),
    "committee-search": ("committee_search", "train and rank candidate teacher committees"),
    "report-table": ("report_table", "a markdown table from distill report JSON files"),
}


def _parser() -> argparse.ArgumentParser:
    from recdistill import __version__
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="recdistill", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Distributed large-teacher knowledge distillation for recommender "
                    "models.",
        epilog=f"commands:\n{listing}\n\n`recdistill <command> --help` lists a command's "
               "options.")
    p.add_argument("--version", action="version", version=f"recdistill {__version__}")
    p.add_argument("command", choices=list(COMMANDS), metavar="command",
                   help="one of: " + ", ".join(COMMANDS))
    p.add_argument("args", nargs=argparse.REMAINDER, help="the command's own options")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    module = importlib.import_module(f"recdistill.jobs.{COMMANDS[a.command][0]}")
    rc = int(module.main(argv[1:]) or 0)
    session = sys.modules.get("recdistill.cluster.session")  # loaded by each job that joins Ray
    if session is not None:
        session.end_if_join_left_running(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
