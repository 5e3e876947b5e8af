"""Sharded teacher == unsharded teacher, on 2 gloo ranks (spawned processes).

Table-wise, column-wise and row-wise plans each load the same checkpoint written by a
plain single-process model and must reproduce its logits (and, quantized to int8 for
labelling, the one-process int8 logits); a checkpoint written by the 2
ranks after training loads in one process with identical logits.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from recdistill.teacher.checkpoint import load_teacher_state, save_teacher
from recdistill.teacher.config import TeacherConfig
from recdistill.teacher.model import TeacherModel
from recdistill.teacher.quantize import quantize_tables
from recdistill.teacher.sharding import init_distributed, make_optimizer, shard_teacher
from recdistill.teacher.train import train_step
from testkit import CFG, plain_logits, tiny_dataset


def _init(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)


def _forward_worker(rank: int, port: int, ckpt: str, out: str) -> None:
    _init(rank, port)
    data = tiny_dataset()
    for kind in ("table_wise", "column_wise", "row_wise"):
        cfg = TeacherConfig(**{**CFG.__dict__, "sharding": kind})
        model = TeacherModel(data.spec, cfg)
        dmp = shard_teacher(model, cfg, dist.group.WORLD, torch.device("cpu"))
        load_teacher_state(dmp, ckpt)
        dmp.eval()
        ids, logits = [], []
        batches = [a.to_batch() for a in data.test.iter_batches(
            16, keys=model.feature_names, rank=rank, world=2)]
        with torch.no_grad():
            for b in batches:
                logits.append(dmp(b.dense, b.sparse).logits)
                ids.append(b.ids)
            quantize_tables(dmp, "int8")  # the labelling teacher's int8 shards
            int8 = [dmp(b.dense, b.sparse).logits for b in batches]
        torch.save({"ids": torch.cat(ids), "logits": torch.cat(logits),
                    "int8": torch.cat(int8)}, f"{out}/{kind}_{rank}.pt")
    dist.destroy_process_group()


def _train_worker(rank: int, port: int, ckpt: str, out: str) -> None:
    _init(rank, port)
    data = tiny_dataset()
    model = TeacherModel(data.spec, CFG)
    dmp = shard_teacher(model, CFG, dist.group.WORLD, torch.device("cpu"))
    opt = make_optimizer(dmp, CFG)
    for arrays in data.train.iter_batches(16, shuffle=True, keys=model.feature_names,
                                          rank=rank, world=2):
        train_step(dmp, opt, arrays.to_batch())
    save_teacher(dmp, ckpt, spec=data.spec, cfg=CFG, info={"step": 2})
    dmp.eval()
    with torch.no_grad():
        arrays = next(data.test.iter_batches(32, keys=model.feature_names, rank=rank, world=2))
        b = arrays.to_batch()
        torch.save({"ids": b.ids, "logits": dmp(b.dense, b.sparse).logits},
                   f"{out}/trained_{rank}.pt")
    dist.destroy_process_group()



@pytest.mark.timeout(300)
def test_sharded_logits_equal_unsharded(tmp_path: Path, free_port: int) -> None:
    data = tiny_dataset()
    torch.manual_seed(3)
    plain = TeacherModel(data.spec, CFG, device="cpu")
    ckpt = str(tmp_path / "ckpt")
    save_teacher(plain, ckpt, spec=data.spec, cfg=CFG)
    mp.spawn(_forward_worker, args=(free_port, ckpt, str(tmp_path)), nprocs=2, join=True)
    one = shard_teacher(TeacherModel(data.spec, CFG), CFG,
                        init_distributed(torch.device("cpu")), torch.device("cpu"))
    load_teacher_state(one, ckpt)
    one.eval()
    quantize_tables(one, "int8")
    b = data.test.take(np.arange(64), keys=one.module.feature_names).to_batch()
    with torch.no_grad():
        int8_one_process = one(b.dense, b.sparse).logits
    for kind in ("table_wise", "column_wise", "row_wise"):
        for rank in range(2):
            got = torch.load(tmp_path / f"{kind}_{rank}.pt", weights_only=True)
            assert got["ids"].tolist() == list(range(32 * rank, 32 * rank + 32))
            expect = plain_logits(plain, data, got["ids"])
            # FBGEMM's pooling kernel and torch's EmbeddingBag sum in different orders
            # (and row-wise adds partial pools in a reduce-scatter): float rounding only.
            torch.testing.assert_close(got["logits"], expect, rtol=1e-6, atol=1e-7,
                                       msg=lambda m, k=kind, r=rank: f"{k} rank {r}: {m}")
            assert got["logits"].abs().max() > 1e-3  # not a degenerate all-zero model
            # int8 shards: each row quantized on its own, so table- and row-wise shards
            # give the one-process int8 logits; column-wise quantizes each rank's half
            # of a row with a scale of its own, within the same bound
            diff = (got["int8"] - expect).abs().max().item()
            assert 1e-6 < diff < 1e-3, (kind, rank, diff)
            if kind != "column_wise":
                torch.testing.assert_close(got["int8"], int8_one_process[got["ids"]],
                                           rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(300)
def test_checkpoint_from_two_ranks_loads_in_one(tmp_path: Path, free_port: int) -> None:
    ckpt = str(tmp_path / "ckpt")
    mp.spawn(_train_worker, args=(free_port, ckpt, str(tmp_path)), nprocs=2, join=True)
    data = tiny_dataset()
    plain = TeacherModel(data.spec, CFG, device="cpu")
    before = plain_logits(plain, data, torch.arange(32))
    load_teacher_state(plain, ckpt)
    for rank in range(2):
        got = torch.load(tmp_path / f"trained_{rank}.pt", weights_only=True)
        torch.testing.assert_close(plain_logits(plain, data, got["ids"]), got["logits"],
                                   rtol=1e-5, atol=1e-6)
    assert not torch.allclose(before, plain_logits(plain, data, torch.arange(32)))
