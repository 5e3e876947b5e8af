"""Dataset TOMLs whose train split streams from a directory of Parquet files: a pass
reads every row once in a seeded order, and every group trains every id exactly once
per pass from it, also when a teacher rank is killed mid-pass. (The job on such a
dataset, its teacher trained first and its artifacts scoring raw files:
test_cluster.py's ``test_distill_job_on_a_toml_dataset``.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recdistill.cluster.config import RunOptions
from testkit import directory_dataset

ROWS = 1200  # 8 files of 150 rows, row groups of 64: 24 chunks
IDS = '[ids]\nkind = "hash"\nbuckets = 64\n'


def test_streamed_file_pass_yields_every_row_once_in_a_seeded_order(
        ray_cluster, tmp_path: Path) -> None:
    """A pass reads every row once, in an order its seed fixes; rank r of k reads rows
    ``[r*m, (r+1)*m)`` of that order (m = n // k), so a pass read again gives each rank
    the same batches, and a share started ``skip_rows`` in reads the rest of it."""
    from recdistill.cluster.data import (arrow_to_batch, pass_dataset, pass_shards,
                                         train_dataset)
    from recdistill.data.spec import pass_seed
    from recdistill.data.tabular import load_tabular
    data = load_tabular(directory_dataset(tmp_path, ROWS, ids=IDS))
    stream = data.train
    assert train_dataset(stream) is None and stream.n_chunks == 8 * 3  # nothing read yet
    assert sum(stream.chunk_sizes) == ROWS

    def ids(ds) -> np.ndarray:
        batches = ds.iter_batches(batch_size=100, batch_format="pyarrow")
        return np.concatenate([arrow_to_batch(b, ("workclass",)).ids for b in batches])

    a, b, c = (ids(pass_dataset(None, stream, s)) for s in (1, 1, 2))
    np.testing.assert_array_equal(np.sort(a), np.arange(ROWS))  # every row, once
    np.testing.assert_array_equal(a, b)  # the pass's seed fixes the order
    assert not np.array_equal(a, c)
    whole = ids(pass_dataset(None, stream, pass_seed(7, 2)))
    m = ROWS // 3
    shares = pass_shards(None, stream, 7, 2, 3)
    for r, share in enumerate(shares):
        np.testing.assert_array_equal(ids(share.dataset), whole[r * m:(r + 1) * m])
    late = pass_shards(None, stream, 7, 2, 3, skip_rows=250)
    np.testing.assert_array_equal(read(late[1]), whole[m + 250:2 * m])


def read(share, batch: int = 50) -> np.ndarray:
    """A StreamShare's ids as a rank reads them (``batch``-row batches)."""
    from recdistill.cluster.data import arrow_to_batch
    return np.concatenate([arrow_to_batch(b, ("workclass",)).ids
                           for b in share.batches(batch)])


def test_a_shuffle_buffer_mixes_chunks_with_one_order_per_seed(ray_cluster,
                                                               tmp_path: Path) -> None:
    """``shuffle_buffer_rows``: a rank's share read through a seeded buffer of 300 rows
    holds the same rows in another order, the same order every read; a replay that
    skips 4 batches reads what the share's 5th batch on would have been."""
    from recdistill.cluster.data import pass_shards
    from recdistill.data.tabular import load_tabular
    stream = load_tabular(directory_dataset(tmp_path, ROWS, ids=IDS)).train
    plain = read(pass_shards(None, stream, 7, 2, 2)[0])
    a, b = (read(pass_shards(None, stream, 7, 2, 2, buffer_rows=300)[0]) for _ in "ab")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.sort(a), np.sort(plain))
    assert not np.array_equal(a, plain)
    ends = np.cumsum(stream.chunk_sizes)  # chunk c holds ids [ends[c-1], ends[c])

    def chunks(rows: np.ndarray) -> int:
        return len(np.unique(np.searchsorted(ends, rows, side="right")))

    assert chunks(a[:50]) > chunks(plain[:50])  # the first batch mixes more chunks
    skipped = read(pass_shards(None, stream, 7, 2, 2, skip_rows=200, buffer_rows=300)[0])
    np.testing.assert_array_equal(skipped, a[200:])


def _online(tmp_path: Path, data, passes: int = 1):
    """A random teacher saved for ``data`` and a config of 2 teacher ranks and one KD
    group of 2 replicas over it: (config, feature dims)."""
    from recdistill.cluster.config import (DistillConfig, GroupConfig, StreamConfig,
                                           TeacherGroupConfig)
    from recdistill.student.config import LossTerm, StudentConfig
    from recdistill.teacher.checkpoint import save_teacher
    from recdistill.teacher.config import TeacherConfig
    from recdistill.teacher.model import TeacherModel, feature_dims
    tcfg = TeacherConfig(embedding_dim=8, dense_layers=(16, 8), cross_layers=1)
    save_teacher(TeacherModel(data.spec, tcfg, device="cpu"), tmp_path / "teacher",
                 spec=data.spec, cfg=tcfg, info={"step": 1})
    kd = StudentConfig(name="kd", embedding_dim=4, hidden=(8,), sharding="none", losses=(
        LossTerm("hard_label", 0.5), LossTerm("prediction_kd", 0.5)))
    cfg = DistillConfig(data=str(data.name), passes=passes, teacher=tcfg,
                        groups=(GroupConfig(kd, replicas=2),),
                        teacher_group=TeacherGroupConfig(
                            ranks=2, batch_size=64, checkpoint=str(tmp_path / "teacher")),
                        stream=StreamConfig(max_inflight=3))
    return cfg, feature_dims(data.spec, tcfg)


def test_a_killed_teacher_rank_mid_streamed_pass_keeps_every_id_once(
        ray_cluster, tmp_path: Path) -> None:
    """kill -9 of one of 2 teacher ranks while they read a streamed pass of 8 files:
    the label group re-forms, the pass is read again from the files from after the
    batches trained (by seq), and the group trains every row id exactly once in it."""
    import os
    import signal

    from recdistill.cluster.pipeline import Hooks, OnlineDistillation
    from recdistill.data.tabular import load_tabular
    data = load_tabular(directory_dataset(tmp_path / "data", ROWS, ids=IDS))
    cfg, dims = _online(tmp_path, data)
    killed: dict[str, int] = {}

    def kill_once(group: str, acked: int) -> None:
        if acked == 4 and not killed:
            killed["pid"] = ray_cluster.get(run.labels.actors[1].pid.remote())
            os.kill(killed["pid"], signal.SIGKILL)

    run = OnlineDistillation(cfg, data, dims, RunOptions(progress=False),
                             Hooks(after_ack=kill_once))
    try:
        body = run.run().to_json()
    finally:
        run.shutdown()
    assert killed, "the failure was injected"
    assert body["teacher"]["restarts"] == 1
    per_pass = ROWS // 2 * 2
    books = run.stream.ledgers["kd"]
    np.testing.assert_array_equal(books.audit[0].to_array(), np.arange(ROWS))  # all rows
    assert books.examples_by_pass[0] == per_pass  # and none twice
    assert body["students"]["kd"]["examples_per_pass"] == [per_pass]
    # the replay started after the batches trained before the kill (2 per rank at
    # least: the kill came at the 4th), and no batch was handed to the group twice
    assert body["stream"]["skipped_batches"] >= 4
    assert body["stream"]["produced"] == 2 * -(-(ROWS // 2) // 64)


def test_a_bad_row_met_mid_pass_ends_the_run_naming_it(ray_cluster, tmp_path: Path
                                                        ) -> None:
    """An empty multi-hot value of a hashed column is found only when a pass reads its
    chunk (the load checks dense columns and labels): the run ends with that DataError,
    naming file, row and column, instead of re-forming the ranks that read it again and
    again."""
    import pandas as pd
    import pytest

    from recdistill.cluster.pipeline import OnlineDistillation
    from recdistill.data.errors import DataError
    from recdistill.data.tabular import load_tabular
    toml = directory_dataset(tmp_path / "data", ROWS, ids=IDS)
    bad = tmp_path / "data" / "train" / "part-00003.parquet"
    frame = pd.read_parquet(bad)
    frame.loc[frame.index[5], "genres"] = "|"
    frame.to_parquet(bad, index=False, row_group_size=64)
    data = load_tabular(toml)
    cfg, dims = _online(tmp_path, data)
    run = OnlineDistillation(cfg, data, dims, RunOptions(progress=False))
    try:
        with pytest.raises(DataError, match=r"^/.*/train/part-00003\.parquet, row 6, "
                                            r"column 'genres': empty multi-hot value$"):
            run.run()
        assert run.labels.generation == 0  # never re-formed
    finally:
        run.shutdown()
