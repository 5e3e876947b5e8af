"""Shard a student's embedding tables over its group's replicas with TorchRec.

The student is built with its tables on the ``meta`` device; ``shard_student`` wraps it
in ``DistributedModelParallel`` over the group's process group: every table becomes
FBGEMM table-batched embeddings (table-wise, row-wise or TorchRec's planner) whose
optimizer runs inside the backward pass on the rows a batch touched (row-wise Adagrad
by default: one state value per row, and the update that FBGEMM implements on every
device), while the dense part (MLP, heads, adapters) is data parallel (DDP). A step so
costs what the batch touches, not what the vocabulary holds.

The state of a sharded student is saved and loaded with torch.distributed.checkpoint
(:func:`save_sharded`, :func:`load_sharded`): every replica writes its own shards and
DCP reshards on load, so a state written by 2 replicas loads into 1 or 3. A snapshot
that the same number of replicas will load back is each replica's own part in memory
(:func:`local_state`, :func:`fill_local`): no files, no collective.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor
from torchrec.distributed.model_parallel import (
    DefaultDataParallelWrapper,
    DistributedModelParallel,
)
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.sharding_plan import (
    construct_module_sharding_plan,
    row_wise,
    table_wise,
)
from torchrec.distributed.types import ShardingEnv, ShardingPlan
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recdistill.data import storage
from recdistill.common.checkpoint import CheckpointError, dcp_reader, dcp_writer
from recdistill.common.sharding import FUSED_OPTIMIZERS, TableSharder
from recdistill.student.config import StudentConfig
from recdistill.student.model import StudentModel

STATE_META = "student_state.json"


def fused_params(cfg: StudentConfig) -> dict[str, Any]:
    """FBGEMM fused-optimizer settings of the student's tables."""
    return {"optimizer": FUSED_OPTIMIZERS[cfg.embedding_optimizer],
            "learning_rate": cfg.embedding_lr or cfg.lr, "eps": 1e-8}


def plan(model: StudentModel, cfg: StudentConfig, sharder: TableSharder,
         pg: dist.ProcessGroup, device: torch.device) -> ShardingPlan:
    """Every table as ``cfg.sharding`` says; table-wise tables go greedily, largest
    first, to the least loaded replica; ``auto``: TorchRec's planner."""
    world = dist.get_world_size(pg)
    if cfg.sharding == "auto":
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=world, compute_device=device.type))
        return planner.collective_plan(model, [sharder], pg)
    tables = sorted(model.ebc.embedding_bag_configs(),
                    key=lambda t: -t.num_embeddings * t.embedding_dim)
    load = [0] * world
    per_table = {}
    for t in tables:
        if cfg.sharding == "row_wise":
            per_table[t.name] = row_wise(compute_kernel="fused")
        else:
            rank = min(range(world), key=lambda r: load[r])
            load[rank] += t.num_embeddings * t.embedding_dim
            per_table[t.name] = table_wise(rank=rank, compute_kernel="fused")
    return ShardingPlan({"ebc": construct_module_sharding_plan(
        model.ebc, per_table, sharder=sharder, local_size=world, world_size=world,
        device_type=device.type)})


def shard_student(model: StudentModel, cfg: StudentConfig, pg: dist.ProcessGroup,
                  device: torch.device, seed: int) -> DistributedModelParallel:
    """``model`` (tables on ``meta``) sharded over ``pg``; every replica calls this
    with an identically built model. The shards are initialised (TorchRec's uniform
    init of each table) from ``seed`` and the replica's rank."""
    sharder = TableSharder(fused_params=fused_params(cfg))
    with torch.random.fork_rng():
        torch.manual_seed(seed * 1000 + dist.get_rank(pg))
        return DistributedModelParallel(
            module=model, env=ShardingEnv.from_process_group(pg), device=device,
            plan=plan(model, cfg, sharder, pg, device), sharders=[sharder],
            # Not a static graph, and unused parameters allowed: an auxiliary head that
            # no loss reads, or adapters the KD guard has detached, must not stall DDP.
            data_parallel_wrapper=DefaultDataParallelWrapper(
                static_graph=False, find_unused_parameters=True))


def make_sharded_optimizer(dmp: DistributedModelParallel, cfg: StudentConfig
                           ) -> CombinedOptimizer:
    """The fused table optimizer beside Adam for the dense part (the dense path's
    optimizer, same learning rate and decay)."""
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay))
    return CombinedOptimizer([dmp.fused_optimizer, dense])


def _map_state(state: dict[str, Any], sharded: Any) -> dict[str, Any]:
    """A copy of a (nested) state dict: tensors cloned, each ShardedTensor replaced by
    ``sharded(it)``."""
    out: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, ShardedTensor):
            out[k] = sharded(v)
        elif isinstance(v, torch.Tensor):
            out[k] = v.detach().clone()
        elif isinstance(v, dict):
            out[k] = _map_state(v, sharded)
        else:
            out[k] = v
    return out


def on_cpu(state: Any) -> Any:
    """A copy of a (nested) plain state with every tensor on the CPU: what a process
    without the GPU (the driver) can hold and load."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: on_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(on_cpu(v) for v in state)
    return state


def clone_state(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of a (possibly sharded) state dict: each ShardedTensor keeps its global
    layout and gets copies of this replica's shards."""
    def copy(v: ShardedTensor) -> ShardedTensor:
        shards = [Shard(s.tensor.detach().clone(), s.metadata) for s in v.local_shards()]
        return ShardedTensor._init_from_local_shards_and_global_metadata(
            shards, v.metadata(), process_group=v._process_group)
    return _map_state(state, copy)


def local_state(state: dict[str, Any]) -> dict[str, Any]:
    """This replica's part of a (possibly sharded) state: each ShardedTensor as the
    list of its local shard tensors (copies), everything else as it is. For a snapshot
    the same replicas load back (:func:`fill_local`); a different number loads DCP."""
    return _map_state(state, lambda v: [s.tensor.detach().clone() for s in v.local_shards()])


def fill_local(state: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    """``state`` (from ``state_dict()`` of the same layout) with :func:`local_state`'s
    values copied into it in place; returns ``state``."""
    for k, v in state.items():
        saved = local[k]
        if isinstance(v, ShardedTensor):
            for shard, t in zip(v.local_shards(), saved, strict=True):
                shard.tensor.copy_(t)
        elif isinstance(v, torch.Tensor):
            v.copy_(saved)
        elif isinstance(v, dict):
            fill_local(v, saved)
        else:
            state[k] = saved
    return state


def prepare_optimizer(optimizer: CombinedOptimizer) -> None:
    # Adam creates its state lazily; TorchRec's init_state makes it now (zero grads, no
    # step), so a state about to be loaded has every key DCP must fill.
    for _, opt in optimizer.optimizers:
        if hasattr(opt, "init_state") and not opt.state:
            opt.init_state()


def save_sharded(path: str | os.PathLike[str], model: nn.Module,
                 optimizer: CombinedOptimizer, best: dict[str, Any] | None,
                 pg: dist.ProcessGroup, info: dict[str, Any] | None = None) -> str:
    """Write a sharded student's state (weights, optimizer, best weights) to directory
    ``path`` (a local path or a storage URI) with DCP; every replica calls this.
    Atomic: a local directory is written as ``<path>.partial`` and renamed when
    complete; an object store has no rename, so there ``STATE_META`` is written last
    and :func:`load_sharded` refuses a directory without it."""
    final = os.fspath(path)
    local = not storage.is_uri(final)
    partial = final + ".partial" if local else final
    rank = dist.get_rank(pg)
    if rank == 0:
        storage.rmtree(partial)
        storage.makedirs(partial)
    dist.barrier(pg)
    prepare_optimizer(optimizer)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    if best is not None:
        state["best"] = best
    dcp.save(state, storage_writer=dcp_writer(partial), process_group=pg)
    dist.barrier(pg)
    if rank == 0:
        meta = {"best": best is not None, "world": dist.get_world_size(pg), **(info or {})}
        storage.write_text(storage.join(partial, STATE_META), json.dumps(meta))
        if local:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
    dist.barrier(pg)
    return final


def load_sharded(path: str | os.PathLike[str], model: nn.Module,
                 optimizer: CombinedOptimizer, pg: dist.ProcessGroup
                 ) -> dict[str, Any] | None:
    """Load :func:`save_sharded`'s directory into this replica's shards (whatever
    number of replicas wrote it); returns the best weights (a state dict) or None."""
    p = storage.shown(path)
    try:
        meta = json.loads(storage.read_text(storage.join(path, STATE_META)))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{p}: not a sharded student state ({e})") from None
    prepare_optimizer(optimizer)
    state: dict[str, Any] = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    if meta.get("best"):
        state["best"] = clone_state(state["model"])
    try:
        dcp.load(state, storage_reader=dcp_reader(path), process_group=pg)
    except BaseException as e:  # noqa: BLE001 - DCP wraps reader errors in a BaseException
        raise CheckpointError(f"{p}: cannot load student state ({e})") from e
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state.get("best")


def serving_state(state: dict[str, Any]) -> dict[str, Any]:
    """The serving weights of a (possibly sharded) model state: adapters, auxiliary
    heads and log-variances dropped (``StudentModel.export_state_dict``'s keys)."""
    from recdistill.student.model import _TRAINING_ONLY
    return {k: v for k, v in state.items() if not k.startswith(_TRAINING_ONLY)}
