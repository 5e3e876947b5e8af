"""Helpers the test files share (one module, instead of test files importing each other):
tiny datasets and teacher configs, the online pipeline's small setup and its exactly-once
check, the job tests' environment and TOML datasets."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from recdistill.cluster.config import (DistillConfig, GroupConfig, StreamConfig,
                                       TeacherGroupConfig)
from recdistill.data.spec import Dataset, ExampleTable, FeatureSpec, SparseFeature
from recdistill.student.config import LossTerm, StudentConfig
from recdistill.teacher.checkpoint import save_teacher
from recdistill.teacher.config import TeacherConfig
from recdistill.teacher.model import TeacherModel


# ---- from test_sharding.py
CFG = TeacherConfig(embedding_dim=16, use_privileged=True, dense_layers=(16, 16), cross_layers=2,
                    cross_rank=8, over_layers=(32, 16), batch_size=16)


def tiny_dataset(n: int = 64, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    spec = FeatureSpec(
        dense=("d0", "d1"),
        sparse=(SparseFeature("user", 50), SparseFeature("item", 80),
                SparseFeature("history", 80, multi_valued=True, table="item"),
                SparseFeature("genre", 6, multi_valued=True)),
        tasks=("click", "like"), privileged=("history",))

    def bag(max_len: int, card: int) -> tuple[np.ndarray, np.ndarray]:
        lengths = rng.integers(0, max_len + 1, n)
        return (np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                rng.integers(1, card, int(lengths.sum())))

    table = ExampleTable(
        dense=rng.normal(size=(n, 2)).astype(np.float32),
        labels=rng.integers(0, 2, (n, 2)).astype(np.float32), ids=np.arange(n),
        sparse={"user": (np.arange(n + 1), rng.integers(1, 50, n)),
                "item": (np.arange(n + 1), rng.integers(1, 80, n)),
                "history": bag(6, 80), "genre": bag(3, 6)})
    return Dataset(spec, table, table, table)


def plain_logits(model: TeacherModel, data: Dataset, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    b = data.test.take(ids.numpy(), keys=model.feature_names).to_batch()
    with torch.no_grad():
        return model(b.dense, b.sparse).logits


# ---- from test_tabular.py
TOML = """
train = "train.{ext}"
valid = "valid.{ext}"
test = "test.{ext}"
dense = ["age", "hours"]
sparse = ["workclass", "education"]
multi_hot = {{ genres = "|" }}
tasks = ["income"]
"""


def make_frames(n: int = 40, seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    frames = {}
    for split, size in (("train", n), ("valid", n // 4), ("test", n // 4)):
        frames[split] = pd.DataFrame({
            "age": rng.integers(18, 70, size),
            "hours": rng.normal(40, 10, size).round(1),
            "workclass": rng.choice(["private", "state", "self"], size),
            "education": rng.choice([9, 12, 16], size),
            "genres": rng.choice(["a|b", "b", "c|a|b"], size),
            "income": rng.integers(0, 2, size),
            "extra": "ignored",
        })
    return frames


def many_files(root: Path, frames: dict[str, pd.DataFrame], files: int = 8,
               ids: str = "") -> Path:
    """Each split as ``files`` Parquet files in a directory named after it; the TOML."""
    for split, frame in frames.items():
        (root / split).mkdir(parents=True)
        for i, part in enumerate(np.array_split(np.arange(len(frame)), files)):
            frame.iloc[part].to_parquet(root / split / f"part-{i:05d}.parquet", index=False)
    toml = root / "dataset.toml"
    toml.write_text(TOML.format(ext="parquet").replace(".parquet", "") + ids)
    return toml


def write_dataset(root: Path, ext: str = "csv", frames: dict | None = None) -> Path:
    frames = frames or make_frames()
    for split, frame in frames.items():
        if ext == "csv":
            frame.to_csv(root / f"{split}.csv", index=False)
        else:
            frame.to_parquet(root / f"{split}.parquet", index=False)
    path = root / "dataset.toml"
    path.write_text(TOML.format(ext=ext))
    return path


# ---- from test_train_teacher_job.py
SMALL = """
[teacher]
embedding_dim = 8
dense_layers = [16, 8]
cross_layers = 1
cross_rank = 4
over_layers = [16, 8]
batch_size = 32
epochs = 4
dense_lr = 0.01
"""


TWO_GROUPS = '''
[[groups]]
name = "baseline"
sharding = "none"
losses = [{ name = "hard_label", weight = 1.0 }]
[[groups]]
name = "pred_kd"
sharding = "none"
losses = [{ name = "hard_label", weight = 0.2 },
          { name = "prediction_kd", weight = 0.8, params = { temperature = 1.0 } }]
'''


def job_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def directory_dataset(root: Path, rows: int, files: int = 8, ids: str = "") -> Path:
    """A dataset TOML whose train split is ``files`` Parquet files of row groups of 64
    rows (a streamed pass's chunks), read as a stream; valid and test one file each;
    ``ids``: the TOML's ``[ids]`` tables. The label is learnable: income follows hours."""
    frames = make_frames(n=rows, seed=1)
    for f in frames.values():
        f["income"] = (f["hours"] > 40).astype(int)
    (root / "train").mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(rows), files)):
        frames["train"].iloc[part].to_parquet(root / "train" / f"part-{i:05d}.parquet",
                                              index=False, row_group_size=64)
    for split in ("valid", "test"):
        frames[split].to_parquet(root / f"{split}.parquet", index=False)
    toml = root / "dataset.toml"
    toml.write_text(TOML.format(ext="parquet").replace('"train.parquet"', '"train"')
                    + 'read = "stream"\n' + ids)
    return toml


def toml_dataset(tmp_path: Path) -> Path:
    frames = make_frames(n=400, seed=1)
    for f in frames.values():  # a learnable label: income follows hours
        f["income"] = (f["hours"] > 40).astype(int)
    return write_dataset(tmp_path, "parquet", frames)


# ---- from test_cluster.py
N = 640  # 320 rows per teacher rank, 5 batches of 64 each


def online_setup(tmp_path: Path, max_inflight: int = 3, passes: int = 2):
    data = tiny_dataset(n=N, seed=2)
    save_teacher(TeacherModel(data.spec, CFG, device="cpu"), tmp_path / "teacher",
                 spec=data.spec, cfg=CFG, info={"step": 5})
    groups = (
        # plain tables under dense Adam, DDP over the whole model
        GroupConfig(StudentConfig(name="hard", embedding_dim=4, hidden=(8,),
                                  sharding="none"), replicas=2),
        # (the default) TorchRec row-wise shards of every table over the 2 replicas
        GroupConfig(StudentConfig(name="kd", embedding_dim=4, hidden=(8,), losses=(
            LossTerm("hard_label", 0.5), LossTerm("prediction_kd", 0.5, {"temperature": 2.0}),
            LossTerm("feature_kd", 1.0)), adapters={"last_hidden": "last_hidden"}),
            replicas=2),
    )
    cfg = DistillConfig(passes=passes, teacher=CFG, groups=groups,
                        teacher_group=TeacherGroupConfig(ranks=2, batch_size=64,
                                                         checkpoint=str(tmp_path / "teacher")),
                        stream=StreamConfig(max_inflight=max_inflight))
    dims = {"pooled_embeddings": 64, "interaction": 80, "last_hidden": 16}
    return cfg, data, dims


def assert_exactly_once(run: Any, data: Dataset, passes: int) -> None:
    all_ids = set(data.train.ids.tolist())
    for name, books in run.stream.ledgers.items():
        for p in range(passes):
            assert set(books.audit[p].to_array().tolist()) == all_ids, (name, p)
            assert books.examples_by_pass[p] == N, (name, p)  # no id twice


# ---- from test_sharded_students.py
def artifact_matches_report(saved: dict, students: Path, data: str, tmp: Path) -> None:
    """jobs.predict on each artifact gives the report's test metrics, and the report's
    AUC (from a histogram, block by block) is within its ``auc_bound`` of the exact AUC
    of the logits predict wrote (TorchRec's, from every score)."""
    import pandas as pd
    from torchrec.metrics.auc import compute_auc

    from recdistill.jobs.predict import main
    for name, s in saved["students"].items():
        assert s["artifact"] == str(students / name)
        out = tmp / f"{name}.json"
        assert main(["--student", s["artifact"], "--data", data, "--split", "test",
                     "--report", str(out), "--out", str(tmp / f"{name}.parquet")]) == 0
        got = json.loads(out.read_text())["metrics"]
        scores = pd.read_parquet(tmp / f"{name}.parquet")
        for task, m in s["test"].items():
            for key in ("auc", "logloss", "ne"):
                assert got[task][key] == pytest.approx(m[key], abs=1e-5), (name, task, key)
            # AUC is a function of the order: logits, not probabilities that round to 1
            p = torch.tensor(scores[f"logit_{task}"].to_numpy()).double().view(1, -1)
            y = torch.tensor(scores[f"label_{task}"].to_numpy()).view(1, -1)
            exact = float(compute_auc(1, [p], [y], [torch.ones_like(p)])[0])
            assert abs(m["auc"] - exact) <= m["auc_bound"] + 1e-9, (name, task, exact)
            assert 0 <= m["auc_bound"] < 1e-3


# ---- from test_multinode_storage.py and test_submit.py
def teacher_in(root: str, config, data) -> None:
    """A teacher version of the config's model for this dataset in ``root`` (untrained:
    what is measured here is where things go, not what the students learn)."""
    from recdistill.data.fingerprint import fingerprint
    from recdistill.jobs.common import load_dataset
    from recdistill.jobs.distill_config import load_config
    from recdistill.teacher.checkpoint import save_teacher, version_dir, write_index
    from recdistill.teacher.model import TeacherModel
    cfg = load_config(str(config), data=str(data))
    ds = load_dataset(cfg.data)
    save_teacher(TeacherModel(ds.spec, cfg.teacher, device="cpu"), version_dir(root, 1),
                 spec=ds.spec, cfg=cfg.teacher,
                 info={"step": 1, "fingerprint": fingerprint(ds.spec, ds.name)})
    write_index(root, best=1, latest=1)
