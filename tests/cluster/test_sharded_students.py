"""Sharded students: TorchRec row-wise tables over a group's replicas with the fused
FBGEMM optimizer, their DCP state (2 replicas -> 1), the student artifact, its
``jobs.predict`` scores and its ``torch.export`` serving model, and ``[sweep]``.

Exactly-once training of a 2-replica row-wise group, and its restart from a snapshot
when a replica is killed, are in tests/cluster/test_cluster.py (its ``kd`` group)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from recdistill.cluster.config import GroupConfig
from recdistill.data.errors import ConfigError
from recdistill.student.config import LossTerm, StudentConfig
from recdistill.student.metrics import Metrics, task_metrics
from recdistill.teacher.checkpoint import CheckpointError
from testkit import tiny_dataset


@pytest.mark.timeout(300)
def _same(a: Metrics, b: Metrics) -> None:
    """Metrics of the same model's logits (to 1e-6: shards sum in another order)."""
    for task, m in a.items():
        for key in ("logloss", "calibration", "auc"):
            assert m[key] == pytest.approx(b[task][key], abs=1e-6), (task, key)
        assert m["n"] == b[task]["n"]


def test_state_saved_by_two_replicas_loads_into_one_with_identical_metrics(ray_cluster,
                                                                          tmp_path) -> None:
    """DCP reshards: the row-wise state 2 replicas wrote (after training) gives one
    replica the same serving logits, and the same best weights; so do the serving
    weights of the artifact they write, in a plain model."""
    import ray

    from recdistill.cluster.codec import LabelledBatch
    from recdistill.cluster.replica import StudentReplica
    from recdistill.data.spec import FeatureSpec
    data = tiny_dataset(n=256, seed=4)
    spec: FeatureSpec = data.spec
    group = GroupConfig(StudentConfig(name="s", embedding_dim=4, hidden=(8,),
                                      sharding="row_wise", embedding_lr=0.1), replicas=2)
    actor = ray.remote(StudentReplica)
    two = [actor.remote(group, spec, {}, r, 2) for r in range(2)]
    addr, port = ray.get(two[0].address.remote())
    ray.get([r.setup.remote(addr, port) for r in two])
    for k, arrays in enumerate(data.train.iter_batches(64)):
        batch = LabelledBatch(inputs=arrays, logits=np.zeros((64, 2), np.float32),
                              features={}, version=0)
        ray.get([r.train_many.remote(None, [None], 1, batch) for r in two])
        if k == 1:
            ray.get([r.keep_best.remote() for r in two])  # best != current
    table = ray.put(data.test)
    want = ray.get([r.evaluate.remote(table, 64) for r in two])
    want_best = ray.get([r.evaluate.remote(table, 64, True) for r in two])
    state = ray.get([r.save_state.remote(str(tmp_path / "state")) for r in two])[0]
    # the serving weights of the best state, written by both replicas, load into a
    # plain model that gives the best state's logits
    from recdistill.student.artifact import load_artifact, write_artifact
    from recdistill.student.train import predict_student
    write_artifact(tmp_path / "student",
                   lambda d: ray.get([r.save_serving.remote(d) for r in two]),
                   cfg=group.student, spec=spec, fingerprint={}, metrics={})
    served, labels = predict_student(load_artifact(tmp_path / "student")[0], data.test, 64)
    _same(task_metrics(served, labels, spec.tasks), want_best[0].compute())
    for r in two:
        ray.kill(r)
    one = actor.remote(dataclasses.replace(group, replicas=1), spec, {}, 0, 1)
    addr, port = ray.get(one.address.remote())
    ray.get(one.setup.remote(addr, port, state))
    got = ray.get(one.evaluate.remote(table, 64)).compute()
    got_best = ray.get(one.evaluate.remote(table, 64, True)).compute()
    ray.kill(one)
    _same(want[0].compute(), want[1].compute())  # both replicas: the same model
    _same(got, want[0].compute())
    _same(got_best, want_best[0].compute())
    # the two states differ
    assert abs(got["click"]["logloss"] - got_best["click"]["logloss"]) > 1e-4


def test_sharded_step_matches_the_dense_model_with_the_same_weights() -> None:
    """World of one: the sharded student computes the plain one's logits from the same
    weights, and its fused row-wise Adagrad touches only the rows in the batch."""
    from recdistill.student.model import StudentModel
    from recdistill.student.sharding import make_sharded_optimizer, shard_student
    from recdistill.student.losses import build_objective
    from recdistill.student.train import student_step
    from recdistill.teacher.sharding import init_distributed
    data = tiny_dataset(n=128, seed=5)
    cfg = StudentConfig(name="s", embedding_dim=4, hidden=(8,), sharding="row_wise",
                        embedding_lr=0.5)
    plain = StudentModel(data.spec, cfg)
    pg = init_distributed(torch.device("cpu"))
    net = shard_student(StudentModel(data.spec, cfg, table_device="meta"), cfg, pg,
                        torch.device("cpu"), 0)
    net.load_state_dict(plain.state_dict())
    batch = next(iter(data.train.iter_batches(32, keys=plain.feature_names))).to_batch()
    with torch.no_grad():
        torch.testing.assert_close(net(batch.dense, batch.sparse).logits,
                                   plain(batch.dense, batch.sparse).logits)
    before = {k: v.clone() for k, v in plain.state_dict().items() if "embedding_bags" in k}
    student_step(net, make_sharded_optimizer(net, cfg), build_objective(cfg, data.spec.tasks),
                 batch, None)
    after = {k: v.local_shards()[0].tensor for k, v in net.state_dict().items()
             if "embedding_bags" in k}
    for key, old in before.items():
        table = key.split(".")[2][2:]  # ebc.embedding_bags.s_<table>.weight
        touched = {i for f in data.spec.sparse if f.table == table
                   and f.name in plain.feature_names
                   for i in batch.sparse[f.name].values().tolist()}
        changed = set(torch.nonzero((after[key] - old).abs().sum(1) > 0).flatten().tolist())
        assert changed == touched, key


def test_serving_export_matches_the_eager_student(tmp_path) -> None:
    from recdistill.student.artifact import export_inputs, export_serving, load_export
    from recdistill.student.model import StudentModel
    data = tiny_dataset(n=256, seed=6)
    model = StudentModel(data.spec, StudentConfig(name="s", embedding_dim=4,
                                                  hidden=(8,))).eval()
    batches = [b.to_batch() for b in data.train.iter_batches(50, keys=model.feature_names)]
    export_serving(model, batches[0], tmp_path / "s.pt2")
    exported = load_export(tmp_path / "s.pt2")
    with torch.no_grad():
        for batch in (batches[0], data.test.take(np.arange(7), model.feature_names)
                      .to_batch()):  # another batch size and id count
            torch.testing.assert_close(exported(*export_inputs(batch)),
                                       model(batch.dense, batch.sparse).logits)
    (tmp_path / "bad.pt2").write_bytes(b"not a program")
    with pytest.raises(CheckpointError, match="bad.pt2"):
        load_export(tmp_path / "bad.pt2")


def test_tampered_artifact_fails_with_its_path(tmp_path) -> None:
    from recdistill.student.artifact import load_artifact, write_artifact
    from recdistill.student.model import StudentModel
    data = tiny_dataset(n=64, seed=7)
    cfg = StudentConfig(name="s", embedding_dim=4, hidden=(8,), aux_heads=True,
                        losses=(LossTerm("hard_label"), LossTerm("aux_head_kd")))
    model = StudentModel(data.spec, cfg)

    def weights(d: str) -> None:
        import torch.distributed.checkpoint as dcp
        dcp.save(model.export_state_dict(), checkpoint_id=d, no_dist=True)
    path = write_artifact(tmp_path / "s", weights, cfg=cfg, spec=data.spec,
                          fingerprint={}, metrics={})
    loaded, _, meta = load_artifact(path)
    assert not hasattr(loaded, "aux_heads") or loaded.aux_heads is None  # serving only
    assert meta["serving_parameters"] == sum(v.numel() for v in
                                             model.export_state_dict().values())
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, model.state_dict()[k])
    (Path(path) / "student.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=str(Path(path) / "student.json")):
        load_artifact(path)
    with pytest.raises(CheckpointError, match="not a student artifact"):
        load_artifact(tmp_path)


def test_sweep_expands_into_sizes_and_kd_settings(tmp_path) -> None:
    from recdistill.cluster.sweep import pareto
    from recdistill.jobs.distill_config import load_config
    path = tmp_path / "sweep.toml"
    path.write_text("[sweep]\nembedding_dim = [4, 8]\nhidden = [[16], [32, 8]]\n"
                    'loss = ["prediction_kd", "multitask_kd"]\nkd_weight = [0.5]\n'
                    "temperature = [2.0]\n")
    cfg = load_config(str(path), seed=3)
    names = [g.name for g in cfg.groups]
    assert len(names) == 4 * 3  # 4 sizes x (no KD + 2 KD kinds)
    assert names[:3] == ["baseline", "prediction_kd_e4_h16_w0.5_t2",
                         "multitask_kd_e4_h16_w0.5_t2"]
    assert names[3] == "baseline_e4_h32-8"
    g = cfg.groups[1].student
    assert (g.embedding_dim, g.hidden, g.seed) == (4, (16,), 3)
    assert [(t.name, t.weight, t.params) for t in g.losses] == [
        ("hard_label", 0.5, {}), ("prediction_kd", 0.5, {"temperature": 2.0})]
    assert cfg.groups[2].student.losses[0].params == {"temperature": 2.0, "alpha": 0.5,
                                                      "uncertainty": True}
    path.write_text('[sweep]\nloss = ["feature_kd"]\n')
    with pytest.raises(ConfigError, match=r"sweep\.loss: unknown \['feature_kd'\]"):
        load_config(str(path))
    # the Pareto view of a report: per-size gain, frontier by size
    report = {"teacher": {"test": {"t": {"auc": 0.9}}},
              "config": {"groups": [{"student": {"name": n, "embedding_dim": d,
                                                 "hidden": [8]}}
                                    for n, d in (("baseline", 4), ("kd4", 4),
                                                 ("baseline_e8_h8", 8), ("kd8", 8))]},
              "students": {"baseline": {"parameters": 10, "kd": [], "test": {"t": {"auc": 0.7}}},
                           "kd4": {"parameters": 10, "kd": ["x"], "test": {"t": {"auc": 0.75}}},
                           "baseline_e8_h8": {"parameters": 20, "kd": [],
                                              "test": {"t": {"auc": 0.74}}},
                           "kd8": {"parameters": 20, "kd": ["x"], "test": {"t": {"auc": 0.8}}}}}
    view = pareto(report)
    points = {p["group"]: p for p in view["points"]}
    assert points["kd4"]["gain_vs_same_size"] == pytest.approx(0.05)
    assert points["kd8"]["gain_vs_same_size"] == pytest.approx(0.06)
    assert points["baseline"]["gain_vs_same_size"] is None
    assert [p["group"] for p in view["points"] if p["frontier"]] == ["kd4", "kd8"]
    assert view["teacher_test_auc"] == 0.9


def test_too_many_actors_for_the_machine_fails_before_ray_starts(monkeypatch) -> None:
    import recdistill.cluster.session as session
    from recdistill.cluster.sweep import sweep_groups
    from recdistill.cluster.config import DistillConfig, SweepConfig
    cores = os.cpu_count() or 1
    n = session.ACTORS_PER_CPU * cores  # with the 3 default teacher members: too many
    sweep = SweepConfig(embedding_dim=tuple(4 * (i + 1) for i in range(n // 2 + 1)))
    cfg = DistillConfig(groups=sweep_groups(sweep))
    started = []
    monkeypatch.setattr(session, "start_local_ray", lambda *a, **k: started.append(a))
    with pytest.raises(ConfigError, match=r"actor processes .* at most"):
        session.start_ray("", cfg)
    assert not started




@pytest.mark.timeout(180)
def test_a_save_waiting_on_a_replica_that_never_comes_fails_naming_it(ray_cluster,
                                                                     tmp_path) -> None:
    """Checkpoint I/O waits ``checkpoint_timeout_s`` (here 2 s) on a gloo group of its
    own, not training's 30 s: replica 0 saving alone fails after 2 s naming the group,
    the replica, the call and the key; the driver's wait (``get_all``) names the actor
    that has not answered, and raises the first failure without waiting for the rest."""
    import time

    import ray

    from recdistill.cluster.calls import get_all
    from recdistill.cluster.replica import StudentReplica
    data = tiny_dataset(n=64)
    group = GroupConfig(StudentConfig(name="io", embedding_dim=4, hidden=(8,),
                                      sharding="row_wise"), replicas=2,
                        checkpoint_timeout_s=2)
    actor = ray.remote(StudentReplica)
    two = [actor.options(name=f"student-io-{r}").remote(group, data.spec, {}, r, 2)
           for r in range(2)]
    try:
        addr, port = ray.get(two[0].address.remote(), timeout=60)
        ray.get([r.setup.remote(addr, port) for r in two], timeout=120)
        path = str(tmp_path / "c000000")
        with pytest.raises(ray.exceptions.RayTaskError) as e:
            ray.get(two[0].save_state.remote(path), timeout=60)
        msg = str(e.value)
        assert (f"group io replica 0/2: save_state to {path} failed (checkpoint I/O waits "
                "at most checkpoint_timeout_s = 2 s on the other ranks)") in msg
        assert "2000ms" in msg  # gloo's own words: the I/O group's timeout, not 30 s
    finally:
        for r in two:
            ray.kill(r)

    @ray.remote(num_cpus=0)
    class Slow:
        def call(self, seconds: float) -> float:
            if seconds < 0:
                raise ValueError("rank died")
            time.sleep(seconds)
            return seconds

    slow = [Slow.options(name=f"slow-{i}").remote() for i in range(3)]
    try:
        assert get_all([s.call.remote(0) for s in slow], "c", ["a", "b", "c"], 30) == [0] * 3
        with pytest.raises(ray.exceptions.GetTimeoutError,
                           match=r"^save_state to /s: no answer within 2 s from slow-0, "
                                 r"slow-2$"):
            get_all([s.call.remote(t) for s, t in zip(slow, (60, 0, 60))],
                    "save_state to /s", ["slow-0", "slow-1", "slow-2"], timeout=2)
        t0 = time.monotonic()  # a failed call raises before the others answer
        with pytest.raises(ray.exceptions.RayTaskError, match="rank died"):
            get_all([s.call.remote(t) for s, t in zip(slow, (60, -1, 60))],
                    "setup", ["slow-0", "slow-1", "slow-2"], timeout=50)
        assert time.monotonic() - t0 < 20
    finally:
        for r in slow:
            ray.kill(r)


def test_a_teacher_load_waiting_on_a_rank_that_never_comes_fails_naming_it(ray_cluster,
                                                                          tmp_path) -> None:
    """Teacher ranks load checkpoints on a gloo group of their own too
    (``teacher_group.checkpoint_timeout_s``, here 2 s): rank 0 reloading alone fails
    after 2 s naming the rank, the checkpoint and the key."""
    import ray

    from recdistill.cluster.actors import TeacherRank
    from recdistill.teacher.checkpoint import save_teacher
    from recdistill.teacher.model import TeacherModel
    from testkit import CFG
    data = tiny_dataset(n=64)
    path = str(tmp_path / "teacher")
    save_teacher(TeacherModel(data.spec, CFG, device="cpu"), path, spec=data.spec, cfg=CFG,
                 info={"step": 3})
    actor = ray.remote(TeacherRank)
    two = [actor.options(name=f"teacher-io-{r}").remote(r, 2, path, (), 64, io_timeout_s=2)
           for r in range(2)]
    try:
        addr, port = ray.get(two[0].address.remote(), timeout=60)
        assert [i["version"] for i in ray.get([t.setup.remote(addr, port) for t in two],
                                              timeout=120)] == [3, 3]
        with pytest.raises(ray.exceptions.RayTaskError) as e:
            ray.get(two[0].reload.remote(path), timeout=60)
        msg = str(e.value)
        assert f"teacher rank 0/2: {path}: cannot load checkpoint" in msg
        assert "Timed out waiting 2000ms" in msg  # gloo's: the I/O group's 2 s, not 30 s
        assert msg.rstrip().endswith("(checkpoint I/O waits at most teacher_group."
                                     "checkpoint_timeout_s = 2 s on the other ranks)")
    finally:
        for t in two:
            ray.kill(t)

