"""Chaos: processes of a running job SIGKILLed on a seeded schedule, one of them during an
evaluation; the job finishes and every group trains every example once per pass."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from recdistill.cluster.config import RunOptions
from recdistill.cluster.pipeline import Hooks, OnlineDistillation
from testkit import online_setup
from testkit import tiny_dataset

ROWS = 7680  # 60 batches of 64 per teacher rank and pass: 240 per group in the run
EVERY_S = (15.0, 25.0)  # seconds between kills: ~20 s
SCHEDULED = 2  # kills on the schedule the run sees at the least


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_seeded_kills_of_ranks_and_replicas_leave_counts_exact(ray_cluster,
                                                                tmp_path: Path) -> None:
    """2 passes, 2 teacher ranks, 2 groups x 2 replicas. A seeded schedule kills a
    random teacher rank or replica every ~20 s from the teacher's first validation
    evaluation on; a teacher rank is killed as that evaluation starts, a replica as the
    students' first does.
    The last batch of the run waits (at most 90 s) until the schedule has killed
    twice, so a fast run still sees its kills."""
    cfg, _, dims = online_setup(tmp_path, max_inflight=4)
    data = tiny_dataset(n=ROWS, seed=2)
    cfg = dataclasses.replace(cfg, groups=tuple(
        dataclasses.replace(g, snapshot_every=10) for g in cfg.groups))
    schedule_rng, phase_rng = random.Random(1234), random.Random(4321)
    killed: list[tuple[str, str]] = []  # (when, whom)
    stop, evaluating = threading.Event(), threading.Event()
    t0 = time.monotonic()

    def victims(prefix: str = "") -> list[tuple[str, int]]:
        """The job's live actor processes (none while a group is being re-formed)."""
        out = [(f"teacher-{k}", pid) for k, pid in enumerate(run.labels.pids)]
        for name, g in run.groups.items():
            out += [(f"student-{name}-{j}", pid) for j, pid in enumerate(g.pids)]
        # a pid <= 1 would signal a process group: the test's own
        return [(n, p) for n, p in out if n.startswith(prefix) and p > 1
                and psutil.pid_exists(p)]

    def kill(who: list[tuple[str, int]], when: str, rng: random.Random) -> bool:
        if not who:
            return False
        name, pid = rng.choice(who)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # gone meanwhile
            return False
        killed.append((when, name))
        print(f"{time.monotonic() - t0:.1f}s: killed {name} ({when})", flush=True)
        return True

    def schedule() -> None:
        # from the teacher's first evaluation on: a scheduled kill before it would leave
        # that phase's kill no rank to take, while the group is being re-formed
        while not evaluating.wait(0.5):
            if stop.is_set():
                return
        wait = schedule_rng.uniform(*EVERY_S)
        while not stop.wait(wait):
            # nothing to kill while a group is re-formed: try again shortly
            wait = schedule_rng.uniform(*EVERY_S) if kill(victims(), "schedule",
                                                          schedule_rng) else 1.0

    def on_phase(phase: str) -> None:
        # the teacher's validation evaluation before the first pass; the students' at
        # the end of it
        kinds = {"evaluate teacher valid": "teacher", "evaluate valid": "student"}
        if phase in kinds and not any(w == phase for w, _ in killed):
            kill(victims(kinds[phase]), phase, phase_rng)
        if phase == "evaluate teacher valid":
            evaluating.set()

    def last_batch(group: str, acked: int) -> None:
        if group == "kd" and acked == 2 * ROWS // 64 - 1:
            deadline = time.monotonic() + 90
            while sum(w == "schedule" for w, _ in killed) < SCHEDULED \
                    and time.monotonic() < deadline:
                time.sleep(0.5)

    run = OnlineDistillation(cfg, data, dims, RunOptions(progress=False),
                             Hooks(after_ack=last_batch, on_phase=on_phase))
    killer = threading.Thread(target=schedule, daemon=True)
    killer.start()
    try:
        body = run.run().to_json()
    finally:
        stop.set()
        killer.join()
        run.shutdown()
    print(f"killed: {killed}; restarts: teacher {body['teacher']['restarts']}, students "
          f"{ {n: s['restarts'] for n, s in body['students'].items()} }")
    when = [w for w, _ in killed]
    assert "evaluate teacher valid" in when and "evaluate valid" in when, killed
    assert when.count("schedule") >= SCHEDULED, killed
    restarts = body["teacher"]["restarts"] + sum(s["restarts"]
                                                 for s in body["students"].values())
    assert restarts >= len(killed) - 1, (killed, restarts)  # two kills may hit one group
    ids = sorted(data.train.ids.tolist())
    for name, ledger in run.stream.ledgers.items():
        for p in range(2):
            assert sorted(ledger.audit[p].to_array().tolist()) == ids, (name, p)
        assert body["students"][name]["examples_per_pass"] == [len(ids)] * 2, name
