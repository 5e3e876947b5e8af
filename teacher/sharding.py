"""Shard a meta-built teacher over a process group with TorchRec.

The model is built with its tables on the ``meta`` device; this module picks a plan
(table-wise, column-wise or row-wise per table, or TorchRec's planner), wraps the model in
``DistributedModelParallel`` (which materialises each rank's shards as FBGEMM
table-batched embeddings with the optimizer fused into the backward pass, and wraps the
dense tower in DDP), and builds the dense optimizer beside the fused one. gloo on CPU,
nccl on CUDA.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.sharding_plan import (
    column_wise,
    construct_module_sharding_plan,
    row_wise,
    table_wise,
)
from torchrec.distributed.types import ShardingEnv, ShardingPlan
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recdistill.common.sharding import FUSED_OPTIMIZERS, TableSharder
from recdistill.teacher.config import TeacherConfig
from recdistill.teacher.model import TeacherModel

# The shared sharder (common/sharding.py) under the name teacher-side callers know.
TeacherSharder = TableSharder


def default_device() -> torch.device:
    """This process's CUDA device (by LOCAL_RANK) if there is one, else the CPU.

    Ray Train and Ray actors see only their own GPU(s) (CUDA_VISIBLE_DEVICES), so the
    local rank is taken modulo the devices this process can see.
    """
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local % torch.cuda.device_count())
    return torch.device("cpu")


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(device: torch.device) -> dist.ProcessGroup:
    """The default process group: from torchrun's env when present, else a group of one.

    A group of one uses an in-memory store, so a single-process run opens no port.
    """
    if not dist.is_initialized():
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend_for(device))
        else:
            dist.init_process_group(backend_for(device), store=dist.HashStore(),
                                    rank=0, world_size=1)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    group = dist.group.WORLD
    assert group is not None
    return group


def fused_params(cfg: TeacherConfig) -> dict[str, Any]:
    """FBGEMM fused-optimizer settings for the embedding tables."""
    params: dict[str, Any] = {"optimizer": FUSED_OPTIMIZERS[cfg.embedding_optimizer],
                              "learning_rate": cfg.embedding_lr}
    if cfg.embedding_weight_decay:
        params["weight_decay"] = cfg.embedding_weight_decay
    return params


def table_sharding_types(model: TeacherModel, cfg: TeacherConfig) -> dict[str, str]:
    """Table name -> sharding type, from ``cfg.sharding`` and ``cfg.table_sharding``."""
    names = [t.name for t in model.ebc.embedding_bag_configs()]
    unknown = set(cfg.table_sharding) - set(names)
    if unknown:
        raise ValueError(f"teacher.table_sharding names unknown tables {sorted(unknown)}; "
                         f"the teacher has {names}")
    return {n: cfg.table_sharding.get(n, cfg.sharding) for n in names}


def sharding_plan(model: TeacherModel, cfg: TeacherConfig, sharder: TableSharder,
                  pg: dist.ProcessGroup, device: torch.device) -> ShardingPlan:
    """An explicit plan from the config, or TorchRec's planner for ``auto``."""
    world = dist.get_world_size(pg)
    kinds = table_sharding_types(model, cfg)
    if all(k == "auto" for k in kinds.values()):
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=world, compute_device=device.type))
        return planner.collective_plan(model, [sharder], pg)
    if any(k == "auto" for k in kinds.values()):
        raise ValueError("teacher.sharding = 'auto' cannot be mixed with per-table types")
    # Table-wise tables go greedily, largest first, to the least loaded rank.
    load = [0] * world
    per_table = {}
    sizes = {t.name: t.num_embeddings * t.embedding_dim
             for t in model.ebc.embedding_bag_configs()}
    for name in sorted(kinds, key=lambda n: -sizes[n]):
        kind = kinds[name]
        if kind == "table_wise":
            rank = min(range(world), key=lambda r: load[r])
            load[rank] += sizes[name]
            per_table[name] = table_wise(rank=rank, compute_kernel="fused")
        elif kind == "column_wise":
            per_table[name] = column_wise(ranks=list(range(world)))
        else:
            per_table[name] = row_wise(compute_kernel="fused")
    module_plan = construct_module_sharding_plan(
        model.ebc, per_table, sharder=sharder, local_size=world, world_size=world,
        device_type=device.type)
    return ShardingPlan({"ebc": module_plan})


def shard_teacher(model: TeacherModel, cfg: TeacherConfig,
                  pg: dist.ProcessGroup | None = None,
                  device: torch.device | None = None,
                  data_parallel: bool = True) -> DistributedModelParallel:
    """Wrap a (meta-built) teacher in DistributedModelParallel over ``pg``.

    Every rank of ``pg`` must call this with an identically built model.
    ``data_parallel=False`` leaves the dense tower unwrapped (no DDP), for an engine
    that brings its own data parallelism (DeepSpeed, ``teacher/engine.py``).
    """
    device = device or default_device()
    pg = pg or init_distributed(device)
    sharder = TableSharder(fused_params=fused_params(cfg))
    plan = sharding_plan(model, cfg, sharder, pg, device)
    return DistributedModelParallel(module=model, env=ShardingEnv.from_process_group(pg),
                                    device=device, plan=plan, sharders=[sharder],
                                    init_data_parallel=data_parallel)


def make_optimizer(dmp: DistributedModelParallel, cfg: TeacherConfig) -> CombinedOptimizer:
    """The fused (in-backward) table optimizer combined with AdamW for the dense tower."""
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.AdamW(params, lr=cfg.dense_lr,
                                         weight_decay=cfg.dense_weight_decay))
    return CombinedOptimizer([dmp.fused_optimizer, dense])
