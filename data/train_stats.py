"""Train's statistics kept beside the dataset TOML, so a streamed split's counting pass
runs once per version of its files.

Streaming a split needs its vocabularies (``vocab`` id rules), its dense columns' mean
and standard deviation, and its row count before the first pass; they come from one
pass over the split (``data/tabular.py``). That pass is kept in
``<the TOML's folder>/.recdistill-stats/<key>/`` (the :class:`RowTransform` files and
the row count) under a key of the columns, the id rules and each train file's path,
size and modification time: a changed, added or removed file, or another rule, is
another key and the pass runs again. A folder that cannot be written only costs the
pass next time (a warning says so).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from recdistill.data.errors import DataError
from recdistill.data.files import Source
from recdistill.data.transform import RowTransform

CACHE_DIR = ".recdistill-stats"
ROWS = "rows.json"


def stats_key(source: Source, t: RowTransform) -> str:
    """The key of train's statistics: ``t``'s columns and id rules, and every file's
    path, size and modification time."""
    files = [[f.path, f.size, f.mtime_ns] for f in source.fs.get_file_info(list(source.paths))]
    doc = {"dense": t.dense, "sparse": t.sparse, "multi_hot": t.multi_hot, "tasks": t.tasks,
           "ids": {c: asdict(r) for c, r in sorted(t.rules.items())}, "files": files}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def cached_stats(root: Path, source: Source, t: RowTransform,
                 count: Callable[[], int]) -> tuple[int, str]:
    """Fill ``t``'s vocabularies, mean and std: kept ones from ``root``'s cache if
    their key matches, else ``count()`` (the pass; returns train's rows), then kept.
    Returns (train's rows, where they came from, for the job to say)."""
    folder = root / CACHE_DIR / stats_key(source, t)
    try:
        kept = RowTransform.load(folder)
        rows = int(json.loads((folder / ROWS).read_text())["rows"])
    except (DataError, OSError, ValueError, KeyError):
        pass
    else:
        t.vocabs, t.mean, t.std = kept.vocabs, kept.mean, kept.std
        return rows, f"train's statistics from {folder}"
    rows = count()
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        t.save(tmp)
        (tmp / ROWS).write_text(json.dumps({"rows": rows}))
        os.replace(tmp, folder)  # whole or not at all; a concurrent writer's is as good
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if (folder / ROWS).is_file():  # another job kept the same statistics first
            return rows, f"train's statistics counted, kept in {folder}"
        print(f"warning: cannot keep train's statistics in {folder} ({e}); the next run "
              "counts them again", file=sys.stderr, flush=True)
        return rows, "train's statistics counted"
    return rows, f"train's statistics counted, kept in {folder}"
