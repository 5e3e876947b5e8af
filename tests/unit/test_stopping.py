"""The pieces of a stopped distill run, without Ray: SIGTERM raised like Ctrl-C (once),
the command line printed again, where the driver checkpoint has the run, and the one
line the job ends with (``tests/e2e/test_interrupts.py`` stops real runs)."""

from __future__ import annotations

import os
import signal
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from recdistill.cluster.interrupts import (Terminated, rearm, signal_of, stop_on_signals,
                                           where_stopped)
from recdistill.jobs.common import command_line


def test_sigterm_raises_like_ctrl_c_once_and_the_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(Terminated) as e, stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert isinstance(e.value, KeyboardInterrupt) and signal_of(e.value) == signal.SIGTERM
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    rays: list[int] = []
    with pytest.raises(KeyboardInterrupt) as e, stop_on_signals():
        signal.signal(signal.SIGTERM, lambda n, f: rays.append(n))  # as ray.init does
        rearm()
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        finally:  # the cleanup the first signal started is not cut short by another
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
    assert signal_of(e.value) == signal.SIGINT and not isinstance(e.value, Terminated)
    assert rays == []  # ours had SIGTERM again, and let it pass


def test_the_signal_is_the_handlers_when_ray_raises_its_own_keyboard_interrupt() -> None:
    with stop_on_signals():
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        # what ray.wait raises for a signal that came while it waited
        assert signal_of(KeyboardInterrupt()) == signal.SIGTERM


@pytest.mark.parametrize("orig, argv, spec, args, want", [
    # python -m jobs.distill ARGS (argv None: the process's own)
    (["py", "-u", "-m", "jobs.distill", "--passes", "2"], ["x/distill.py", "--passes", "2"],
     True, None, ["py", "-u", "-m", "jobs.distill", "--passes", "2"]),
    # the recdistill console script; its subcommand's main gets the rest
    (["py", "/nowhere/recdistill", "distill", "--report", "a b.json"],
     ["/nowhere/recdistill", "distill", "--report", "a b.json"], False,
     ["--report", "a b.json"], ["/nowhere/recdistill", "distill", "--report", "a b.json"]),
    # a caller's own arguments: the command it stands for
    (["py", "-m", "pytest"], ["pytest"], True, ["--passes", "1"],
     ["recdistill", "distill", "--passes", "1"]),
    (["py", "-m", "pytest"], ["pytest"], True, [], ["recdistill", "distill"]),
])
def test_command_line_is_the_one_typed(monkeypatch: pytest.MonkeyPatch, orig: list[str],
                                       argv: list[str], spec: bool, args: list[str] | None,
                                       want: list[str]) -> None:
    monkeypatch.setattr(sys, "orig_argv", orig)
    monkeypatch.setattr(sys, "argv", argv)
    main = types.ModuleType("__main__")
    # run by -m: a spec; a script: none
    main.__spec__ = types.SimpleNamespace(name="jobs.distill") if spec else None  # type: ignore
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert command_line(args, "recdistill distill") == want


class _Saved:
    """A loaded driver checkpoint, as far as where_stopped reads it."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def summary(self) -> dict[str, Any]:
        return self.doc


def test_where_stopped_reads_this_runs_checkpoint_only(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from recdistill.cluster import run_state
    from recdistill.teacher.checkpoint import CheckpointError
    loaded: list[Any] = []

    def load(path: Path, groups: list[str], soft_labels: str) -> _Saved:
        if loaded[0] is None:
            raise CheckpointError(f"{path}: holds groups ['other']")
        return _Saved(loaded[0])

    monkeypatch.setattr(run_state.RunCheckpoint, "load", staticmethod(load))
    state = tmp_path / "state"
    args = (["a", "b"], "", 8)
    assert where_stopped("", *args, 0.0, False) is None  # --state-dir ''
    assert where_stopped(str(state), *args, 0.0, False) is None  # none written yet
    state.mkdir()
    (state / run_state.STATE_FILE).write_bytes(b"")
    old = time.time() - 60
    os.utime(state / run_state.STATE_FILE, (old, old))
    loaded.append({"pass": 3, "pass_done": False, "trained_in_pass": {"a": 1024, "b": 0}})
    since = time.time()
    assert where_stopped(str(state), *args, since, False) is None  # an earlier run's
    assert where_stopped(str(state), *args, since, True) == (  # ... that this one resumed
        f"in pass 3/8 (driver checkpoint in {state}; rows of it trained: a 1,024, b 0)")
    loaded[0] = {"pass": 2, "pass_done": True, "trained_in_pass": {"a": 0, "b": 0}}
    assert where_stopped(str(state), *args, 0.0, False) == (
        f"after pass 2/8 (driver checkpoint in {state})")
    loaded[0] = None  # another config's checkpoint: nothing to continue
    assert where_stopped(str(state), *args, 0.0, False) is None


def test_the_stopped_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recdistill.jobs import distill
    from recdistill.jobs.distill_config import parse_args
    monkeypatch.setattr(distill, "where_stopped", lambda *a: "after pass 2/8 (here)")
    argv = ["--passes", "8", "--report", str(tmp_path / "r.json")]
    parsed = parse_args(argv)
    cmd = f"recdistill distill --passes 8 --report {tmp_path / 'r.json'}"
    assert distill.stopped_line(Terminated(), parsed, argv, 0.0) == (
        f"stopped by SIGTERM after pass 2/8 (here); continue with: {cmd} --resume")
    assert distill.stopped_line(KeyboardInterrupt(), None, argv, 0.0) == (
        "stopped by SIGINT before the run started")
    monkeypatch.setattr(distill, "where_stopped", lambda *a: None)
    assert distill.stopped_line(KeyboardInterrupt(), parsed, argv, 0.0) == (
        f"stopped by SIGINT before its first driver checkpoint; start it again with: {cmd}")
    argv += ["--state-dir", ""]
    assert distill.stopped_line(KeyboardInterrupt(), parse_args(argv), argv, 0.0) == (
        "stopped by SIGINT; it keeps no driver checkpoint (--state-dir ''); start it again "
        f"with: {cmd} --state-dir ''")
