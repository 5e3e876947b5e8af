"""Teacher checkpoints with torch.distributed.checkpoint (DCP).

A checkpoint is a directory: DCP's shards of the model state (one file per writing rank,
tables saved as they are sharded) plus ``recdistill.json`` with the schema, the teacher
config and training facts. DCP reshards on load, so a checkpoint written by 2 ranks loads
on 1 or 3, into a sharded or a plain model.

A checkpoint lives in a local directory or under a storage URI (``s3://...``,
``recdistill.data.storage``). Writes are atomic: a local one goes to ``<dir>.partial``
and is renamed into place only when complete, so a crash mid-write leaves the previous
checkpoint intact; an object store has no rename, so there ``recdistill.json`` is
written last and a directory without it is not a checkpoint.

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
from typing import Any, Callable

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

# CheckpointError is imported from here by cluster/, jobs/ and tests: one class either way.
from recdistill.common.checkpoint import CheckpointError, dcp_reader, dcp_writer, first_cause
from recdistill.data import storage
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


def version_dir(root: str | os.PathLike[str], version: int) -> str:
    """``<root>/v{version:08d}``: where version ``version`` of a training run lives."""
    return storage.join(root, f"v{version:08d}")


def save_teacher(model: nn.Module | dict[str, Any], path: str | os.PathLike[str], *,
                 spec: FeatureSpec, cfg: TeacherConfig, info: dict[str, Any] | None = None,
                 extra: Callable[[str], None] | None = None) -> str:
    """Write the model's state to checkpoint directory ``path``; every rank calls this.

    Args:
        model: the teacher, sharded (DistributedModelParallel) or plain, or the state
            dict to write (``teacher.engine`` adds optimizer states).
        path: checkpoint directory or URI; replaced atomically if it exists.
        spec: the schema the teacher was trained on.
        cfg: the teacher's config.
        info: extra JSON-ready facts (step, epoch, metrics).
        extra: called on every rank with the partial directory (a local path or a
            URI), after the DCP shards and before the copy is marked complete (the
            DeepSpeed engine's state).
    """
    final = os.fspath(path)
    local = storage.local_path(final) is not None
    partial = final + ".partial" if local else final  # an object store: in place
    if _rank() == 0:
        storage.rmtree(partial)
        storage.makedirs(storage.parent(partial))
    _barrier()
    state = model.state_dict() if isinstance(model, nn.Module) else model
    dcp.save(state, storage_writer=dcp_writer(partial))
    if extra is not None:
        extra(partial)
    _barrier()
    if _rank() == 0:
        meta = {"format": FORMAT_VERSION, "spec": spec.to_dict(),
                "teacher": to_mapping(cfg), "info": info or {},
                "world_size": dist.get_world_size() if dist.is_initialized() else 1}
        # the meta file marks the copy complete (written whole, last)
        storage.write_text(storage.join(partial, META_FILE), json.dumps(meta, indent=2))
    if _rank() == 0 and local:
        final, partial = storage.local_path(final), storage.local_path(partial)
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(partial, final)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return os.fspath(path)


def versions(root: str | os.PathLike[str]) -> list[int]:
    """Complete versions under a run's checkpoint root, oldest first."""
    found = []
    for name in storage.listdir(root):
        m = _VERSION_DIR.match(name)
        if m and storage.is_file(storage.join(root, name, META_FILE)):
            found.append(int(m.group(1)))
    return sorted(found)


def check_absent_or_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a teacher checkpoint (a version directory holding
    ``recdistill.json``, or a root of complete versions ``v<step>/``); False if nothing
    is there (a teacher may be trained into it). Anything else that is there fails,
    naming what was found: a job would otherwise train a teacher over it."""
    p = storage.shown(path)
    if storage.is_file(storage.join(path, META_FILE)) or versions(path):
        return True
    if not storage.exists(path):
        return False
    names = storage.listdir(path)
    what = "a file" if not storage.is_dir(path) else "an empty directory" \
        if not names else None
    if what is None:
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
    p = storage.join(root, INDEX_FILE)
    if not storage.is_file(p):
        return {}
    try:
        index = json.loads(storage.read_text(p))
        return {k: int(index[k]) for k in ("best", "latest") if k in index}
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{storage.shown(p)}: unreadable version index ({e})") from e


def write_index(root: str | os.PathLike[str], *, best: int, latest: int,
                keep: int = 0) -> None:
    """Record the best and latest versions atomically (rank 0 only); then delete all
    but the ``keep`` newest versions and the best (``keep=0`` keeps everything)."""
    storage.write_text(storage.join(root, INDEX_FILE),
                       json.dumps({"best": best, "latest": latest}))
    if keep > 0:
        for v in versions(root)[:-keep]:
            if v not in (best, latest):
                storage.rmtree(version_dir(root, v))


def resolve(path: str | os.PathLike[str], version: int | str = "best") -> str:
    """The checkpoint directory to load.

    Args:
        path: a checkpoint directory (holds ``recdistill.json``) or a run's root of
            versions.
        version: for a root: ``"best"`` (by validation AUC; the newest when no index
            says), ``"latest"``, or a version number.
    """
    p, where = os.fspath(path), storage.shown(path)
    if storage.is_file(storage.join(p, META_FILE)):
        return p
    found = versions(p)
    if not found:
        if not storage.exists(p):
            raise CheckpointError(f"{where}: checkpoint directory not found")
        raise CheckpointError(f"{where}: neither a complete recdistill checkpoint (no "
                              f"{META_FILE}) nor a root of versions (no v######## inside)")
    if isinstance(version, int) or str(version).isdigit():
        v = int(version)
        if v not in found:
            raise CheckpointError(f"{where}: no version {v}; it holds {found}")
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
    meta_path = storage.shown(storage.join(p, META_FILE))
    if not storage.is_dir(p):
        raise CheckpointError(f"{storage.shown(p)}: checkpoint directory not found")
    try:
        meta = json.loads(storage.read_text(storage.join(p, META_FILE)))
        if meta.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"{meta_path}: format {meta.get('format')!r}, this "
                                  f"version reads {FORMAT_VERSION}")
        spec = FeatureSpec.from_dict(meta["spec"])
        cfg = from_mapping(TeacherConfig, meta["teacher"], "teacher")
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{storage.shown(p)}: not a complete recdistill checkpoint "
                              f"(no {META_FILE})") from None
    except Exception as e:  # noqa: BLE001 - JSON, key or value errors: a bad file
        raise CheckpointError(f"{meta_path}: unreadable checkpoint metadata ({e})") from e
    return spec, cfg, dict(meta.get("info", {}), world_size=meta.get("world_size", 1))


def load_state(state: dict[str, Any], path: str | os.PathLike[str],
               process_group: dist.ProcessGroup | None = None) -> None:
    """Fill ``state`` (its tensors in place, sharded or not) from checkpoint ``path`` (a
    version directory, or a run's root: its best version).

    DCP reads the pieces each rank's shards need, whatever world size wrote them; keys
    the checkpoint holds but ``state`` lacks are not read. Every rank calls this;
    ``process_group``: the group DCP's collectives wait on (default: the default one).
    """
    path = resolve(path)  # a root loads its best version; clear error when missing
    read_meta(path)
    try:
        dcp.load(state, storage_reader=dcp_reader(path), process_group=process_group)
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - DCP wraps reader
        # errors in CheckpointException, a BaseException; keep its first line only.
        raise CheckpointError(f"{storage.shown(path)}: cannot load checkpoint "
                              f"({first_cause(e)})") from e


def load_teacher_state(model: nn.Module, path: str | os.PathLike[str],
                       process_group: dist.ProcessGroup | None = None) -> None:
    """Load checkpoint ``path`` into ``model`` (sharded or plain); every rank calls this."""
    state = model.state_dict()
    load_state(state, path, process_group)
    model.load_state_dict(state)
