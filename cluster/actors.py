"""The two kinds of actors, as plain classes (``ray.remote`` is applied in pipeline.py).

``TeacherRank``: one rank of the sharded teacher. K of them form one torch.distributed
group (gloo on CPU, nccl on GPU) and label their share of the stream in lockstep (the
sharded forward's all-to-alls need every rank). ``StudentReplica``: one of a student
group's M data-parallel replicas (DDP over their own gloo group); each trains on its
1/M of every labelled batch, all M step together.
"""

from __future__ import annotations

import io
import math
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist

from cluster.config import GroupConfig
from cluster.data import arrow_to_batch
from cluster.metrics import ActorMetrics
from data.spec import BatchArrays, ExampleTable, FeatureSpec
from student.losses import build_objective
from student.model import StudentModel, count_parameters
from student.train import (make_student_optimizer, mask_labels, predict_student,
                           student_step)
from teacher.checkpoint import load_teacher_state, read_meta
from teacher.model import TeacherModel, feature_dims
from teacher.outputs import TeacherOutputs
from teacher.sharding import backend_for, default_device, shard_teacher
from teacher.train import predict

# A collective that waits this long on a dead peer fails instead of hanging the group.
COLLECTIVE_TIMEOUT = timedelta(seconds=30)
_STORE_SOCKETS: list[socket.socket] = []  # rendezvous sockets this process serves


def node_address() -> str:
    """This node's address for rendezvous: loopback unless Ray runs on a real network."""
    import ray
    return ray.util.get_node_ip_address()


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _encode(t: torch.Tensor, dtype: str) -> np.ndarray:
    """A tensor in the transport dtype, as numpy (bfloat16 travels as its uint16 bits)."""
    if dtype == "bfloat16":
        return t.detach().to(torch.bfloat16).view(torch.int16).cpu().numpy()
    return t.detach().to(getattr(torch, dtype)).cpu().numpy()


def _decode(a: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.array(a))  # ray.get gives read-only arrays: copy the slice
    if dtype == "bfloat16":
        t = t.view(torch.bfloat16)
    return t.float()


@dataclass
class LabelledBatch:
    """What one teacher rank puts in the object store for one batch.

    Attributes:
        inputs: the examples (features, labels, ids).
        logits: [B, T] teacher logits in ``logit_dtype``.
        features: name -> [B, d] requested teacher features in ``feature_dtype``.
        version: teacher checkpoint version.
        logit_dtype: transport dtype of the logits.
        feature_dtype: transport dtype of the features.
    """

    inputs: BatchArrays
    logits: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    version: int = 0
    logit_dtype: str = "float16"
    feature_dtype: str = "float16"

    def teacher_outputs(self, rows: slice | np.ndarray = slice(None)) -> TeacherOutputs:
        return TeacherOutputs(
            logits=_decode(self.logits[rows], self.logit_dtype),
            features={k: _decode(v[rows], self.feature_dtype)
                      for k, v in self.features.items()},
            version=self.version)


def _init_group(addr: str, port: int, rank: int, world: int, device: torch.device) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    while _STORE_SOCKETS:  # a previous group's rendezvous
        _STORE_SOCKETS.pop().close()
    if addr.startswith("127.") and backend_for(device) == "gloo":
        # A local run keeps gloo's sockets on loopback too (DEVELOPERS: bind 127.0.0.1).
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # Rank 0 serves the rendezvous store. Left to itself, torch's TCPStore listens on
    # every interface; given a socket bound to the group's address it listens there only.
    listen = None
    if rank == 0:
        listen = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
        listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listen.bind((addr, port))
        listen.listen(max(8, 2 * world))
        _STORE_SOCKETS.append(listen)  # the store uses the fd: keep the socket open
    store = dist.TCPStore(addr, port, world, rank == 0, timeout=COLLECTIVE_TIMEOUT,
                          master_listen_fd=listen.fileno() if listen is not None else None)
    dist.init_process_group(backend_for(device), store=store, rank=rank, world_size=world,
                            timeout=COLLECTIVE_TIMEOUT)


class PassInput:
    """A label source's share of one pass: the Ray Data stream a rank reads from."""

    batch_size: int
    keys: tuple[str, ...]
    _batches: Iterator[Any] | None = None
    # What the passes cost and produced (``usage``); per instance once first added to.
    _cpu0 = 0.0
    _cpu_s = 0.0
    _examples = 0
    _label_bytes = 0
    _input_bytes = 0
    _batches_done = 0
    # Wall seconds in each stage of producing a batch (the pipeline benchmark's profile).
    _input_s = 0.0
    _forward_s = 0.0
    _encode_s = 0.0

    def start_pass(self, shard: Any) -> None:
        """Take this rank's Ray Data stream (a ``DataIterator`` of equal length)."""
        self._batches = iter(shard.iter_batches(batch_size=self.batch_size,
                                                batch_format="pyarrow", prefetch_batches=2))
        self._cpu0 = time.process_time()

    def label_next(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def label_many(self, n: int) -> tuple[Any, ...]:
        """The next ``n`` batches as ``(ids_list, batch_1, ..., batch_n)``; call it with
        ``num_returns=n + 1`` so each batch is its own object (the groups take them one
        by one). Past the end of the pass an entry of ``ids_list`` and its batch are
        None. One call for n batches: each actor call costs the driver ~0.8 ms of CPU."""
        ids_list: list[Any] = []
        batches: list[Any] = []
        for _ in range(n):
            ids, batch = (None, None) if ids_list and ids_list[-1] is None \
                else self.label_next()
            ids_list.append(ids)
            batches.append(batch)
        return (ids_list, *batches)

    def usage(self) -> dict[str, float]:
        """CPU seconds this process spent in passes (input, forward, encoding, handing
        batches to the object store: all its threads), and what it produced."""
        return {"cpu_s": self._cpu_s, "examples": self._examples,
                "batches": self._batches_done,
                "label_bytes": self._label_bytes, "input_bytes": self._input_bytes,
                "input_s": self._input_s, "forward_s": self._forward_s,
                "encode_s": self._encode_s}

    def _account(self, labelled: LabelledBatch) -> None:
        i = labelled.inputs
        self._batches_done += 1
        self._examples += i.batch_size
        self._label_bytes += labelled.logits.nbytes + sum(
            v.nbytes for v in labelled.features.values())
        self._input_bytes += sum(x.nbytes for x in (i.dense, i.labels, i.ids, i.values,
                                                     i.lengths))

    def _next_arrays(self) -> BatchArrays | None:
        """The next batch of this pass (features ``keys``), or None at its end."""
        assert self._batches is not None, "start_pass first"
        t0 = time.perf_counter()
        try:
            arrow = next(self._batches)
        except StopIteration:
            self._batches = None
            self._cpu_s += time.process_time() - self._cpu0
            return None
        arrays = arrow_to_batch(arrow, self.keys)
        self._input_s += time.perf_counter() - t0
        return arrays


class TeacherRank(PassInput):
    """Rank ``rank`` of the K-rank sharded teacher."""

    def __init__(self, rank: int, world: int, checkpoint: str, features: tuple[str, ...],
                 batch_size: int, logit_dtype: str = "float16",
                 feature_dtype: str = "float16") -> None:
        torch.set_num_threads(1)
        self.rank, self.world = rank, world
        self.checkpoint, self.features = checkpoint, features
        self.batch_size = batch_size
        self.logit_dtype, self.feature_dtype = logit_dtype, feature_dtype
        self.device = default_device()
        self._batches: Iterator[Any] | None = None
        self.metrics = ActorMetrics("teacher", {"rank": str(rank)})

    def address(self) -> tuple[str, int]:
        host = node_address()
        return host, free_port(host)

    def setup(self, addr: str, port: int) -> dict[str, Any]:
        """Join the group, build the teacher on meta, shard it and load the checkpoint."""
        _init_group(addr, port, self.rank, self.world, self.device)
        spec, cfg, info = read_meta(self.checkpoint)
        model = TeacherModel(spec, cfg)
        self.n_params = sum(p.numel() for p in model.parameters())
        self.keys = model.feature_names
        self.spec = spec
        self.model = shard_teacher(model, cfg, dist.group.WORLD, self.device)
        load_teacher_state(self.model, self.checkpoint)
        self.model.eval()
        self.version = int(info.get("step", 0))
        self.metrics.gauge("recdistill_teacher_version", self.version)
        return {"spec": spec, "version": self.version, "parameters": self.n_params,
                "checkpoint": self.checkpoint,
                "feature_dims": feature_dims(spec, cfg), "keys": self.keys}

    def reload(self, checkpoint: str) -> int:
        """Load another version of the same teacher between batches (teacher refresh);
        every rank calls it. Returns the new version."""
        _, _, info = read_meta(checkpoint)
        load_teacher_state(self.model, checkpoint)
        self.model.eval()
        self.checkpoint, self.version = checkpoint, int(info.get("step", 0))
        self.metrics.gauge("recdistill_teacher_version", self.version)
        return self.version

    @torch.no_grad()
    def label_next(self) -> tuple[Any, Any]:
        """(ids, LabelledBatch) of the next batch of this rank, or (None, None) at the end.

        Every rank must call this the same number of times: the forward's all-to-alls
        meet across ranks; equal splits of the stream guarantee it.
        """
        arrays = self._next_arrays()
        if arrays is None:
            return None, None
        labelled = self._label(arrays)
        self.metrics.gauge("recdistill_teacher_version", self.version)
        self._account(labelled)
        return arrays.ids, labelled

    @torch.no_grad()
    def _label(self, arrays: BatchArrays) -> LabelledBatch:
        """The teacher's forward on one batch, encoded in the transport dtypes."""
        t0 = time.perf_counter()
        batch = arrays.to_batch().to(self.device)
        out: TeacherOutputs = self.model(batch.dense, batch.sparse)
        t1 = time.perf_counter()
        self.metrics.count("recdistill_teacher_examples", arrays.batch_size)
        labelled = LabelledBatch(
            inputs=arrays, logits=_encode(out.logits, self.logit_dtype),
            features={k: _encode(out.features[k], self.feature_dtype) for k in self.features},
            version=self.version, logit_dtype=self.logit_dtype,
            feature_dtype=self.feature_dtype)
        self._forward_s += t1 - t0
        self._encode_s += time.perf_counter() - t1
        return labelled

    @torch.no_grad()
    def label_rows(self, table: ExampleTable) -> tuple[np.ndarray, np.ndarray,
                                                        dict[str, np.ndarray]]:
        """(ids, logits, features) of this rank's share of ``table``, in the transport
        dtypes (for offline soft labels). Every rank must call it: the shares are padded
        to equal length so the ranks stay in lockstep; the padding repeats ids, which
        the caller drops."""
        parts = [self._label(arrays) for arrays in table.iter_batches(
            self.batch_size, keys=self.keys, rank=self.rank, world=self.world, pad=True)]
        return (np.concatenate([p.inputs.ids for p in parts]),
                np.concatenate([p.logits for p in parts]),
                {k: np.concatenate([p.features[k] for p in parts]) for k in self.features})

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        import ray
        return ray.get_runtime_context().get_node_id()

    def evaluate(self, table: ExampleTable, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Teacher (logits, labels) of every row of ``table``; every rank must call it.""" 
        p = predict(self.model, table, self.keys, batch_size, self.device)
        return p.logits, p.labels

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


class StudentReplica:
    """Replica ``rank`` of a student group of ``world`` data-parallel replicas."""

    def __init__(self, group: GroupConfig, spec: FeatureSpec, teacher_dims: dict[str, int],
                 rank: int, world: int) -> None:
        torch.set_num_threads(1)
        self.cfg = group.student
        self.rank, self.world = rank, world
        self.tasks = spec.tasks
        self.objective = build_objective(self.cfg, spec.tasks)
        self.model = StudentModel(spec, self.cfg, teacher_dims,
                                  uncertainty=self.objective.uncertainty)
        self.net: torch.nn.Module = self.model
        self.optimizer = make_student_optimizer(self.model, self.cfg)
        self.best: dict[str, Any] | None = None
        self.metrics = ActorMetrics("student", {"group": self.cfg.name})
        self._t_last = time.perf_counter()

    def address(self) -> tuple[str, int]:
        host = node_address()
        return host, free_port(host)

    def setup(self, addr: str, port: int,
              state: dict[str, Any] | np.ndarray | None = None) -> int:
        """Join the group's process group (M > 1), load ``state`` if given."""
        if state is not None:
            self.load_state(state)
        if self.world > 1:
            _init_group(addr, port, self.rank, self.world, torch.device("cpu"))
            # DDP all-reduces gradients inside backward; unused parameters (an auxiliary
            # head that no loss reads, say) must not stall it.
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, find_unused_parameters=True)
        return self.rank

    def _my_rows(self, n: int, rows: np.ndarray | None = None) -> np.ndarray:
        return np.array_split(np.arange(n) if rows is None else np.asarray(rows),
                              self.world)[self.rank]

    def train_on(self, labelled: LabelledBatch, newest_version: int | None = None,
                 rows: np.ndarray | None = None) -> dict[str, Any]:
        """One optimizer step (all replicas together) on this replica's rows.

        ``newest_version``: the newest teacher version the stream has seen; with
        ``staleness_tau`` the KD terms are weighted by ``exp(-staleness / tau)``.
        ``rows``: train on these rows of the batch only (None: all of them).
        """
        t0 = time.perf_counter()
        rows = self._my_rows(labelled.inputs.batch_size, rows)
        # A replayed batch's leftover may give this replica no rows; it still takes part
        # in the step (DDP's all-reduce needs every replica) with a zero-weighted row.
        step_rows, weight = (rows, 1.0) if len(rows) else (np.zeros(1, np.int64), 0.0)
        batch = labelled.inputs.to_table().take(step_rows).to_batch()
        batch = mask_labels(batch, self.tasks, self.cfg.label_tasks)
        teacher = labelled.teacher_outputs(step_rows)
        t1 = time.perf_counter()
        staleness = max(0, (newest_version or labelled.version) - labelled.version)
        kd_scale = math.exp(-staleness / self.cfg.staleness_tau) \
            if self.cfg.staleness_tau > 0 else 1.0
        out = student_step(self.net, self.optimizer, self.objective,  # type: ignore[arg-type]
                           batch, teacher, kd_scale, weight)
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
        return {"ids": labelled.inputs.ids[rows], "loss": out, "agreement": agree,
                "version": labelled.version, "kd_scale": kd_scale, "timing": timing}

    def train_many(self, newest_version: int | None, rows: list[np.ndarray | None],
                   *labelled: LabelledBatch) -> dict[str, Any]:
        """``train_on`` each of ``labelled`` in order (``rows[i]`` for the i-th): one
        call for several steps, so the driver pays one actor call for them.

        Returns ``{"steps": [train_on's result per step done], "error": None}``. A step
        that fails after others were done (a peer died in its all-reduce) ends the call
        with the steps done and ``error`` set: the driver books exactly those as trained.
        """
        steps: list[dict[str, Any]] = []
        for batch, r in zip(labelled, rows, strict=True):
            try:
                steps.append(self.train_on(batch, newest_version, r))
            except Exception as e:  # noqa: BLE001 - reported with the steps that happened
                if not steps:
                    raise
                return {"steps": steps, "error": f"{type(e).__name__}: {e}"}
        return {"steps": steps, "error": None}

    @torch.no_grad()
    def evaluate(self, table: ExampleTable, batch_size: int, best: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Serving logits and labels of every row of ``table`` (the best state if asked)."""
        current = None
        if best and self.best is not None:
            current = self.state()
            self.load_state(self.best)
        out = predict_student(self.model, table, batch_size)
        if current is not None:
            self.load_state(current)
        return out

    def keep_best(self) -> None:
        self.best = self.state()

    def state(self) -> dict[str, Any]:
        return {"model": {k: v.clone() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "best": self.best}

    def state_blob(self) -> np.ndarray:
        """``state()`` as ``torch.save`` bytes (uint8). The driver keeps snapshots as
        this: Ray moves an array as one buffer, where a dict of tensors is pickled and
        unpickled tensor by tensor in the driver, its CPU taken from the pipeline."""
        buf = io.BytesIO()
        torch.save(self.state(), buf)
        return np.frombuffer(buf.getbuffer(), np.uint8)

    def load_state(self, state: dict[str, Any] | np.ndarray) -> None:
        """Load ``state()``'s dict, or its ``state_blob()`` bytes."""
        if isinstance(state, np.ndarray):
            state = torch.load(io.BytesIO(state.tobytes()), weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.best = state.get("best")

    def parameters_count(self) -> dict[str, int]:
        export = self.model.export_state_dict()
        return {"total": count_parameters(self.model),
                "serving": sum(v.numel() for v in export.values())}

    def pid(self) -> int:
        return os.getpid()

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
