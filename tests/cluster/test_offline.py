"""Offline soft labels: precompute to Parquet (resumable), distil from them like online."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recdistill.cluster.config import RunOptions
from recdistill.cluster.pipeline import Hooks, OnlineDistillation
from recdistill.cluster.soft_labels import SPLITS, Manifest, SplitLabels, read_split
from testkit import N, online_setup


class _Stop(Exception):
    pass


@pytest.mark.timeout(400)
def test_precompute_resumes_to_the_same_output(ray_cluster, tmp_path: Path) -> None:
    from recdistill.jobs.precompute import run
    cfg, data, _ = online_setup(tmp_path)
    whole = run(cfg, str(tmp_path / "whole"), part_rows=200, progress=False, dataset=data)
    assert whole["complete"] and len(whole["parts"]) == 3 * 4  # 640 rows: 200+200+200+40

    def stop_after_five(split: str, part: int) -> None:
        # the manifest on disk is the one written at the start: parts are their own record
        assert json.loads((tmp_path / "broken" / "manifest.json").read_text())["parts"] == {}
        if len(Manifest.load(tmp_path / "broken").parts) == 5:
            # die with the next part half-written: Ray Data's files, no rename, no manifest
            (tmp_path / "broken" / "valid" / "part-00002.partial").mkdir(parents=True)
            (tmp_path / "broken" / "valid" / "part-00002.partial" / "x.parquet").write_bytes(b"x")
            raise _Stop

    with pytest.raises(_Stop):
        run(cfg, str(tmp_path / "broken"), part_rows=200, progress=False, dataset=data,
            after_part=stop_after_five)
    m = Manifest.load(tmp_path / "broken")
    assert len(m.parts) == 5 and not m.complete
    with pytest.raises(Exception, match="not .fully. precomputed"):
        read_split(tmp_path / "broken", "train")
    written: list[str] = []
    again = run(cfg, str(tmp_path / "broken"), part_rows=200, progress=False, dataset=data,
                after_part=lambda s, i: written.append(f"{s}/{i:05d}"))
    assert len(written) == 12 - 5  # only the missing parts
    assert again["complete"] and again["parts"].keys() == whole["parts"].keys()
    for split in SPLITS:
        a, b = read_split(tmp_path / "whole", split), read_split(tmp_path / "broken", split)
        assert len(a.ids) == N and np.array_equal(a.ids, np.sort(data.split(split).ids))
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.logits, b.logits)
        np.testing.assert_array_equal(a.versions, b.versions)
        assert a.logits.dtype == np.float16 and a.features["last_hidden"].shape == (N, 16)
        np.testing.assert_array_equal(a.features["last_hidden"], b.features["last_hidden"])
    assert set(np.unique(a.versions)) == {5}  # the checkpoint's step
    # A reader holding at most 250 rows of parts (train: 4 parts, ids 0..199, ...) finds
    # each id's part by its range: the same labels as the whole split, in any order.
    m, train = Manifest.load(tmp_path / "whole"), read_split(tmp_path / "whole", "train")
    by_part = SplitLabels(m, str(tmp_path / "whole"), "train", ("last_hidden",), 250)
    ids = np.random.default_rng(0).permutation(train.ids)
    got, pos = by_part.take(ids, "t"), train.rows(ids, "t")
    np.testing.assert_array_equal(got.ids, ids)
    np.testing.assert_array_equal(got.logits, train.logits[pos])
    np.testing.assert_array_equal(got.features["last_hidden"], train.features["last_hidden"][pos])
    assert sum(len(v.ids) for v in by_part._held.values()) == 240  # parts 3 and 4, not 640
    # batches in id order (a streamed pass's chunks) read each part once
    in_order = SplitLabels(m, str(tmp_path / "whole"), "train", (), 250)
    for start in range(0, N, 100):
        in_order.take(np.sort(train.ids)[start:start + 100], "t")
    assert in_order.parts_read == 4
    with pytest.raises(Exception, match=r"no soft label for example id\(s\) \[99999\]"):
        in_order.take(np.array([99999]), "t")


@pytest.mark.timeout(500)
def test_offline_students_train_like_online(ray_cluster, tmp_path: Path) -> None:
    from recdistill.jobs.precompute import run
    cfg, data, dims = online_setup(tmp_path)
    run(cfg, str(tmp_path / "labels"), part_rows=256, progress=False, dataset=data)
    reports = {}
    for mode, source in (("online", ""), ("offline", str(tmp_path / "labels"))):
        job = OnlineDistillation(cfg, data, dims, RunOptions(progress=False,
                                                             soft_labels=source))
        try:
            reports[mode] = job.run().to_json()
        finally:
            job.shutdown()
    on, off = reports["online"], reports["offline"]
    assert off["stream"]["produced"] == on["stream"]["produced"]
    for name in on["students"]:
        assert off["students"][name]["examples_trained"] == 2 * N
        for task, m in on["students"][name]["test"].items():
            for k in ("auc", "logloss"):
                # the same batches in the same order; the labels may differ in the last
                # fp16 bit where the teacher's forward ran in another batch composition
                assert off["students"][name]["test"][task][k] == pytest.approx(
                    m[k], abs=1e-4), (name, task, k)
    for task, m in on["teacher"]["test"].items():  # stored fp16 logits vs the live teacher
        assert off["teacher"]["test"][task]["auc"] == pytest.approx(m["auc"], abs=1e-3)
    assert off["teacher"]["version"] == on["teacher"]["version"] == 5


@pytest.mark.timeout(400)
def test_teacher_version_swapped_mid_stream(ray_cluster, tmp_path: Path) -> None:
    """A newer checkpoint version appears mid-pass; the teacher group loads it between
    batches: no batch lost, every batch tagged, the version counters add up, and a
    student with staleness weighting (and the ExFM adapter) trains."""
    import dataclasses

    from recdistill.cluster.config import GroupConfig
    from recdistill.student.config import LossTerm, StudentConfig
    from recdistill.teacher.checkpoint import save_teacher, version_dir
    from recdistill.teacher.model import TeacherModel
    from testkit import assert_exactly_once
    from testkit import CFG
    cfg, data, dims = online_setup(tmp_path)
    root = tmp_path / "root"
    save_teacher(TeacherModel(data.spec, CFG, device="cpu"), version_dir(root, 5),
                 spec=data.spec, cfg=CFG, info={"step": 5})
    stale = GroupConfig(StudentConfig(
        name="stale", embedding_dim=4, hidden=(8,), staleness_tau=2.0, teacher_adapter=True,
        losses=(LossTerm("hard_label", 0.5), LossTerm("prediction_kd", 0.5))), replicas=1)
    cfg = dataclasses.replace(
        cfg, groups=(*cfg.groups, stale), teacher_group=dataclasses.replace(
            cfg.teacher_group, checkpoint=str(root), version="latest", refresh_every=1))
    newer = dataclasses.replace(CFG, seed=7)

    def write_newer(group: str, acked: int) -> None:
        if group == "kd" and acked == 3:  # mid-pass 1 (10 batches a pass)
            save_teacher(TeacherModel(data.spec, newer, device="cpu"), version_dir(root, 9),
                         spec=data.spec, cfg=newer, info={"step": 9})

    job = OnlineDistillation(cfg, data, dims, RunOptions(progress=False),
                             Hooks(after_ack=write_newer))
    try:
        report = job.run().to_json()
    finally:
        job.shutdown()
    assert_exactly_once(job, data, passes=2)  # nothing lost, nothing twice
    s = report["stream"]
    assert set(s["produced_by_version"]) == {"5", "9"}
    assert sum(s["produced_by_version"].values()) == s["produced"] == 20
    assert s["produced_by_version"]["5"] >= 3
    for name, per_version in s["acked_by_version"].items():
        assert sum(per_version.values()) == s["acked"][name] == 20
    assert report["teacher"]["first_version"] == 5 and report["teacher"]["version"] == 9
    assert [r["version"] for r in report["teacher"]["refreshes"]] == [9]
    for name, st in report["students"].items():
        assert st["teacher_versions"] == [5, 9]
        assert sum(st["examples_by_version"].values()) == st["examples_trained"] == 2 * N
    st = report["students"]["stale"]
    assert 0 < st["mean_kd_scale"] <= 1 and np.isfinite(st["test"]["click"]["logloss"])
    assert all(s_["mean_kd_scale"] == 1.0 for n, s_ in report["students"].items()
               if n != "stale")


@pytest.mark.timeout(400)
def test_precompute_killed_by_sigkill_resumes_identically(ray_cluster, tmp_path: Path
                                                          ) -> None:
    """``python -m jobs.precompute`` SIGKILLed (its whole process group, Ray included)
    once parts are on disk; the same command finishes it, equal to an uninterrupted run.
    (The uninterrupted run and the finishing one run the command in this process, on
    the tests' cluster; only the killed one needs a process of its own.)"""
    import os
    import signal
    import subprocess
    import sys
    import time

    from testkit import SMALL, toml_dataset, job_env
    data = toml_dataset(tmp_path)
    config = tmp_path / "distill.toml"
    # one teacher: a committee's resume is the same (its precompute: test_committee)
    config.write_text("teachers = []\n" + SMALL + f'\n[teacher_group]\nbatch_size = 16\n'
                      f'checkpoint = "{tmp_path / "teacher"}"\n')

    def cmd(out: str) -> list[str]:
        return [sys.executable, "-m", "jobs.precompute", "--config", str(config), "--data",
                str(data), "--out", str(tmp_path / out), "--part-rows", "20"]

    from recdistill.jobs.precompute import main
    assert main(cmd("whole")[3:]) == 0  # trains the teacher first (a Ray task)
    proc = subprocess.Popen(cmd("killed"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=job_env(), start_new_session=True)
    manifest = tmp_path / "killed" / "manifest.json"
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.is_file() and len(Manifest.load(tmp_path / "killed").parts) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(Manifest.load(tmp_path / "killed").parts)
    total = len(Manifest.load(tmp_path / "whole").parts)
    assert 3 <= killed_at < total and not Manifest.load(tmp_path / "killed").complete
    assert main(cmd("killed")[3:]) == 0
    assert Manifest.load(tmp_path / "killed").parts.keys() == \
        Manifest.load(tmp_path / "whole").parts.keys()
    for split in SPLITS:
        a, b = read_split(tmp_path / "whole", split), read_split(tmp_path / "killed", split)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.logits, b.logits)
        for name in a.features:
            np.testing.assert_array_equal(a.features[name], b.features[name])
