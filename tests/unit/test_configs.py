from pathlib import Path

import pytest

from recdistill.data.configs import from_mapping, to_mapping
from recdistill.data.errors import ConfigError
from recdistill.jobs.common import read_toml
from recdistill.jobs.train_teacher import parse_args
from recdistill.teacher.config import TeacherConfig
from recdistill.teacher.loop import TrainTeacherArgs


def test_types_are_checked_and_named() -> None:
    with pytest.raises(ConfigError, match=r"teacher\.epochs: expected an integer, got '3'"):
        from_mapping(TeacherConfig, {"epochs": "3"}, "teacher")
    with pytest.raises(ConfigError, match=r"teacher\.dense_layers\[1\]: expected an integer"):
        from_mapping(TeacherConfig, {"dense_layers": [64, 1.5]}, "teacher")
    with pytest.raises(ConfigError, match=r"teacher\.sharding: unknown 'diagonal'"):
        from_mapping(TeacherConfig, {"sharding": "diagonal"}, "teacher")
    cfg = from_mapping(TeacherConfig, {"dense_layers": [32, 16], "embedding_lr": 1}, "t")
    assert cfg.dense_layers == (32, 16) and cfg.embedding_lr == 1.0
    assert from_mapping(TeacherConfig, to_mapping(cfg), "t") == cfg


def test_shipped_config_is_the_default(tmp_path: Path) -> None:
    shipped = Path(__file__).parents[2] / "jobs" / "configs" / "teacher_movielens.toml"
    ((job, cfg),) = parse_args(["--config", str(shipped)])
    assert cfg == TeacherConfig()
    assert job == TrainTeacherArgs(checkpoint="runs/teacher",
                                   report="runs/teacher_report.json")
    (tmp_path / "x.toml").write_text("[teacher\n")
    with pytest.raises(ConfigError, match=r"x\.toml: not valid TOML"):
        read_toml(tmp_path / "x.toml")


def test_labelling_settings_are_checked_and_derived() -> None:
    from recdistill.cluster.config import DistillConfig, StreamConfig, TeacherGroupConfig
    with pytest.raises(ConfigError, match=r"teacher_group\.label_batch_size \(1000\) must "
                                          r"be a multiple of teacher_group\.batch_size"):
        TeacherGroupConfig(batch_size=512, label_batch_size=1000)
    with pytest.raises(ConfigError, match=r"teacher_group\.table_dtype: unknown 'int2'"):
        TeacherGroupConfig(table_dtype="int2")
    with pytest.raises(ConfigError, match=r"teacher_group\.split must be one of "
                                          r"\('rows', 'stream'\), got 'shards'"):
        TeacherGroupConfig(split="shards")
    with pytest.raises(ConfigError, match=r"teacher_group\.calls_in_flight must be >= 1, "
                                          r"got 0"):
        TeacherGroupConfig(calls_in_flight=0)
    # the defaults: 4096-row forwards = 8 student batches, one labelled batch per call
    cfg = DistillConfig()
    assert (cfg.label_rows, cfg.slices_per_label_batch, cfg.label_batches_per_call,
            cfg.student_batches_per_call) == (4096, 8, 1, 8)
    # 8 ranks share a 32-batch window: 4 student batches each, so 2048-row forwards
    cfg = DistillConfig(teacher_group=TeacherGroupConfig(ranks=8))
    assert (cfg.label_rows, cfg.label_batches_per_call) == (2048, 1)
    # student-sized labelling: 8 labelled batches per call, as before label batches
    cfg = DistillConfig(teacher_group=TeacherGroupConfig(label_batch_size=512),
                        stream=StreamConfig(max_inflight=32, batches_per_call=8))
    assert (cfg.label_rows, cfg.label_batches_per_call, cfg.student_batches_per_call) \
        == (512, 8, 8)


def test_patience_from_the_file_and_the_command_line(tmp_path: Path) -> None:
    from recdistill.jobs.distill_config import load_config
    path = tmp_path / "distill.toml"
    path.write_text('[[groups]]\nname = "a"\npatience = 3\n'
                    '[[groups]]\nname = "b"\nlosses = [{ name = "hard_label" }]\n')
    assert [g.patience for g in load_config(str(path)).groups] == [3, 0]
    assert [g.patience for g in load_config(str(path), patience=1).groups] == [1, 1]
    path.write_text('[[groups]]\nname = "a"\npatience = -1\n')
    with pytest.raises(ConfigError, match=r"distill\.toml: groups\.a\.patience must be "
                                          r">= 0, got -1"):
        load_config(str(path))
