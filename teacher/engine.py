"""Train the whole teacher in one step: TorchRec-sharded tables + an engine for the dense tower.

The tables are sharded by DistributedModelParallel (``teacher/sharding.py``) and update
inside the backward pass with their fused FBGEMM optimizer. The dense tower
(``TeacherModel.tower``: dense MLP, cross network, over-arch, heads) is trained by one of
two engines, ``TeacherConfig.dense_engine``:

- ``ddp``: what DMP sets up by itself: the tower wrapped in DDP, AdamW beside the fused
  optimizer (TorchRec's CombinedOptimizer).
- ``deepspeed``: DMP shards the tables only (``init_data_parallel=False``) and the tower is
  handed to ``deepspeed.initialize`` with ZeRO stage 0-3, fp32 or bf16, optional
  optimizer offload. The DeepSpeed engine takes the tower's place inside the model, so
  the teacher's own forward runs through DeepSpeed's module hooks (ZeRO-3 gathers its
  partitioned parameters there) and ``engine.backward`` runs the fused table update and
  DeepSpeed's gradient reduction in one backward pass.

Model code knows neither. Checkpoints (``save`` / ``TeacherTrainer(init_from=...)``) hold
the model in the plain ``TeacherModel`` layout (tables as sharded, the tower's full fp32
weights) plus the optimizer states, so any world size, sharded or not, can load them;
the DeepSpeed engine's own state (partitioned optimizer, fp32 master weights) rides along
in ``<version>/deepspeed`` for a resume on the same world size.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from recdistill.data import storage
from recdistill.data.spec import Batch, FeatureSpec
from recdistill.teacher.checkpoint import read_meta, load_state, save_teacher
from recdistill.teacher.config import TeacherConfig
from recdistill.teacher.model import DenseTower, TeacherModel
from recdistill.teacher.outputs import TeacherOutputs
from recdistill.teacher.sharding import make_optimizer, shard_teacher
from recdistill.teacher.train import multitask_bce

DEEPSPEED_DIR = "deepspeed"
_DS_TAG = "dense"

# DeepSpeed compiles a small C++ op (its shared-memory collectives, ~1 min) the first
# time it starts a process group on CPU, and caches it. Keep that cache beside the
# environment it was built for (``make setup`` builds it: ``python -m teacher.engine``).
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))

log = logging.getLogger(__name__)


def deepspeed_config(cfg: TeacherConfig, world: int) -> dict[str, Any]:
    """The DeepSpeed config dict for the dense tower (one micro-batch per step)."""
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "train_batch_size": cfg.batch_size * world,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        # A client torch AdamW: DeepSpeed's own (fused_adam / cpu_adam) would compile a
        # C++ op on first use (1-2 min) for no gain at these sizes; with offload DeepSpeed
        # insists on its cpu_adam unless told otherwise.
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2 ** 31 - 1,
        "wall_clock_breakdown": False,
    }


class _CastTower(nn.Module):
    """Feeds the tower in its engine's dtype and hands fp32 outputs back (bf16 runs)."""

    def __init__(self, tower: DenseTower, dtype: torch.dtype) -> None:
        super().__init__()
        self.tower, self.dtype = tower, dtype

    def forward(self, emb: torch.Tensor, dense: torch.Tensor) -> TeacherOutputs:
        out = self.tower(emb.to(self.dtype), dense.to(self.dtype))
        return TeacherOutputs(logits=out.logits.float(),
                              features={k: v.float() for k, v in out.features.items()})


def _prefixed(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {prefix + k: v for k, v in state.items()}


class TeacherTrainer:
    """The sharded teacher, its optimizers and its checkpoints, for one engine.

    Every rank of the process group builds one with an identically built model.

    Args:
        model: a meta-built :class:`TeacherModel`.
        cfg: its config (engine, ZeRO stage, precision, sharding).
        pg: the process group (every rank).
        device: this rank's device.
        init_from: a checkpoint version directory to start from (weights and optimizer
            states; the table shards and states reshard to this world size).
        resume_engine: also restore the DeepSpeed engine's own state from ``init_from``
            when it was written by the same world size and ZeRO stage (else the dense
            optimizer starts afresh, with a warning).

    Attributes:
        model: the DistributedModelParallel teacher; ``model(dense, sparse)`` is the
            forward, for training and for ``teacher.train.predict``.
    """

    def __init__(self, model: TeacherModel, cfg: TeacherConfig, pg: dist.ProcessGroup,
                 device: torch.device, init_from: str | os.PathLike[str] | None = None,
                 resume_engine: bool = False) -> None:
        self.cfg = cfg
        self.world = dist.get_world_size(pg)
        self.tower = model.tower
        self.engine: Any = None
        deep = cfg.dense_engine == "deepspeed"
        self.model = shard_teacher(model, cfg, pg, device, data_parallel=not deep)
        if deep:
            self.optimizer = self.model.fused_optimizer
        else:
            self.optimizer = make_optimizer(self.model, cfg)
        if init_from is not None:
            self._load(os.fspath(init_from))
        if deep:
            self._start_deepspeed(device)
            if init_from is not None and resume_engine:
                self._resume_engine(os.fspath(init_from))

    # -- DeepSpeed ---------------------------------------------------------------------
    def _start_deepspeed(self, device: torch.device) -> None:
        import deepspeed  # imported here: only this engine needs it (and it is slow)

        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float32
        module: nn.Module = _CastTower(self.tower, dtype) if dtype != torch.float32 \
            else self.tower
        module.to(device)
        opt = torch.optim.AdamW(module.parameters(), lr=self.cfg.dense_lr,
                                weight_decay=self.cfg.dense_weight_decay)
        self.engine, _, _, _ = deepspeed.initialize(
            model=module, optimizer=opt, config=deepspeed_config(self.cfg, self.world),
            dist_init_required=False)
        # The engine takes the tower's place: the teacher's forward now runs through it.
        self.model.module.tower = self.engine

    def _resume_engine(self, path: str) -> None:
        _, _, info = read_meta(path)
        ds_dir = storage.join(path, DEEPSPEED_DIR)
        same = (info.get("world_size") == self.world
                and info.get("zero_stage") == self.cfg.zero_stage and storage.is_dir(ds_dir))
        if not same:
            log.warning("%s: written by %s rank(s) with ZeRO stage %s; this run has %d "
                        "and stage %d: dense weights loaded, dense optimizer state "
                        "restarted", path, info.get("world_size"), info.get("zero_stage"),
                        self.world, self.cfg.zero_stage)
            return
        with storage.fetched(ds_dir) as local:  # DeepSpeed reads a local directory
            self.engine.load_checkpoint(local, tag=_DS_TAG, load_module_strict=True,
                                        load_optimizer_states=True,
                                        load_lr_scheduler_states=False)

    # -- training ----------------------------------------------------------------------
    def train_step(self, batch: Batch) -> float:
        """Forward, multi-task BCE, backward (table rows update in it), dense step."""
        out: TeacherOutputs = self.model(batch.dense, batch.sparse)
        loss = multitask_bce(out.logits, batch.labels)
        if self.engine is None:
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        else:
            self.engine.backward(loss)
            self.engine.step()
        return float(loss.detach())

    # -- state -------------------------------------------------------------------------
    def dense_state(self) -> dict[str, torch.Tensor]:
        """The tower's full fp32 weights, keyed as in a plain ``TeacherModel``.

        The tower module is the live one under either engine (DDP and DeepSpeed wrap it,
        they do not copy it); only ZeRO-3 needs its partitions gathered first.
        """
        if self.engine is not None and self.cfg.zero_stage == 3:
            import deepspeed
            with deepspeed.zero.GatheredParameters(list(self.tower.parameters()),
                                                   modifier_rank=None):
                state = {k: v.detach().float().clone()
                         for k, v in self.tower.state_dict().items()}
        else:
            state = {k: v.detach().float().clone() for k, v in self.tower.state_dict().items()}
        return _prefixed(state, "tower.")

    def _table_state(self) -> dict[str, Any]:
        return self.model.module.ebc.state_dict(prefix="ebc.")

    def model_state(self) -> dict[str, Any]:
        """Tables (as sharded) + tower (full): the layout of a plain ``TeacherModel``."""
        if self.engine is None:
            return dict(self.model.state_dict())
        return {**self._table_state(), **self.dense_state()}

    def save(self, path: str | os.PathLike[str], *, spec: FeatureSpec,
             info: dict[str, Any] | None = None) -> str:
        """Write checkpoint version directory ``path`` atomically; every rank calls this."""
        state = {**self.model_state(), "optim": self.optimizer.state_dict()}

        def write_engine(partial: str) -> None:
            if self.engine is None:
                return
            with storage.staged(storage.join(partial, DEEPSPEED_DIR)) as local:
                self.engine.save_checkpoint(local, tag=_DS_TAG)  # a local directory

        info = dict(info or {}, dense_engine=self.cfg.dense_engine,
                    zero_stage=self.cfg.zero_stage)
        return save_teacher(state, path, spec=spec, cfg=self.cfg, info=info,
                            extra=write_engine)

    def _load(self, path: str) -> None:
        """Weights and optimizer states from ``path``, before any DeepSpeed engine exists."""
        deep = self.cfg.dense_engine == "deepspeed"
        if not deep:
            # AdamW's state is created lazily; TorchRec's init_state makes it so DCP can
            # load into it in place (its zero-gradient step is overwritten by the load).
            for _, opt in self.optimizer.optimizers:
                if opt is not self.model.fused_optimizer:
                    opt.init_state()
        dense = _prefixed(self.tower.state_dict(), "tower.") if deep else {}
        model_state = {**self._table_state(), **dense} if deep \
            else dict(self.model.state_dict())
        state = {**model_state, "optim": self.optimizer.state_dict()}
        load_state(state, path)
        if deep:
            self.model.module.ebc.load_state_dict(
                {k[len("ebc."):]: v for k, v in state.items() if k.startswith("ebc.")})
            self.tower.load_state_dict(
                {k[len("tower."):]: state[k] for k in dense})
        else:
            self.model.load_state_dict({k: state[k] for k in model_state})
        self.optimizer.load_state_dict(state["optim"])


def prebuild_ops() -> None:
    """Compile (or find cached) the DeepSpeed ops this engine uses on this machine."""
    from deepspeed.comm.torch import build_shm_op
    t0 = time.perf_counter()
    print(f"DeepSpeed ops: building or loading the shared-memory comm op in "
          f"{os.environ['TORCH_EXTENSIONS_DIR']} (first time ~1 min)", flush=True)
    build_shm_op()
    print(f"DeepSpeed ops ready in {time.perf_counter() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    prebuild_ops()
