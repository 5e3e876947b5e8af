"""What the jobs share: config files, dataset choice, reports. Config files are parsed
into frozen dataclasses here (and only in jobs/); TOML is data, nothing in it runs."""

from __future__ import annotations

import json
import logging
import os
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Any

import torch

from recdistill.data.errors import ConfigError, DataError
from recdistill.data.movielens import SPLITS, load_movielens
from recdistill.data.spec import Dataset
from recdistill.data.synthetic import SyntheticConfig, synthetic_dataset, synthetic_stream_dataset
from recdistill.data.file_stream import FileStream
from recdistill.data.tabular import AUTO_STREAM_ROWS, load_tabular

DATASETS = ("movielens", "movielens-hashed", "synthetic", "synthetic-stream")


CONFIGS = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> list[str]:
    """Names of the configs that come with the package (``jobs/configs/*.toml``)."""
    return sorted(f.stem for f in CONFIGS.glob("*.toml"))


def config_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a file, else the shipped config of that name (``distill_movielens``,
    ``distill_movielens.toml`` or ``jobs/configs/distill_movielens.toml`` all name it), so
    the README's commands work from any directory once the package is installed."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = CONFIGS / (p.name if p.suffix == ".toml" else f"{p.name}.toml")
    if shipped.is_file():
        return shipped
    raise ConfigError(f"{p}: config file not found (shipped configs, usable by name: "
                      f"{', '.join(shipped_configs())})")


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A TOML config file (or a shipped config's name) as a dict; errors name the file."""
    p = config_path(path)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None


def check_sections(doc: dict[str, Any], known: tuple[str, ...], path: str) -> None:
    for key in doc:
        if key not in known:
            raise ConfigError(f"{path}: unknown section or key {key!r}; known: {list(known)}")


def add_data_arguments(p: Any) -> None:
    """The dataset flags every job takes (``--data``, ``--split``, ``--rows``,
    ``--max-cardinality``) on an ``argparse`` parser; None where not given."""
    p.add_argument("--data", help="movielens (default), movielens-hashed, synthetic, "
                                  "synthetic-stream "
                                  "(jobs.distill only) or a dataset .toml")
    p.add_argument("--split", help=f"MovieLens split: {', '.join(SPLITS)} (default "
                                   "user_time)")
    p.add_argument("--rows", type=int, help="synthetic rows (default 100000)")
    p.add_argument("--max-cardinality", type=int, dest="max_cardinality",
                   help="cap on synthetic ids per feature (default 100000; 10000000 gives "
                        "Criteo's own sizes: a 1.08e9-parameter teacher at embedding dim "
                        "32)")


def add_plugin_argument(p: Any) -> None:
    """``--plugin MODULE`` (repeatable): a module that registers teacher architectures
    (``recdistill.teacher.registry``), imported from the working directory."""
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE (from the working directory) before the config "
                        "is read: it registers teacher architectures that [teacher] arch "
                        "names; repeatable")


def add_labelling_arguments(p: Any) -> None:
    """How the teacher labels (``--label-batch-size``, ``--table-dtype``): the
    ``teacher_group`` keys of the same names; None where not given."""
    from recdistill.teacher.config import TABLE_DTYPES
    p.add_argument("--label-batch-size", type=int, dest="label_batch_size",
                   help="rows per teacher forward, a multiple of the student batch "
                        "(teacher_group.label_batch_size; default 4096)")
    p.add_argument("--table-dtype", choices=TABLE_DTYPES, dest="table_dtype",
                   help="embedding tables the teacher labels from: fp32 (default) or "
                        "quantized to fp16, int8 or int4 (teacher_group.table_dtype)")


def load_dataset(data: str, *, split: str = "user_time", seed: int = 0,
                 rows: int = 100_000, max_cardinality: int = 100_000,
                 memory_rows: int | None = None) -> Dataset:
    """``movielens`` (recbole's copy; ``movielens-hashed``: its ids hashed as a TOML's
    ``ids = "hash"``), ``synthetic`` (``rows`` rows in memory, split
    80/10/10), ``synthetic-stream`` (``rows`` training rows generated as they are read,
    50,000 validation and test rows; online distillation only), or a dataset TOML.
    ``max_cardinality`` caps the synthetic features' ids. ``memory_rows``: a dataset
    TOML whose train split streams is held in memory instead, its first ``memory_rows``
    train rows (the same ids and id transform as the stream)."""
    if data in ("movielens", "movielens-hashed"):
        if split not in SPLITS:
            raise ConfigError(f"--split: unknown {split!r}; expected one of {SPLITS}")
        return load_movielens(split=split, seed=seed,
                              ids="hash" if data == "movielens-hashed" else "vocab")
    if data in ("synthetic", "synthetic-stream"):
        cfg = SyntheticConfig(rows=rows, seed=seed, max_cardinality=max_cardinality)
        return synthetic_dataset(cfg) if data == "synthetic" else synthetic_stream_dataset(cfg)
    if data.endswith(".toml"):
        d = load_tabular(data, instead_of_stream=memory_rows)
        if d.reading:  # more than one file, streamed or cut: say how it was read
            print(f"{data}: {d.reading}", flush=True)
        for split, s in d.skipped.items():  # skip_bad_rows: say what was left out
            print(f"warning: {s['file']}: skipped {s['rows']} malformed row(s) of {split} "
                  f"({'; '.join(f'{k}: {n}' for k, n in s['reasons'].items())}); first: "
                  f"{'; '.join(s['first'])}", file=sys.stderr, flush=True)
        return d
    raise DataError(f"--data: expected {' or '.join(DATASETS)} or a dataset .toml file, "
                    f"got {data!r}")


def in_memory(data: Dataset, job: str) -> Dataset:
    """``data`` if its training rows are in memory; jobs that index rows need that."""
    from recdistill.data.synthetic import SyntheticStream
    if isinstance(data.train, SyntheticStream):
        raise ConfigError(f"--data synthetic-stream streams its training rows for "
                          f"jobs.distill only; {job} needs them in memory: use --data "
                          "synthetic (the same generator and feature spec)")
    if isinstance(data.train, FileStream):
        raise ConfigError(f"{data.name} streams its training rows (read = \"stream\", or "
                          f"\"auto\" and over {AUTO_STREAM_ROWS:,} rows) for jobs.distill "
                          f"only; {job} needs them in memory: set read = \"memory\" in "
                          "the dataset TOML if they fit")
    return data


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> str:
    """Write JSON whole to ``path`` (a local path or a storage URI): never half a
    report."""
    from recdistill.data import storage
    storage.write_text(path, json.dumps(obj, indent=2, sort_keys=False))
    return os.fspath(path)


def quiet_library_warnings() -> None:
    """Silence deprecation chatter from the pinned libraries that a user cannot act on
    (ShardedTensor -> DTensor in DCP, DDP's broadcast_buffers in TorchRec, fx tracing)."""
    for module in ("torch.distributed", "torchrec"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


def set_threads() -> None:
    """One intra-op thread per process when several processes share the cores."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or os.environ.get("OMP_NUM_THREADS") == "1":
        torch.set_num_threads(1)


def metrics_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """A text table: one line per (model, task) with AUC, logloss, NE, calibration."""
    lines = [f"{'model':<14}{'task':<10}{'AUC':>8}{'logloss':>9}{'NE':>8}{'calib':>8}"]
    for model, per_task in rows.items():
        for task, m in per_task.items():
            lines.append(f"{model:<14}{task:<10}{m['auc']:>8.4f}{m['logloss']:>9.4f}"
                         f"{m['ne']:>8.4f}{m['calibration']:>8.3f}")
    return "\n".join(lines)


def command_line(argv: list[str] | None, prog: str) -> list[str]:
    """The command that ran this job with the arguments ``argv`` (None: this process's
    own), to print it again (a stopped run's ``--resume``): ``python -m jobs.distill
    ARGS`` as it was typed, the ``recdistill distill ARGS`` script (by its name when
    that is the one on PATH), or ``prog ARGS`` when ``argv`` is not this process's."""
    import shutil
    args = sys.argv[1:] if argv is None else list(argv)
    main = sys.modules.get("__main__")
    if getattr(main, "__spec__", None) is not None:  # python [flags] -m MODULE ARGS
        typed = list(sys.orig_argv)
    else:  # a script: the recdistill console script
        typed = list(sys.argv)
        if shutil.which(Path(typed[0]).name) == typed[0]:
            typed[0] = Path(typed[0]).name
    ours = argv is None or bool(args)  # an empty argv given by a caller says nothing
    if ours and len(typed) > len(args) and typed[len(typed) - len(args):] == args:
        return typed[:len(typed) - len(args)] + args
    return [*prog.split(), *args]


def run_locations(cfg: Any, root: str, *, teacher_named: bool, **given: str | None
                  ) -> tuple[Any, dict[str, str]]:
    """Where a run's files go: every location the command line ``given`` (None: not
    given, "": none) or its default under the storage ``root`` (``report.json``, and
    beside the report ``state``, ``students``, ``tensorboard``; the PNG beside the
    report), and the teacher checkpoints, made absolute here on the driver: an actor on
    another node, or started in another directory, would resolve a relative path
    against its own. ``<root>/teacher`` replaces ``teacher_group.checkpoint``'s
    default unless ``teacher_named``. Returns the config and ``RunOptions`` fields.

    Raises:
        ConfigError: a URI with keys or an endpoint in it, naming the option.
    """
    import dataclasses

    from recdistill.cluster.config import TeacherGroupConfig
    from recdistill.data import storage
    root = storage.location(root, "--storage")
    report = given["report"] if given["report"] is not None else storage.join(
        root, "report.json")
    beside = storage.parent(storage.location(report, "--report")) if report else root
    defaults = {"state_dir": "state", "artifacts": "students", "tensorboard": "tensorboard"}
    out = {"storage": root, "report": report}
    for key, value in given.items():
        if key != "report":
            out[key] = value if value is not None else \
                storage.join(beside, defaults[key]) if key in defaults else ""
    if not report:
        out["tensorboard"] = given["tensorboard"] or ""
    option = {"artifacts": "--students-dir", "storage": "--storage"}
    out = {k: storage.location(v, option.get(k, "--" + k.replace("_", "-"))) if v else ""
           for k, v in out.items()}
    tg = cfg.teacher_group
    checkpoint = storage.join(root, "teacher") if not teacher_named and \
        tg.checkpoint == TeacherGroupConfig.checkpoint else tg.checkpoint
    return dataclasses.replace(
        cfg, teacher_group=dataclasses.replace(tg, checkpoint=storage.absolute(checkpoint)),
        teachers=tuple(dataclasses.replace(m, checkpoint=storage.absolute(m.checkpoint))
                       if m.checkpoint else m for m in cfg.teachers)), out
