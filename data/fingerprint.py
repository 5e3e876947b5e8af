"""What a teacher or a soft-label directory was made from, and how another dataset differs.

A teacher checkpoint (and a soft-label manifest) records the fingerprint of its dataset:
the dataset's name (MovieLens' includes its split), its tasks, dense features and sparse
features with their cardinalities. A job given another dataset compares the two before
any actor starts, so a teacher trained on one dataset never labels another.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from recdistill.data.spec import FeatureSpec


def fingerprint(spec: FeatureSpec, dataset: str) -> dict[str, Any]:
    """The JSON-ready fingerprint of a dataset named ``dataset`` with schema ``spec``."""
    return {"dataset": dataset, "tasks": list(spec.tasks), "dense": list(spec.dense),
            "sparse": {f.name: f.cardinality for f in spec.sparse}}


def _same_source(made_for: str, given: str) -> bool:
    # A streamed synthetic run's teacher is trained on in-memory rows of the same
    # generator (cluster.teachers.ensure_teacher): another size, the same seed and data.
    if given.startswith("synthetic-stream-"):
        return made_for.startswith("synthetic-") and \
            made_for.rsplit("-", 1)[-1] == given.rsplit("-", 1)[-1]
    return made_for == given


def differences(made_for: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """How dataset ``given`` differs from the one ``made_for`` (both fingerprints); []
    when they match. A fingerprint without a dataset name (older checkpoints) is
    compared on its schema only."""
    out = []
    if made_for.get("dataset") and not _same_source(made_for["dataset"], given["dataset"]):
        out.append(f"dataset {made_for['dataset']!r}, given {given['dataset']!r}")
    if list(made_for["tasks"]) != list(given["tasks"]):
        out.append(f"tasks {list(made_for['tasks'])}, given {list(given['tasks'])}")
    if list(made_for["dense"]) != list(given["dense"]):
        out.append(f"dense features {list(made_for['dense'])}, given {list(given['dense'])}")
    a, b = made_for["sparse"], given["sparse"]
    missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if missing:
        out.append(f"sparse features {missing} missing from the given dataset")
    if extra:
        out.append(f"sparse features {extra} that it was not trained on")
    changed = [f"{k} {a[k]} -> {b[k]}" for k in a if k in b and a[k] != b[k]]
    if changed:
        out.append(f"cardinalities changed: {', '.join(changed)}")
    return out


def keyed_path(default: str, fp: dict[str, Any]) -> str:
    """``default`` keyed by the dataset: where a default-path teacher of another dataset
    is trained (``runs/distill/teacher-movielens-100k-user-time-1a2b3c``)."""
    name = str(fp["dataset"])
    slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(name).stem if name.endswith(".toml")
                  else name).strip("-")
    digest = hashlib.sha1(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:6]
    return f"{default}-{slug.lower()}-{digest}"
