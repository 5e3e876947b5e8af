"""Errors that end a job at once, in one line, before any training: an address where
no Ray cluster answers, a checkpoint path that holds something else, a resume with
nothing to resume from."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recdistill.teacher.checkpoint import CheckpointError, check_absent_or_checkpoint, save_teacher
from recdistill.teacher.model import TeacherModel
from test_sharding import CFG, tiny_dataset

ROOT = Path(__file__).parents[1]


def _distill(*args: str, timeout: float = 120) -> tuple[int, list[str], float]:
    """``recdistill distill ARGS`` in a process of its own: (exit code, the
    non-empty stderr lines, wall seconds)."""
    t = time.perf_counter()
    p = subprocess.run([str(Path(sys.executable).parent / "recdistill"), "distill",
                        "--passes", "1", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return p.returncode, [ln for ln in p.stderr.splitlines() if ln.strip()], \
        time.perf_counter() - t


@pytest.mark.timeout(180)
def test_an_address_where_nothing_listens_fails_at_once_in_one_line(tmp_path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, err, wall = _distill("--address", f"127.0.0.1:{port}",
                             "--report", str(tmp_path / "r.json"))
    assert rc == 2 and wall < 90
    assert err == [f"error: --address 127.0.0.1:{port}: no Ray cluster answers there "
                   "(Connection refused)"]
    assert not (tmp_path / "r.json").exists()


@pytest.mark.timeout(180)
def test_an_address_that_never_answers_times_out(tmp_path) -> None:
    """A port that accepts and says nothing (Ray's own join would retry it forever)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        rc, err, wall = _distill("--address", f"127.0.0.1:{port}", "--join-timeout", "4",
                                 "--report", str(tmp_path / "r.json"))
    assert rc == 2 and wall < 60
    mine = [ln for ln in err if ln.startswith("error: ")]
    assert mine == [f"error: --address 127.0.0.1:{port}: no Ray cluster joined within 4 s "
                    "(is it a Ray head's GCS address, host:6379, and is this machine "
                    "allowed to reach it?)"]
    # Ray's Python chatter is off; its core worker may log its one failed connect
    assert len(err) <= 2


def test_checkpoint_paths_that_hold_something_else_are_named(tmp_path) -> None:
    assert check_absent_or_checkpoint(tmp_path / "new") is False  # trained into
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    (tmp_path / "partial" / "v00000010").mkdir(parents=True)
    for name, what in (("file", "a file"), ("empty", "an empty directory"),
                       ("other", "a directory of 1 entries (notes.txt)"),
                       ("partial", "a directory whose versions ['v00000010'] are "
                                   "incomplete")):
        with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / name}: {what}")):
            check_absent_or_checkpoint(tmp_path / name)
    data = tiny_dataset()
    save_teacher(TeacherModel(data.spec, CFG, device="cpu"), tmp_path / "ok" / "v00000003",
                 spec=data.spec, cfg=CFG, info={"step": 3})
    assert check_absent_or_checkpoint(tmp_path / "ok")  # a root of versions
    assert check_absent_or_checkpoint(tmp_path / "ok" / "v00000003")  # one version


@pytest.mark.timeout(180)
def test_bad_checkpoint_and_missing_resume_state_fail_before_any_training(tmp_path
                                                                          ) -> None:
    (tmp_path / "some_file").write_text("not a checkpoint")
    rc, err, _ = _distill("--teacher-checkpoint", str(tmp_path / "some_file"),
                          "--report", str(tmp_path / "r.json"))
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"error: {tmp_path / 'some_file'}: a file, not a teacher "
                             "checkpoint")
    rc, err, _ = _distill("--resume", "--state-dir", str(tmp_path / "none"),
                          "--report", str(tmp_path / "r.json"))
    assert rc == 2
    assert err == [f"error: {tmp_path / 'none' / 'driver_state.pt'}: no driver checkpoint "
                   "to resume from"]
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "none").exists()
