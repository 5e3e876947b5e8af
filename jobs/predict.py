"""Score a split, or raw files, with a distilled student that ``jobs.distill`` wrote.

    python -m jobs.predict --student runs/demo/students/pred_kd --data movielens \\
        --split test --out preds.parquet --report metrics.json [--export student.pt2]
    python -m jobs.predict --student runs/big/students/pred_kd --data s3://logs/day=7/

``--data`` a Parquet or CSV file, directory, glob or URI (not a dataset name or TOML):
the student's artifact maps its raw columns to inputs the way its training data was
(``transform.json``: hashed or vocabulary ids, dense standardisation), block by block.

Loads the artifact (weights-only; a missing or tampered one fails naming its path),
checks that the data is what the student was trained on (schema fingerprint), scores
every row of the split, prints per-task AUC, log loss and normalised entropy, writes
them as ``metrics[task].{auc,logloss,ne}`` and the per-row logits as Parquet
(``id``, and one ``logit_<task>`` and one ``label_<task>`` column per task). ``--export`` also writes the
serving student with ``torch.export`` and checks it against the eager model on the
split's first batch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from recdistill.data import storage
from recdistill.data.errors import ConfigError
from recdistill.jobs.common import load_dataset, write_json_atomic

SPLITS = ("train", "valid", "test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="recdistill predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True,
                   help="a student artifact directory (<run>/students/<group>)")
    p.add_argument("--data", default="movielens",
                   help="movielens (default), synthetic or a dataset .toml: the data the "
                        "student was trained on (its schema is checked); or raw Parquet/CSV "
                        "files (a file, directory, glob or URI) with the training columns")
    p.add_argument("--split", dest="which", choices=SPLITS, default="test",
                   help="the split to score (default test)")
    p.add_argument("--movielens-split", dest="split_rule", default=None,
                   help="how MovieLens is split into train/valid/test (default: as the "
                        "student was trained)")
    p.add_argument("--rows", type=int, default=None,
                   help="synthetic rows (default: as the student was trained)")
    p.add_argument("--max-cardinality", type=int, default=None,
                   help="synthetic id cap (default: as the student was trained)")
    p.add_argument("--seed", type=int, default=None,
                   help="data seed (default: the run's)")
    p.add_argument("--out", default="", help="Parquet file of per-row logits")
    p.add_argument("--report", default="", help="JSON file of the metrics")
    p.add_argument("--export", default="",
                   help="also write the serving student with torch.export here (.pt2)")
    p.add_argument("--batch-size", type=int, default=4096)
    from recdistill.jobs.common import add_plugin_argument
    add_plugin_argument(p)
    return p.parse_args(argv)


def score(model: Any, split: Any, batch_size: int) -> tuple[Any, Any, Any]:
    """(logits, labels, example ids) of a split, block by block (a streamed split is
    read from its files here)."""
    import numpy as np

    from recdistill.student.train import predict_student
    parts = []
    for b in range(split.n_blocks):
        block = split.block(b)
        parts.append((*predict_student(model, block, batch_size), block.ids))
    return tuple(np.concatenate(p) for p in zip(*parts))  # type: ignore[return-value]


def score_files(model: Any, student: str, data: str, batch_size: int
                ) -> tuple[Any, Any, Any, int]:
    """(logits, labels, row numbers, rows) of raw files ``data``, block by block through
    the artifact's transform; raises DataError naming what is wrong."""
    import numpy as np

    from recdistill.data.errors import DataError
    from recdistill.data.files import blocks, resolve
    from recdistill.data.tabular import check_block
    from recdistill.data.transform import FILE, RowTransform
    if not storage.is_file(storage.join(student, FILE)):
        raise DataError(f"this student has no {FILE}: raw files can be scored only by a "
                        "student trained on a dataset TOML; give --data that TOML",
                        path=student)
    t = RowTransform.load(student)
    logits, labels, n = [], [], 0
    for shown, frame, rows in blocks(resolve(data, Path.cwd(), "--data"), t.columns):
        check_block(frame, rows, shown, t)
        out, y, _ = score(model, t.table(frame, n), batch_size)
        logits.append(out)
        labels.append(y)
        n += len(frame)
    return np.concatenate(logits), np.concatenate(labels), np.arange(n), n


def _report(a: argparse.Namespace, spec: Any, data: str, split: str, rows: int, ids: Any,
            logits: Any, labels: Any) -> int:
    """Print the metrics; write ``--report`` and ``--out`` when asked."""
    from recdistill.student.metrics import task_metrics
    metrics = task_metrics(torch.tensor(logits), torch.tensor(labels), spec.tasks)
    print(f"{Path(a.student).name} on {data} {split} ({rows:,} rows):")
    for task, m in metrics.items():
        print(f"  {task:<10} AUC {m['auc']:.4f}  logloss {m['logloss']:.4f}  "
              f"NE {m['ne']:.4f}")
    if a.report:
        write_json_atomic(a.report, {"student": a.student, "data": data, "split": split,
                                     "rows": rows, "metrics": metrics})
    if a.out:
        import pandas as pd
        frame = pd.DataFrame({"id": ids, **{f"logit_{t}": logits[:, i]
                                             for i, t in enumerate(spec.tasks)},
                              **{f"label_{t}": labels[:, i]
                                 for i, t in enumerate(spec.tasks)}})
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(a.out, index=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    from recdistill.data.fingerprint import differences, fingerprint
    from recdistill.common.registry import load_plugins
    from recdistill.jobs.common import quiet_library_warnings, set_threads
    from recdistill.student.artifact import (export_inputs, export_serving, load_artifact,
                                             load_export)
    from recdistill.teacher.checkpoint import CheckpointError
    quiet_library_warnings()
    set_threads()
    a = parse_args(argv)
    try:
        load_plugins(a.plugin)
        model, spec, meta = load_artifact(a.student)
    except (CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    made_for = meta.get("fingerprint") or {}
    args = meta.get("data", {})
    from recdistill.jobs.common import DATASETS
    if a.data not in DATASETS and not a.data.endswith(".toml"):
        from recdistill.data.errors import DataError
        try:
            logits, labels, ids, rows = score_files(model, a.student, a.data, a.batch_size)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if a.export:
            print("error: --export takes a dataset (movielens, synthetic or a TOML), "
                  "not raw files", file=sys.stderr)
            return 2
        return _report(a, spec, a.data, "files", rows, ids, logits, labels)
    try:
        data = load_dataset(a.data, split=a.split_rule or args.get("split", "user_time"),
                            seed=args.get("seed", 0) if a.seed is None else a.seed,
                            rows=a.rows or args.get("rows", 100_000),
                            max_cardinality=a.max_cardinality
                            or args.get("max_cardinality", 100_000))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    found = differences(made_for, fingerprint(data.spec, data.name)) if made_for else []
    if found:
        print(f"error: {a.student} was trained on other data: " + "; ".join(found),
              file=sys.stderr)
        return 2
    table = data.split(a.which)
    logits, labels, ids = score(model, table, a.batch_size)
    _report(a, spec, data.name, a.which, len(table), ids, logits, labels)
    if a.export:
        table = table.block(0)
        batch = next(iter(table.iter_batches(min(256, len(table)),
                                             keys=model.feature_names))).to_batch()
        export_serving(model, batch, a.export)
        with torch.no_grad():
            diff = float((load_export(a.export)(*export_inputs(batch))
                          - model(batch.dense, batch.sparse).logits).abs().max())
        print(f"  exported to {a.export}: max |logit difference| vs eager {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
