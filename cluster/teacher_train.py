"""One teacher trained on a Ray Train worker group (``recdistill train-teacher
--workers N``): the same run each torchrun rank executes, on N Ray workers."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from recdistill.cluster.session import connect_ray
from recdistill.teacher.config import TeacherConfig
from recdistill.teacher.loop import TeacherRun, TrainTeacherArgs


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: Ray Train has set up torch.distributed and the rank env
    (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT) that DeepSpeed reads."""
    import ray.train

    from recdistill.cluster.metrics import ActorMetrics
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    if not config["job"].verbose:  # FBGEMM logs every table's arguments at INFO (root)
        logging.getLogger().setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    metrics = ActorMetrics("teacher_train", {"rank": str(ctx.get_world_rank())})

    def on_progress(p: dict[str, Any]) -> None:
        metrics.gauge("recdistill_teacher_train_loss", p["loss"])
        metrics.gauge("recdistill_teacher_train_step", p["step"])
        if "examples_per_s" in p:
            metrics.gauge("recdistill_teacher_train_examples_per_s", p["examples_per_s"])
        if "valid" in p:  # epoch end: a Ray Train report (shown on the Train dashboard)
            first = next(iter(p["valid"].values()))
            ray.train.report({"epoch": p["epoch"], "step": p["step"],
                              "train_loss": p["loss"], "valid_auc": first["auc"]})

    config["train"](config["job"], config["cfg"], on_progress=on_progress, summary=False)


def run_on_ray(job: TrainTeacherArgs, cfg: TeacherConfig, train: TeacherRun
               ) -> dict[str, Any]:
    """Run ``train`` (``jobs.train_teacher.run``) on ``job.workers`` Ray Train workers;
    returns rank 0's report.

    Why Ray Train's TorchTrainer: it places the N workers (placement group), sets up
    the process group and the env torch.distributed and DeepSpeed expect, and shows the
    run on the dashboard's Train page; the loop inside is the same one that torchrun
    ranks execute.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    # Workers may not share the driver's working directory (``ray job submit``, other
    # nodes): paths travel absolute, and must be on storage every node sees.
    job = dataclasses.replace(
        job, checkpoint=os.path.abspath(job.checkpoint),
        report=os.path.abspath(job.report or os.path.join(job.checkpoint, "report.json")))
    # the workers' output (rank 0's epoch lines) is the run's log: forwarded
    connect_ray(job.address, job.workers + 2, log_to_driver=True, verbose=job.verbose)
    try:
        trainer = TorchTrainer(
            _worker_loop, train_loop_config={"job": job, "cfg": cfg, "train": train},
            scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=job.gpu,
                                         resources_per_worker={"CPU": 1}),
            torch_config=TorchConfig(backend="nccl" if job.gpu else "gloo", timeout_s=300),
            # Ray Train's own run records go beside the checkpoint root.
            run_config=RunConfig(name="train_teacher", storage_path=str(
                Path(job.checkpoint).parent / "ray_train")))
        result = trainer.fit()
        if result.error is not None:
            raise result.error
    finally:
        ray.shutdown()
    report: dict[str, Any] = json.loads(Path(job.report).read_text())
    return report
