"""Teacher checkpoints with torch.distributed.checkpoint (DCP).

A checkpoint is a directory: DCP's shards of the model state (one file per writing rank,
tables saved as they are sharded) plus ``recdistill.json`` with the schema, the teacher
config and training facts. DCP reshards on load, so a checkpoint written by 2 ranks loads
on 1 or 3, into a sharded or a plain model.

Writes are atomic: everything goes to ``<dir>.partial`` and is renamed into place only
when complete, so a crash mid-write leaves the previous checkpoint intact.

A training run writes one such directory per version under a root
(``<root>/v00001248``, the version being the training step) and records the best and
the latest in ``<root>/versions.json``; :func:`resolve` turns a root (or a version
directory, or a root and a version number) into the directory to load.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

# CheckpointError is imported from here by cluster/, jobs/ and tests: one class either way.
from recdistill.common.checkpoint import CheckpointError, SafeFileSystemReader, first_cause
from recdistill.data.configs import from_mapping, to_mapping
from recdistill.data.spec import FeatureSpec
from recdistill.teacher.config import TeacherConfig

META_FILE = "recdistill.json"
INDEX_FILE = "versions.json"
# 2: the dense tower lives under ``tower.`` (TeacherModel.tower); optimizer states
# under ``optim.``.
FORMAT_VERSION = 2
_VERSION_DIR = re.compile(r"^v(\d{8,})$")


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def version_dir(root: str | os.PathLike[str], version: int) -> Path:
    """``<root>/v{version:08d}``: where version ``version`` of a training run lives."""
    return Path(root) / f"v{version:08d}"


def save_teacher(model: nn.Module | dict[str, Any], path: str | os.PathLike[str], *,
                 spec: FeatureSpec, cfg: TeacherConfig, info: dict[str, Any] | None = None,
                 extra: Callable[[Path], None] | None = None) -> Path:
    """Write the model's state to checkpoint directory ``path``; every rank calls this.

    Args:
        model: the teacher, sharded (DistributedModelParallel) or plain, or the state
            dict to write (``teacher.engine`` adds optimizer states).
        path: checkpoint directory; replaced atomically if it exists.
        spec: the schema the teacher was trained on.
        cfg: the teacher's config.
        info: extra JSON-ready facts (step, epoch, metrics).
        extra: called on every rank with the partial directory, after the DCP shards
            and before the copy is marked complete (the DeepSpeed engine's state).
    """
    final = Path(path)
    partial = final.with_name(final.name + ".partial")
    if _rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
    _barrier()
    state = model.state_dict() if isinstance(model, nn.Module) else model
    dcp.save(state, checkpoint_id=str(partial))
    if extra is not None:
        extra(partial)
    _barrier()
    if _rank() == 0:
        meta = {"format": FORMAT_VERSION, "spec": spec.to_dict(),
                "teacher": to_mapping(cfg), "info": info or {},
                "world_size": dist.get_world_size() if dist.is_initialized() else 1}
        tmp = partial / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, partial / META_FILE)  # the meta file marks the copy complete
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def versions(root: str | os.PathLike[str]) -> list[int]:
    """Complete versions under a run's checkpoint root, oldest first."""
    p = Path(root)
    if not p.is_dir():
        return []
    found = []
    for child in p.iterdir():
        m = _VERSION_DIR.match(child.name)
        if m and (child / META_FILE).is_file():
            found.append(int(m.group(1)))
    return sorted(found)


def check_absent_or_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a teacher checkpoint (a version directory holding
    ``recdistill.json``, or a root of complete versions ``v<step>/``); False if nothing
    is there (a teacher may be trained into it). Anything else that is there fails,
    naming what was found: a job would otherwise train a teacher over it."""
    p = Path(path)
    if (p / META_FILE).is_file() or versions(p):
        return True
    if not p.exists():
        return False
    what = "a file" if not p.is_dir() else "an empty directory" \
        if not any(p.iterdir()) else None
    if what is None:
        names = sorted(c.name for c in p.iterdir())
        partial = [n for n in names if _VERSION_DIR.match(n)]
        what = (f"a directory whose versions {partial[:3]} are incomplete (no {META_FILE})"
                if partial else f"a directory of {len(names)} entries ({', '.join(names[:3])}"
                f"{', ...' if len(names) > 3 else ''}) and no {META_FILE} or v<step>/ "
                "versions")
    raise CheckpointError(f"{p}: {what}, not a teacher checkpoint (a train_teacher root "
                          f"of versions v<step>/, or one version's directory holding "
                          f"{META_FILE}); name a checkpoint, or a path that does not exist "
                          "to train a teacher into")


def read_index(root: str | os.PathLike[str]) -> dict[str, int]:
    """``{"best": v, "latest": v}`` of a run's root; {} when there is none yet."""
    p = Path(root) / INDEX_FILE
    if not p.is_file():
        return {}
    try:
        index = json.loads(p.read_text())
        return {k: int(index[k]) for k in ("best", "latest") if k in index}
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{p}: unreadable version index ({e})") from e


def write_index(root: str | os.PathLike[str], *, best: int, latest: int,
                keep: int = 0) -> None:
    """Record the best and latest versions atomically (rank 0 only); then delete all
    but the ``keep`` newest versions and the best (``keep=0`` keeps everything)."""
    p = Path(root)
    tmp = p / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps({"best": best, "latest": latest}))
    os.replace(tmp, p / INDEX_FILE)
    if keep > 0:
        for v in versions(p)[:-keep]:
            if v not in (best, latest):
                shutil.rmtree(version_dir(p, v), ignore_errors=True)


def resolve(path: str | os.PathLike[str], version: int | str = "best") -> Path:
    """The checkpoint directory to load.

    Args:
        path: a checkpoint directory (holds ``recdistill.json``) or a run's root of
            versions.
        version: for a root: ``"best"`` (by validation AUC; the newest when no index
            says), ``"latest"``, or a version number.
    """
    p = Path(path)
    if (p / META_FILE).is_file():
        return p
    found = versions(p)
    if not found:
        if not p.exists():
            raise CheckpointError(f"{p}: checkpoint directory not found")
        raise CheckpointError(f"{p}: neither a complete recdistill checkpoint (no "
                              f"{META_FILE}) nor a root of versions (no v######## inside)")
    if isinstance(version, int) or str(version).isdigit():
        v = int(version)
        if v not in found:
            raise CheckpointError(f"{p}: no version {v}; it holds {found}")
        return version_dir(p, v)
    if version not in ("best", "latest"):
        raise CheckpointError("checkpoint version must be best, latest or a number, "
                              f"got {version!r}")
    v = read_index(p).get(str(version), found[-1])
    return version_dir(p, v if v in found else found[-1])


def read_meta(path: str | os.PathLike[str]) -> tuple[FeatureSpec, TeacherConfig, dict[str, Any]]:
    """The schema, teacher config and info of a checkpoint (a version directory, or a
    run's root: its best version), without loading weights."""
    p = resolve(path)
    meta_path = p / META_FILE
    if not p.is_dir():
        raise CheckpointError(f"{p}: checkpoint directory not found")
    if not meta_path.is_file():
        raise CheckpointError(f"{p}: not a complete recdistill checkpoint (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"{meta_path}: format {meta.get('format')!r}, this "
                                  f"version reads {FORMAT_VERSION}")
        spec = FeatureSpec.from_dict(meta["spec"])
        cfg = from_mapping(TeacherConfig, meta["teacher"], "teacher")
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - JSON, key or value errors: a bad file
        raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({e})") from e
    return spec, cfg, dict(meta.get("info", {}), world_size=meta.get("world_size", 1))


def load_state(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Fill ``state`` (its tensors in place, sharded or not) from checkpoint ``path`` (a
    version directory, or a run's root: its best version).

    DCP reads the pieces each rank's shards need, whatever world size wrote them; keys
    the checkpoint holds but ``state`` lacks are not read. Every rank calls this.
    """
    path = resolve(path)  # a root loads its best version; clear error when missing
    read_meta(path)
    try:
        dcp.load(state, storage_reader=SafeFileSystemReader(str(path)))
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - DCP wraps reader
        # errors in CheckpointException, a BaseException; keep its first line only.
        raise CheckpointError(f"{path}: cannot load checkpoint "
                              f"({first_cause(e)})") from e


def load_teacher_state(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load checkpoint ``path`` into ``model`` (sharded or plain); every rank calls this."""
    state = model.state_dict()
    load_state(state, path)
    model.load_state_dict(state)
