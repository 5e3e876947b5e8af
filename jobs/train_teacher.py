"""Train the teacher: ``python -m jobs.train_teacher`` (one process) or
``torchrun --standalone --nproc_per_node=2 -m jobs.train_teacher`` (sharded ranks).

Trains on the train split with early stopping on the first task's validation AUC,
keeps the best epoch as a torch.distributed.checkpoint directory, evaluates it on test,
prints per-task AUC / logloss / NE and writes ``--report`` JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from data.configs import from_mapping, to_mapping
from data.errors import ConfigError, DataError
from data.spec import Dataset
from jobs.common import (check_sections, load_dataset, metrics_table,
                         quiet_library_warnings, read_toml, set_threads, write_json_atomic)
from student.metrics import task_metrics
from teacher.checkpoint import CheckpointError, load_teacher_state, save_teacher
from teacher.config import SHARDING_TYPES, TeacherConfig
from teacher.model import TeacherModel
from teacher.sharding import default_device, init_distributed, make_optimizer, shard_teacher
from teacher.train import device_batches, predict, train_step


@dataclass(frozen=True)
class TrainTeacherArgs:
    """Where the data comes from and where results go.

    Attributes:
        data: ``movielens``, ``synthetic`` or a dataset TOML file.
        split: MovieLens split (user_time, random, global_time).
        rows: synthetic rows.
        checkpoint: directory of the best checkpoint.
        report: JSON report path (none if empty).
        eval_batch_size: rows per rank per evaluation batch.
    """

    data: str = "movielens"
    split: str = "user_time"
    rows: int = 100_000
    checkpoint: str = "runs/teacher"
    report: str = ""
    eval_batch_size: int = 4096

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ConfigError(f"--rows must be >= 1, got {self.rows}")
        if self.eval_batch_size < 1:
            raise ConfigError(f"--eval-batch-size must be >= 1, got {self.eval_batch_size}")


def parse_args(argv: list[str] | None) -> tuple[TrainTeacherArgs, TeacherConfig]:
    p = argparse.ArgumentParser(prog="python -m jobs.train_teacher", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML file with a [teacher] table (and optional [job])")
    p.add_argument("--data", help="movielens (default), synthetic, or a dataset .toml")
    p.add_argument("--split", help="MovieLens split: user_time (default), random, global_time")
    p.add_argument("--rows", type=int, help="synthetic rows (default 100000)")
    p.add_argument("--checkpoint", help="checkpoint directory (default runs/teacher)")
    p.add_argument("--report", help="write a JSON report here")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--sharding", choices=SHARDING_TYPES)
    p.add_argument("--seed", type=int)
    p.add_argument("--privileged", action="store_true",
                   help="give the teacher the dataset's privileged features too")
    a = p.parse_args(argv)

    doc: dict[str, Any] = read_toml(a.config) if a.config else {}
    check_sections(doc, ("teacher", "job"), a.config or "")
    cfg = from_mapping(TeacherConfig, doc.get("teacher", {}), "teacher")
    job = from_mapping(TrainTeacherArgs, doc.get("job", {}), "job")
    over = {k: v for k, v in (("epochs", a.epochs), ("batch_size", a.batch_size),
                              ("sharding", a.sharding), ("seed", a.seed)) if v is not None}
    if a.privileged:
        over["use_privileged"] = True
    cfg = dataclasses.replace(cfg, **over)
    job = dataclasses.replace(job, **{k: v for k, v in (
        ("data", a.data), ("split", a.split), ("rows", a.rows),
        ("checkpoint", a.checkpoint), ("report", a.report)) if v is not None})
    return job, cfg


def run(job: TrainTeacherArgs, cfg: TeacherConfig, dataset: Dataset | None = None
        ) -> dict[str, Any]:
    """Train, keep the best epoch, evaluate on test; returns the report (every rank)."""
    t0 = time.perf_counter()
    set_threads()
    device = default_device()
    pg = init_distributed(device)
    rank, world = dist.get_rank(pg), dist.get_world_size(pg)
    data = dataset or load_dataset(job.data, split=job.split, seed=cfg.seed, rows=job.rows)
    # DMP materialises the meta tables with torch's global generator: seed it, so a run
    # is reproducible (every rank the same seed; each initialises different shards).
    torch.manual_seed(cfg.seed)
    model = TeacherModel(data.spec, cfg)
    keys = model.feature_names
    n_params = sum(p.numel() for p in model.parameters())  # meta tensors know their sizes
    dmp = shard_teacher(model, cfg, pg, device)
    opt = make_optimizer(dmp, cfg)
    first_task = data.spec.tasks[0]

    def log(msg: str) -> None:
        if rank == 0:
            tqdm.write(msg)

    log(f"teacher: {n_params:,} parameters, {len(keys)} sparse features, "
        f"{world} rank(s), sharding {cfg.sharding}, data {data.name} "
        f"({len(data.train):,} train rows)")
    best_auc, best_epoch, history = -1.0, -1, []
    steps_per_epoch = data.train.num_batches(cfg.batch_size, world)
    step = 0
    for epoch in range(cfg.epochs):
        dmp.train()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=True if rank != 0 else None,  # None: only on a terminal
                   leave=False, file=sys.stderr, mininterval=0.5)
        losses = []
        for batch in device_batches(data.train.iter_batches(
                cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + epoch, keys=keys,
                rank=rank, world=world), device):
            losses.append(train_step(dmp, opt, batch))
            step += 1
            bar.update(1)
            if len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{sum(losses[-20:]) / 20:.4f}")
        bar.close()
        val = predict(dmp, data.valid, keys, job.eval_batch_size, device, pg)
        vm = task_metrics(torch.from_numpy(val.logits), torch.from_numpy(val.labels),
                          data.spec.tasks)
        auc = vm[first_task]["auc"]
        history.append({"epoch": epoch + 1, "train_loss": sum(losses) / max(len(losses), 1),
                        "valid": vm})
        better = auc > best_auc
        log(f"epoch {epoch + 1}: train loss {history[-1]['train_loss']:.4f}, valid "
            f"{first_task} AUC {auc:.4f}{'  (best, saved)' if better else ''}")
        if better:
            best_auc, best_epoch = auc, epoch + 1
            save_teacher(dmp, job.checkpoint, spec=data.spec, cfg=cfg,
                         info={"epoch": epoch + 1, "step": step, "valid": vm})
        elif epoch + 1 - best_epoch >= cfg.patience:
            log(f"no better valid AUC for {cfg.patience} epochs: stopping")
            break

    load_teacher_state(dmp, job.checkpoint)
    test = predict(dmp, data.test, keys, job.eval_batch_size, device, pg)
    tm = task_metrics(torch.from_numpy(test.logits), torch.from_numpy(test.labels),
                      data.spec.tasks)
    report = {
        "dataset": data.name, "test": tm, "valid": history[best_epoch - 1]["valid"],
        "best_epoch": best_epoch, "epochs_run": len(history), "history": history,
        "world_size": world, "parameters": n_params, "checkpoint": job.checkpoint,
        "wall_s": time.perf_counter() - t0,
        "config": {"teacher": to_mapping(cfg), "job": to_mapping(job)},
    }
    if rank == 0:
        print(metrics_table({"teacher": tm}))
        print(f"best epoch {best_epoch}, wall {report['wall_s']:.1f}s, checkpoint "
              f"{job.checkpoint}")
        if job.report:
            write_json_atomic(job.report, report)
            print(f"report written to {job.report}")
    return report


def main(argv: list[str] | None = None) -> int:
    quiet_library_warnings()
    try:
        job, cfg = parse_args(argv)
        run(job, cfg)
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
