"""Live learning curves as TensorBoard event files, written by the driver.

One TensorBoard run per student group (``<logdir>/<group>/``), so ``tensorboard
--logdir runs/`` overlays the groups on one chart per tag; the x axis is the examples
that group has trained. Tags:

- ``loss/<term>``: each loss term's mean over the steps since the last sample
  (``loss/hard_label`` is comparable across groups; ``loss/loss`` is each group's own
  weighted total);
- ``teacher_agreement``: the share of rows where student and teacher agree (same side
  of 0.5), mean over the same steps;
- ``examples_per_s``, ``queue_depth`` (batches queued or in flight, what
  ``stream.max_inflight`` bounds);
- ``valid_auc/<task>`` after each pass, and where the dataset has a user or request
  key ``valid_gauc/<task>`` and ``valid_ndcg@10/<task>``; the teacher's own are the
  run ``teacher`` (one point per pass, a flat line to compare against).

The driver already books every step (the ledger's sums), so the actors write nothing
and no file is shared between processes. A storage URI as ``logdir`` (``s3://...``):
the files are written in a local directory and copied there at each pass end and at
the close (tensorboardX writes local files). Written with tensorboardX (in the lock);
the viewer is ``pip install tensorboard``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from recdistill.cluster.ledger import GroupLedger
from recdistill.data import storage

SAMPLE_S = 2.0  # seconds between samples of the running curves


class TensorBoardLog:
    """Event files under ``logdir``, one run per group and one for the teacher."""

    def __init__(self, logdir: str | Path, groups: list[str]) -> None:
        from tensorboardX import SummaryWriter
        self.location = str(logdir)
        local = storage.local_path(logdir)
        self._stage = None if local else tempfile.mkdtemp(prefix="recdistill-tensorboard-")
        self.logdir = Path(local or self._stage)
        self.writers = {g: SummaryWriter(str(self.logdir / g)) for g in groups}
        self.teacher = SummaryWriter(str(self.logdir / "teacher"))
        # per group at the last sample: (steps, loss sums, agreement sum, rows, time)
        self._last: dict[str, tuple[int, dict[str, float], float, int, float]] = {}
        self._t_sample = 0.0

    def sample(self, ledgers: dict[str, GroupLedger], force: bool = False) -> None:
        """Running curves of every group, at most every ``SAMPLE_S`` seconds."""
        now = time.monotonic()
        if not force and now - self._t_sample < SAMPLE_S:
            return
        self._t_sample = now
        for name, w in self.writers.items():
            led = ledgers[name]
            st, rows = led.stats, led.acked_rows
            steps0, loss0, agree0, rows0, t0 = self._last.get(name, (0, {}, 0.0, 0, now))
            self._last[name] = (st.steps, dict(st.loss_sum), st.agreement_sum, rows, now)
            w.add_scalar("queue_depth", led.depth, rows)
            n = st.steps - steps0
            if n <= 0:
                continue
            for term, total in st.loss_sum.items():
                w.add_scalar(f"loss/{term}", (total - loss0.get(term, 0.0)) / n, rows)
            w.add_scalar("teacher_agreement", (st.agreement_sum - agree0) / n, rows)
            if now > t0:
                w.add_scalar("examples_per_s", (rows - rows0) / (now - t0), rows)

    def pass_end(self, pass_number: int, ledgers: dict[str, GroupLedger],
                 valid: dict[str, dict[str, dict[str, float]]],
                 teacher_valid: dict[str, dict[str, float]]) -> None:
        """Validation AUC per task of every group (x: its examples trained) and the
        teacher's (x: the most any group has trained)."""
        self.sample(ledgers, force=True)
        most = 0
        for name, w in self.writers.items():
            if name not in valid:  # a group that stopped (patience)
                continue
            rows = ledgers[name].acked_rows
            most = max(most, rows)
            for task, m in valid[name].items():
                _metrics(w, task, m, rows)
            w.add_scalar("pass", pass_number, rows)
            w.flush()
        for task, m in teacher_valid.items():
            _metrics(self.teacher, task, m, most)
        self.teacher.flush()
        self._upload()

    def _upload(self) -> None:
        if self._stage is not None:
            storage.upload_dir(self._stage, self.location)

    def close(self) -> None:
        for w in [*self.writers.values(), self.teacher]:
            w.close()
        self._upload()
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)


def read_scalars(logdir: str | Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Every scalar of every run under ``logdir``: run -> tag -> [(step, value)], in
    the order written. Reads the event files' records (TFRecord framing: length,
    its CRC, the serialized ``Event``, its CRC) with tensorboardX's protobufs, so the
    tests need no TensorBoard install."""
    import struct

    from tensorboardX.proto.event_pb2 import Event
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        run = str(path.parent.relative_to(logdir))
        data = path.read_bytes()
        i = 0
        while i + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = Event.FromString(data[i + 12:i + 12 + length])
            i += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(run, {}).setdefault(v.tag, []).append(
                    (int(event.step), float(v.simple_value)))
    return out


def _metrics(w: Any, task: str, m: dict[str, float], step: int) -> None:
    """One task's validation AUC, GAUC and NDCG@10 (those it has) at ``step``."""
    for key, tag in (("auc", "valid_auc"), ("gauc", "valid_gauc"),
                     ("ndcg@10", "valid_ndcg@10")):
        if key in m:
            w.add_scalar(f"{tag}/{task}", m[key], step)
