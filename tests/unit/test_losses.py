"""Loss values checked against hand computation; gradients go where they should."""

import math

import numpy as np
import pytest
import torch

from recdistill.data.errors import ConfigError
from recdistill.data.spec import Batch, ExampleTable, FeatureSpec, SparseFeature
from recdistill.student.config import StudentConfig
from recdistill.student.losses import (AuxHeadKD, FeatureKD, HardLabel, LogitMSE, MultiTaskKD,
                                       PredictionKD, aux_head_kd, build_objective, feature_kd,
                                       hard_label, logit_mse, make_term, multitask_kd,
                                       prediction_kd)
from recdistill.student.relational import ListwiseKD, RelationKD, listwise_kd, relation_kd
from recdistill.student.model import StudentModel, StudentOutputs
from recdistill.student.train import make_student_optimizer, mask_labels, student_step
from recdistill.teacher.outputs import TeacherOutputs

LN2 = math.log(2.0)


def out(s, tasks=("a", "b")) -> StudentOutputs:
    s = torch.tensor(s, dtype=torch.float32)
    return StudentOutputs(logits=s, tasks=tasks[: s.shape[1]])


def teach(t, **features) -> TeacherOutputs:
    return TeacherOutputs(torch.tensor(t, dtype=torch.float32),
                          {k: torch.tensor(v, dtype=torch.float32) for k, v in features.items()})


def batch(labels) -> Batch:
    y = torch.tensor(labels, dtype=torch.float32)
    return Batch(dense=torch.zeros(len(y), 0), sparse=None, labels=y,  # type: ignore[arg-type]
                 ids=torch.arange(len(y)))


def test_prediction_kd_matches_hand_computation() -> None:
    # T = 2: p_t = sigmoid(1) = 0.7311, p_s = 0.5; BCE = ln 2 for any target; * T^2 = 4
    loss = prediction_kd(out([[0.0]]), teach([[2.0]]), batch([[1.0]]),
                         PredictionKD(temperature=2.0))
    assert loss.item() == pytest.approx(4 * LN2, rel=1e-6)
    # T = 1, s = 1, t = -1: p_t = 0.268941, p_s = 0.731059
    pt, ps = 1 / (1 + math.e), 1 / (1 + math.exp(-1))
    hand = -(pt * math.log(ps) + (1 - pt) * math.log(1 - ps))  # = 1.044320
    loss = prediction_kd(out([[1.0]]), teach([[-1.0]]), batch([[0.0]]), PredictionKD())
    assert loss.item() == pytest.approx(hand, rel=1e-6)
    assert hand == pytest.approx(1.044320, rel=1e-6)


def test_hard_label_masks_missing_labels_and_weights_tasks() -> None:
    s = [[0.0, 2.0]]
    # task a: -ln 0.5 = 0.693147; task b (y=0): -ln(1 - sigmoid 2) = 2.126928
    b_hand = -math.log(1 - 1 / (1 + math.exp(-2)))
    assert hard_label(out(s), None, batch([[1.0, 0.0]]), HardLabel()).item() == \
        pytest.approx((LN2 + b_hand) / 2, rel=1e-6)
    assert hard_label(out(s), None, batch([[1.0, float("nan")]]), HardLabel()).item() == \
        pytest.approx(LN2, rel=1e-6)
    weighted = hard_label(out(s), None, batch([[1.0, 0.0]]), HardLabel({"a": 3.0}))
    assert weighted.item() == pytest.approx((3 * LN2 + b_hand) / 4, rel=1e-6)


def test_logit_mse_and_feature_kd() -> None:
    assert logit_mse(out([[1.0, 2.0]]), teach([[0.0, 0.0]]), batch([[0, 0]]),
                     LogitMSE()).item() == pytest.approx(2.5)
    s = StudentOutputs(logits=torch.zeros(1, 1), adapted={"h": torch.tensor([[3.0, 4.0]])})
    t = teach([[0.0]], h=[[4.0, 3.0]])
    assert feature_kd(s, t, batch([[0]]), FeatureKD("mse")).item() == pytest.approx(1.0)
    # cos = (12 + 12) / 25 = 0.96
    assert feature_kd(s, t, batch([[0]]), FeatureKD("cosine")).item() == \
        pytest.approx(0.04, abs=1e-6)
    with pytest.raises(ConfigError, match="feature_kd.metric"):
        FeatureKD("l1")


def test_relation_kd_matches_hand_computation() -> None:
    """Student rows orthogonal (G_s = I), teacher rows parallel (G_t = all ones): the
    off-diagonal differences are 1, so L = 2 / 4. Widths may differ; the teacher's
    scale does not count."""
    s = StudentOutputs(logits=torch.zeros(2, 1),
                       features={"last_hidden": torch.tensor([[2.0, 0.0], [0.0, 0.5]])})
    for z in ([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], [[3.0, 0.0, 0.0], [7.0, 0.0, 0.0]]):
        got = relation_kd(s, teach([[0.0], [0.0]], last_hidden=z), batch([[0], [0]]),
                          RelationKD())
        assert got.item() == pytest.approx(0.5)
    # the same geometry: nothing to learn
    same = teach([[0.0], [0.0]], last_hidden=[[0.0, 5.0], [1.0, 0.0]])
    assert relation_kd(s, same, batch([[0], [0]]), RelationKD()).item() == \
        pytest.approx(0.0, abs=1e-7)
    with pytest.raises(KeyError, match="teacher sent no feature 'interaction'"):
        relation_kd(s, same, batch([[0], [0]]), RelationKD(teacher_feature="interaction"))


def test_listwise_kd_matches_hand_computation() -> None:
    """Rows 0 and 1 are user 5's list, row 2 user 7's alone (no list: left out).
    Teacher probabilities 0.8, 0.2 normalise to q = (0.8, 0.2); a student at 0.5, 0.5
    gives r = (0.5, 0.5): L = -(0.8 ln 0.5 + 0.2 ln 0.5) = ln 2. A student at 0.4, 0.1
    has the teacher's order and ratios, r = q: L = H(q) whatever its scale."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["u"], values=torch.tensor([5, 5, 7]),
                                              lengths=torch.tensor([1, 1, 1]))
    b = Batch(dense=torch.zeros(3, 0), sparse=kjt, labels=torch.zeros(3, 1),
              ids=torch.arange(3))
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    t = teach([[logit(0.8)], [logit(0.2)], [3.0]])
    cfg = ListwiseKD(key="u")
    assert listwise_kd(out([[0.0], [0.0], [-2.0]]), t, b, cfg).item() == \
        pytest.approx(LN2, rel=1e-6)
    h = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert listwise_kd(out([[logit(0.4)], [logit(0.1)], [0.0]]), t, b, cfg).item() == \
        pytest.approx(h, rel=1e-5)
    alone = KeyedJaggedTensor.from_lengths_sync(keys=["u"], values=torch.tensor([1, 2, 3]),
                                                lengths=torch.tensor([1, 1, 1]))
    assert listwise_kd(out([[0.0], [0.0], [0.0]]), t, Batch(b.dense, alone, b.labels, b.ids),
                       cfg).item() == 0.0
    # the objective takes the dataset's key, and refuses a student that cannot read it
    cfg_s = StudentConfig(name="s", losses=(make_term("listwise_kd"),))
    assert build_objective(cfg_s, ("a",), "u").terms[0][3].key == "u"
    with pytest.raises(ConfigError, match=r"listwise_kd\): the dataset has no group_key"):
        build_objective(cfg_s, ("a",))
    with pytest.raises(ConfigError, match=r"the student does not read 'u'"):
        build_objective(cfg_s, ("a",), "u", readable=("i",))


def test_objective_leaves_out_the_terms_the_guard_turned_off() -> None:
    """A hard-label + relation-KD student with ``relation_kd`` off steps exactly as the
    hard-label student; on, it steps otherwise."""
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    teacher = TeacherOutputs(torch.zeros(6, 2), {"last_hidden": z})

    def step(losses, off=()) -> dict[str, torch.Tensor]:
        model, b = _tiny_student(losses=losses, seed=3)
        student_step(model, make_student_optimizer(model, model_cfg(losses)),
                     build_objective(model_cfg(losses), ("a", "b")), b, teacher,
                     terms_off=off)
        return model.state_dict()

    def model_cfg(losses) -> StudentConfig:
        return StudentConfig(name="s", hidden=(8, 4), losses=losses, seed=3)

    rel = (make_term("hard_label"), make_term("relation_kd", 3.0))
    hard = step((make_term("hard_label"),))
    for k, v in step(rel, ("relation_kd",)).items():
        torch.testing.assert_close(v, hard[k], msg=k)
    assert any(not torch.equal(v, hard[k]) for k, v in step(rel).items())


def test_multitask_kd_fixed_and_uncertainty_weights() -> None:
    s, t, y = out([[0.0, 0.0]]), teach([[2.0, 2.0]]), batch([[1.0, float("nan")]])
    # task a: 0.5 * ln2 + 0.5 * 4 ln2 = 2.5 ln2; task b has no label: 4 ln2 (teacher alone)
    cfg = MultiTaskKD(temperature=2.0, alpha=0.5)
    assert multitask_kd(s, t, y, cfg).item() == pytest.approx(3.25 * LN2, rel=1e-6)
    fixed = MultiTaskKD(temperature=2.0, alpha=0.5, task_weights={"b": 3.0})
    assert multitask_kd(s, t, y, fixed).item() == pytest.approx((2.5 + 12) / 4 * LN2, rel=1e-6)
    s.task_log_vars = torch.tensor([0.0, LN2])
    unc = MultiTaskKD(temperature=2.0, alpha=0.5, uncertainty=True)
    # exp(0) * 2.5 ln2 + 0 + exp(-ln2) * 4 ln2 + ln2 / 2 = 5 ln2
    assert multitask_kd(s, t, y, unc).item() == pytest.approx(5 * LN2, rel=1e-6)


def _tiny_student(**kw) -> tuple[StudentModel, Batch]:
    spec = FeatureSpec(dense=("d",), sparse=(SparseFeature("u", 5), SparseFeature("i", 7)),
                       tasks=("a", "b"))
    table = ExampleTable(
        dense=np.linspace(-1, 1, 6, dtype=np.float32).reshape(6, 1),
        labels=np.array([[1, 0], [0, 0], [1, 1], [0, 1], [1, 0], [0, 0]], np.float32),
        ids=np.arange(6), sparse={"u": (np.arange(7), np.array([1, 2, 3, 4, 1, 2])),
                                  "i": (np.arange(7), np.array([6, 5, 4, 3, 2, 1]))})
    cfg = StudentConfig(name="s", hidden=(8, 4), **kw)
    return (StudentModel(spec, cfg, teacher_dims={"last_hidden": 3}),
            table.take(np.arange(6)).to_batch())


def test_aux_head_kd_trains_only_the_auxiliary_head() -> None:
    model, b = _tiny_student(aux_heads=True)
    o = model(b.dense, b.sparse)
    t = teach([[3.0, -3.0]] * 6)
    kd = aux_head_kd(o, t, b, AuxHeadKD(temperature=2.0))
    kd.backward(retain_graph=True)
    assert model.heads.weight.grad is None  # serving head: no gradient from the teacher
    assert model.aux_heads.weight.grad.abs().sum() > 0
    assert model.mlp._mlp[0]._linear.weight.grad.abs().sum() > 0  # shared trunk learns
    model.zero_grad(set_to_none=True)
    hard_label(o, t, b, HardLabel()).backward()
    assert model.aux_heads.weight.grad is None  # aux head: no gradient from true labels
    assert model.heads.weight.grad.abs().sum() > 0


def test_feature_kd_gradient_reaches_the_adapter_not_the_teacher() -> None:
    model, b = _tiny_student(adapters={"last_hidden": "last_hidden"})
    z = torch.randn(6, 3, requires_grad=True)
    o = model(b.dense, b.sparse)
    feature_kd(o, TeacherOutputs(torch.zeros(6, 2), {"last_hidden": z}), b,
               FeatureKD()).backward()
    assert model.adapters["last_hidden"].weight.grad.abs().sum() > 0
    assert z.grad is None
    assert "adapters.last_hidden.weight" not in model.export_state_dict()
    assert "heads.weight" in model.export_state_dict()


def test_kd_with_alpha_zero_equals_hard_label_training() -> None:
    a = 0.0
    kd_cfg = StudentConfig(name="s", hidden=(8, 4), losses=(
        make_term("hard_label", 1 - a), make_term("prediction_kd", a, temperature=2.0)))
    hard_cfg = StudentConfig(name="s", hidden=(8, 4))
    (m1, b), (m2, _) = _tiny_student(), _tiny_student()
    t = teach([[2.0, -1.0]] * 6)
    for model, cfg in ((m1, kd_cfg), (m2, hard_cfg)):
        obj = build_objective(cfg, ("a", "b"))
        opt = make_student_optimizer(model, cfg)
        for _ in range(3):
            student_step(model, opt, obj, b, t)
    for (n1, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        torch.testing.assert_close(p1, p2, rtol=0, atol=0, msg=n1)


def test_objective_errors_name_the_term() -> None:
    cfg = StudentConfig(name="s", losses=(make_term("hard_label"),
                                          make_term("prediction_kd", 0.5, temprature=2.0)))
    with pytest.raises(ConfigError, match=r"groups\.s\.losses\[1\]\.params\.temprature: "
                                          r"unknown key"):
        build_objective(cfg, ("a",))
    with pytest.raises(ConfigError, match=r"losses\[0\]\.name: unknown loss 'kl'"):
        build_objective(StudentConfig(losses=(make_term("kl"),)), ("a",))


def test_mask_labels_hides_tasks_without_labels() -> None:
    b = batch([[1.0, 0.0], [0.0, 1.0]])
    masked = mask_labels(b, ("a", "b"), ("a",))
    assert masked.labels[:, 0].tolist() == [1.0, 0.0]
    assert torch.isnan(masked.labels[:, 1]).all()
