"""``StudentReplica``: one of a student group's M replicas, as a plain class
(``ray.remote`` is applied in cluster/student_group.py). The M replicas of a group form
their own process group (gloo, or nccl on the GPUs Ray gave them); each trains on its
1/M of every labelled batch, all M step together.

A sharded student (``sharding`` other than ``none``, the default) holds its share of
the embedding tables (TorchRec DistributedModelParallel over the group, fused FBGEMM
optimizer, ``student/sharding.py``) and a DDP copy of the dense part; its state is
saved and loaded with torch.distributed.checkpoint by every replica together. A plain
student holds everything (DDP over the whole model) and its state is one blob."""

from __future__ import annotations

import io
import math
import os
import time
from typing import Any

import numpy as np
import torch

from recdistill.cluster.codec import LabelledBatch, committee_outputs
from recdistill.cluster.config import GroupConfig
from recdistill.cluster.contracts import (DcpState, StateBlob, StateDict, StepResult,
                                          TrainResult)
from recdistill.cluster.metrics import ActorMetrics
from recdistill.cluster.process import (actor_device, enable_faulthandler, free_port,
                                        init_group, io_call, io_group, node_address)
from recdistill.common.checkpoint import dcp_writer
from recdistill.data.storage import shown
from recdistill.data.spec import EvalSplit, FeatureSpec
from recdistill.student.losses import build_objective
from recdistill.student.metrics import MetricState
from recdistill.student.model import StudentModel, count_parameters
from recdistill.student.sharding import (clone_state, fill_local, load_sharded, local_state,
                                         make_sharded_optimizer, on_cpu, prepare_optimizer,
                                         save_sharded, serving_state, shard_student)
from recdistill.student.train import (make_student_optimizer, mask_labels, predict_student,
                                      student_step)
from recdistill.teacher.sharding import init_distributed


class StudentReplica:
    """Replica ``rank`` of a student group of ``world`` data-parallel replicas."""

    def __init__(self, group: GroupConfig, spec: FeatureSpec, teacher_dims: dict[str, int],
                 rank: int, world: int) -> None:
        enable_faulthandler()
        torch.set_num_threads(1)
        self.cfg, self.io_timeout_s = group.student, group.checkpoint_timeout_s
        self.rank, self.world = rank, world
        self.device = actor_device()  # the GPU Ray gave this replica, else the CPU
        self._who = f"group {self.cfg.name} replica {rank}/{world}"
        self.tasks, self.spec = spec.tasks, spec
        self.objective = build_objective(self.cfg, spec.tasks, spec.group_key)
        self.sharded = self.cfg.sharding != "none"
        self.model = StudentModel(spec, self.cfg, teacher_dims,
                                  uncertainty=self.objective.uncertainty,
                                  table_device="meta" if self.sharded else "cpu")
        # Counted before sharding: a replica holds only its share of the tables.
        self._counts = {"total": count_parameters(self.model),
                        "serving": sum(v.numel() for v in
                                       self.model.export_state_dict().values())}
        if not self.sharded:
            self.model.to(self.device)
        self.net: torch.nn.Module = self.model
        self.optimizer: Any = None if self.sharded else \
            make_student_optimizer(self.model, self.cfg)
        self.best: dict[str, Any] | None = None
        self.kd_off: tuple[str, ...] = ()  # tasks the KD guard turned off
        self.terms_off: tuple[str, ...] = ()  # and loss terms
        self.metrics = ActorMetrics("student", {"group": self.cfg.name})
        self._t_last = time.perf_counter()

    def address(self) -> tuple[str, int]:
        host = node_address()
        return host, free_port(host)

    def setup(self, addr: str, port: int,
              state: StateBlob | DcpState | StateDict | None = None) -> int:
        """Join the group's process group (M > 1, or any sharded group), shard the
        tables, load ``state`` if given; returns this process's pid."""
        if self.sharded:
            if self.world > 1:
                init_group(addr, port, self.rank, self.world, self.device)
            # (M = 1: the teacher's group of one, an in-memory store, no port opened)
            self.pg = init_distributed(self.device)
            # checkpoint I/O waits on its own group and timeout (a group of one: no wait)
            self.io_pg = io_group(self.io_timeout_s) if self.world > 1 else self.pg
            self.net = shard_student(self.model, self.cfg, self.pg, self.device,
                                     self.cfg.seed)
            self.optimizer = make_sharded_optimizer(self.net, self.cfg)  # type: ignore[arg-type]
            if state is not None:
                self.load_state(state)
            return os.getpid()
        if state is not None:
            self.load_state(state)
        if self.world > 1:
            init_group(addr, port, self.rank, self.world, self.device)
            # DDP all-reduces gradients inside backward; unused parameters (an auxiliary
            # head that no loss reads, say) must not stall it.
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, find_unused_parameters=True,
                device_ids=[self.device] if self.device.type == "cuda" else None)
        return os.getpid()

    def _my_rows(self, n: int, rows: np.ndarray | None = None) -> np.ndarray:
        return np.array_split(np.arange(n) if rows is None else np.asarray(rows),
                              self.world)[self.rank]

    def train_on(self, labelled: LabelledBatch | tuple[LabelledBatch, ...],
                 newest_version: int | None = None,
                 rows: np.ndarray | None = None) -> StepResult:
        """One optimizer step (all replicas together) on this replica's rows.

        ``labelled``: the batch, or a committee's labels of it (the lead's batch first,
        then each member's; the students learn from their mean).

        ``newest_version``: the newest teacher version the stream has seen; with
        ``staleness_tau`` the KD terms are weighted by ``exp(-staleness / tau)``.
        ``rows``: train on these rows of the batch only (None: all of them).
        """
        t0 = time.perf_counter()
        members = labelled if isinstance(labelled, tuple) else (labelled,)
        labelled = members[0]
        assert labelled.inputs is not None, "the lead's batch carries the inputs"
        rows = self._my_rows(labelled.inputs.batch_size, rows)
        # A short batch (a share's last) may give this replica no rows; it still takes part
        # in the step (DDP's all-reduce needs every replica) with a zero-weighted row.
        step_rows, weight = (rows, 1.0) if len(rows) else (np.zeros(1, np.int64), 0.0)
        batch = labelled.inputs.to_table().take(step_rows, self.model.feature_names).to_batch()
        batch = mask_labels(batch, self.tasks, self.cfg.label_tasks)
        teacher = committee_outputs(members, step_rows)
        if self.device.type == "cuda":  # copies from pinned memory overlap the step
            batch = batch.pin_memory().to(self.device, non_blocking=True)
            teacher = teacher.pin_memory().to(self.device, non_blocking=True)
        t1 = time.perf_counter()
        staleness = max(0, (newest_version or labelled.version) - labelled.version)
        kd_scale = math.exp(-staleness / self.cfg.staleness_tau) \
            if self.cfg.staleness_tau > 0 else 1.0
        kd_tasks = torch.tensor([t not in self.kd_off for t in self.tasks], device=self.device) \
            if self.kd_off else None
        out = student_step(self.net, self.optimizer, self.objective,  # type: ignore[arg-type]
                           batch, teacher, kd_scale, weight, kd_tasks, self.terms_off)
        agree = out.pop("agreement")
        now = time.perf_counter()
        timing = {"prepare_s": t1 - t0, "step_s": now - t1}
        self.metrics.count("recdistill_examples_trained", len(rows))
        self.metrics.gauge("recdistill_examples_per_s", len(rows) / max(now - self._t_last, 1e-9))
        self.metrics.gauge("recdistill_teacher_agreement", agree)
        for term, value in out.items():
            self.metrics.gauge("recdistill_loss", value, {"term": term})
        self._t_last = now
        self.metrics.gauge("recdistill_kd_scale", kd_scale)
        return StepResult(ids=labelled.inputs.ids[rows], loss=out, version=labelled.version,
                          kd_scale=kd_scale, timing=timing, agreement=float(agree))

    def train_many(self, newest_version: int | None, rows: list[np.ndarray | None],
                   members: int, *labelled: LabelledBatch) -> TrainResult:
        """``train_on`` each batch of ``labelled`` in order (``rows[i]`` for the i-th):
        one call for several steps, so the driver pays one actor call for them. Each
        batch is ``members`` consecutive entries (a committee's labels of it).

        A step that fails after others were done (a peer died in its all-reduce) ends
        the call with the steps done and ``error`` set: the driver books exactly those."""
        steps: list[StepResult] = []
        batches = [tuple(labelled[i:i + members]) for i in range(0, len(labelled), members)]
        for batch, r in zip(batches, rows, strict=True):
            try:
                steps.append(self.train_on(batch, newest_version, r))
            except Exception as e:  # noqa: BLE001 - reported with the steps that happened
                if not steps:
                    raise
                return TrainResult(steps, f"{type(e).__name__}: {e}")
        return TrainResult(steps)

    @torch.no_grad()
    def evaluate(self, split: EvalSplit, batch_size: int, best: bool = False
                 ) -> MetricState:
        """The metric state of the serving logits of every row of ``split`` (the best
        state if asked), scored block by block (``split.block``: an in-memory table's
        rows or a file's chunk). Every replica of a sharded group calls this."""
        current = None
        if best and self.best is not None:
            current = self._weights()
            self._load_weights(self.best)
        state, key = MetricState.empty(self.tasks), self.spec.group_key
        for b in range(split.n_blocks):
            table = split.block(b)
            state.update(*predict_student(self.model, table, batch_size,
                                          self.net if self.sharded else None, self.device),
                         table.group_keys(key) if key else None)
        if current is not None:
            self._load_weights(current)
        return state

    def _load_weights(self, weights: dict[str, Any]) -> None:
        """Load ``_weights()``'s copy (a copy of the dict: TorchRec's load_state_dict
        pops the keys it consumes, and the copy may be loaded again)."""
        (self.net if self.sharded else self.model).load_state_dict(dict(weights))

    def _weights(self) -> dict[str, Any]:
        """A copy of the model's weights now (a sharded one: this replica's shards)."""
        if self.sharded:
            return clone_state(self.net.state_dict())
        return {k: v.clone() for k, v in self.model.state_dict().items()}

    def set_kd_guard(self, off: tuple[str, ...], terms: tuple[str, ...] = ()) -> None:
        """The KD guard: no more KD on tasks ``off`` (with every task off, no feature KD
        either: ``student_step``'s ``kd_tasks``), and loss terms ``terms`` left out."""
        self.kd_off, self.terms_off = tuple(off), tuple(terms)

    def keep_best(self) -> None:
        self.best = self._weights()

    def save_state(self, path: str) -> DcpState:
        """A sharded group's state (weights, optimizer, best weights) to directory
        ``path`` with DCP; every replica calls this together. Returns the state to
        start a group from."""
        with io_call(self._who, f"save_state to {shown(path)}", self.io_timeout_s):
            save_sharded(path, self.net, self.optimizer, self.best, self.io_pg)
        return DcpState(str(path))

    def save_serving(self, path: str) -> None:
        """The serving weights of the best state (the current one if none was kept) to
        directory ``path`` with DCP, every replica of a sharded group together; a plain
        group's replica 0 alone."""
        import torch.distributed.checkpoint as dcp
        weights = self.best if self.best is not None else self._weights()
        state = serving_state(weights)
        if self.sharded:
            with io_call(self._who, f"save_serving to {shown(path)}", self.io_timeout_s):
                dcp.save(state, storage_writer=dcp_writer(path), process_group=self.io_pg)
        else:
            dcp.save(state, storage_writer=dcp_writer(path), no_dist=True)  # path or URI

    def state(self) -> StateDict:
        """The whole state, on the CPU (the driver that keeps it may have no GPU)."""
        return StateDict(on_cpu({"model": self.model.state_dict(),
                                 "optimizer": self.optimizer.state_dict(), "best": self.best}))

    def state_blob(self) -> np.ndarray:
        """``state()`` as ``torch.save`` bytes (uint8); a sharded replica's own part of
        its state (its shards: the same replica of a group of the same size loads it).
        The driver keeps snapshots as this: Ray moves an array as one buffer, where a
        dict of tensors is pickled and unpickled tensor by tensor in the driver, its CPU
        taken from the pipeline."""
        buf = io.BytesIO()
        if self.sharded:
            self._prepare()
            torch.save({"local": local_state({
                "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}),
                "best": local_state(self.best) if self.best is not None else None}, buf)
        else:
            torch.save(self.state().state, buf)
        return np.frombuffer(buf.getbuffer(), np.uint8)

    def _prepare(self) -> None:
        prepare_optimizer(self.optimizer)

    def load_state(self, state: StateBlob | DcpState | StateDict) -> None:
        """Load a saved state: ``state()``'s, ``state_blob()``'s bytes (a sharded
        replica: its own part) or, sharded, ``save_state``'s directory (whatever number
        of replicas wrote it)."""
        if self.sharded:
            if isinstance(state, StateBlob):  # this replica's part (``state_blob``)
                self._prepare()
                saved = torch.load(io.BytesIO(state.data.tobytes()), weights_only=True,
                                   map_location=self.device)
                now = fill_local({"model": self.net.state_dict(),
                                  "optimizer": self.optimizer.state_dict()}, saved["local"])
                self.net.load_state_dict(now["model"])
                self.optimizer.load_state_dict(now["optimizer"])
                self.best = None if saved["best"] is None else \
                    fill_local(clone_state(self.net.state_dict()), saved["best"])
                return
            if not isinstance(state, DcpState):
                raise ValueError(f"group {self.cfg.name}: a sharded student loads a "
                                 "torch.distributed.checkpoint state or its own part of a "
                                 f"snapshot, not a {type(state).__name__}")
            with io_call(self._who, f"load_state from {state.path}", self.io_timeout_s):
                self.best = load_sharded(state.path, self.net, self.optimizer, self.io_pg)
            return
        if isinstance(state, DcpState):
            raise ValueError(f"group {self.cfg.name}: a plain student cannot load the "
                             f"sharded state {state.path}")
        saved = state.state if isinstance(state, StateDict) else \
            torch.load(io.BytesIO(state.data.tobytes()), weights_only=True,
                       map_location=self.device)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        best = saved.get("best")
        self.best = None if best is None else {k: v.to(self.device) for k, v in best.items()}

    def parameters_count(self) -> dict[str, int]:
        return dict(self._counts)

    def pid(self) -> int:
        return os.getpid()
