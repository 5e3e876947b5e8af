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
