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
import os
import sys
from typing import Any, Callable

import torch.distributed as dist

from recdistill.cluster.session import exit_process
from recdistill.cluster.teacher_train import run_on_ray
from recdistill.common.registry import load_plugins
from recdistill.data.configs import from_mapping
from recdistill.data.errors import ConfigError, DataError
from recdistill.data.spec import Dataset
from recdistill.jobs.common import (add_data_arguments, add_plugin_argument, check_sections,
                                    in_memory, load_dataset, metrics_table,
                                    quiet_library_warnings, read_toml, set_threads,
                                    write_json_atomic)
from recdistill.teacher.checkpoint import CheckpointError
from recdistill.teacher.config import DENSE_ENGINES, PRECISIONS, SHARDING_TYPES, TeacherConfig
from recdistill.teacher.loop import TrainTeacherArgs, train

# A dataset whose train split streams trains its teacher on this many of its first rows,
# held in memory (as synthetic-stream's teacher is trained on up to 1e6 in-memory rows).
STREAMED_TEACHER_ROWS = 1_000_000


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
    from recdistill.jobs.distill_config import load_config
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


def run(job: TrainTeacherArgs, cfg: TeacherConfig, dataset: Dataset | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        summary: bool = True,
        echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The job in this process (or on this torchrun rank or Ray worker): the teacher
    trained on ``dataset`` (default: the job's, loaded) by
    :func:`recdistill.teacher.loop.train`; rank 0 writes the report and, with
    ``summary``, prints its test table (the Ray driver prints it instead). Returns the
    report; ``on_progress`` and ``echo`` as :func:`~recdistill.teacher.loop.train` has
    them."""
    from recdistill.student.metrics import task_metrics
    quiet_library_warnings()  # a Ray task or worker starts without the job's filters
    set_threads()

    def load() -> Dataset:
        return in_memory(dataset or load_dataset(
            job.data, split=job.split, seed=job.data_seed, rows=job.rows,
            max_cardinality=job.max_cardinality, memory_rows=STREAMED_TEACHER_ROWS),
            "jobs.train_teacher")

    report = train(job, cfg, load, task_metrics, on_progress, echo)
    if dist.get_rank() == 0:
        if job.report:
            write_json_atomic(job.report, report)
        if summary:
            print_summary(report, echo)
    return report


def print_summary(report: dict[str, Any],
                  echo: Callable[[str], None] | None = None) -> None:
    """The report's test table and where its best version and report are, each line
    to ``echo`` (default: printed)."""
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
    """``recdistill train-teacher``; the exit status (2: a config, data or checkpoint
    error, said in one line)."""
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
                print_summary(run_on_ray(job, cfg, run))
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
