"""Label a dataset once with the teacher group and write the soft labels as Parquet.

  python -m jobs.precompute --out runs/soft_labels                 # MovieLens-100k
  python -m jobs.precompute --config jobs/configs/distill_movielens.toml --out DIR
  python -m jobs.distill --soft-labels runs/soft_labels            # train from them

The teacher group (K ranks, the checkpoint version and the features the config's student
groups request, in the stream's dtypes) labels train, valid and test in parts of
``--part-rows`` rows; Ray Data writes each part's Parquet; ``manifest.json`` records every
finished part. Run it again after a crash and it writes only the missing parts: the
result is the same as an uninterrupted run. See ``cluster/soft_labels.py`` for the layout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from recdistill.cluster.config import DistillConfig
from recdistill.cluster.session import connect_ray, exit_process
from recdistill.common.registry import load_plugins
from recdistill.data import storage
from recdistill.data.errors import ConfigError, DataError
from recdistill.data.fingerprint import fingerprint
from recdistill.data.spec import Dataset
from recdistill.jobs.common import (add_data_arguments, add_labelling_arguments,
                                    add_plugin_argument, in_memory, load_dataset,
                                    quiet_library_warnings)
from recdistill.teacher.checkpoint import CheckpointError, read_meta


def parse_args(argv: list[str] | None) -> tuple[DistillConfig, argparse.Namespace]:
    from recdistill.jobs.distill_config import load_config
    p = argparse.ArgumentParser(prog="recdistill precompute", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="soft-label directory (created or resumed)")
    p.add_argument("--config", help="a distill TOML (its data, teacher group, stream "
                                    "dtypes and the features its groups request)")
    add_data_arguments(p)
    add_plugin_argument(p)
    p.add_argument("--teacher-ranks", type=int, dest="ranks", help="K teacher actors")
    add_labelling_arguments(p)
    p.add_argument("--teacher-checkpoint", dest="checkpoint")
    p.add_argument("--teacher-version", dest="version")
    p.add_argument("--part-rows", type=int, default=20_000, help="rows per Parquet part")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", ""),
                   help="join this Ray cluster (default: RAY_ADDRESS, else start one)")
    p.add_argument("--verbose", action="store_true",
                   help="keep Ray's own start-up lines (token auth) in the output")
    a = p.parse_args(argv)
    load_plugins(a.plugin)
    if a.part_rows < 1:
        raise ConfigError(f"--part-rows must be >= 1, got {a.part_rows}")
    cfg = load_config(a.config, data=a.data, split=a.split, rows=a.rows,
                      max_cardinality=a.max_cardinality, ranks=a.ranks,
                      checkpoint=a.checkpoint, version=a.version,
                      label_batch_size=a.label_batch_size, table_dtype=a.table_dtype)
    return cfg, a


def _check_resumable(m: Any, want: dict[str, Any], out: str) -> None:
    for key, value in want.items():
        if getattr(m, key) != value:
            raise ConfigError(f"{out} was precomputed with {key} = {getattr(m, key)!r}, this "
                              f"run has {value!r}: use another --out, or delete it")


def _part_rows(split: Any, part_rows: int) -> list[int]:
    """Rows of each part of a split: ``part_rows`` each of an in-memory one; a streamed
    one's chunks (read one at a time, never the whole split)."""
    from recdistill.data.file_stream import FileStream
    if isinstance(split, FileStream):
        return [c.rows for c in split.chunks]
    from recdistill.cluster.soft_labels import part_slices
    return [sl.stop - sl.start for sl in part_slices(len(split), part_rows)]


def _part(split: Any, i: int, part_rows: int) -> Any:
    """Part ``i`` of a split as an ExampleTable."""
    from recdistill.data.file_stream import FileStream
    if isinstance(split, FileStream):
        return split.block(i)
    from recdistill.cluster.soft_labels import part_slices
    sl = part_slices(len(split), part_rows)[i]
    return split.take(np.arange(sl.start, sl.stop)).to_table()


def run(cfg: DistillConfig, out: str, part_rows: int = 20_000, address: str = "",
        progress: bool = True, after_part: Callable[[str, int], None] | None = None,
        dataset: Dataset | None = None, verbose: bool = False) -> dict[str, Any]:
    """Precompute (or finish) ``out``; returns the manifest as a dict.

    ``after_part(split, part)`` is called after each part is recorded (tests stop a run
    there to check that a restart finishes it identically).
    """
    import ray

    from recdistill.cluster.codec import decode, encode
    from recdistill.cluster.committee import Committee
    from recdistill.cluster.soft_labels import SPLITS, Manifest, labels_table, write_part
    from recdistill.cluster.teachers import ensure_teacher, match_teacher
    from recdistill.jobs.train_teacher import run as train_teacher
    t0 = time.perf_counter()
    root = storage.location(out, "--out")
    data = in_memory(dataset or load_dataset(cfg.data, split=cfg.split, seed=cfg.seed,
                                             rows=cfg.rows,
                                             max_cardinality=cfg.max_cardinality),
                     "jobs.precompute")
    cfg = match_teacher(cfg, data)
    own_cluster = not ray.is_initialized()
    if own_cluster:
        connect_ray(address, len(cfg.members) * cfg.teacher_group.ranks + 2, verbose=verbose)
    labels: Committee | None = None
    try:
        ensure_teacher(cfg, train_teacher)
        labels = Committee.teacher(cfg)
        sources = [m.source for m in labels.members]
        _, _, info = read_meta(sources[0])
        checkpoint = storage.absolute(sources[0]) if len(sources) == 1 else \
            json.dumps([storage.absolute(p) for p in sources])
        committee = labels.names if len(sources) > 1 else []
        want = {"checkpoint": checkpoint, "version": int(info.get("step", 0)),
                "logit_dtype": cfg.stream.logit_dtype,
                "feature_dtype": cfg.stream.feature_dtype, "part_rows": part_rows,
                "dataset": data.name, "tasks": list(data.spec.tasks),
                "rows": {s: len(data.split(s)) for s in SPLITS},
                "fingerprint": fingerprint(data.spec, data.name), "members": committee,
                "table_dtype": cfg.teacher_group.table_dtype}
        tinfo = labels.start()
        features = {k: int(tinfo["feature_dims"][k]) for k in cfg.requested_features}
        storage.makedirs(root)
        if storage.is_file(storage.join(root, "manifest.json")):
            m = Manifest.load(root)
            _check_resumable(m, {**want, "features": features}, root)
        else:
            m = Manifest(**want, features=features, keys=list(tinfo["keys"]),
                         parameters=int(tinfo["parameters"]), parts={})
            m.save(root)
        todo = [(s, i, rows) for s in SPLITS for i, rows in enumerate(_part_rows(
            data.split(s), part_rows))]
        left = [t for t in todo if not m.done(t[0], t[1])]
        bar = tqdm(total=sum(rows for _, _, rows in todo), unit="row",
                   desc="precompute", disable=None if progress else True,
                   initial=sum(rows for s, i, rows in todo if m.done(s, i)))
        for split, i, _ in left:
            ref = ray.put(_part(data.split(split), i, part_rows))
            # every rank of every member labels its share of the part, side by side
            calls = [[t.label_rows.remote(ref) for t in g.actors] for g in labels.members]
            per = []
            for member, results in enumerate(ray.get(c) for c in calls):
                ids = np.concatenate([r[0] for r in results])
                _, first = np.unique(ids, return_index=True)  # drop the ranks' padding
                per.append((ids[first], np.concatenate([r[1] for r in results])[first],
                            {k: np.concatenate([r[2][k] for r in results])[first]
                             for k in features}))
            ids, logits, feats = per[0]  # every member's ids agree
            members = {}
            if committee:
                dtype = cfg.stream.logit_dtype
                decoded = [decode(p[1], dtype) for p in per]
                logits = encode(torch.stack(decoded).mean(dim=0), dtype)
                members = {name: p[1] for name, p in zip(committee, per)}
                # a committee's features: every member's side by side, the lead's first
                feats = {k: np.concatenate([p[2][k] for p in per], axis=1) for k in feats}
            table = labels_table(ids, m.version, logits, feats, members)
            # the part on disk is the record (no manifest rewrite per part)
            m.parts[f"{split}/{i:05d}"] = write_part(root, split, i, table)
            bar.update(len(first))
            if after_part is not None:
                after_part(split, i)
        bar.close()
        m.complete = True
        m.save(root)
    finally:
        if labels is not None:
            labels.shutdown()
        if own_cluster:
            ray.shutdown()
    size = sum(n for f, n in storage.sizes(root).items() if f.endswith(".parquet"))
    rows = sum(m.rows.values())
    print(f"soft labels of {rows:,} rows ({', '.join(f'{k} {v:,}' for k, v in m.rows.items())})"
          f" by teacher version {m.version} in {root}: {len(m.parts)} parts, "
          f"{size / 1e6:.1f} MB ({size / rows:.1f} bytes/example), "
          f"{time.perf_counter() - t0:.0f}s", flush=True)
    return dict(m.__dict__, bytes=size, wall_s=time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    quiet_library_warnings()
    try:
        cfg, a = parse_args(argv)
        run(cfg, a.out, a.part_rows, a.address, verbose=a.verbose)
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    exit_process(main())
