"""Ctrl-C and SIGTERM on ``jobs.distill``: the job stops where it is, shuts its actors
and Ray down, and ends with exit code 130 / 143 and one line on stderr that says where
its driver checkpoint has the run and gives the ``--resume`` command; that command then
finishes the run with every example trained once per group per pass. Both signals take
one path once caught (the same exception, the same checkpoint), so the resume is run
after SIGINT only: a second resume would check the same code for ~25 s of CI."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from testkit import SMALL, TWO_GROUPS, job_env, make_frames, write_dataset

ROOT = Path(__file__).resolve().parents[2]
ROWS = 4000  # train rows: 63 batches of 64 a pass, so the run is still going when stopped
PASSES = 3  # stopped in pass 1 (its first checkpoint with rows), so 2+ passes resume


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config, dataset): one teacher (trained by the first run, found by the next) and
    two groups; one batch per actor call, so driver checkpoints come every few batches."""
    root = tmp_path_factory.mktemp("interrupts")
    frames = make_frames(n=ROWS, seed=1)
    for f in frames.values():  # a learnable label: income follows hours
        f["income"] = (f["hours"] > 40).astype(int)
    data = write_dataset(root, "parquet", frames)
    config = root / "distill.toml"
    config.write_text("teachers = []\n" + SMALL + f'\n[teacher_group]\nbatch_size = 64\n'
                      f'checkpoint = "{root / "teacher"}"\n[stream]\nbatches_per_call = 1\n'
                      + TWO_GROUPS)
    return config, data


def _checkpoint(path: Path) -> dict[str, Any] | None:
    """The driver checkpoint at ``path``, None while there is none (it is replaced
    atomically, so one that is there loads)."""
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        return None


def _trained(group: dict[str, Any]) -> int:
    """Rows of the checkpoint's pass a group of a driver checkpoint had trained."""
    return int(json.loads(group["trained"])["examples"])


def _left_in(group: int) -> list[str]:
    """The processes still in process group ``group`` (the job's: Ray's daemons and
    actors are started in it)."""
    left = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getpgid(p.pid) == group:
                left.append(f"{p.pid} {' '.join(p.info['cmdline'] or [])[:120]}")
        except (ProcessLookupError, PermissionError):
            pass
    return left


def _stop_mid_pass(sig: signal.Signals, config: Path, data: Path, out: Path
                   ) -> tuple[int, list[str], dict[str, Any]]:
    """Start the job, stop it with ``sig`` once its driver checkpoint holds rows trained
    in a pass; (exit code, stderr's non-empty lines, the checkpoint it left)."""
    state = out / "state"
    p = subprocess.Popen([sys.executable, "-m", "jobs.distill", "--config", str(config),
                          "--data", str(data), "--passes", str(PASSES), "--report",
                          str(out / "report.json"), "--state-dir", str(state),
                          "--checkpoint-every", "2", "--no-progress"],
                         cwd=ROOT, env=job_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 420  # the teacher is trained first by one of them
        while True:
            doc = _checkpoint(state / "driver_state.pt")
            if doc is not None and (doc["pass"] > 0 or any(
                    _trained(g) for g in doc["groups"].values())):
                break
            assert p.poll() is None, f"the job ended before it was stopped: {p.returncode}"
            assert time.monotonic() < deadline, "no driver checkpoint with rows trained"
            time.sleep(0.05)
        if sig == signal.SIGINT:  # a terminal's Ctrl-C goes to the whole process group
            os.killpg(p.pid, sig)
        else:  # `kill`, `ray job stop`: the driver
            p.send_signal(sig)
        _, err = p.communicate(timeout=180)
        deadline = time.monotonic() + 60  # Ray's processes may take a moment to exit
        while _left_in(p.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _left_in(p.pid) == []  # no actor, raylet or GCS outlives the job
    finally:
        if p.poll() is None:
            p.kill()
        try:
            os.killpg(p.pid, signal.SIGKILL)  # nothing of a failed run stays behind
        except ProcessLookupError:
            pass
    doc = _checkpoint(state / "driver_state.pt")
    assert doc is not None
    return p.returncode, [ln for ln in err.splitlines() if ln.strip()], doc


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_stopped_run_says_where_and_resumes_exactly_once(
        sig: signal.Signals, job: tuple[Path, Path], tmp_path: Path) -> None:
    config, data = job
    rc, err, doc = _stop_mid_pass(sig, config, data, tmp_path)
    assert rc == 128 + sig, err[-20:]
    before = {g: _trained(d) for g, d in doc["groups"].items()}
    state = tmp_path / "state"
    where = (f"after pass {doc['pass'] + 1}/{PASSES} (driver checkpoint in {state})"
             if doc["pass_done"] else
             f"in pass {doc['pass'] + 1}/{PASSES} (driver checkpoint in {state}; rows of "
             f"it trained: {', '.join(f'{g} {n:,}' for g, n in before.items())})")
    # one line: no traceback, no native stack of Ray's SIGTERM handler
    assert len(err) == 1, "\n".join(err[-40:])
    m = re.fullmatch(rf"stopped by {sig.name} (.*); continue with: (.*)", err[0])
    assert m is not None and m.group(1) == where, err[0]
    resume = shlex.split(m.group(2))
    assert resume[:3] == [sys.executable, "-m", "jobs.distill"] and resume[-1] == "--resume"
    assert not (tmp_path / "report.json").exists()
    if sig != signal.SIGINT:
        return

    second = subprocess.run(resume, cwd=ROOT, env=job_env(), capture_output=True,
                            text=True, timeout=480)
    assert second.returncode == 0, second.stderr[-3000:]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["resumed"] == {"pass": doc["pass"] + 1, "pass_done": doc["pass_done"],
                                "trained_in_pass": before}
    # every group trained every example once in each pass: the rows the checkpoint had
    # plus the rows of this run, and this run trained none of them again
    left_passes = PASSES - doc["pass"] - 1
    for name, s in saved["students"].items():
        assert s["examples_per_pass"] == [ROWS] * PASSES, name
        rest = 0 if doc["pass_done"] else ROWS - before[name]
        assert saved["stream"]["acked_rows"][name] == rest + ROWS * left_passes, name
