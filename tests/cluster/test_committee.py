"""A committee of teachers: 2 members x 2 sharded ranks label one stream on a real Ray
cluster; every id is trained once per group per pass, a member's rank killed mid-pass
is survived, and the students see the mean of the members' logits."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from recdistill.cluster.codec import LabelledBatch, committee_outputs, encode
from recdistill.cluster.committee import Committee
from recdistill.cluster.teachers import teacher_dims
from recdistill.cluster.config import MemberConfig, RunOptions, StreamConfig
from recdistill.cluster.data import pass_shards, train_dataset
from recdistill.cluster.pipeline import Hooks, OnlineDistillation
from recdistill.data.spec import BatchArrays
from recdistill.teacher.checkpoint import load_teacher_state, save_teacher
from recdistill.teacher.model import TeacherModel, feature_dims
from testkit import N, assert_exactly_once, online_setup
from testkit import CFG, tiny_dataset

# member b reads no privileged feature: the lead (a) reads the union of both
B = dataclasses.replace(CFG, use_privileged=False, seed=1)


def _committee(tmp_path: Path, **kw):
    cfg, data, dims = online_setup(tmp_path, **kw)
    save_teacher(TeacherModel(data.spec, B, device="cpu"), tmp_path / "teacher-b",
                 spec=data.spec, cfg=B, info={"step": 7})
    cfg = dataclasses.replace(cfg, teachers=(
        MemberConfig("a", str(tmp_path / "teacher"), CFG), MemberConfig("b", teacher=B)))
    # a committee's features are both members' side by side (a reads one more table)
    a, b = feature_dims(data.spec, CFG), feature_dims(data.spec, B)
    assert teacher_dims(cfg, data.spec) == {k: a[k] + b[k] for k in a}
    assert a["last_hidden"] == b["last_hidden"] == dims["last_hidden"]
    return cfg, data, teacher_dims(cfg, data.spec)


def test_select_keeps_the_named_features() -> None:
    t = tiny_dataset(n=5).train
    a = t.take(np.arange(5))
    s = a.select(("item", "genre"))
    full, part = a.to_batch().sparse.to_dict(), s.to_batch().sparse.to_dict()
    assert list(part) == ["item", "genre"]
    for k in part:
        assert torch.equal(part[k].values(), full[k].values())
        assert torch.equal(part[k].lengths(), full[k].lengths())


def test_committee_outputs_are_the_members_mean() -> None:
    """Logits: the members' mean; features: every member's side by side, the lead's
    columns first."""
    rng = np.random.default_rng(0)
    arrays = tiny_dataset(n=4).train.take(np.arange(4))
    la, lb = (torch.tensor(rng.normal(size=(4, 2)), dtype=torch.float32) for _ in "ab")
    hb = torch.tensor(rng.normal(size=(4, 3)), dtype=torch.float32)
    a = LabelledBatch(arrays, encode(la, "float32"), {"last_hidden": encode(la, "float32")},
                      version=3, logit_dtype="float32", feature_dtype="float32", member="a")
    b = LabelledBatch(None, encode(lb, "float32"), {"last_hidden": encode(hb, "float32")},
                      version=7, logit_dtype="float32", feature_dtype="float32", member="b")
    out = committee_outputs((a, b), np.array([2, 0]))
    torch.testing.assert_close(out.logits, ((la + lb) / 2)[[2, 0]])
    torch.testing.assert_close(out.members["b"], lb[[2, 0]])
    assert out.features["last_hidden"].shape == (2, 5)
    torch.testing.assert_close(out.features["last_hidden"],
                               torch.cat([la, hb], dim=1)[[2, 0]])
    assert out.version == 3  # the lead's
    single = committee_outputs((a,))
    assert single.members == {} and torch.equal(single.logits, la)


@pytest.mark.timeout(300)
def test_combined_logits_equal_the_mean_of_the_members(ray_cluster, tmp_path) -> None:
    cfg, data, _ = _committee(tmp_path)
    # labelled batches of one student batch each (64 rows): 2 calls' worth per rank
    cfg = dataclasses.replace(cfg, stream=StreamConfig(logit_dtype="float32"),
                              teacher_group=dataclasses.replace(
                                  cfg.teacher_group,
                                  label_batch_size=cfg.teacher_group.batch_size))
    labels = Committee.teacher(cfg)
    assert labels.lead.read_keys == ("user", "item", "history", "genre")
    try:
        labels.start()
        labels.start_pass(pass_shards(train_dataset(data.train), data.train, 0, 0, 2), 0)
        labels.request(2, 0)
        ray.wait(labels.pending_refs(), num_returns=4, timeout=120)
        rnd = labels.collect()
        assert len(rnd.batches) == 4 and all(len(ref) == 2 for *_, ref in rnd.batches)
        # batch i of the call from every rank, then batch i + 1
        assert [(k, i) for k, i, _, _ in rnd.batches] == [(0, 0), (1, 0), (0, 1), (1, 1)]
        models = {}
        for name, path, tcfg in (("a", tmp_path / "teacher", CFG),
                                 ("b", tmp_path / "teacher-b", B)):
            m = TeacherModel(data.spec, tcfg, device="cpu")
            load_teacher_state(m, path)
            models[name] = m.eval()
        for _, _, ids, refs in rnd.batches:
            lead, member = ray.get(list(refs))
            assert member.inputs is None and np.array_equal(lead.inputs.ids, ids)
            got = committee_outputs((lead, member))
            want = {}
            for name, m in models.items():
                arrays: BatchArrays = lead.inputs.select(m.feature_names)
                batch = arrays.to_batch()
                with torch.no_grad():
                    want[name] = m(batch.dense, batch.sparse)
            hidden = torch.cat([want[n].features["last_hidden"] for n in "ab"], dim=1)
            torch.testing.assert_close(got.features["last_hidden"], hidden, rtol=1e-2,
                                       atol=1e-2)  # fp16 on the way
            want = {n: o.logits for n, o in want.items()}
            torch.testing.assert_close(got.members["a"], want["a"], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(got.members["b"], want["b"], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(got.logits, (want["a"] + want["b"]) / 2,
                                       rtol=1e-4, atol=1e-5)
    finally:
        labels.shutdown()


@pytest.mark.timeout(300)
def test_committee_trains_every_id_once_and_survives_a_member_rank(ray_cluster,
                                                                   tmp_path) -> None:
    cfg, data, dims = _committee(tmp_path, max_inflight=4)
    killed: dict[str, int] = {}

    def kill_once(group: str, acked: int) -> None:
        if group == "kd" and acked == 3 and not killed:  # rank 1 of member b (a follower)
            pid = ray_cluster.get(run.labels.members[1].actors[1].pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed["pid"] = pid

    run = OnlineDistillation(cfg, data, dims, RunOptions(progress=False),
                             Hooks(after_ack=kill_once))
    try:
        body = run.run().to_json()
    finally:
        run.shutdown()
    assert killed, "the failure was injected"
    assert_exactly_once(run, data, passes=2)
    t = body["teacher"]
    assert t["restarts"] == 1
    assert set(t["members"]) == {"a", "b"}
    assert body["students"]["kd"]["examples_per_pass"] == [N, N]
    assert body["stream"]["redelivered"] == 0 or body["stream"]["replayed_rows"] > 0
    # each member labelled every example of both passes at least once (the re-formed
    # ranks' usage: all but the batches the replay skipped), the lead's count is the
    # committee's
    u = t["usage"]
    skipped = body["stream"]["skipped_batches"] * cfg.label_rows
    assert u["members"]["a"]["examples"] + skipped >= 2 * N
    assert u["members"]["b"]["examples"] >= N
    assert u["examples"] == u["members"]["a"]["examples"]
    assert u["members"]["b"]["cpu_s"] > 0  # a member's labelling calls are counted
    assert u["cpu_s"] == pytest.approx(sum(m["cpu_s"] for m in u["members"].values()))
    assert t["parameters"] == sum(m["parameters"] for m in t["members"].values())


def test_fm_bi_interaction_by_hand() -> None:
    from recdistill.teacher.model import bi_interaction
    # two fields of width 2: v1 = (1, 2), v2 = (3, -1): pairwise products (3, -2)
    v = torch.tensor([[[1.0, 2.0], [3.0, -1.0]]])
    torch.testing.assert_close(bi_interaction(v), torch.tensor([[3.0, -2.0]]))


def test_every_interaction_gives_the_widths_it_declares() -> None:
    from recdistill.teacher.model import feature_dims
    data = tiny_dataset(n=8)
    b = data.train.take(np.arange(8))
    for kind, width in (("cross", 80), ("dot", 16 + 4 * 5 // 2), ("fm", 96)):
        cfg = dataclasses.replace(CFG, interaction=kind)
        m = TeacherModel(data.spec, cfg, device="cpu")
        batch = b.select(m.feature_names).to_batch()
        out = m(batch.dense, batch.sparse)
        assert feature_dims(data.spec, cfg)["interaction"] == width
        assert {k: v.shape[1] for k, v in out.features.items()} == \
            feature_dims(data.spec, cfg)
        assert out.logits.shape == (8, 2)


def test_guard_turns_off_tasks_the_baseline_reached() -> None:
    from recdistill.cluster.evaluation import guard_off
    teacher = {"click": {"auc": 0.80}, "like": {"auc": 0.70}}
    curve = [{"valid": {"click": {"auc": 0.75}, "like": {"auc": 0.69}}},
             {"valid": {"click": {"auc": 0.78}, "like": {"auc": 0.70}}}]
    assert guard_off(teacher, curve[:1], ()) == ()
    assert guard_off(teacher, curve, ()) == ("like",)  # reached 0.70: off
    assert guard_off(teacher, curve[:1], ("like",)) == ("like",)  # off stays off
    assert guard_off(teacher, [], ()) == ()


def test_teachers_table_parses_with_errors_naming_the_member(tmp_path) -> None:
    from recdistill.data.errors import ConfigError
    from recdistill.jobs.distill_config import load_config
    path = tmp_path / "c.toml"
    path.write_text('[teacher]\nembedding_dim = 16\n[[teachers]]\nname = "a"\n'
                    '[[teachers]]\nname = "b"\ninteraction = "dot"\ncheckpoint = "x/b"\n')
    cfg = load_config(str(path), checkpoint="runs/c")
    assert [(m.name, m.checkpoint, m.teacher.embedding_dim, m.teacher.interaction)
            for m in cfg.members] == [("a", "runs/c", 16, "cross"), ("b", "x/b", 16, "dot")]
    path.write_text('[[teachers]]\nname = "a"\nembeding_dim = 8\n')
    with pytest.raises(ConfigError, match=r"c\.toml: teachers\.a\.embeding_dim: unknown key"):
        load_config(str(path))
    path.write_text('[[teachers]]\nname = "a"\n[[teachers]]\nname = "a"\n')
    with pytest.raises(ConfigError, match=r"teachers: duplicate member names \['a'\]"):
        load_config(str(path))
    path.write_text('teachers = []\n')
    assert [m.name for m in load_config(str(path)).members] == ["teacher"]


def test_train_teacher_member_runs(tmp_path) -> None:
    from recdistill.data.errors import ConfigError
    from recdistill.jobs.train_teacher import parse_args
    runs = parse_args(["--member", "all", "--checkpoint", str(tmp_path / "t"), "--epochs", "2"])
    assert [(j.checkpoint, c.interaction, c.use_privileged, c.epochs) for j, c in runs] == [
        (str(tmp_path / "t"), "cross", False, 2),
        (str(tmp_path / "t-dcn_priv"), "cross", True, 2),
        (str(tmp_path / "t-dlrm"), "dot", False, 2)]
    assert runs[1][0].report == str(tmp_path / "t-dcn_priv") + "_report.json"
    (only,) = parse_args(["--member", "dlrm"])
    assert only[0].checkpoint == "runs/distill/teacher-dlrm" and only[0].data == "movielens"
    with pytest.raises(ConfigError, match=r"--member nope: the committee has \['dcn', "):
        parse_args(["--member", "nope"])


@pytest.mark.timeout(400)
def test_committee_precompute_stores_mean_and_member_logits(ray_cluster, tmp_path) -> None:
    from recdistill.cluster.codec import decode
    from recdistill.cluster.soft_labels import Manifest, read_split
    from recdistill.jobs.precompute import run as precompute
    cfg, data, dims = _committee(tmp_path)
    precompute(cfg, str(tmp_path / "labels"), part_rows=256, progress=False, dataset=data)
    m = Manifest.load(tmp_path / "labels")
    assert m.members == ["a", "b"] and m.keys == ["user", "item", "history", "genre"]
    # the features stored are both members' side by side, as online
    assert m.features == {"last_hidden": dims["last_hidden"]} == {"last_hidden": 32}
    for split in ("train", "test"):
        s = read_split(tmp_path / "labels", split)
        assert set(s.members) == {"a", "b"} and len(s.ids) == N
        assert s.features["last_hidden"].shape == (N, 32)
        mean = (decode(s.members["a"], "float16") + decode(s.members["b"], "float16")) / 2
        # stored in fp16 after averaging: within half an fp16 step of the mean
        torch.testing.assert_close(decode(s.logits, "float16"), mean, rtol=1e-3, atol=1e-3)
    # students train from it (the readers hand the members' logits on too)
    job = OnlineDistillation(cfg, data, dims, RunOptions(
        progress=False, soft_labels=str(tmp_path / "labels")))
    try:
        body = job.run().to_json()
    finally:
        job.shutdown()
    assert_exactly_once(job, data, passes=2)
    assert body["students"]["kd"]["examples_per_pass"] == [N, N]
