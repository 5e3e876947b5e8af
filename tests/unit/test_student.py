"""The student model, its step and losses, and the replica's step logic (KD guard,
adapter, staleness) on plain tables (``sharding = "none"``): the replicas here are
built without a process group; the sharded path is tests/cluster/test_sharded_students.py."""

import numpy as np
import pytest
import torch

from recdistill.data.errors import ConfigError
from recdistill.student.config import StudentConfig
from recdistill.student.losses import build_objective, make_term
from recdistill.student.model import StudentModel, count_parameters
from recdistill.student.train import make_student_optimizer, predict_student, student_step
from recdistill.teacher.model import TeacherModel
from testkit import CFG, tiny_dataset


def test_student_never_reads_privileged_features() -> None:
    data = tiny_dataset()
    assert StudentModel(data.spec, StudentConfig()).feature_names == ("user", "item", "genre")
    with pytest.raises(ConfigError, match=r"features \['history'\] are privileged"):
        StudentModel(data.spec, StudentConfig(features=("user", "history")))
    with pytest.raises(ConfigError, match=r"adapters\.last_hidden = 'nope': the teacher "
                                          r"produces \['last_hidden'\]"):
        StudentModel(data.spec, StudentConfig(adapters={"last_hidden": "nope"}),
                     teacher_dims={"last_hidden": 16})


def test_student_trains_on_teacher_batches_with_extra_keys() -> None:
    """A teacher batch carries the privileged bag too; the student ignores it."""
    data = tiny_dataset(n=128)
    teacher = TeacherModel(data.spec, CFG, device="cpu").eval()
    cfg = StudentConfig(sharding="none", name="kd", embedding_dim=4, hidden=(8,),
                        losses=(make_term("hard_label", 0.5),
                                make_term("prediction_kd", 0.5, temperature=2.0),
                                make_term("feature_kd", 1.0)),
                        adapters={"last_hidden": "last_hidden"})
    student = StudentModel(data.spec, cfg, teacher_dims={"last_hidden": 16})
    # 8 tables' worth of width fewer: the student is far smaller than the teacher
    assert count_parameters(teacher) > 8 * count_parameters(student)
    obj = build_objective(cfg, data.spec.tasks)
    opt = make_student_optimizer(student, cfg)
    losses = []
    for epoch in range(15):
        for arrays in data.train.iter_batches(32, shuffle=True, seed=epoch,
                                              keys=teacher.feature_names):
            b = arrays.to_batch()
            assert "history" in b.sparse.keys()
            with torch.no_grad():
                t = teacher(b.dense, b.sparse)
            losses.append(student_step(student, opt, obj, b, t))
    assert set(losses[0]) == {"hard_label", "prediction_kd", "feature_kd", "loss",
                              "agreement", "label_bce"}
    # the KD terms shrink as the student fits the (fixed) teacher
    assert np.mean([x["prediction_kd"] for x in losses[-4:]]) < \
        np.mean([x["prediction_kd"] for x in losses[:4]])
    assert np.mean([x["feature_kd"] for x in losses[-4:]]) < \
        0.5 * np.mean([x["feature_kd"] for x in losses[:4]])
    logits, labels = predict_student(student, data.test)
    assert logits.shape == labels.shape == (128, 2)


def test_teacher_adapter_and_staleness_weighting() -> None:
    """ExFM adapter: learns a*t+b on the true labels only; the KD term's target is its
    (detached) output. Staleness: the KD terms scale by exp(-staleness / tau)."""
    import math

    import torch.nn.functional as F

    from recdistill.cluster.codec import LabelledBatch, encode
    from recdistill.cluster.config import GroupConfig
    from recdistill.cluster.replica import StudentReplica
    from recdistill.teacher.outputs import TeacherOutputs
    data = tiny_dataset(n=64)
    cfg = StudentConfig(name="exfm", embedding_dim=4, hidden=(8,), teacher_adapter=True,
                        losses=(make_term("prediction_kd", 1.0, temperature=1.0),),
                        sharding="none")
    student = StudentModel(data.spec, cfg)
    assert not any(k.startswith("teacher_adapter") for k in student.export_state_dict())
    b = data.train.take(np.arange(64)).to_batch()
    t = TeacherOutputs(logits=torch.full((64, 2), 2.0))
    obj = build_objective(cfg, data.spec.tasks)
    opt = torch.optim.SGD(student.parameters(), lr=1.0)
    with torch.no_grad():
        before = student(b.dense, b.sparse, t.logits).logits
    parts = student_step(student, opt, obj, b, t)
    # label_bce: the student's own BCE on the true labels before the step (not a term)
    assert parts["label_bce"] == pytest.approx(
        float(F.binary_cross_entropy_with_logits(before, b.labels)), rel=1e-6)
    # identity at the start: adapter loss = BCE(labels, sigmoid(2)), KD target sigmoid(2)
    want = float(F.binary_cross_entropy_with_logits(torch.full((64, 2), 2.0), b.labels))
    assert parts["teacher_adapter"] == pytest.approx(want, rel=1e-6)
    # its gradient is the label BCE's alone: d/db = mean(sigmoid(2) - y) per task
    grad_b = (torch.sigmoid(torch.tensor(2.0)) - b.labels).mean(0) / 2  # mean of 2 tasks
    torch.testing.assert_close(student.teacher_adapter.bias.detach(), -grad_b,
                               rtol=1e-5, atol=1e-6)

    # staleness: a batch labelled by version 5 while version 9 is the newest, tau 2
    group = GroupConfig(StudentConfig(sharding="none", name="stale", embedding_dim=4, hidden=(8,),
                                      staleness_tau=2.0,
                                      losses=(make_term("hard_label", 0.5),
                                              make_term("prediction_kd", 0.5))))
    replica = StudentReplica(group, data.spec, {}, rank=0, world=1)
    arrays = data.train.take(np.arange(32))
    labelled = LabelledBatch(inputs=arrays, logits=encode(torch.zeros(32, 2), "float16"),
                             version=5)
    assert replica.train_on(labelled, newest_version=9).kd_scale == \
        pytest.approx(math.exp(-2.0))
    assert replica.train_on(labelled, newest_version=5).kd_scale == 1.0


def test_train_many_equals_train_on_in_order_and_reports_a_failed_step() -> None:
    """Several steps in one call are the same steps as one call each; a step that fails
    after others ends the call with the steps done (the driver books exactly those)."""
    from recdistill.cluster.codec import LabelledBatch, encode
    from recdistill.cluster.config import GroupConfig
    from recdistill.cluster.replica import StudentReplica
    data = tiny_dataset(n=96)
    group = GroupConfig(StudentConfig(sharding="none", name="many", embedding_dim=4, hidden=(8,),
                                      losses=(make_term("hard_label", 0.5),
                                              make_term("prediction_kd", 0.5))))
    batches = [LabelledBatch(inputs=data.train.take(np.arange(32 * i, 32 * i + 32)),
                             logits=encode(torch.randn(32, 2, generator=torch.Generator()
                                                        .manual_seed(i)), "float16"),
                             version=3) for i in range(3)]
    rows = [None, np.arange(10, 20), None]

    def replica() -> StudentReplica:
        torch.manual_seed(0)
        return StudentReplica(group, data.spec, {}, rank=0, world=1)

    one = replica()
    want = [one.train_on(b, 3, r) for b, r in zip(batches, rows)]
    many = replica()
    got = many.train_many(3, rows, 1, *batches)
    assert got.error is None and len(got.steps) == 3
    for w, g in zip(want, got.steps):
        np.testing.assert_array_equal(g.ids, w.ids)
        assert g.loss == w.loss
    np.testing.assert_array_equal(got.steps[1].ids, batches[1].inputs.ids[10:20])
    for a, b in zip(one.state().state["model"].values(), many.state().state["model"].values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    # the second batch's rows are out of range: one step done, then the error
    bad = replica().train_many(3, [None, np.array([99]), None], 1, *batches)
    assert len(bad.steps) == 1 and "IndexError" in bad.error
    # a first step that fails is an exception of the call (nothing was done)
    with pytest.raises(IndexError):
        replica().train_many(3, [np.array([99])], 1, batches[0])


def test_kd_guard_stops_the_teacher_on_the_tasks_it_turned_off() -> None:
    """Task ``like`` off: the student's update is exactly the one with the teacher's
    ``like`` logit replaced by its own (no KD gradient there), ``click`` still
    distilled; every task off: the KD term weighs nothing (hard labels alone)."""
    import copy

    from recdistill.cluster.codec import LabelledBatch, encode
    from recdistill.cluster.config import GroupConfig
    from recdistill.cluster.replica import StudentReplica
    from recdistill.teacher.outputs import TeacherOutputs
    data = tiny_dataset(n=32)
    group = GroupConfig(StudentConfig(name="g", embedding_dim=4, hidden=(8,), losses=(
        make_term("hard_label", 0.5), make_term("prediction_kd", 0.5)), sharding="none"))
    arrays = data.train.take(np.arange(32))
    logits = torch.linspace(-3, 3, 64).reshape(32, 2)
    labelled = LabelledBatch(arrays, encode(logits, "float32"), logit_dtype="float32")

    def after(off: tuple[str, ...]) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        r = StudentReplica(group, data.spec, {}, rank=0, world=1)
        r.set_kd_guard(off)
        r.train_on(labelled)
        return r.model.state_dict()

    # the same step by hand: the teacher's like column is the student's own logit
    torch.manual_seed(0)
    ref = StudentReplica(group, data.spec, {}, rank=0, world=1)
    model, opt = ref.model, ref.optimizer
    b = arrays.to_table().take(np.arange(32)).to_batch()
    with torch.no_grad():
        own = model(b.dense, b.sparse).logits
    gated = torch.stack([logits[:, 0], own[:, 1]], dim=1)
    student_step(model, opt, ref.objective, b, TeacherOutputs(gated))
    for k, v in after(("like",)).items():
        torch.testing.assert_close(v, model.state_dict()[k], msg=k)
    # and it is not the unguarded step
    free, guarded = after(()), after(("like",))
    assert any(not torch.equal(free[k], guarded[k]) for k in free)
    # every task off: the same as hard labels at weight 0.5 and no KD
    torch.manual_seed(0)
    hard = StudentReplica(GroupConfig(StudentConfig(
        name="h", sharding="none", embedding_dim=4, hidden=(8,),
        losses=(make_term("hard_label", 0.5), make_term("prediction_kd", 0.0)))),
        data.spec, {}, rank=0, world=1)
    hard.train_on(copy.copy(labelled))
    for k, v in after(("click", "like")).items():
        torch.testing.assert_close(v, hard.model.state_dict()[k], msg=k)


def test_kd_guard_keeps_the_labels_of_multitask_kd_and_stops_feature_kd() -> None:
    """Every task off: multi-task KD (fixed weights, a = 0.8) steps exactly as its
    hard-label part, 0.2 BCE, does alone; feature KD gives the trunk no gradient."""
    from recdistill.cluster.codec import LabelledBatch, encode
    from recdistill.cluster.config import GroupConfig
    from recdistill.cluster.replica import StudentReplica
    data = tiny_dataset(n=32)
    arrays = data.train.take(np.arange(32))
    labelled = LabelledBatch(arrays, encode(torch.full((32, 2), 3.0), "float32"),
                             {"last_hidden": encode(torch.full((32, 16), 5.0), "float32")},
                             logit_dtype="float32", feature_dtype="float32")

    def stepped(losses, off=(), adapters=None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        g = GroupConfig(StudentConfig(sharding="none", name="g", embedding_dim=4, hidden=(8,),
                                      losses=losses, adapters=adapters or {}))
        r = StudentReplica(g, data.spec, {"last_hidden": 16}, rank=0, world=1)
        r.set_kd_guard(off)
        r.train_on(labelled)
        return {k: v for k, v in r.model.state_dict().items()
                if not k.startswith("adapters")}

    mt = (make_term("multitask_kd", 1.0, temperature=1.0, alpha=0.8),)
    hard = (make_term("hard_label", 0.2),)
    for k, v in stepped(mt, ("click", "like")).items():
        torch.testing.assert_close(v, stepped(hard)[k], msg=k)
    feat = (make_term("hard_label", 1.0), make_term("feature_kd", 1.0))
    only = (make_term("hard_label", 1.0),)
    adapters = {"last_hidden": "last_hidden"}
    guarded = stepped(feat, ("click", "like"), adapters)
    for k, v in stepped(only, (), adapters).items():
        torch.testing.assert_close(v, guarded[k], msg=k)
    assert any(not torch.equal(v, stepped(feat, (), adapters)[k]) for k, v in guarded.items())
