"""A teacher (or soft labels) made for one dataset is refused for another before Ray
starts; a default-path teacher of another dataset is moved aside to a keyed path."""

from pathlib import Path

import pytest
import ray

from recdistill.cluster.teachers import match_teacher
from recdistill.data.errors import DataError
from recdistill.data.fingerprint import differences, fingerprint, keyed_path
from recdistill.data.tabular import load_tabular
from recdistill.jobs.distill import run
from recdistill.jobs.distill_config import load_config
from recdistill.teacher.checkpoint import CheckpointError, save_teacher
from recdistill.teacher.config import TeacherConfig
from recdistill.teacher.model import TeacherModel
from testkit import write_dataset


def _teacher(path: Path, data) -> None:
    cfg = TeacherConfig(embedding_dim=4, dense_layers=(8,), cross_layers=1, over_layers=(8,))
    save_teacher(TeacherModel(data.spec, cfg, device="cpu"), path, spec=data.spec,
                 cfg=cfg, info={"step": 1, "fingerprint": fingerprint(data.spec,
                                                                      data.name)})


def test_differences_name_what_changed(movielens) -> None:
    ml = fingerprint(movielens.spec, movielens.name)
    assert differences(ml, ml) == []
    other = dict(ml, dataset="movielens-100k/random", tasks=["like"],
                 sparse={**{k: v for k, v in ml["sparse"].items() if k != "user_id"},
                         "item_id": ml["sparse"]["item_id"] + 1, "zip": 7})
    found = differences(ml, other)
    assert found == [
        "dataset 'movielens-100k/user_time', given 'movielens-100k/random'",
        "tasks ['like', 'love'], given ['like']",
        "sparse features ['user_id'] missing from the given dataset",
        "sparse features ['zip'] that it was not trained on",
        f"cardinalities changed: item_id {ml['sparse']['item_id']} -> "
        f"{ml['sparse']['item_id'] + 1}"]
    # a stream's teacher is trained on in-memory rows of the same generator
    assert differences(dict(ml, dataset="synthetic-20000-seed0"),
                       dict(ml, dataset="synthetic-stream-500000-seed0")) == []
    # another seed of the generator is another dataset
    assert differences(dict(ml, dataset="synthetic-20000-seed0"),
                       dict(ml, dataset="synthetic-stream-500000-seed1")) == [
        "dataset 'synthetic-20000-seed0', given 'synthetic-stream-500000-seed1'"]
    assert differences(dict(ml, dataset="synthetic-20000-seed0"),
                       dict(ml, dataset="synthetic-20000-seed1")) != []
    assert keyed_path("runs/distill/teacher", ml).startswith(
        "runs/distill/teacher-movielens-100k-user-time-")


def test_teacher_of_another_dataset_fails_before_ray(tmp_path: Path, movielens,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import recdistill.jobs.distill as distill_job

    def started(*_: object, **__: object) -> None:
        raise AssertionError("Ray or an actor was started")

    # the suite may share a running Ray cluster: fail if the job gets as far as using it
    for name in ("start_ray", "ensure_teacher", "OnlineDistillation"):
        monkeypatch.setattr(distill_job, name, started)
    monkeypatch.setattr(ray, "init", started)
    _teacher(tmp_path / "ml_teacher", movielens)
    toml = write_dataset(tmp_path)
    cfg = load_config(None, data=str(toml), checkpoint=str(tmp_path / "ml_teacher"),
                      passes=1)
    with pytest.raises(CheckpointError) as e:
        run(cfg)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'ml_teacher'}: this teacher was trained on "
                          f"another dataset than {toml}")
    assert "dataset 'movielens-100k/user_time'" in msg and "tasks ['like', 'love'], " \
        "given ['income']" in msg


def test_default_path_of_another_dataset_is_keyed(tmp_path: Path, movielens,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _teacher(tmp_path / "runs/distill/teacher", movielens)
    toml = write_dataset(tmp_path)
    data = load_tabular(toml)
    cfg = match_teacher(load_config(None, data=str(toml)), data)
    want = keyed_path("runs/distill/teacher", fingerprint(data.spec, data.name))
    assert cfg.teacher_group.checkpoint == want and not Path(want).exists()
    # once a teacher of this dataset is there, it is the one used
    _teacher(tmp_path / want, data)
    assert match_teacher(load_config(None, data=str(toml)), data) == cfg
    # the MovieLens teacher at the default path is still MovieLens'
    assert match_teacher(load_config(None), movielens).teacher_group.checkpoint == \
        "runs/distill/teacher"


def test_soft_labels_of_another_dataset_fail(movielens) -> None:
    from recdistill.cluster.soft_labels import Manifest, spec_check
    m = Manifest(checkpoint="t", version=1, tasks=["like", "love"], features={},
                 logit_dtype="float16", feature_dtype="float16", part_rows=10,
                 dataset=movielens.name, rows={}, keys=[], parameters=1, parts={},
                 fingerprint=fingerprint(movielens.spec, movielens.name))
    spec_check(m, movielens.spec, "labels", movielens.name)
    with pytest.raises(DataError, match=r"^labels: soft labels of another dataset than "
                                        r"movielens-100k/random \(dataset "):
        spec_check(m, movielens.spec, "labels", "movielens-100k/random")
