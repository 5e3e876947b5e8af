"""How a job's driver stops on SIGINT (Ctrl-C) and SIGTERM (``ray job stop``, a
scheduler's stop): as an exception in its main thread, so the ``finally`` blocks that
shut its actors and Ray down run, and the job can end in one line saying where the run
stopped (:func:`where_stopped`) instead of a traceback.

Ray replaces a driver's SIGTERM handler twice in ``ray.init``: with its own, which
exits at once, and then, in its core worker, with a native failure handler (Abseil's,
``logging.cc``) that prints the C++ stack and aborts the process. :func:`rearm` puts
this module's handler back after ``ray.init`` (``cluster.session`` calls it); the
native handler keeps the crash signals (SIGSEGV and the like) it is there for.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as SIGINT raises KeyboardInterrupt: a subclass
    of it, so every ``except KeyboardInterrupt`` (Ray's included) treats both alike, and
    no ``except Exception`` mistakes it for an actor's failure."""


class _Stop:
    """The handlers' state while :func:`stop_on_signals` is active."""

    def __init__(self) -> None:
        self.active = False
        self.signum: int | None = None  # the signal raised, once it was
        self.previous: dict[int, Any] = {}

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """Raise the signal's exception once; ignore any that follow, so the cleanup
        the first one started (actors, Ray) runs to its end."""
        if self.signum is not None:
            return
        self.signum = signum
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


_STOP = _Stop()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Inside: SIGINT raises KeyboardInterrupt and SIGTERM :class:`Terminated` in the main
    thread (the first of them only); the previous handlers come back on leaving. Outside
    the main thread (where Python cannot set handlers) it changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _STOP.previous = {s: signal.getsignal(s) for s in SIGNALS}
    _STOP.active, _STOP.signum = True, None
    rearm()
    try:
        yield
    finally:
        _STOP.active, _STOP.signum = False, None
        for s, handler in _STOP.previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def rearm() -> None:
    """Put the handlers of :func:`stop_on_signals` back in, if it is active: after
    ``ray.init``, which installs Ray's own for SIGTERM."""
    if _STOP.active and threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _STOP.handle)


def signal_of(e: KeyboardInterrupt) -> signal.Signals:
    """The signal that raised ``e``, inside :func:`stop_on_signals`: the one its handler
    caught (Ray raises a KeyboardInterrupt of its own for whatever the handler raised
    while Ray waits in its core worker, ``ray.wait``); else SIGTERM for
    :class:`Terminated`, SIGINT for the rest."""
    if _STOP.signum is not None:
        return signal.Signals(_STOP.signum)
    return signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT


def where_stopped(state_dir: str, groups: list[str], soft_labels: str, passes: int,
                  since: float, resumed: bool) -> str | None:
    """Where the driver checkpoint in ``state_dir`` has a stopped run: ``after pass 2/8``
    or ``in pass 3/8`` with the rows of it each group had trained. None where there is
    no checkpoint of this run to continue from: no ``state_dir``, none written yet
    (one older than ``since``, the run's start, is another run's unless ``resumed``),
    or one that does not load for these ``groups``."""
    if not state_dir:
        return None
    from recdistill.cluster.run_state import STATE_FILE, RunCheckpoint
    from recdistill.data import storage
    from recdistill.teacher.checkpoint import CheckpointError
    path = storage.join(state_dir, STATE_FILE)
    try:
        if not resumed and storage.mtime(path) < since:
            return None
        s = RunCheckpoint.load(path, groups, soft_labels).summary()
    except (OSError, CheckpointError):
        return None
    where = f"driver checkpoint in {state_dir}"
    if s["pass_done"]:
        return f"after pass {s['pass']}/{passes} ({where})"
    rows = ", ".join(f"{g} {n:,}" for g, n in s["trained_in_pass"].items())
    return f"in pass {s['pass']}/{passes} ({where}; rows of it trained: {rows})"
