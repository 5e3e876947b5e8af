from pathlib import Path

import pytest

from data.configs import from_mapping, to_mapping
from data.errors import ConfigError
from jobs.common import read_toml
from jobs.train_teacher import TrainTeacherArgs, parse_args
from teacher.config import TeacherConfig


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
    shipped = Path(__file__).parents[1] / "jobs" / "configs" / "teacher_movielens.toml"
    ((job, cfg),) = parse_args(["--config", str(shipped)])
    assert cfg == TeacherConfig()
    assert job == TrainTeacherArgs(checkpoint="runs/teacher",
                                   report="runs/teacher_report.json")
    (tmp_path / "x.toml").write_text("[teacher\n")
    with pytest.raises(ConfigError, match=r"x\.toml: not valid TOML"):
        read_toml(tmp_path / "x.toml")
