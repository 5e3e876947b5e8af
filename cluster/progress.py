"""What a person watching the run sees: the progress bar, a line per pass, the
dashboard's gauges and TensorBoard's curves, all read from the ledgers."""

from __future__ import annotations

import time
from typing import Any, Callable

from tqdm import tqdm

from recdistill.cluster.ledger import GroupLedger
from recdistill.cluster.metrics import ActorMetrics
from recdistill.cluster.state import Interval
from recdistill.cluster.tensorboard import TensorBoardLog

GAUGE_S = 0.5  # seconds between the dashboard's queue-depth gauges

Metrics = dict[str, dict[str, dict[str, float]]]  # group -> task -> metric -> value


class Progress:
    """The run's progress, shown as it goes.

    Args:
        show: a progress bar (on a terminal).
        tensorboard: where TensorBoard event files go ("": none).
        clock: the gauges' clock (tests pass a fake).
    """

    def __init__(self, show: bool = False, tensorboard: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.show, self.tensorboard = show, tensorboard
        self.gauges = Interval(GAUGE_S, clock)
        self.metrics = ActorMetrics("driver", {})
        self.tb: TensorBoardLog | None = None
        self.walls: list[float] = []  # each pass's wall seconds, validation included
        self._bar: Any = None

    def begin(self, groups: list[str], examples: int, desc: str) -> None:
        """The bar counts ``examples`` trained, every group's."""
        if self.tensorboard:
            self.tb = TensorBoardLog(self.tensorboard, groups)
        self._bar = tqdm(total=examples, unit="ex", unit_scale=True, desc=desc,
                         disable=None if self.show else True, mininterval=0.5)

    def trained(self, ledgers: dict[str, GroupLedger]) -> None:
        if self._bar is not None:
            self._bar.update(sum(led.acked_rows for led in ledgers.values()) - self._bar.n)

    def sample(self, ledgers: dict[str, GroupLedger]) -> None:
        if self.gauges.tick():
            for name, ledger in ledgers.items():
                self.metrics.gauge("recdistill_queue_depth", ledger.depth, {"group": name})
        if self.tb is not None:
            self.tb.sample(ledgers)

    def pass_end(self, k: int, passes: int, wall: float, ledgers: dict[str, GroupLedger],
                 valid: Metrics, teacher_valid: dict[str, dict[str, float]],
                 examples: dict[str, int]) -> None:
        """Pass ``k`` (1-based) of ``passes`` took ``wall`` seconds."""
        self.walls.append(wall)
        if self._bar is not None:
            self._bar.set_postfix({n: f"{next(iter(v.values()))['auc']:.4f}"
                                   for n, v in valid.items()})
        if self.tb is not None:
            self.tb.pass_end(k, ledgers, valid, teacher_valid)
        self.write(pass_line(k, passes, self.walls, examples, valid))

    @staticmethod
    def write(line: str) -> None:
        tqdm.write(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def pass_line(k: int, passes: int, walls: list[float], examples: dict[str, int],
              valid: Metrics) -> str:
    """The log's line for a finished pass (a terminal or not): ``pass k/N``, examples/s
    (of the group that trained most), each group's validation AUC per task, and the ETA
    from the mean pass time so far (validation included)."""
    wall = walls[-1]
    rate = max(examples.values(), default=0) / wall if wall > 0 else 0.0
    aucs = "; ".join(f"{name} " + " ".join(f"{task} {m['auc']:.4f}" for task, m in v.items())
                     for name, v in valid.items())
    eta = (passes - k) * sum(walls) / len(walls)
    return (f"pass {k}/{passes}: {wall:.1f}s, {rate:,.0f} examples/s; valid AUC {aucs}; "
            f"ETA {_duration(eta)}")


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"
