"""The teacher on one process: it learns, and its checkpoints are safe and atomic."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from recdistill.teacher import checkpoint as ckpt_mod
from recdistill.teacher.checkpoint import (CheckpointError, load_teacher_state, read_meta,
                                           save_teacher)
from recdistill.teacher.config import TeacherConfig
from recdistill.teacher.model import TeacherModel, embedding_tables
from recdistill.teacher.sharding import make_optimizer, shard_teacher
from recdistill.teacher.train import predict, train_step
from testkit import CFG, tiny_dataset


def test_model_shapes_and_shared_table() -> None:
    data = tiny_dataset()
    model = TeacherModel(data.spec, CFG, device="cpu")
    tables = {t.name: t.feature_names for t in embedding_tables(data.spec, CFG)}
    assert tables == {"t_user": ["user"], "t_item": ["item", "history"], "t_genre": ["genre"]}
    b = data.test.take(np.arange(5), keys=model.feature_names).to_batch()
    out = model(b.dense, b.sparse)
    assert out.logits.shape == (5, 2)
    assert out.features["pooled_embeddings"].shape == (5, 4 * 16)
    assert out.features["interaction"].shape == (5, 5 * 16)  # 4 sparse + dense slot
    assert out.features["last_hidden"].shape == (5, 16)
    no_priv = TeacherModel(data.spec, TeacherConfig(**{**CFG.__dict__, "use_privileged": False}))
    assert no_priv.feature_names == ("user", "item", "genre")


def test_sharded_teacher_learns_on_one_rank() -> None:
    data = tiny_dataset(n=256, seed=1)
    # a learnable signal: click = user id is odd
    data.train.labels[:, 0] = data.train.sparse["user"][1] % 2
    model = TeacherModel(data.spec, CFG)
    dmp = shard_teacher(model, CFG, device=torch.device("cpu"))
    opt = make_optimizer(dmp, CFG)
    first, last = [], []
    for epoch in range(8):
        losses = [train_step(dmp, opt, a.to_batch()) for a in data.train.iter_batches(
            32, shuffle=True, seed=epoch, keys=model.feature_names)]
        (first if epoch == 0 else last).append(np.mean(losses))
    assert last[-1] < 0.75 * first[0]
    pred = predict(dmp, data.train, model.feature_names, 64, torch.device("cpu"))
    assert pred.ids.tolist() == list(range(256))
    acc = ((pred.logits[:, 0] > 0) == (data.train.labels[:, 0] > 0.5)).mean()
    assert acc > 0.9


def test_checkpoint_round_trip_and_meta(tmp_path: Path) -> None:
    data = tiny_dataset()
    a = TeacherModel(data.spec, CFG, device="cpu")
    b = TeacherModel(data.spec, TeacherConfig(**{**CFG.__dict__, "seed": 9}), device="cpu")
    save_teacher(a, tmp_path / "v1", spec=data.spec, cfg=CFG, info={"step": 7})
    spec, cfg, info = read_meta(tmp_path / "v1")
    assert spec == data.spec and cfg == CFG and info["step"] == 7
    load_teacher_state(b, tmp_path / "v1")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)


def test_missing_and_tampered_checkpoints_fail_clearly(tmp_path: Path) -> None:
    data = tiny_dataset()
    model = TeacherModel(data.spec, CFG, device="cpu")
    with pytest.raises(CheckpointError, match="nope: checkpoint directory not found"):
        load_teacher_state(model, tmp_path / "nope")
    save_teacher(model, tmp_path / "v1", spec=data.spec, cfg=CFG)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "v1" / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match=r"posix\.system"):
        load_teacher_state(model, tmp_path / "v1")
    assert not marker.exists()  # the payload never ran
    save_teacher(model, tmp_path / "v2", spec=data.spec, cfg=CFG)
    shard = next((tmp_path / "v2").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated copy
    with pytest.raises(CheckpointError, match="v2: cannot load checkpoint"):
        load_teacher_state(model, tmp_path / "v2")
    (tmp_path / "v1" / "recdistill.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable checkpoint metadata"):
        load_teacher_state(model, tmp_path / "v1")


def test_crash_mid_save_keeps_previous_version(tmp_path: Path, monkeypatch) -> None:
    data = tiny_dataset()
    old = TeacherModel(data.spec, CFG, device="cpu")
    save_teacher(old, tmp_path / "teacher", spec=data.spec, cfg=CFG, info={"step": 1})
    new = TeacherModel(data.spec, TeacherConfig(**{**CFG.__dict__, "seed": 4}), device="cpu")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ckpt_mod.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_teacher(new, tmp_path / "teacher", spec=data.spec, cfg=CFG, info={"step": 2})
    monkeypatch.undo()
    assert read_meta(tmp_path / "teacher")[2]["step"] == 1
    probe = TeacherModel(data.spec, TeacherConfig(**{**CFG.__dict__, "seed": 5}), device="cpu")
    load_teacher_state(probe, tmp_path / "teacher")
    torch.testing.assert_close(probe.state_dict()["tower.heads.click.weight"],
                               old.state_dict()["tower.heads.click.weight"], rtol=0, atol=0)


def test_planner_plan_on_one_rank_matches_plain_model(tmp_path: Path) -> None:
    """sharding = "auto": TorchRec's planner picks the plan; same logits as the plain model."""
    data = tiny_dataset()
    plain = TeacherModel(data.spec, CFG, device="cpu").eval()
    save_teacher(plain, tmp_path / "ck", spec=data.spec, cfg=CFG)
    cfg = TeacherConfig(**{**CFG.__dict__, "sharding": "auto"})
    model = TeacherModel(data.spec, cfg)
    dmp = shard_teacher(model, cfg, device=torch.device("cpu"))
    load_teacher_state(dmp, tmp_path / "ck")
    pred = predict(dmp, data.test, model.feature_names, 16, torch.device("cpu"))
    b = data.test.take(pred.ids, keys=model.feature_names).to_batch()
    with torch.no_grad():
        expect = plain(b.dense, b.sparse).logits.numpy()
    np.testing.assert_allclose(pred.logits, expect, rtol=1e-5, atol=1e-6)


def test_versions_resolve_best_latest_and_numbers(tmp_path: Path) -> None:
    from recdistill.teacher.checkpoint import resolve, version_dir, versions, write_index
    data = tiny_dataset()
    root = tmp_path / "run"
    for step, seed in ((3, 1), (4, 2), (6, 3), (8, 4)):
        cfg = TeacherConfig(**{**CFG.__dict__, "seed": seed})
        save_teacher(TeacherModel(data.spec, cfg, device="cpu"), version_dir(root, step),
                     spec=data.spec, cfg=cfg, info={"step": step})
    assert resolve(root) == version_dir(root, 8)  # no index yet: the newest
    write_index(root, best=4, latest=8, keep=2)  # keeps the 2 newest and the best
    assert versions(root) == [4, 6, 8]
    assert resolve(root) == resolve(root, "best") == version_dir(root, 4)
    assert resolve(root, "latest") == version_dir(root, 8)
    assert resolve(root, 6) == resolve(root, "6") == version_dir(root, 6)
    assert read_meta(root)[1].seed == 2  # a root reads as its best version
    (root / "v00000009.partial").mkdir()  # an unfinished write is not a version
    assert versions(root) == [4, 6, 8]
    with pytest.raises(CheckpointError, match=r"no version 5; it holds \[4, 6, 8\]"):
        resolve(root, 5)
    with pytest.raises(CheckpointError, match="nor a root of versions"):
        resolve(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        resolve(tmp_path / "nope")
