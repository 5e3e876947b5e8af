"""Train the teacher.

  python -m jobs.train_teacher                                  # this process
  python -m jobs.train_teacher --workers 2 --zero-stage 2       # Ray Train worker group
  torchrun --standalone --nproc_per_node=2 -m jobs.train_teacher # plain torchrun ranks

Tables are TorchRec-sharded over the ranks with their fused FBGEMM optimizer; the dense
tower trains under DDP (default) or DeepSpeed ZeRO (``--zero-stage``, ``--precision``,
``--offload``). With ``--workers N`` the ranks are a Ray Train ``TorchTrainer`` worker
group on a single-node cluster this job starts on 127.0.0.1 (or the cluster at
``--address`` / ``RAY_ADDRESS``, e.g. under ``ray job submit``).

Trains on the train split with early stopping on the first task's validation AUC. Every
epoch end (and every ``--checkpoint-every`` steps) writes a checkpoint version
``<checkpoint>/v<step>`` atomically; ``versions.json`` names the best and the latest.
``--resume`` continues from the latest version. Prints per-task test AUC / logloss / NE of
the best version and writes ``--report`` JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from recdistill.data.configs import from_mapping, to_mapping
from recdistill.data.errors import ConfigError, DataError
from recdistill.data.fingerprint import fingerprint
from recdistill.data.spec import Dataset, pass_seed
from recdistill.jobs.common import (add_data_arguments, add_plugin_argument, check_sections,
                                    connect_ray, exit_process, in_memory, load_dataset,
                                    load_plugins, metrics_table, quiet_library_warnings,
                                    read_toml, set_threads, write_json_atomic)
from recdistill.student.metrics import task_metrics
from recdistill.teacher.checkpoint import (CheckpointError, read_meta, resolve, version_dir,
                                           write_index)
from recdistill.teacher.config import DENSE_ENGINES, PRECISIONS, SHARDING_TYPES, TeacherConfig
from recdistill.teacher.engine import TeacherTrainer
from recdistill.teacher.model import TeacherModel
from recdistill.teacher.sharding import default_device, init_distributed
from recdistill.teacher.train import predict

# Progress lines per epoch where no terminal shows a bar (Ray workers, CI logs).
_LOG_POINTS = 5


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


def parse_args(argv: list[str] | None) -> list[tuple[TrainTeacherArgs, TeacherConfig]]:
    """The runs to make: one teacher, or (``--member``) committee members of a
    ``jobs.distill`` config, each into its own checkpoint."""
    p = argparse.ArgumentParser(prog="recdistill train-teacher", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML file with a [teacher] table (and optional [job])")
    add_data_arguments(p)
    add_plugin_argument(p)
    p.add_argument("--embedding-dim", type=int)
    p.add_argument("--arch", help="the tower over the tables: builtin (default), "
                                  "torchrec_dlrm, torchrec_dlrm_dcn, torchrec_deepfm, or "
                                  "a name a --plugin registered ([teacher] arch)")
    p.add_argument("--embedding-precision", choices=("fp32", "fp16"),
                   help="the tables' weights while training (fp16: half the memory)")
    p.add_argument("--checkpoint", help="checkpoint root directory (default runs/teacher)")
    p.add_argument("--report", help="write a JSON report here")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--sharding", choices=SHARDING_TYPES)
    p.add_argument("--seed", type=int)
    p.add_argument("--privileged", action="store_true",
                   help="give the teacher the dataset's privileged features too")
    p.add_argument("--workers", type=int,
                   help="run N ranks as a Ray Train worker group (default: this process)")
    p.add_argument("--address", help="Ray cluster to join with --workers (or RAY_ADDRESS)")
    p.add_argument("--gpu", action="store_true", help="one GPU per Ray worker (nccl)")
    p.add_argument("--dense-engine", choices=DENSE_ENGINES,
                   help="what trains the dense tower (default ddp)")
    p.add_argument("--zero-stage", type=int,
                   help="DeepSpeed ZeRO stage 0-3 (implies --dense-engine deepspeed)")
    p.add_argument("--precision", choices=PRECISIONS, help="dense tower precision (DeepSpeed)")
    p.add_argument("--offload", action="store_true",
                   help="DeepSpeed optimizer-state offload to host memory")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint version")
    p.add_argument("--verbose", action="store_true",
                   help="keep Ray's own start-up lines (token auth) with --workers")
    p.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps")
    p.add_argument("--member", help="train this member of the distill config's teacher "
                   "committee (its [[teachers]] table over [teacher]) into its checkpoint, "
                   "or 'all' of them, one after the other")
    p.add_argument("--distill-config", help="the jobs.distill TOML whose committee "
                   "--member names (default: the default job's committee)")
    a = p.parse_args(argv)
    load_plugins(a.plugin)
    if a.distill_config and not a.member:
        p.error("--distill-config names a committee for --member")

    doc: dict[str, Any] = read_toml(a.config) if a.config else {}
    check_sections(doc, ("teacher", "job"), a.config or "")
    cfg = from_mapping(TeacherConfig, doc.get("teacher", {}), "teacher")
    job = from_mapping(TrainTeacherArgs, doc.get("job", {}), "job")
    over = {k: v for k, v in (("epochs", a.epochs), ("batch_size", a.batch_size),
                              ("embedding_dim", a.embedding_dim), ("arch", a.arch),
                              ("embedding_precision", a.embedding_precision),
                              ("sharding", a.sharding), ("seed", a.seed),
                              ("dense_engine", a.dense_engine), ("zero_stage", a.zero_stage),
                              ("precision", a.precision)) if v is not None}
    if a.zero_stage is not None or a.offload:
        over.setdefault("dense_engine", "deepspeed")
    if a.privileged:
        over["use_privileged"] = True
    if a.offload:
        over["offload_optimizer"] = True
    cfg = dataclasses.replace(cfg, **over)
    address = a.address if a.address is not None else (
        os.environ.get("RAY_ADDRESS", "") if (a.workers or job.workers) else "")
    job = dataclasses.replace(job, **{k: v for k, v in (
        ("data_seed", a.seed),  # --seed: the data's and the teacher's
        ("data", a.data), ("split", a.split), ("rows", a.rows),
        ("max_cardinality", a.max_cardinality), ("checkpoint", a.checkpoint),
        ("report", a.report), ("workers", a.workers),
        ("address", address or None), ("checkpoint_every", a.checkpoint_every))
        if v is not None})
    if a.gpu:
        job = dataclasses.replace(job, gpu=True)
    if a.resume:
        job = dataclasses.replace(job, resume=True)
    if a.verbose:
        job = dataclasses.replace(job, verbose=True)
    if not a.member:
        return [(job, cfg)]
    return _members(a, job, over)


def _members(a: argparse.Namespace, job: TrainTeacherArgs, over: dict[str, Any]
             ) -> list[tuple[TrainTeacherArgs, TeacherConfig]]:
    """``--member``: each named member's run, its config the member's with the command
    line's model flags over it, its checkpoint the member's (``--checkpoint`` moves the
    committee's root as ``jobs.distill --teacher-checkpoint`` does)."""
    from recdistill.jobs.distill import load_config
    dcfg = load_config(a.distill_config, data=a.data, split=a.split, rows=a.rows,
                       max_cardinality=a.max_cardinality, checkpoint=a.checkpoint)
    # the distill config's dataset (the command line's flags over it)
    job = dataclasses.replace(job, data=dcfg.data, split=dcfg.split, rows=dcfg.rows,
                              max_cardinality=dcfg.max_cardinality, data_seed=dcfg.seed)
    members = list(dcfg.members)
    if a.member != "all":
        members = [m for m in members if m.name == a.member]
        if not members:
            raise ConfigError(f"--member {a.member}: the committee has "
                              f"{[m.name for m in dcfg.members]} (or 'all')")
    return [(dataclasses.replace(job, checkpoint=m.checkpoint, report=job.report
                                 if len(members) == 1 and job.report
                                 else m.checkpoint + "_report.json"),
             dataclasses.replace(m.teacher, **over)) for m in members]


@dataclass
class _Progress:
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


def _restore(job: TrainTeacherArgs, world: int, log: Callable[[str], None]
             ) -> tuple[Path | None, _Progress]:
    """The version to resume from and its progress; (None, fresh) without --resume."""
    if not job.resume:
        return None, _Progress(world=world)
    path = resolve(job.checkpoint, "latest")
    _, _, info = read_meta(path)
    if "progress" not in info:
        raise CheckpointError(f"{path}: holds no training progress to resume from "
                              "(written by an older version of this job)")
    prog = _Progress(**info["progress"])
    if prog.batch_in_epoch and prog.world != world:
        log(f"resume: {path} was written mid-epoch by {prog.world} rank(s); with {world} "
            f"the batches differ, so epoch {prog.epoch + 1} restarts from its beginning")
        prog.batch_in_epoch = 0
    log(f"resuming from {path} (step {prog.step}, epoch {prog.epoch + 1}, batch "
        f"{prog.batch_in_epoch})")
    prog.world = world
    return path, prog


def run(job: TrainTeacherArgs, cfg: TeacherConfig, dataset: Dataset | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        summary: bool = True,
        echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train, checkpoint, keep the best version, evaluate it on test (every rank).

    ``on_progress`` is called on every rank with ``{"epoch", "step", "loss",
    "examples_per_s"}`` at each progress point and with ``"valid"`` at each epoch end
    (the Ray worker loop turns these into dashboard metrics and Ray Train reports).
    ``summary``: rank 0 prints the test table (the Ray driver prints it instead).
    ``echo``: where rank 0's progress lines go (default: printed; the distill job sends
    them to its driver, which prints them in its own output).
    """
    t0 = time.perf_counter()
    set_threads()
    device = default_device()
    pg = init_distributed(device)
    rank, world = dist.get_rank(pg), dist.get_world_size(pg)
    cfg.check_world(world)

    def log(msg: str) -> None:
        if rank == 0:
            (echo or tqdm.write)(msg)

    resume_from, prog = _restore(job, world, log)
    data = in_memory(dataset or load_dataset(job.data, split=job.split, seed=job.data_seed,
                                             rows=job.rows,
                                             max_cardinality=job.max_cardinality),
                     "jobs.train_teacher")
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

    def save(progress: _Progress) -> None:
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
        val = predict(trainer.model, data.valid, keys, job.eval_batch_size, device, pg)
        vm = task_metrics(torch.from_numpy(val.logits), torch.from_numpy(val.labels),
                          data.spec.tasks)
        auc = vm[first_task]["auc"]
        prog.history.append({"epoch": epoch + 1, "step": prog.step,
                             "train_loss": train_loss, "valid": vm})
        better = auc > prog.best_auc
        if better:
            # Test metrics of each new best now, while its weights are live: reloading
            # the best version into a ZeRO-3 engine afterwards would mean a new engine.
            test = predict(trainer.model, data.test, keys, job.eval_batch_size, device, pg)
            prog.best_test = task_metrics(torch.from_numpy(test.logits),
                                          torch.from_numpy(test.labels), data.spec.tasks)
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
    report = {
        "dataset": data.name, "data_skipped": data.skipped,
        "test": prog.best_test, "valid": best["valid"],
        "best_epoch": prog.best_epoch, "best_version": prog.best_version,
        "epochs_run": len(prog.history), "history": prog.history, "world_size": world,
        "parameters": n_params, "checkpoint": str(best_path),
        "checkpoint_root": job.checkpoint, "wall_s": time.perf_counter() - t0,
        "config": {"teacher": to_mapping(cfg), "job": to_mapping(job)},
    }
    if rank == 0:
        if job.report:
            write_json_atomic(job.report, report)
        if summary:
            print_summary(report, echo)
    return report


def print_summary(report: dict[str, Any],
                  echo: Callable[[str], None] | None = None) -> None:
    def out(line: str) -> None:
        if echo:
            echo(line)
        else:
            print(line, flush=True)
    for line in metrics_table({"teacher": report["test"]}).splitlines():
        out(line)
    out(f"best epoch {report['best_epoch']} (version {report['checkpoint']}), "
        f"{report['world_size']} rank(s), wall {report['wall_s']:.1f}s")
    if report["config"]["job"]["report"]:
        out(f"report written to {report['config']['job']['report']}")


# -- Ray Train -----------------------------------------------------------------------------
def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: Ray Train has set up torch.distributed and the rank env
    (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT) that DeepSpeed reads."""
    import ray.train

    from recdistill.cluster.metrics import ActorMetrics
    quiet_library_warnings()
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

    run(config["job"], config["cfg"], on_progress=on_progress, summary=False)


def run_on_ray(job: TrainTeacherArgs, cfg: TeacherConfig) -> dict[str, Any]:
    """Run :func:`run` on ``job.workers`` Ray Train workers; returns rank 0's report.

    Why Ray Train's TorchTrainer: it places the N workers (placement group), sets up
    the process group and the env torch.distributed and DeepSpeed expect, and shows the
    run on the dashboard's Train page; the loop inside is the same :func:`run` that
    torchrun ranks execute.
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
            _worker_loop, train_loop_config={"job": job, "cfg": cfg},
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
    print_summary(report)
    return report


def data_spec_check(job: TrainTeacherArgs, cfg: TeacherConfig) -> None:
    """A registered tower (``cfg.arch``) keeps the contract on this dataset's shapes:
    one forward on a zero batch (the built-in tower is tested)."""
    if cfg.arch == "builtin":
        return
    from recdistill.teacher.model import feature_dims
    spec = load_dataset(job.data, split=job.split, seed=job.data_seed, rows=min(job.rows, 1000),
                        max_cardinality=job.max_cardinality).spec
    feature_dims(spec, cfg)


def main(argv: list[str] | None = None) -> int:
    quiet_library_warnings()
    try:
        runs = parse_args(argv)
        for job, cfg in runs:  # an arch that breaks the contract fails before any data
            data_spec_check(job, cfg)
        for job, cfg in runs:
            if len(runs) > 1:
                print(f"training {job.checkpoint}", flush=True)
            if job.workers:
                cfg.check_world(job.workers)
                run_on_ray(job, cfg)
            else:
                run(job, cfg)
            if dist.is_initialized():  # the next member starts a group of its own
                dist.destroy_process_group()
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    exit_process(main())
