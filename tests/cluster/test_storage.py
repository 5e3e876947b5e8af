"""One storage for every file of a run (``recdistill.data.storage``): a local directory
or an ``s3://`` URI, here on a real S3-compatible server on 127.0.0.1 (SeaweedFS, the
``s3`` fixture). Every write is read back and compared byte for byte."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from recdistill.data import storage
from recdistill.teacher.checkpoint import CheckpointError


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    request.getfixturevalue("s3")
    return f"s3://runs/{request.node.name.replace('[', '-').rstrip(']')}-{os.getpid()}"


def test_files_round_trip_whole_and_name_what_is_missing(root: str) -> None:
    """5 MB + 17 bytes (a multipart upload on S3) come back equal; listing, walking,
    deleting; a missing file and a missing checkpoint name the location."""
    data = np.random.default_rng(0).bytes(5_000_017)
    storage.write_bytes(storage.join(root, "a", "blob.bin"), data)
    storage.write_text(storage.join(root, "a", "b", "r.json"), '{"x": 1}')
    assert storage.read_bytes(storage.join(root, "a", "blob.bin")) == data
    assert json.loads(storage.read_text(storage.join(root, "a", "b", "r.json"))) == {"x": 1}
    assert storage.listdir(storage.join(root, "a")) == ["b", "blob.bin"]
    assert storage.walk(root) == ["a/b/r.json", "a/blob.bin"]
    assert storage.is_dir(storage.join(root, "a")) and storage.is_file(
        storage.join(root, "a", "blob.bin"))
    assert not storage.exists(storage.join(root, "nope"))
    assert storage.listdir(storage.join(root, "nope")) == []
    assert storage.listdir(storage.join(root, "a", "blob.bin")) == []  # a file
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        storage.read_bytes(storage.join(root, "nope.bin"))
    storage.torch_save({"w": torch.arange(6.0)}, storage.join(root, "s.pt"))
    assert torch.equal(storage.torch_load(storage.join(root, "s.pt"))["w"], torch.arange(6.0))
    storage.rmtree(storage.join(root, "a"))
    assert storage.walk(root) == ["s.pt"]
    storage.rmtree(root)
    assert storage.walk(root) == []


def test_a_storage_the_job_cannot_use_fails_at_once_naming_it(s3, tmp_path) -> None:
    """``probe`` (the distill job's first step): a path under a file, and an endpoint
    that does not answer (shown without its query); a usable one leaves nothing."""
    (tmp_path / "f").write_text("x")
    with pytest.raises(storage.StorageError, match=rf"^{tmp_path}/f/sub: cannot write there"):
        storage.probe(tmp_path / "f" / "sub")
    with pytest.raises(storage.StorageError, match=r"^s3://runs/x/.recdistill-probe-\d+: "
                                                   r"cannot write \(.*Could not connect"):
        storage.probe("s3://runs/x?endpoint_override=http://127.0.0.1:1")
    storage.probe("s3://runs/probed")
    assert storage.walk("s3://runs/probed") == []


def test_dcp_checkpoints_and_staged_directories_round_trip(root: str, tmp_path) -> None:
    """A DCP state saved and loaded through the storage's writer and reader (DCP's
    fsspec storage over pyarrow for a URI); a directory a library writes locally
    (DeepSpeed's) staged up and fetched back whole."""
    import torch.distributed.checkpoint as dcp

    from recdistill.common.checkpoint import dcp_reader, dcp_writer
    state = {"w": torch.randn(300, 8, generator=torch.Generator().manual_seed(1)),
             "ids": torch.arange(7)}
    dcp.save(state, storage_writer=dcp_writer(storage.join(root, "ck")), no_dist=True)
    back = {"w": torch.zeros(300, 8), "ids": torch.zeros(7, dtype=torch.long)}
    dcp.load(back, storage_reader=dcp_reader(storage.join(root, "ck")), no_dist=True)
    assert torch.equal(back["w"], state["w"]) and torch.equal(back["ids"], state["ids"])
    assert storage.is_file(storage.join(root, "ck", ".metadata"))
    with pytest.raises(BaseException, match="missing: not a complete checkpoint"):
        dcp.load(back, storage_reader=dcp_reader(storage.join(root, "missing")),
                 no_dist=True)
    with storage.staged(storage.join(root, "engine")) as local:
        os.makedirs(os.path.join(local, "tag"), exist_ok=True)
        for name in ("rank0.pt", "rank1.pt"):
            with open(os.path.join(local, "tag", name), "wb") as f:
                f.write(name.encode() * 1000)
    assert storage.walk(storage.join(root, "engine")) == ["tag/rank0.pt", "tag/rank1.pt"]
    with storage.fetched(storage.join(root, "engine")) as local:
        with open(os.path.join(local, "tag", "rank1.pt"), "rb") as f:
            assert f.read() == b"rank1.pt" * 1000


def test_a_teacher_checkpoint_lives_and_loads_under_a_uri(root: str) -> None:
    """save_teacher / versions / resolve / read_meta / load through the storage: the
    same weights back; a directory without its recdistill.json is not a version."""
    from recdistill.teacher.checkpoint import (load_teacher_state, read_meta, resolve,
                                               save_teacher, version_dir, versions,
                                               write_index)
    from recdistill.teacher.model import TeacherModel
    from testkit import CFG, tiny_dataset
    data = tiny_dataset(n=64)
    teacher = storage.join(root, "teacher")
    models = {}
    for step in (2, 4):
        torch.manual_seed(step)
        models[step] = TeacherModel(data.spec, CFG, device="cpu")
        save_teacher(models[step], version_dir(teacher, step), spec=data.spec, cfg=CFG,
                     info={"step": step})
    write_index(teacher, best=2, latest=4)
    storage.write_text(storage.join(teacher, "v00000006", "__0_0.distcp"), "half")
    assert versions(teacher) == [2, 4]
    assert resolve(teacher) == version_dir(teacher, 2)
    assert resolve(teacher, "latest") == version_dir(teacher, 4)
    assert read_meta(teacher)[2]["step"] == 2
    loaded = TeacherModel(data.spec, CFG, device="cpu")
    load_teacher_state(loaded, resolve(teacher, "latest"))
    for k, v in models[4].state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    with pytest.raises(CheckpointError, match=r"v00000006: neither a complete "
                                              r"recdistill checkpoint"):
        read_meta(storage.join(teacher, "v00000006"))


def test_soft_label_parts_round_trip_and_an_unfinished_one_is_not_read(ray_cluster,
                                                                       root: str) -> None:
    """Parts written through Ray Data to the storage, the manifest, and the reader: the
    ids, versions, logits and features back as written; a part without its part.json
    (a crash while it was written) is not finished."""
    from recdistill.cluster.soft_label_files import (Manifest, finished_parts,
                                                     labels_table, read_split, write_part)
    rng = np.random.default_rng(3)
    ids = np.arange(100, dtype=np.int64)
    logits = rng.standard_normal((100, 2)).astype(np.float16)
    hidden = rng.standard_normal((100, 4)).astype(np.float16)
    m = Manifest(checkpoint="t", version=7, tasks=["a", "b"], features={"h": 4},
                 logit_dtype="float16", feature_dtype="float16", part_rows=60,
                 dataset="d", rows={"train": 100, "valid": 0, "test": 0}, keys=[],
                 parameters=1, parts={})
    m.save(root)
    for part, rows in enumerate((slice(0, 60), slice(60, 100))):
        m.parts[f"train/{part:05d}"] = write_part(
            root, "train", part, labels_table(ids[rows], 7, logits[rows], {"h": hidden[rows]}))
    storage.write_text(storage.join(root, "train", "part-00002", "x.parquet"), "half")
    assert sorted(finished_parts(root)) == ["train/00000", "train/00001"]
    m.complete = True
    m.save(root)
    back = read_split(root, "train")
    np.testing.assert_array_equal(back.ids, ids)
    np.testing.assert_array_equal(back.versions, np.full(100, 7))
    np.testing.assert_array_equal(back.logits, logits)
    np.testing.assert_array_equal(back.features["h"], hidden)
    assert Manifest.load(root).parts == m.parts


@pytest.mark.timeout(300)
def test_a_teacher_trained_into_s3_resumes_from_it(s3, tmp_path) -> None:
    """``recdistill train-teacher --checkpoint s3://...`` with DeepSpeed's dense engine
    (its state staged through a local directory): versions, index, DeepSpeed's files and
    the report land in the bucket (one rank under torchrun, as DeepSpeed wants it);
    ``--resume`` reads them back (DeepSpeed's fetched)
    and trains on from the saved step."""
    import subprocess
    import sys

    from testkit import SMALL, job_env, toml_dataset
    data = toml_dataset(tmp_path)
    config = tmp_path / "teacher.toml"
    config.write_text(SMALL.replace("epochs = 4", "epochs = 1") + 'dense_engine = "deepspeed"\n')
    root = "s3://runs/trained/teacher"

    def train(*extra: str) -> dict:
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc_per_node=1", "-m", "jobs.train_teacher", "--data", str(data),
                            "--config", str(config), "--checkpoint", root, "--report",
                            "s3://runs/trained/report.json", *extra], capture_output=True,
                           text=True, env=job_env(), timeout=240)
        assert p.returncode == 0, p.stderr[-3000:]
        return json.loads(storage.read_text("s3://runs/trained/report.json"))

    first = train()
    from recdistill.teacher.checkpoint import read_index, versions
    (step,) = versions(root)
    assert read_index(root) == {"best": step, "latest": step}
    files = storage.walk(f"{root}/v{step:08d}")
    assert "recdistill.json" in files and ".metadata" in files
    assert any(f.startswith("deepspeed/") for f in files), files
    second = train("--resume", "--epochs", "2")
    assert versions(root) == [step, 2 * step]  # one epoch more, from the saved step
    assert second["best_version"] in (step, 2 * step) and first["wall_s"] > 0
