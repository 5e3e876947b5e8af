"""How the driver calls actors: time limits, generation names, kills."""

from __future__ import annotations

from typing import Any

import ray

CALL_TIMEOUT_S = 600.0  # the most a control call (setup, pass start, evaluation) may take
PLACEMENT_TIMEOUT_S = 120.0


def generation_suffix(generation: int) -> str:
    """A re-formed group's actors are named ``teacher-0.1``, ``student-kd-1.2``, ..."""
    return f".{generation}" if generation else ""


def kill_actors(actors: list[Any]) -> None:
    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
