"""Devices per actor, on CPU: the device an actor takes, the GPU keys and their checks,
the resource check that counts GPUs before any actor starts, checkpoint I/O's errors
and a replica's state kept on the CPU. The CUDA runs are in test_gpu.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from recdistill.cluster.config import (DistillConfig, GroupConfig, MemberConfig,
                                       TeacherGroupConfig)
from recdistill.cluster.demand import Demand
from recdistill.data.errors import ConfigError
from recdistill.student.config import StudentConfig


def test_an_actor_takes_the_gpu_ray_gave_it_and_no_other(monkeypatch) -> None:
    """A node's GPUs are visible to an actor Ray gave none: it must still run on CPU."""
    import ray

    from recdistill.cluster import process
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    assert process.actor_device() == torch.device("cpu")
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [3])  # Ray's id; visible as cuda:0
    assert process.actor_device() == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process.actor_device() == torch.device("cpu")


def test_gpu_keys_are_checked_and_named() -> None:
    student = StudentConfig(name="kd")
    with pytest.raises(ConfigError, match=r"^teacher_group.gpus must be >= 0, got -1$"):
        TeacherGroupConfig(gpus=-1)
    with pytest.raises(ConfigError, match=r"^teacher_group.gpus = 0.5: 2 ranks would "
                                          r"share a GPU, which nccl cannot"):
        TeacherGroupConfig(ranks=2, gpus=0.5)
    assert TeacherGroupConfig(ranks=1, gpus=0.5).gpus == 0.5
    with pytest.raises(ConfigError, match=r"^groups.kd.gpus = 0.25: 2 replicas"):
        GroupConfig(student, replicas=2, gpus=0.25)
    assert GroupConfig(student, replicas=2, gpus=1).gpus == 1
    with pytest.raises(ConfigError, match=r"^groups.kd.checkpoint_timeout_s must be > 0"):
        GroupConfig(student, checkpoint_timeout_s=0)


def _cfg(teacher_gpus: float, group_gpus: tuple[float, ...]) -> DistillConfig:
    groups = tuple(GroupConfig(StudentConfig(name=f"g{i}"), replicas=2, gpus=g)
                   for i, g in enumerate(group_gpus))
    return DistillConfig(teacher_group=TeacherGroupConfig(ranks=2, gpus=teacher_gpus),
                         groups=groups)


def test_demand_counts_every_actor_and_names_the_keys_of_its_gpus() -> None:
    """3 members x 2 ranks x 1 GPU + 2 replicas x 1 GPU = 8 GPUs; CPUs 1 each."""
    cfg = dataclasses.replace(_cfg(1, (1, 0)), teachers=tuple(
        MemberConfig(f"m{i}", f"runs/m{i}") for i in range(3)))
    need = Demand.of(cfg)
    assert len(cfg.members) == 3
    assert (need.cpus, need.gpus, need.actors) == (10, 8, 10)
    assert need.gpu_terms == "teacher_group.gpus 1 x 6 ranks + groups.g0.gpus 1 x 2 replicas"
    # labels read from files: the readers hold no GPU
    assert Demand.of(cfg, teacher=False).gpus == 2
    with pytest.raises(ConfigError) as e:
        need.check_cluster("10.0.0.1:6379", {"CPU": 64, "GPU": 4})
    assert str(e.value) == (
        "the cluster at 10.0.0.1:6379 has 4 GPUs; this job's actors reserve 8 "
        "(teacher_group.gpus 1 x 6 ranks + groups.g0.gpus 1 x 2 replicas): run where "
        "there are 8 GPUs, or lower those keys (0: the actor runs on CPU)")
    need.check_cluster("10.0.0.1:6379", {"CPU": 11, "GPU": 8})  # enough: no error
    with pytest.raises(ConfigError, match=r"^the cluster at a:1 has 10 CPUs; this job's "
                                          r"actors reserve 10 .* Ray Data needs 1 more"):
        need.check_cluster("a:1", {"CPU": 10, "GPU": 8})
    with pytest.raises(ConfigError, match=r"^this machine has 0 GPUs; this job's actors "
                                          r"reserve 8 "):
        need.check_machine(cores=64, gpus=0, what="")
    Demand.of(_cfg(0, (0,))).check_machine(cores=2, gpus=0, what="")
    tenths = Demand.of(DistillConfig(groups=tuple(  # 0.1 x 3 is 0.30000000000000004
        GroupConfig(StudentConfig(name=f"t{i}"), gpus=0.1) for i in range(3))))
    tenths.check_cluster("a:1", {"CPU": 16, "GPU": 0.3})


def test_custom_resources_place_actors_and_are_counted_before_any_starts() -> None:
    """teacher ranks 2 x {teacher_node: 1}, a group's 3 replicas x {student_node: 0.5}:
    the demand is 2 and 1.5; a cluster short of either, or the local cluster (which
    declares none), fails naming the resource."""
    with pytest.raises(ConfigError, match=r"^teacher_group.resources.GPU: set cpus / gpus"):
        TeacherGroupConfig(resources={"GPU": 1})
    with pytest.raises(ConfigError, match=r"^groups.kd.resources.node must be a number "
                                          r">= 0, got -1"):
        GroupConfig(StudentConfig(name="kd"), resources={"node": -1})
    cfg = DistillConfig(
        teacher_group=TeacherGroupConfig(ranks=2, resources={"teacher_node": 1}),
        groups=(GroupConfig(StudentConfig(name="kd"), replicas=3,
                            resources={"student_node": 0.5}),))
    need = Demand.of(cfg)
    assert need.resources == (("student_node", 1.5), ("teacher_node", 2.0))
    need.check_cluster("a:1", {"CPU": 8, "teacher_node": 2, "student_node": 1.5})
    with pytest.raises(ConfigError, match=r"^the cluster at a:1 has 1 of resource "
                                          r"'teacher_node'; this job's actors reserve 2 "):
        need.check_cluster("a:1", {"CPU": 8, "teacher_node": 1, "student_node": 2})
    with pytest.raises(ConfigError, match=r"^this job's actors reserve custom resources "
                                          r"\{'student_node': 1.5, 'teacher_node': 2.0\}"):
        need.check_machine(cores=2, gpus=0, what="")


def test_a_job_asking_for_gpus_this_machine_lacks_fails_before_ray_starts(monkeypatch) -> None:
    import recdistill.cluster.session as session
    started: list[object] = []
    monkeypatch.setattr(session, "start_local_ray", lambda *a, **k: started.append(a))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = DistillConfig(teacher_group=TeacherGroupConfig(ranks=2, gpus=1))
    with pytest.raises(ConfigError, match=r"^this machine has 1 GPUs; this job's actors "
                                          r"reserve 2 \(teacher_group.gpus 1 x 2 ranks\)"):
        session.start_ray("", cfg)
    assert not started
    session.start_ray("", cfg, teacher=False)  # soft labels: no GPU asked, Ray starts
    assert len(started) == 1


def test_checkpoint_io_failure_names_who_the_call_and_the_timeout() -> None:
    from torch.distributed.checkpoint.api import CheckpointException, _wrap_exception

    from recdistill.cluster.process import io_call
    from recdistill.common.checkpoint import CheckpointError
    with pytest.raises(RuntimeError) as e:
        with io_call("group kd replica 1/2", "save_state to /s/c000001", 42):
            raise CheckpointException("save", {0: _wrap_exception(
                RuntimeError("Timed out waiting"))})
    assert str(e.value).startswith(
        "group kd replica 1/2: save_state to /s/c000001 failed (checkpoint I/O waits at "
        "most checkpoint_timeout_s = 42 s on the other ranks): CheckpointException:")
    assert isinstance(e.value.__cause__, CheckpointException)
    with pytest.raises(CheckpointError, match="^/s: not ours$"):  # ours pass unchanged
        with io_call("w", "load_state", 1):
            raise CheckpointError("/s: not ours")


def test_a_replicas_state_is_a_cpu_copy_that_loads_back() -> None:
    from recdistill.cluster.codec import LabelledBatch, encode
    from recdistill.cluster.contracts import StateBlob
    from recdistill.cluster.replica import StudentReplica
    from recdistill.student.sharding import on_cpu
    from testkit import tiny_dataset
    nested = {"a": torch.ones(2), "b": [torch.zeros(1), 3], "c": {"d": (torch.ones(1),)}}
    copy = on_cpu(nested)
    copy["a"][0] = 5.0
    assert nested["a"][0] == 1.0 and copy["b"][1] == 3 and isinstance(copy["c"]["d"], tuple)

    data = tiny_dataset(n=32)
    group = GroupConfig(StudentConfig(sharding="none", name="s", embedding_dim=4, hidden=(8,)))
    torch.manual_seed(0)
    r = StudentReplica(group, data.spec, {}, rank=0, world=1)
    assert r.device == torch.device("cpu")
    r.train_on(LabelledBatch(data.train.take(np.arange(32)), encode(torch.zeros(32, 2),
                                                                     "float16")))
    r.keep_best()
    state = r.state().state
    assert all(v.device.type == "cpu" for v in state["model"].values())
    other = StudentReplica(dataclasses.replace(group), data.spec, {}, rank=0, world=1)
    other.load_state(StateBlob(r.state_blob()))
    for k, v in r.model.state_dict().items():
        torch.testing.assert_close(other.model.state_dict()[k], v, rtol=0, atol=0)
    assert other.best is not None and other.best.keys() == r.best.keys()


def test_gpus_from_the_command_line_and_the_gpu_checks_books(monkeypatch) -> None:
    """``--teacher-gpus`` / ``--gpus`` set the keys (and their checks); the GPU check's
    summary: examples/s over training, exactly once = every group acked passes x rows."""
    from recdistill.jobs import gpu_check
    from recdistill.jobs.distill_config import load_config, parse_args
    cfg, _, _ = parse_args(["--teacher-gpus", "0.25", "--gpus", "0.0625", "--replicas", "1"])
    assert cfg.teacher_group.gpus == 0.25 and {g.gpus for g in cfg.groups} == {0.0625}
    with pytest.raises(ConfigError, match=r"groups.baseline.gpus = 0.5: 2 replicas"):
        load_config(None, replicas=2, gpus=0.5)
    train = type("T", (), {"train": type("R", (), {"ids": np.arange(10)})()})()
    monkeypatch.setattr("recdistill.data.movielens.load_movielens", lambda: train)
    report = {"stream": {"acked_rows": {"a": 20, "b": 20}}, "train_wall_s": 4.0,
              "students": {"a": {"test": {"like": {"auc": 0.7}, "n": 5}}}}
    got = gpu_check._summary(report, passes=2)
    assert got == {"examples_per_s": 10.0, "exactly_once": True,
                   "test_auc": {"a": {"like": 0.7}}}
    report["stream"]["acked_rows"]["b"] = 19
    assert not gpu_check._summary(report, passes=2)["exactly_once"]


def test_storage_puts_every_file_of_the_run_under_one_absolute_root(tmp_path,
                                                                   monkeypatch) -> None:
    from recdistill.jobs.distill_config import parse_args
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "store"
    cfg, opts, _ = parse_args(["--storage", "store"])
    assert opts.report == str(root / "report.json")
    assert (opts.state_dir, opts.artifacts, opts.tensorboard) == (
        str(root / "state"), str(root / "students"), str(root / "tensorboard"))
    assert [m.checkpoint for m in cfg.members] == [str(root / "teacher")] + [
        f"{root / 'teacher'}-{m.name}" for m in cfg.members[1:]]
    # what is named stays named (made absolute); no --storage: runs/distill, absolute
    cfg, opts, _ = parse_args(["--storage", "store", "--teacher-checkpoint", "t",
                               "--report", "/r/out.json", "--soft-labels", "labels"])
    assert cfg.members[0].checkpoint == str(tmp_path / "t") and opts.state_dir == "/r/state"
    assert opts.soft_labels == str(tmp_path / "labels") and opts.storage == str(root)
    cfg, opts, _ = parse_args([])
    assert cfg.members[0].checkpoint == str(tmp_path / "runs/distill/teacher")
    assert opts.report == str(tmp_path / "runs/distill/report.json")
    # no report: the state and students still under the storage root; no TensorBoard
    _, opts, _ = parse_args(["--report", ""])
    assert (opts.report, opts.state_dir, opts.artifacts, opts.tensorboard) == (
        "", str(tmp_path / "runs/distill/state"), str(tmp_path / "runs/distill/students"), "")
    # a URI: every location under it, as given
    cfg, opts, _ = parse_args(["--storage", "s3://bucket/run1"])
    assert (opts.report, opts.state_dir, cfg.members[0].checkpoint) == (
        "s3://bucket/run1/report.json", "s3://bucket/run1/state", "s3://bucket/run1/teacher")
    with pytest.raises(ConfigError, match=r"^--storage: give the endpoint and credentials "
                                          r"in the environment"):
        parse_args(["--storage", "s3://bucket/run1?secret_key=k"])
