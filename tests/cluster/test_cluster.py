"""The online pipeline on a real single-node Ray cluster: 2 teacher ranks, 2 groups x 2
replicas. Exact once-per-pass training, backpressure, a killed replica, bad configs."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import ray

from recdistill.cluster.config import DistillConfig, RunOptions, StreamConfig, default_teachers
from recdistill.cluster.pipeline import Hooks, OnlineDistillation
from recdistill.data.errors import ConfigError
from recdistill.teacher.config import TeacherConfig
from recdistill.teacher.model import TeacherModel
from testkit import N, assert_exactly_once, online_setup, tiny_dataset


def _label_batches_4x(cfg: DistillConfig) -> DistillConfig:
    """Labelling in batches of 4 student batches (256 rows): the window holds a call of
    both ranks (2 x 4 student batches)."""
    import dataclasses
    return dataclasses.replace(
        cfg, teacher_group=dataclasses.replace(cfg.teacher_group, label_batch_size=256),
        stream=StreamConfig(max_inflight=8))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("label_4x", [False, True], ids=["label64", "label256"])
def test_two_ranks_two_groups_exactly_once_with_backpressure(ray_cluster, tmp_path,
                                                             label_4x) -> None:
    """``label64``: each rank labels 64-row batches (the window of 3 allows no more).
    ``label256``: 256-row batches (320 rows a rank: one of 256, one of 64) that the
    stream cuts into 64-row student batches by row ranges: the groups see the same 10
    student batches per pass either way, each id once."""
    cfg, data, dims = online_setup(tmp_path, max_inflight=3)
    if label_4x:
        cfg = _label_batches_4x(cfg)
    want = (256, 4, 1) if label_4x else (64, 1, 1)
    assert (cfg.label_rows, cfg.slices_per_label_batch, cfg.label_batches_per_call) == want
    run = OnlineDistillation(cfg, data, dims, RunOptions(progress=False))
    try:
        body = run.run().to_json()
    finally:
        run.shutdown()
    assert_exactly_once(run, data, passes=2)
    s = body["stream"]
    assert s["produced"] == 2 * 10  # student batches: 2 passes x 2 ranks x 5 batches
    # labelled batches: (256, 64) a rank and pass, or 5 of 64
    assert body["teacher"]["usage"]["batches"] == (2 * 2 * 2 if label_4x else 20)
    assert body["teacher"]["labelling"]["label_rows"] == want[0]
    assert s["acked"] == {"hard": 20, "kd": 20}
    assert s["redelivered"] == 0 and s["duplicates_dropped"] == 0
    # teachers waited: depth (queued + unacknowledged, in student batches) never
    # exceeded max_inflight
    assert all(1 <= d <= cfg.stream.max_inflight for d in s["max_depth"].values())
    assert body["students"]["kd"]["examples_trained"] == 2 * N
    assert body["students"]["kd"]["teacher_versions"] == [5]
    assert body["teacher"]["ranks"] == 2
    assert set(body["teacher"]["test"]) == {"click", "like"}
    assert body["students"]["kd"]["kd"] == ["prediction_kd", "feature_kd"]


@pytest.mark.timeout(300)
def test_killed_replica_is_replaced_and_counts_stay_exact(ray_cluster, tmp_path) -> None:
    cfg, data, dims = online_setup(tmp_path, max_inflight=4)
    killed = {}

    def kill_once(group: str, acked: int) -> None:
        if group == "kd" and acked == 3 and not killed:
            replica = run.groups["kd"].replicas[1]
            pid = ray_cluster.get(replica.pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed["pid"] = pid

    run = OnlineDistillation(cfg, data, dims, RunOptions(progress=False),
                             Hooks(after_ack=kill_once))
    try:
        body = run.run().to_json()
    finally:
        run.shutdown()
    assert killed, "the failure was injected"
    assert body["students"]["kd"]["restarts"] == 1
    assert body["students"]["hard"]["restarts"] == 0
    # no replica of a sharded group holds the whole model: it restarts from its snapshot
    assert body["students"]["kd"]["sharding"] == "row_wise"
    assert body["students"]["kd"]["restored_from_snapshot"] == 1
    s = body["stream"]
    assert s["redelivered_by_group"]["kd"] >= 1
    assert s["redelivered_by_group"]["hard"] == 0
    assert_exactly_once(run, data, passes=2)
    assert s["acked"] == {"hard": 20, "kd": 20}


@pytest.mark.timeout(300)
def test_killed_teacher_rank_reforms_the_group_and_counts_stay_exact(ray_cluster,
                                                                      tmp_path) -> None:
    """kill -9 of one of the 2 teacher ranks mid-pass: the group is re-formed (new
    actors, new process group, shards reloaded from the checkpoint), the pass is read
    again from the batches every group trained and what was already published is dropped;
    every group trains every example
    of each pass exactly once, and no student restarts. The ranks label 256-row batches
    the stream cuts into 64-row student batches (what was published before the kill is
    whole student batches, dropped from the replayed labelled ones); a 64-row labelled
    batch is the case of one slice."""
    cfg, data, dims = online_setup(tmp_path, max_inflight=3)
    cfg = _label_batches_4x(cfg)
    killed = {}

    def kill_once(group: str, acked: int) -> None:
        if group == "kd" and acked == 3 and not killed:
            pid = ray_cluster.get(run.labels.actors[1].pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed["pid"] = pid
        if group == "kd" and acked == 15:  # in pass 2
            killed["new"] = ray_cluster.get([t.pid.remote() for t in run.labels.actors])

    run = OnlineDistillation(cfg, data, dims, RunOptions(progress=False),
                             Hooks(after_ack=kill_once))
    try:
        body = run.run().to_json()
    finally:
        run.shutdown()
    assert killed, "the failure was injected"
    assert body["teacher"]["restarts"] == 1
    assert body["students"]["kd"]["restarts"] == body["students"]["hard"]["restarts"] == 0
    assert_exactly_once(run, data, passes=2)
    s = body["stream"]
    # the replay of pass 0 started after the labelled batches both groups had trained
    # (skipped) and dropped the student batches it had published beyond them: every
    # student batch of both passes was published once
    assert s["skipped_batches"] > 0 or s["replayed_rows"] > 0
    assert s["replayed_rows"] % 64 == 0 and s["produced"] == 2 * N // 64
    assert body["students"]["kd"]["examples_per_pass"] == [N, N]
    assert body["students"]["kd"]["examples_trained"] == 2 * N
    # pass 2 was labelled by the new ranks: other processes than the killed one
    assert len(killed["new"]) == 2 and killed["pid"] not in killed["new"]


@pytest.mark.timeout(300)
def test_single_replica_group_restores_from_its_snapshot(ray_cluster, tmp_path) -> None:
    """A one-replica group has no survivor to copy: kill -9 of its replica restarts it
    from its last snapshot (every 3 batches), and the batches trained since are delivered
    again; counts stay exact, the other group is untouched. The first kill comes before
    the first periodic snapshot (after 2 batches: restored from the one taken at the
    start), the second 2 batches after one. The group is the unsharded one (a sharded
    group's restore: test_sharded_students)."""
    import dataclasses
    cfg, data, dims = online_setup(tmp_path, max_inflight=4)
    solo = dataclasses.replace(cfg.groups[0], replicas=1, snapshot_every=3)
    cfg = dataclasses.replace(cfg, groups=(solo, cfg.groups[1]))
    killed: list[int] = []

    def kill(group: str, acked: int) -> None:
        # acked counts net of a restore: after the first one it runs 1, 2, 3 again
        if group == "hard" and (acked, len(killed)) in ((2, 0), (5, 1)):
            pid = ray_cluster.get(run.groups["hard"].replicas[0].pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    run = OnlineDistillation(cfg, data, dims, RunOptions(progress=False),
                             Hooks(after_ack=kill))
    try:
        body = run.run().to_json()
    finally:
        run.shutdown()
    assert len(killed) == 2, killed
    hard, kd = body["students"]["hard"], body["students"]["kd"]
    assert (hard["restarts"], hard["restored_from_snapshot"]) == (2, 2)
    assert (kd["restarts"], kd["restored_from_snapshot"]) == (0, 0)
    assert_exactly_once(run, data, passes=2)
    s = body["stream"]
    # at least the 2 + 2 batches acknowledged after the snapshots went round again
    assert s["redelivered_by_group"]["hard"] >= 4 and s["redelivered_by_group"]["kd"] == 0
    assert s["acked"] == {"hard": 20, "kd": 20}
    assert hard["examples_per_pass"] == [N, N] \
        and sum(hard["examples_by_version"].values()) == 2 * N


def test_bad_config_fails_before_any_actor_starts(ray_cluster, tmp_path) -> None:
    from recdistill.jobs.distill import run
    from recdistill.jobs.distill_config import load_config
    bad = tmp_path / "bad.toml"
    bad.write_text('passes = 1\n[[groups]]\nname = "s"\n[[groups.losses]]\n'
                   'name = "prediction_kd"\nparams = { temprature = 2.0 }\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: groups\.s\.losses\[0\]\.params\.temprature"):
        run(load_config(str(bad)), RunOptions(progress=False))
    with pytest.raises(ValueError, match="teacher-0"):
        ray_cluster.get_actor("teacher-0")  # nothing was started
    bad.write_text("[stream]\nmax_inflight = 0\n")
    with pytest.raises(ConfigError, match=r"stream\.max_inflight must be >= 1"):
        load_config(str(bad))
    bad.write_text('[[groups]]\nname = "s"\nadapters = { last_hidden = "logits" }\n')
    with pytest.raises(ConfigError, match=r"groups\.s\.adapters: the teacher produces"):
        load_config(str(bad))
    bad.write_text('[[groups]]\nname = "s"\nreplicas = "two"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: groups\.s\.replicas: expected an integer"):
        load_config(str(bad))


def test_shipped_distill_config_is_the_default() -> None:
    from recdistill.jobs.distill_config import load_config
    shipped = Path(__file__).parents[2] / "jobs" / "configs" / "distill_movielens.toml"
    cfg = load_config(str(shipped))
    assert cfg == load_config(None)
    assert cfg == DistillConfig(teachers=default_teachers(TeacherConfig()))
    assert [(m.name, m.checkpoint, m.teacher.seed, m.teacher.use_privileged,
             m.teacher.interaction) for m in cfg.members] == [
        ("dcn", "runs/distill/teacher", 0, False, "cross"),
        ("dcn_priv", "runs/distill/teacher-dcn_priv", 3, True, "cross"),
        ("dlrm", "runs/distill/teacher-dlrm", 5, False, "dot")]


@pytest.mark.timeout(400)
def _tensorboard_matches_report(logdir: Path, saved: dict) -> None:
    """The driver's event files: one run per group and the teacher's; per pass each
    group's validation AUC at its examples trained, equal to the report's curve; the
    running loss terms and teacher agreement between them."""
    import math

    from recdistill.cluster.tensorboard import read_scalars
    runs = read_scalars(logdir)
    assert set(runs) == {*saved["students"], "teacher"}
    for name, s in saved["students"].items():
        auc = runs[name]["valid_auc/income"]
        assert [step for step, _ in auc] == [400, 800]  # 400 train rows per pass
        assert [v for _, v in auc] == pytest.approx(
            [c["valid"]["income"]["auc"] for c in s["curve"]], abs=1e-6)
        # every group's label_bce (comparable across objectives), a positive number
        losses = [v for _, v in runs[name]["loss/label_bce"]]
        assert losses and all(math.isfinite(v) and v > 0 for v in losses)
        agree = [v for _, v in runs[name]["teacher_agreement"]]
        assert agree and all(0.0 <= v <= 1.0 for v in agree)
        steps = [step for step, _ in runs[name]["loss/label_bce"]]
        assert steps == sorted(steps) and steps[-1] == 800
    assert [v for _, v in runs["teacher"]["valid_auc/income"]] == pytest.approx(
        [saved["teacher"]["valid"]["income"]["auc"]] * 2, abs=1e-6)
    assert "relation_kd" in {t.removeprefix("loss/") for t in runs["feat_kd"]}


def test_distill_job_on_a_toml_dataset(ray_cluster, tmp_path) -> None:
    """`jobs.distill --data dataset.toml`: teacher trained first (a Ray task), report
    holds the contract's keys, the PNG is written. Train is 8 Parquet files read as a
    stream (the teacher, trained first, held it in memory with the stream's id
    transform); one feature's ids are hashed, the others come from vocabularies; the
    artifacts score the raw test file as the report says."""
    import json

    from recdistill.jobs.distill import run
    from recdistill.jobs.distill_config import load_config
    from testkit import SMALL, directory_dataset
    data = directory_dataset(tmp_path, 400, ids='[ids]\nkind = "vocab"\n'
                             '[ids.education]\nkind = "hash"\nbuckets = 16\n')
    config = tmp_path / "distill.toml"
    config.write_text(SMALL + f'\n[teacher_group]\nbatch_size = 64\ncheckpoint = '
                      f'"{tmp_path / "teacher"}"\n')
    cfg = load_config(str(config), data=str(data), passes=2)
    report = run(cfg, RunOptions(report=str(tmp_path / "out.json"), progress=False,
                                 artifacts=str(tmp_path / "students"),
                                 tensorboard=str(tmp_path / "tb")))
    saved = json.loads((tmp_path / "out.json").read_text())
    _tensorboard_matches_report(tmp_path / "tb", saved)
    # every group's best student was written; jobs.predict on it gives the report's
    # test metrics (to 1e-5)
    from testkit import artifact_matches_report
    artifact_matches_report(saved, tmp_path / "students", str(data), tmp_path)
    artifact_matches_report(saved, tmp_path / "students", str(tmp_path / "test.parquet"),
                            tmp_path)
    assert saved["students"].keys() == {"baseline", "pred_kd", "feat_kd", "multitask_kd"}
    for name, s in saved["students"].items():
        assert set(s["test"]["income"]) >= {"auc", "logloss", "ne"}
        assert s["examples_trained"] == 2 * 400  # 2 passes x 400 train rows, once each
    assert saved["students"]["pred_kd"]["kd"] == ["prediction_kd"]
    assert saved["students"]["baseline"]["kd"] == []
    assert set(saved["teacher"]["test"]["income"]) >= {"auc", "logloss", "ne"}
    assert saved["stream"]["acked"] == {n: saved["stream"]["produced"]
                                        for n in saved["students"]}
    assert saved["stream"]["redelivered"] == 0 and saved["stream"]["duplicates_dropped"] == 0
    assert saved["wall_s"] > 0 and saved["config"]["passes"] == 2
    # both sizes are reported (the 8x ratio is a property of the MovieLens defaults, README)
    # the default committee of this test's tiny teachers, each trained first as a Ray
    # task; no privileged features here: dcn_priv is dcn from another seed
    from recdistill.data.tabular import load_tabular
    spec = load_tabular(data).spec
    sizes = {m.name: sum(p.numel() for p in TeacherModel(spec, m.teacher).parameters())
             for m in cfg.members}
    assert sizes["dcn"] == sizes["dcn_priv"] == 1345 and sizes["dlrm"] != 1345
    assert {n: m["parameters"] for n, m in saved["teacher"]["members"].items()} == sizes
    assert saved["teacher"]["parameters"] == sum(sizes.values())
    assert saved["students"]["baseline"]["parameters"] > 0
    assert (tmp_path / "out.png").stat().st_size > 10_000
    assert report.gains["baseline"]["income"]["auc_gain_vs_baseline"] == 0.0
    # the KD guard did what the curves say: KD off within pass 1 (its probe: pass 0) or
    # from the first pass after which the baseline's best validation AUC so far reached
    # the teacher's; a trailing group's relation term off once both stopped improving
    teacher_auc = saved["teacher"]["valid"]["income"]["auc"]
    base = [c["valid"]["income"]["auc"] for c in saved["students"]["baseline"]["curve"]]
    reached = next((p + 1 for p in range(len(base)) if max(base[:p + 1]) >= teacher_auc),
                   None)
    for name in ("pred_kd", "feat_kd", "multitask_kd"):
        guard = saved["students"][name]["kd_guard"]
        assert guard["enabled"] is True
        for what, p in guard["off"].items():
            if guard["why"][what].startswith("the baseline reached"):
                assert what == "income" and (p == 0 or p == reached), (name, guard)
            else:  # trailing: both curves had stopped improving on pass p
                own = [c["valid"]["income"]["auc"] for c in saved["students"][name]["curve"]]
                assert max(own[:p]) <= max(own[:p - 1]) and max(base[:p]) <= \
                    max(base[:p - 1]) and max(own[:p]) < max(base[:p]) - 0.001, name
        if reached is not None:
            assert guard["off"].get("income") in (0, reached), name
    assert saved["students"]["baseline"]["kd_guard"] == {"enabled": False, "off": {},
                                                         "why": {}}


def test_streamed_synthetic_pass_yields_every_row_once_in_a_seeded_order(ray_cluster) -> None:
    from recdistill.cluster.data import arrow_to_batch, pass_dataset, train_dataset
    from recdistill.data.synthetic import SyntheticConfig, SyntheticStream
    stream = SyntheticStream(SyntheticConfig(rows=1000, chunk_rows=128, seed=2))
    ds = train_dataset(stream)
    assert ds is None and stream.chunk_sizes == [128] * 7 + [104]  # nothing generated

    def order(seed: int) -> np.ndarray:
        batches = pass_dataset(ds, stream, seed).iter_batches(batch_size=100,
                                                              batch_format="pyarrow")
        return np.concatenate([arrow_to_batch(b, ("c0",)).ids for b in batches])

    a, b, c = order(1), order(1), order(2)
    np.testing.assert_array_equal(np.sort(a), np.arange(1000))  # every row, once
    np.testing.assert_array_equal(a, b)  # the pass's seed fixes the order
    assert not np.array_equal(a, c)
    assert not np.array_equal(np.sort(a[:128]), np.arange(128))  # chunk order shuffled too


def test_in_memory_pass_order_is_fixed_by_its_seed(ray_cluster) -> None:
    """A shuffled pass of an in-memory table comes in one order per seed, whatever
    order the shuffle's tasks finish in (preserve_order): the same seed, the same
    students. (Ray Data's stream, split = "stream"; split = "rows" reads the same rows,
    test_row_shares_read_what_streaming_split_gives.)"""
    from recdistill.cluster.data import arrow_to_batch, pass_shards, train_dataset
    table = tiny_dataset(n=3000, seed=1).train
    ds = train_dataset(table)

    def order(seed: int, pass_index: int) -> np.ndarray:
        shard = pass_shards(ds, table, seed, pass_index, 1, split="stream")[0]
        return np.concatenate([arrow_to_batch(b, ("user",)).ids for b in shard.iter_batches(
            batch_size=256, batch_format="pyarrow")])

    runs = [order(0, 0) for _ in range(3)]
    np.testing.assert_array_equal(np.sort(runs[0]), np.arange(3000))
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])
    assert not np.array_equal(order(0, 1), runs[0])  # the next pass: another order
    assert not np.array_equal(order(1, 0), runs[0])  # another seed: another order


def test_row_shares_read_what_streaming_split_gives(ray_cluster) -> None:
    """split = "rows": rank r of k reads the same rows, in the same batches, as
    streaming_split(k, equal=True) hands rank r, for k = 1, 2, 3 (3001 rows: shares of
    3001, 1500 and 1000 rows, the last not a multiple of the 256-row batches), and the
    batches it slices from the pass decoded once hold what each streamed batch decodes
    to, column by column (two of the four sparse features, in the order asked); the
    shares are disjoint."""
    from recdistill.cluster.data import RowShare, arrow_to_batch, pass_shards, train_dataset
    table = tiny_dataset(n=3001, seed=1).train
    ds = train_dataset(table)
    keys = ("history", "user")

    @ray.remote
    def read(share: object) -> list[object]:  # a split's iterator is read in a task
        if isinstance(share, RowShare):
            return list(share.batches(256, keys))
        return [arrow_to_batch(b, keys) for b in share.iter_batches(  # type: ignore
            batch_size=256, batch_format="pyarrow")]

    for k in (1, 2, 3):
        rows = pass_shards(ds, table, 0, 1, k, split="rows")
        assert all(isinstance(r, RowShare) for r in rows)
        stream = ray.get([read.remote(s) for s in pass_shards(ds, table, 0, 1, k,
                                                               split="stream")])
        got = ray.get([read.remote(r) for r in rows])
        for mine, theirs in zip(got, stream):
            assert [b.batch_size for b in mine] == [b.batch_size for b in theirs]
            for a, b in zip(mine, theirs):
                assert a.keys == b.keys == keys
                for col in ("ids", "dense", "labels", "values", "lengths"):
                    np.testing.assert_array_equal(getattr(a, col), getattr(b, col))
                    assert getattr(a, col).dtype == getattr(b, col).dtype, col
        ids = np.concatenate([b.ids for g in got for b in g])
        assert len(ids) == (3001 // k) * k and len(np.unique(ids)) == len(ids)


def test_row_share_batches_its_rows(ray_cluster) -> None:
    """A RowShare of rows [3, 13) of a stored 16-row table, in batches of 4: rows 3-6,
    7-10 and 11-12, a bag feature's values and lengths sliced with them."""
    from recdistill.cluster.data import RowShare
    from recdistill.data.spec import ExampleTable
    lengths = np.arange(16) % 3  # row i has i % 3 values: 10*i, 10*i + 1, ...
    values = np.concatenate([10 * i + np.arange(n) for i, n in enumerate(lengths)])
    table = ExampleTable(dense=np.arange(32, dtype=np.float32).reshape(16, 2),
                         labels=np.zeros((16, 1), np.float32), ids=np.arange(100, 116),
                         sparse={"bag": (np.concatenate([[0], np.cumsum(lengths)]), values),
                                 "one": (np.arange(17), np.arange(16) + 500)})
    got = list(RowShare(ray.put(table), 3, 13).batches(4, ("bag", "one")))
    assert [b.ids.tolist() for b in got] == [[103, 104, 105, 106], [107, 108, 109, 110],
                                             [111, 112]]
    # rows 3-6 have 0, 1, 2, 0 values; then the single-valued feature's 503-506
    assert got[0].lengths.tolist() == [0, 1, 2, 0, 1, 1, 1, 1]
    assert got[0].values.tolist() == [40, 50, 51, 503, 504, 505, 506]
    assert got[2].lengths.tolist() == [2, 0, 1, 1] and got[2].values.tolist() == [
        110, 111, 511, 512]
    assert got[2].dense.tolist() == [[22.0, 23.0], [24.0, 25.0]]


def test_a_labelling_call_after_its_pass_ended_reads_nothing_of_the_next(ray_cluster
                                                                        ) -> None:
    """With two calls queued per rank, the second call of a pass may come after the pass
    ended: it labels nothing and leaves the next pass (already queued) to its own calls,
    which read it from its first row. A call for a pass never handed over fails."""
    from recdistill.cluster.pass_input import PassInput
    from recdistill.cluster.data import RowShare
    from recdistill.data.spec import ExampleTable

    class Rows(PassInput):  # a rank that "labels" a batch as its size
        batch_size, keys = 4, ("one",)

        def label_next(self) -> tuple:
            arrays = self._next_arrays()
            return (None, None) if arrays is None else (arrays.ids, arrays.batch_size)

    table = ExampleTable(dense=np.zeros((10, 1), np.float32),
                         labels=np.zeros((10, 1), np.float32), ids=np.arange(100, 110),
                         sparse={"one": (np.arange(11), np.arange(10))})
    ref = ray.put(table)
    rank = Rows()
    rank.start_pass(RowShare(ref, 0, 10), 0)
    rank.start_pass(RowShare(ref, 4, 10), 1)

    def call(n: int, index: int) -> tuple[list, list]:
        ids, *sizes = rank.label_many(n, index)
        return [None if i is None else i.tolist() for i in ids], sizes

    assert call(2, 0) == ([[100, 101, 102, 103], [104, 105, 106, 107]], [4, 4])
    assert call(2, 0) == ([[108, 109], None], [2, None])  # the pass ends in this call
    assert call(2, 0) == ([None, None], [None, None])  # queued behind it: nothing
    assert call(2, 1) == ([[104, 105, 106, 107], [108, 109]], [4, 2])
    with pytest.raises(RuntimeError, match="pass 2 was not handed to this rank"):
        rank.label_many(1, 2)


def test_a_pass_of_several_blocks_is_shuffled_whole(ray_cluster) -> None:
    """A table stored as 3 blocks (5, 7 and 4 rows) is shuffled as one pass and decoded
    into one table: every row once, in the order Ray Data's seeded shuffle gives it,
    each row's features with it."""
    from recdistill.cluster.data import ID, _shuffled, to_arrow
    table = tiny_dataset(n=16, seed=4).train
    arrow = to_arrow(table)
    ds = ray.data.from_arrow([arrow.slice(a, b - a) for a, b in ((0, 5), (5, 12), (12, 16))])
    got = _shuffled(ds.random_shuffle(seed=3))
    want = np.concatenate([b[ID] for b in ds.random_shuffle(seed=3).iter_batches(
        batch_size=None, batch_format="numpy")])
    np.testing.assert_array_equal(got.ids, want)
    assert sorted(want.tolist()) == list(range(16)) and want.tolist() != list(range(16))
    same = table.take(want)  # ids are row numbers here
    for col in ("dense", "labels", "values", "lengths"):
        np.testing.assert_array_equal(getattr(got.rows(0, 16), col), getattr(same, col))


_NODES = r'''
import dataclasses, json, os, sys, tempfile
from pathlib import Path
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node on loopback
import ray
from ray.cluster_utils import Cluster
sys.path.insert(0, "tests")
from testkit import N, online_setup
from recdistill.cluster.config import RunOptions
from recdistill.cluster.pipeline import Hooks, OnlineDistillation

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 8})
workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False)
cfg, data, dims = online_setup(Path(tempfile.mkdtemp()), max_inflight=3)
cfg = dataclasses.replace(cfg, teacher_group=dataclasses.replace(
    cfg.teacher_group, placement="strict_spread"))
where = {}

def node_of(actor):
    return ray.get(actor.node_id.remote())

def remove_once(group, acked):
    if group == "kd" and acked == 3 and "removed" not in where:
        nodes = [node_of(t) for t in run.labels.actors]
        victim = next(w for w in workers if w.node_id in nodes)
        where.update(ranks_on=nodes, removed=victim.node_id,
                     head=cluster.head_node.node_id)
        cluster.remove_node(victim)
    if group == "kd" and acked == 15:
        where["after"] = [node_of(t) for t in run.labels.actors]

run = OnlineDistillation(cfg, data, dims, RunOptions(progress=False),
                         Hooks(after_ack=remove_once))
try:
    body = run.run().to_json()
finally:
    run.shutdown()
books = {name: {p: sorted(b.audit[p].to_array().tolist()) == sorted(data.train.ids.tolist())
                for p in (0, 1)} for name, b in run.stream.ledgers.items()}
print("RESULT " + json.dumps({"where": where, "books": books, "stream": body["stream"],
      "restarts": body["teacher"]["restarts"],
      "students": {n: [s["examples_per_pass"], s["restarts"]]
                   for n, s in body["students"].items()}}))
ray.shutdown()
cluster.shutdown()
'''


@pytest.mark.timeout(600)
def test_removed_node_with_a_teacher_rank_is_survived(tmp_path) -> None:
    """A 3-node cluster on this machine (ray.cluster_utils.Cluster, loopback): the 2
    teacher ranks on two nodes (a strict_spread placement group); the worker node holding one
    of them is removed mid-pass. Its rank and the batches stored on it are gone; the
    group is re-formed on the remaining nodes, the lost batches are labelled again, and
    every group still trains every example of each pass exactly once."""
    import json
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _NODES], capture_output=True, text=True,
                       timeout=550, env={**os.environ, "RAY_ADDRESS": "",
                                         "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-4000:]
    out = json.loads(next(line for line in r.stdout.splitlines()
                          if line.startswith("RESULT "))[7:])
    w = out["where"]
    assert len(set(w["ranks_on"])) == 2  # spread: one rank per node
    assert w["removed"] in w["ranks_on"] and w["removed"] != w["head"]
    assert w["removed"] not in w["after"]  # the re-formed group avoids the dead node
    assert out["restarts"] == 1
    assert out["books"] == {"hard": {"0": True, "1": True}, "kd": {"0": True, "1": True}}
    for name, (per_pass, _) in out["students"].items():
        assert per_pass == [N, N], name
    assert out["stream"]["acked_rows"] == {"hard": 2 * N, "kd": 2 * N}
