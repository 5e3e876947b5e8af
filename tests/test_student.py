import numpy as np
import pytest
import torch

from data.errors import ConfigError
from student.config import StudentConfig
from student.losses import build_objective, make_term
from student.model import StudentModel, count_parameters
from student.train import make_student_optimizer, predict_student, student_step
from teacher.model import TeacherModel
from test_sharding import CFG, tiny_dataset


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
    cfg = StudentConfig(name="kd", embedding_dim=4, hidden=(8,),
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
                              "agreement"}
    # the KD terms shrink as the student fits the (fixed) teacher
    assert np.mean([x["prediction_kd"] for x in losses[-4:]]) < \
        np.mean([x["prediction_kd"] for x in losses[:4]])
    assert np.mean([x["feature_kd"] for x in losses[-4:]]) < \
        0.5 * np.mean([x["feature_kd"] for x in losses[:4]])
    logits, labels = predict_student(student, data.test)
    assert logits.shape == labels.shape == (128, 2)
