"""The CUDA path: nccl process group, fbgemm-gpu kernels. Skipped without a GPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recdistill.teacher.checkpoint import load_teacher_state, save_teacher
from recdistill.teacher.config import TeacherConfig
from recdistill.teacher.model import TeacherModel
from recdistill.teacher.sharding import backend_for, default_device, shard_teacher
from testkit import CFG, plain_logits, tiny_dataset

pytestmark = pytest.mark.gpu


def _worker(rank: int, world: int, port: int, ckpt: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    device = default_device()
    assert device.type == "cuda" and backend_for(device) == "nccl"
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    data = tiny_dataset()
    for kind in ("table_wise", "column_wise", "row_wise"):
        cfg = TeacherConfig(**{**CFG.__dict__, "sharding": kind})
        model = TeacherModel(data.spec, cfg)
        dmp = shard_teacher(model, cfg, dist.group.WORLD, device)
        load_teacher_state(dmp, ckpt)
        dmp.eval()
        arrays = next(data.test.iter_batches(64 // world, keys=model.feature_names,
                                             rank=rank, world=world))
        b = arrays.to_batch().to(device)
        with torch.no_grad():
            logits = dmp(b.dense, b.sparse).logits.cpu()
        torch.save({"ids": b.ids.cpu(), "logits": logits}, f"{out}/{kind}_{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.timeout(600)
def test_nccl_sharded_teacher_matches_cpu(tmp_path: Path, free_port: int) -> None:
    data = tiny_dataset()
    plain = TeacherModel(data.spec, CFG, device="cpu")
    save_teacher(plain, tmp_path / "ck", spec=data.spec, cfg=CFG)
    world = min(2, torch.cuda.device_count())
    mp.spawn(_worker, args=(world, free_port, str(tmp_path / "ck"), str(tmp_path)),
             nprocs=world, join=True)
    for kind in ("table_wise", "column_wise", "row_wise"):
        for rank in range(world):
            got = torch.load(tmp_path / f"{kind}_{rank}.pt", weights_only=True)
            # TF32 / different kernels on the GPU: compare at float32-on-GPU tolerance
            torch.testing.assert_close(got["logits"], plain_logits(plain, data, got["ids"]),
                                       rtol=1e-3, atol=1e-4)


def _deepspeed_worker(rank: int, world: int, port: int, out: str) -> None:
    import dataclasses

    from recdistill.teacher.engine import TeacherTrainer
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    device = default_device()
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    data = tiny_dataset(256)
    cfg = dataclasses.replace(CFG, dense_engine="deepspeed", zero_stage=2, precision="bf16",
                              dense_lr=1e-2, embedding_lr=0.05)
    torch.manual_seed(0)
    tr = TeacherTrainer(TeacherModel(data.spec, cfg), cfg, dist.group.WORLD, device)
    losses = []
    for epoch in range(6):
        for arrays in data.train.iter_batches(16, shuffle=True, seed=epoch,
                                              keys=tr.model.module.feature_names,
                                              rank=rank, world=world):
            losses.append(tr.train_step(arrays.to_batch().to(device)))
    flat = torch.cat([v.flatten() for v in tr.dense_state().values()]).to(device)
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        torch.save({"losses": losses, "gathered": [g.cpu() for g in gathered]}, out)
    dist.destroy_process_group()


@pytest.mark.timeout(600)
def test_deepspeed_zero2_bf16_on_cuda(tmp_path: Path, free_port: int) -> None:
    """The DeepSpeed dense engine on CUDA (nccl, bf16 tower), tables on fbgemm-gpu."""
    world = min(2, torch.cuda.device_count())
    out = str(tmp_path / "ds.pt")
    mp.spawn(_deepspeed_worker, args=(world, free_port, out), nprocs=world, join=True)
    r = torch.load(out, weights_only=True)
    assert sum(r["losses"][-4:]) / 4 < sum(r["losses"][:4]) / 4 - 0.1
    for g in r["gathered"][1:]:
        torch.testing.assert_close(g, r["gathered"][0], rtol=0, atol=0)


def _labelled(data, n: int, seed: int):  # noqa: ANN001, ANN202 - test data
    import numpy as np

    from recdistill.cluster.codec import LabelledBatch, encode
    g = torch.Generator().manual_seed(seed)
    return [LabelledBatch(inputs=data.train.take(np.arange(32 * i, 32 * i + 32)),
                          logits=encode(torch.randn(32, 2, generator=g), "float16"), version=0)
            for i in range(n)]


def test_plain_student_replica_on_its_gpu_trains_as_on_cpu(monkeypatch) -> None:
    """A plain replica Ray gave a GPU: model, batches (pinned, non-blocking copies) and
    teacher outputs on cuda; 3 steps from the same weights equal the CPU replica's,
    its evaluation too, and its state comes back on the CPU."""
    from recdistill.cluster import replica as rep
    from recdistill.cluster.config import GroupConfig
    from recdistill.student.config import StudentConfig
    from recdistill.student.losses import make_term
    data = tiny_dataset(n=96)
    group = GroupConfig(StudentConfig(sharding="none", name="g", embedding_dim=4, hidden=(8,),
                                      losses=(make_term("hard_label", 0.5),
                                              make_term("prediction_kd", 0.5))))
    torch.manual_seed(0)
    cpu = rep.StudentReplica(group, data.spec, {}, rank=0, world=1)
    monkeypatch.setattr(rep, "actor_device", lambda: torch.device("cuda", 0))
    torch.manual_seed(0)
    gpu = rep.StudentReplica(group, data.spec, {}, rank=0, world=1)
    assert {p.device.type for p in gpu.model.parameters()} == {"cuda"}
    for b in _labelled(data, 3, seed=1):
        cpu.train_on(b)
        gpu.train_on(b)
    got = gpu.state().state["model"]
    for k, v in cpu.state().state["model"].items():
        assert got[k].device.type == "cpu"
        torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5, msg=k)
    want, have = cpu.evaluate(data.test, 32).compute(), gpu.evaluate(data.test, 32).compute()
    for task in want:
        assert have[task]["auc"] == pytest.approx(want[task]["auc"], abs=1e-4)
        assert have[task]["n"] == want[task]["n"]


def _sharded_gpu_worker(rank: int, out: str) -> None:
    from recdistill.cluster import replica as rep
    from recdistill.cluster.config import GroupConfig
    from recdistill.cluster.contracts import StateBlob
    from recdistill.student.config import StudentConfig
    rep.actor_device = lambda: torch.device("cuda", 0)  # what Ray gives a 1-GPU replica
    data = tiny_dataset(n=96)
    group = GroupConfig(StudentConfig(name="g", embedding_dim=4, hidden=(8,),
                                      sharding="row_wise", embedding_optimizer="adam",
                                      embedding_lr=0.01), replicas=1)
    r = rep.StudentReplica(group, data.spec, {}, rank=0, world=1)
    r.setup("127.0.0.1", 0)
    tables = [v for k, v in r.net.state_dict().items() if "embedding_bags" in k]
    devices = {s.tensor.device.type for t in tables for s in t.local_shards()}
    batch = _labelled(data, 1, seed=2)[0]
    losses = [sum(r.train_on(batch).loss.values()) for _ in range(20)]
    blob = r.state_blob()
    auc = r.evaluate(data.test, 32).compute()
    again = rep.StudentReplica(group, data.spec, {}, rank=0, world=1)
    again.setup("127.0.0.1", 0, StateBlob(blob))
    torch.save({"devices": sorted(devices), "losses": losses, "auc": auc,
                "auc_again": again.evaluate(data.test, 32).compute()}, out)


@pytest.mark.timeout(600)
def test_sharded_student_on_gpu_steps_with_fbgemm_fused_adam(tmp_path: Path) -> None:
    """A row-wise sharded replica on its GPU: tables on cuda, FBGEMM's fused Adam (GPU
    only) lowers the loss on a repeated batch, and its snapshot reloads to the same
    evaluation (a process of its own: a nccl group of one)."""
    out = str(tmp_path / "sharded.pt")
    mp.spawn(_sharded_gpu_worker, args=(out,), nprocs=1, join=True)
    r = torch.load(out, weights_only=True)
    assert r["devices"] == ["cuda"]
    assert r["losses"][-1] < r["losses"][0] - 0.05
    for task, m in r["auc"].items():
        assert r["auc_again"][task]["auc"] == pytest.approx(m["auc"], abs=1e-6)
