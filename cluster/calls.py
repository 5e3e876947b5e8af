"""How the driver calls actors: time limits, generation names, kills."""

from __future__ import annotations

import re
import time
from typing import Any

import ray

CALL_TIMEOUT_S = 600.0  # the most a control call (setup, pass start, evaluation) may take
PLACEMENT_TIMEOUT_S = 120.0


def generation_suffix(generation: int) -> str:
    """A re-formed group's actors are named ``teacher-0.1``, ``student-kd-1.2``, ..."""
    return f".{generation}" if generation else ""


def get_all(refs: list[Any], call: str, names: list[str], timeout: float) -> list[Any]:
    """``ray.get`` of one call made on several actors (``refs[i]`` on ``names[i]``);
    past ``timeout`` a ``GetTimeoutError`` names the call and the actors that had not
    answered, where ``ray.get``'s names neither. The first call that fails raises at
    once: a rank that died in setup does not keep the driver waiting on the others."""
    deadline = time.monotonic() + timeout
    pending = list(refs)
    while pending and (left := deadline - time.monotonic()) > 0:
        ready, pending = ray.wait(pending, num_returns=1, timeout=left)
        ray.get(ready)  # a finished call's error, raised now
    if pending:
        late = [n for r, n in zip(refs, names, strict=True) if r in pending]
        raise ray.exceptions.GetTimeoutError(
            f"{call}: no answer within {timeout:.0f} s from {', '.join(late)}")
    return ray.get(refs)


def kill_actors(actors: list[Any]) -> None:
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


def input_error(e: BaseException, depth: int = 12) -> Exception | None:
    """The bad-input error (``DataError``: a file's row, column or schema) an actor's
    call failed on, or None. A rank's call that failed on its input fails the same way
    on every re-formation: the job must end with that error, not re-form the group.

    Ray wraps a task's exception in ``RayTaskError.cause``; but a Ray Data UDF's (the
    chunk reader's) reaches the rank as a ``UserCodeException`` without its cause, the
    original only in the traceback text, so that text is read too."""
    from recdistill.data.errors import DataError
    seen: list[BaseException] = [e]
    for _ in range(depth):
        nxt: list[BaseException] = []
        for x in seen:
            if isinstance(x, DataError) and not isinstance(x, ray.exceptions.RayError):
                return x
            nxt += [c for c in (getattr(x, "cause", None), x.__cause__, x.__context__)
                    if isinstance(c, BaseException)]
        if not nxt:
            break
        seen = nxt
    found = _DATA_ERROR.findall(str(e))
    return DataError(found[-1].strip()) if found else None


_DATA_ERROR = re.compile(r"recdistill\.data\.errors\.DataError: ([^\n]+)")
