"""`python -m jobs.train_teacher` as users run it: one process, torchrun ranks, bad config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recdistill.student.metrics import task_metrics
from recdistill.teacher.checkpoint import load_teacher_state, read_meta
from recdistill.teacher.model import TeacherModel
from recdistill.teacher.train import predict
from testkit import SMALL, job_env, toml_dataset


# baseline and pred_kd as the defaults have them: a smaller job for the end-to-end tests
# that are about something else than the comparison of the four groups.

@pytest.mark.timeout(240)
def test_single_process_and_torchrun_on_a_toml_dataset(tmp_path: Path) -> None:
    data = toml_dataset(tmp_path)
    config = tmp_path / "teacher.toml"
    config.write_text(SMALL)
    one = subprocess.run(
        [sys.executable, "-m", "jobs.train_teacher", "--data", str(data), "--config",
         str(config), "--checkpoint", str(tmp_path / "ck1"), "--report",
         str(tmp_path / "r1.json")], capture_output=True, text=True, env=job_env(), timeout=200)
    assert one.returncode == 0, one.stderr[-3000:]
    r1 = json.loads((tmp_path / "r1.json").read_text())
    assert set(r1["test"]["income"]) >= {"auc", "logloss", "ne"}
    assert r1["test"]["income"]["auc"] > 0.8 and r1["wall_s"] > 0
    assert "income" in one.stdout and "AUC" in one.stdout

    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "jobs.train_teacher", "--data", str(data), "--config", str(config),
         "--sharding", "column_wise", "--checkpoint", str(tmp_path / "ck2"),
         "--report", str(tmp_path / "r2.json")],
        capture_output=True, text=True, env=job_env(), timeout=200)
    assert two.returncode == 0, two.stderr[-3000:]
    r2 = json.loads((tmp_path / "r2.json").read_text())
    assert r2["world_size"] == 2 and r2["test"]["income"]["auc"] > 0.8

    # The checkpoint the 2 ranks wrote loads in this one process, on a plain model, and
    # gives the test metrics the 2 ranks reported.
    _, _, info = read_meta(tmp_path / "ck2")
    assert info["world_size"] == 2
    got = _reload_metrics(tmp_path / "ck2", data)
    for k in ("auc", "logloss", "ne"):
        assert got[k] == pytest.approx(r2["test"]["income"][k], rel=1e-5), k
    assert np.isfinite(got["logloss"])


def _reload_metrics(checkpoint: Path, data: Path) -> dict[str, float]:
    """Test metrics of ``checkpoint`` loaded into a plain model in this process."""
    from recdistill.data.tabular import load_tabular
    spec, cfg, _ = read_meta(checkpoint)
    model = TeacherModel(spec, cfg, device="cpu")
    load_teacher_state(model, checkpoint)
    test = load_tabular(data).test
    pred = predict(model, test, model.feature_names, 4096, torch.device("cpu"))
    return task_metrics(torch.from_numpy(pred.logits), torch.from_numpy(pred.labels),
                        spec.tasks)["income"]


@pytest.mark.timeout(300)
def test_ray_train_workers_with_deepspeed_zero2(tmp_path: Path) -> None:
    """``--workers 2 --zero-stage 2``: a Ray Train worker group on a local Ray cluster
    the job starts; the checkpoint it writes reproduces its report in this process."""
    data = toml_dataset(tmp_path)
    config = tmp_path / "teacher.toml"
    config.write_text(SMALL)
    r = subprocess.run(
        [sys.executable, "-m", "jobs.train_teacher", "--data", str(data), "--config",
         str(config), "--workers", "2", "--zero-stage", "2", "--checkpoint",
         str(tmp_path / "run"), "--report", str(tmp_path / "r.json")],
        capture_output=True, text=True, env=job_env(), timeout=280)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["world_size"] == 2 and report["test"]["income"]["auc"] > 0.8
    assert "income" in r.stdout and "2 rank(s)" in r.stdout  # the driver's summary
    spec, cfg, info = read_meta(tmp_path / "run")
    assert (cfg.dense_engine, cfg.zero_stage, info["world_size"]) == ("deepspeed", 2, 2)
    assert info["step"] == report["best_version"]
    got = _reload_metrics(tmp_path / "run", data)
    for k in ("auc", "logloss", "ne"):
        assert got[k] == pytest.approx(report["test"]["income"][k], rel=1e-5), k


@pytest.mark.parametrize("args, message", [
    (["--workers", "3", "--sharding", "column_wise"],
     "teacher.embedding_dim = 8 cannot be split column-wise over 3 ranks"),
    (["--workers", "2", "--zero-stage", "4"], "teacher.zero_stage must be 0, 1, 2 or 3"),
    (["--precision", "bf16"], "teacher.precision = 'bf16' needs teacher.dense_engine"),
    (["--resume", "--checkpoint", "{tmp}/nothing"], "nothing: checkpoint directory not found"),
])
def test_bad_worker_config_fails_before_any_worker(tmp_path: Path, args: list[str],
                                                   message: str, monkeypatch, capsys) -> None:
    """The job's main in this process (a subprocess per case cost ~7 s of imports): exit
    status 2 and one line naming the key, before Ray workers would start."""
    from recdistill.jobs import train_teacher

    def no_workers(*_: object) -> None:
        raise AssertionError("Ray workers started for a bad config")
    monkeypatch.setattr(train_teacher, "run_on_ray", no_workers)
    config = tmp_path / "teacher.toml"
    config.write_text(SMALL)
    rc = train_teacher.main(["--config", str(config), *[a.format(tmp=tmp_path) for a in args]])
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("error: ") and message in err


def test_config_typo_fails_naming_the_key(tmp_path: Path, capsys) -> None:
    from recdistill.jobs.train_teacher import main
    bad = tmp_path / "bad.toml"
    bad.write_text("[teacher]\nembeding_dim = 32\n")
    assert main(["--config", str(bad)]) == 2
    assert "teacher.embeding_dim: unknown key" in capsys.readouterr().err
    bad.write_text("[teacher]\nembedding_dim = 30\n")
    assert main(["--config", str(bad)]) == 2
    assert "teacher.embedding_dim must be a positive multiple of 4" in capsys.readouterr().err


def test_teacher_seed_is_not_the_data_seed() -> None:
    """A committee member's seed seeds its model, not its data: every member of a
    distill job sees that job's dataset (its seed), whatever the member's own seed."""
    from recdistill.jobs.train_teacher import parse_args
    runs = parse_args(["--member", "all", "--data", "synthetic", "--rows", "1000"])
    assert [c.seed for _, c in runs] == [0, 3, 5]
    assert {j.data_seed for j, _ in runs} == {0} and {j.data for j, _ in runs} == {"synthetic"}
    ((job, cfg),) = parse_args(["--seed", "2"])
    assert (job.data_seed, cfg.seed) == (2, 2)
