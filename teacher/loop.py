"""The teacher's training run: epochs over the train split on this process's rank, a
checkpoint version at every epoch end (and every ``checkpoint_every`` steps), early
stopping on the first task's validation AUC, and test metrics of the best version.

The same loop runs in one process, on torchrun's ranks and on Ray Train's workers
(``jobs.train_teacher`` and ``cluster.teacher_train`` start it there). It takes what
lies outside ``teacher/`` as arguments: the dataset (``load``) and the per-task metrics
(``metrics``: ``student.metrics.task_metrics``; the teacher does not import students).
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.distributed as dist
from tqdm import tqdm

from recdistill.data.configs import to_mapping
from recdistill.data.errors import ConfigError
from recdistill.data.fingerprint import fingerprint
from recdistill.data.spec import Dataset, pass_seed
from recdistill.teacher.checkpoint import (CheckpointError, read_meta, resolve, version_dir,
                                           write_index)
from recdistill.teacher.config import TeacherConfig
from recdistill.teacher.engine import TeacherTrainer
from recdistill.teacher.model import TeacherModel
from recdistill.teacher.sharding import default_device, init_distributed
from recdistill.teacher.train import predict

# Progress lines per epoch where no terminal shows a bar (Ray workers, CI logs).
_LOG_POINTS = 5

# Per-task metrics of a split: (logits [N, T], labels [N, T], task names) -> task -> name
# -> value, with at least "auc".
Metrics = Callable[[torch.Tensor, torch.Tensor, tuple[str, ...]], dict[str, dict[str, float]]]


@dataclass(frozen=True)
class TrainTeacherArgs:
    """Where the data comes from, where results go, and how the job runs.

    Attributes:
        data: ``movielens``, ``synthetic`` or a dataset TOML file.
        split: MovieLens split (user_time, random, global_time).
        rows: synthetic rows.
        max_cardinality: cap on the synthetic features' ids (1e7: Criteo's own sizes).
        checkpoint: root directory of the run's checkpoint versions.
        report: JSON report path (none if empty).
        eval_batch_size: rows per rank per evaluation batch.
        workers: 0 trains in this process (or the ranks torchrun started); N >= 1 runs N
            ranks as a Ray Train worker group.
        address: Ray cluster to join with ``workers`` (GCS address or ``auto``); empty
            starts a local one (``RAY_ADDRESS`` is honoured).
        gpu: one GPU per Ray worker (nccl); CPU and gloo otherwise.
        resume: continue from the latest version under ``checkpoint``.
        verbose: keep Ray's own start-up lines (token auth, "Started a local Ray
            instance") in the output of a ``workers`` run.
        checkpoint_every: also write a version every this many steps (0: epoch ends only).
        keep_versions: versions kept besides the best (older ones are deleted; 0 keeps all).
        data_seed: seed of the dataset (the synthetic generator, MovieLens' random
            split): the distill job's seed, so its teachers see its data. The teacher's
            own ``TeacherConfig.seed`` seeds its model and data order only, so the
            members of a committee differ in their seeds, not in their data.
    """

    data: str = "movielens"
    split: str = "user_time"
    rows: int = 100_000
    max_cardinality: int = 100_000
    checkpoint: str = "runs/teacher"
    report: str = ""
    eval_batch_size: int = 4096
    workers: int = 0
    address: str = ""
    gpu: bool = False
    resume: bool = False
    verbose: bool = False
    checkpoint_every: int = 0
    keep_versions: int = 3
    data_seed: int = 0

    def __post_init__(self) -> None:
        for key, low in (("rows", 1), ("max_cardinality", 1), ("eval_batch_size", 1),
                         ("workers", 0),
                         ("checkpoint_every", 0), ("keep_versions", 0)):
            if getattr(self, key) < low:
                raise ConfigError(f"job.{key} must be >= {low}, got {getattr(self, key)}")
        if self.address and not self.workers:
            raise ConfigError("job.address (--address) needs job.workers >= 1 (--workers)")


class TeacherRun(Protocol):
    """One process's whole teacher training as a job runs it (``jobs.train_teacher.run``):
    its data loaded, :func:`train`, the report written; what ``cluster/`` runs in a Ray
    task or on each Ray Train worker."""

    def __call__(self, job: TrainTeacherArgs, cfg: TeacherConfig, *,
                 on_progress: Callable[[dict[str, Any]], None] | None = None,
                 summary: bool = True,
                 echo: Callable[[str], None] | None = None) -> dict[str, Any]:
        ...


@dataclass
class Progress:
    """Where training stands; saved in every version so ``--resume`` continues there."""

    epoch: int = 0            # epochs completed
    batch_in_epoch: int = 0   # batches of epoch ``epoch`` already trained
    loss_sum: float = 0.0     # their summed training loss
    step: int = 0
    best_auc: float = -1.0
    best_version: int = -1
    best_epoch: int = -1
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_test: dict[str, Any] = dataclasses.field(default_factory=dict)
    world: int = 1


def restore(job: TrainTeacherArgs, world: int, log: Callable[[str], None]
            ) -> tuple[str | None, Progress]:
    """The version to resume from and its progress; (None, fresh) without --resume.

    Raises:
        CheckpointError: ``job.checkpoint`` has no version, or its latest holds no
            training progress.
    """
    if not job.resume:
        return None, Progress(world=world)
    path = resolve(job.checkpoint, "latest")
    _, _, info = read_meta(path)
    if "progress" not in info:
        raise CheckpointError(f"{path}: holds no training progress to resume from "
                              "(written by an older version of this job)")
    prog = Progress(**info["progress"])
    if prog.batch_in_epoch and prog.world != world:
        log(f"resume: {path} was written mid-epoch by {prog.world} rank(s); with {world} "
            f"the batches differ, so epoch {prog.epoch + 1} restarts from its beginning")
        prog.batch_in_epoch = 0
    log(f"resuming from {path} (step {prog.step}, epoch {prog.epoch + 1}, batch "
        f"{prog.batch_in_epoch})")
    prog.world = world
    return path, prog


def train(job: TrainTeacherArgs, cfg: TeacherConfig, load: Callable[[], Dataset],
          metrics: Metrics, on_progress: Callable[[dict[str, Any]], None] | None = None,
          echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train, checkpoint, keep the best version, evaluate it on test (every rank); returns
    the run's report (every rank the same; the caller writes it).

    ``load`` gives the dataset, called once the process group is up and a resumed run's
    version is found, so a bad ``--resume`` fails before any data is read.
    ``on_progress`` is called on every rank with ``{"epoch", "step", "loss",
    "examples_per_s"}`` at each progress point and with ``"valid"`` at each epoch end
    (the Ray worker loop turns these into dashboard metrics and Ray Train reports).
    ``echo``: where rank 0's progress lines go (default: printed; the distill job sends
    them to its driver, which prints them in its own output).
    """
    t0 = time.perf_counter()
    device = default_device()
    pg = init_distributed(device)
    rank, world = dist.get_rank(pg), dist.get_world_size(pg)
    cfg.check_world(world)

    def log(msg: str) -> None:
        if rank == 0:
            (echo or tqdm.write)(msg)

    resume_from, prog = restore(job, world, log)
    data = load()
    # DMP materialises the meta tables with torch's global generator: seed it, so a run
    # is reproducible (every rank the same seed; each initialises different shards).
    torch.manual_seed(cfg.seed)
    model = TeacherModel(data.spec, cfg)
    keys = model.feature_names
    n_params = sum(p.numel() for p in model.parameters())  # meta tensors know their sizes
    trainer = TeacherTrainer(model, cfg, pg, device, init_from=resume_from,
                             resume_engine=True)
    first_task = data.spec.tasks[0]
    engine = cfg.dense_engine + (f" ZeRO-{cfg.zero_stage} {cfg.precision}"
                                 if cfg.dense_engine == "deepspeed" else "")
    log(f"training a {n_params:,}-parameter teacher: {len(keys)} sparse features, "
        f"{world} rank(s), tables {cfg.sharding}, dense {engine}, data {data.name} "
        f"({len(data.train):,} train rows)")
    steps_per_epoch = data.train.num_batches(cfg.batch_size, world)

    def scores(split: str) -> dict[str, dict[str, float]]:
        p = predict(trainer.model, data.split(split), keys, job.eval_batch_size, device, pg)
        return metrics(torch.from_numpy(p.logits), torch.from_numpy(p.labels),
                       data.spec.tasks)

    def save(progress: Progress) -> None:
        path = version_dir(job.checkpoint, progress.step)
        trainer.save(path, spec=data.spec,
                     info={"epoch": progress.epoch, "step": progress.step,
                           "fingerprint": fingerprint(data.spec, data.name),
                           "valid": progress.history[-1]["valid"] if progress.history
                           else {}, "progress": dataclasses.asdict(progress)})
        if rank == 0:
            # Before the first validation there is no best yet: the newest stands in.
            best = progress.best_version if progress.best_version > 0 else progress.step
            write_index(job.checkpoint, best=best, latest=progress.step,
                        keep=job.keep_versions)

    for epoch in range(prog.epoch, cfg.epochs):
        if prog.best_epoch > 0 and epoch - prog.best_epoch >= cfg.patience:
            break  # a resumed run that had already stopped early
        trainer.model.train()
        skip, loss_before = prog.batch_in_epoch, prog.loss_sum
        bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=True if rank != 0 else None,  # None: only on a terminal
                   leave=False, file=sys.stderr, mininterval=0.5)
        points = {steps_per_epoch * (i + 1) // _LOG_POINTS for i in range(_LOG_POINTS - 1)}
        losses: list[float] = []
        t_epoch = time.perf_counter()
        arrays = data.train.iter_batches(cfg.batch_size, shuffle=True,
                                         seed=pass_seed(cfg.seed, epoch), keys=keys,
                                         rank=rank, world=world)
        for i, batch_arrays in enumerate(itertools.islice(arrays, skip, None), start=skip):
            losses.append(trainer.train_step(batch_arrays.to_batch().to(device)))
            prog.step += 1
            bar.update(1)
            if len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{sum(losses[-20:]) / 20:.4f}")
            if i + 1 in points:
                rate = len(losses) * cfg.batch_size * world / (time.perf_counter() - t_epoch)
                loss20 = sum(losses[-20:]) / len(losses[-20:])
                if bar.disable:
                    log(f"epoch {epoch + 1}: {i + 1}/{steps_per_epoch} steps, loss "
                        f"{loss20:.4f}, {rate:,.0f} examples/s")
                if on_progress:
                    on_progress({"epoch": epoch + 1, "step": prog.step, "loss": loss20,
                                 "examples_per_s": rate})
            if (job.checkpoint_every and prog.step % job.checkpoint_every == 0
                    and i + 1 < steps_per_epoch):
                prog.batch_in_epoch, prog.loss_sum = i + 1, loss_before + sum(losses)
                save(prog)
        bar.close()
        train_loss = (loss_before + sum(losses)) / max(skip + len(losses), 1)
        prog.epoch, prog.batch_in_epoch, prog.loss_sum = epoch + 1, 0, 0.0
        vm = scores("valid")
        auc = vm[first_task]["auc"]
        prog.history.append({"epoch": epoch + 1, "step": prog.step,
                             "train_loss": train_loss, "valid": vm})
        better = auc > prog.best_auc
        if better:
            # Test metrics of each new best now, while its weights are live: reloading
            # the best version into a ZeRO-3 engine afterwards would mean a new engine.
            prog.best_test = scores("test")
            prog.best_auc, prog.best_version, prog.best_epoch = auc, prog.step, epoch + 1
        save(prog)
        log(f"epoch {epoch + 1}: train loss {prog.history[-1]['train_loss']:.4f}, valid "
            f"{first_task} AUC {auc:.4f}{'  (best)' if better else ''}, version "
            f"{prog.step} saved")
        if on_progress:
            on_progress({"epoch": epoch + 1, "step": prog.step,
                         "loss": prog.history[-1]["train_loss"], "valid": vm})
        if not better and epoch + 1 - prog.best_epoch >= cfg.patience:
            log(f"no better valid AUC for {cfg.patience} epochs: stopping")
            break

    best_path = version_dir(job.checkpoint, prog.best_version)
    best = next(h for h in prog.history if h["step"] == prog.best_version)
    return {
        "dataset": data.name, "data_skipped": data.skipped,
        "test": prog.best_test, "valid": best["valid"],
        "best_epoch": prog.best_epoch, "best_version": prog.best_version,
        "epochs_run": len(prog.history), "history": prog.history, "world_size": world,
        "parameters": n_params, "checkpoint": str(best_path),
        "checkpoint_root": job.checkpoint, "wall_s": time.perf_counter() - t0,
        "config": {"teacher": to_mapping(cfg), "job": to_mapping(job)},
    }
