"""The distill report's figure (PNG), readable without the table.

Top row: each student group's **test AUC gain over the baseline**, per task (the
table's headline), with the paired spread over seeds as error bars when several seeds
ran, the share of the teacher's lead it recovered on each bar, and every model's size
in the labels. Bottom row: validation AUC per pass for each task (the teacher as a
dashed line) and a training loss every group can be compared on: the BCE of each
group's predictions on the true labels (``label_bce``), whatever its objective. One
legend for the whole figure; a 1-pass run still reads (dots, padded axes).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from recdistill.cluster.report import base_name


def _size(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _save(fig: Any, path: str | Path) -> str:
    """The figure as a PNG, written whole to ``path`` (a local path or a storage URI)."""
    import matplotlib.pyplot as plt

    from recdistill.data import storage
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    storage.write_bytes(path, buf.getvalue())
    return str(path)


def _pad(ax: Any, values: list[float], least: float) -> None:
    """y limits around ``values`` at least ``least`` apart (one dot per pass, or curves
    that barely move, would otherwise get matplotlib's +-4% of one number)."""
    finite = [v for v in values if v == v]
    if not finite:
        return
    lo, hi = min(finite), max(finite)
    mid, half = (lo + hi) / 2, max(hi - lo, least) / 2 * 1.15
    ax.set_ylim(mid - half, mid + half)


def _passes_axis(ax: Any, single: bool) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if single:  # one dot per group: centred, one tick
        ax.set_xlim(0.5, 1.5)
        ax.set_xticks([1])
    ax.grid(alpha=0.3)


def plot(report: dict[str, Any], path: str | Path) -> str:
    """The report's figure at ``path`` (written atomically)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(report["teacher"]["test"])
    students = report["students"]
    seeds = report.get("seeds") or {}
    groups = [g for g in dict.fromkeys(base_name(n)[0] for n in students) if g != "baseline"]
    color = {g: f"C{i}" for i, g in enumerate(["baseline", *groups])}
    params = {base_name(n)[0]: s.get("parameters", 0) for n, s in students.items()}
    n_seeds = max((v["seeds"] for t in seeds.values() for v in t.values()), default=1)
    fig = plt.figure(figsize=(max(11, 4.2 * (len(tasks) + 1)), 8.5))
    grid = fig.add_gridspec(2, len(tasks) + 1, height_ratios=(1, 1.1))

    # --- test AUC (and GAUC, with a user key) gain over the baseline, per group and task
    ax = fig.add_subplot(grid[0, :])
    series = [(j, t, "") for j, t in enumerate(tasks)] + \
        [(j, t, "gauc") for j, t in enumerate(tasks) if "gauc" in report["teacher"]["test"][t]]
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for n, (j, task, metric) in enumerate(series):
        at = [seeds.get(g, {}).get(task, {}) for g in groups]
        at = [a.get(metric, {}) for a in at] if metric else at
        gains = [a.get("gain_mean", float("nan")) for a in at]
        sds = [a.get("gain_paired_sd") for a in at]
        err = [s if s is not None else 0.0 for s in sds] if n_seeds > 1 else None
        bars = ax.bar(x + (n - (len(series) - 1) / 2) * width, gains, width * 0.92,
                      yerr=err, capsize=3, color=f"C{j}", alpha=0.35 + 0.5 / (j + 1),
                      hatch="//" if metric else None, edgecolor="black", linewidth=0.5,
                      label=f"task {task}" + (" GAUC" if metric else ""))
        for i, (g, rect) in enumerate(zip(groups, bars)):
            eta = None if metric else seeds.get(g, {}).get(task, {}).get("eta")
            gain = rect.get_height()
            if gain != gain:
                continue
            text = f"{gain:+.4f}" + (f"\n{eta:.0%} of lead" if eta is not None else "")
            tip = gain + (err[i] if err else 0.0) * (1 if gain >= 0 else -1)  # above its bar
            ax.annotate(text, (rect.get_x() + rect.get_width() / 2, tip),
                        xytext=(0, 3 if gain >= 0 else -3), textcoords="offset points",
                        ha="center", va="bottom" if gain >= 0 else "top", fontsize=7)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(x, [f"{g}\n{_size(params.get(g, 0))} params" for g in groups])
    ax.set_ylabel("test AUC (GAUC: hatched) - baseline's")
    base = {t: seeds.get("baseline", {}).get(t, {}).get("auc_mean") for t in tasks}
    lead = ", ".join(f"{t}: baseline {base[t]:.4f}, teacher "
                     f"{report['teacher']['test'][t]['auc']:.4f}" for t in tasks
                     if base[t] is not None)
    spread = (f"bars: mean over {n_seeds} seeds, error bars: paired sd"
              if n_seeds > 1 else "one seed (no spread: run --seeds 3 for error bars)")
    ax.set_title(f"What the teacher gave each student: test AUC gain over the baseline "
                 f"({_size(params.get('baseline', 0))} params)\n{lead}; {spread}",
                 fontsize=9)
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="y", alpha=0.3)
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(lo, -0.002) * 1.7, max(hi, 0.002) * 1.25)  # room for the labels

    # --- validation AUC per pass, each task; the loss every group shares
    handles: dict[str, Any] = {}
    single = all(len(s["curve"]) <= 1 for s in students.values())

    def curves(ax: Any, y_of: Any) -> list[float]:
        """Every group's per-pass values (``y_of(curve point)``), extra seeds paler;
        one legend handle per group. Returns the values plotted."""
        values: list[float] = []
        for name, s in students.items():
            g, k = base_name(name)
            ys = [y_of(c) for c in s["curve"]]
            values += ys
            (line,) = ax.plot([c["pass"] for c in s["curve"]], ys, marker="o", ms=4,
                              color=color.get(g, "gray"), alpha=1.0 if k == 0 else 0.45)
            handles.setdefault(g, line)
        return values

    for j, task in enumerate(tasks):
        ax = fig.add_subplot(grid[1, j])
        values = curves(ax, lambda c, task=task: c["valid"][task]["auc"])
        t_auc = report["teacher"]["valid"][task]["auc"]
        handles["teacher"] = ax.axhline(t_auc, color="black", ls="--", lw=1)
        _pad(ax, [*values, t_auc], 0.01)
        ax.set_title(f"validation AUC: {task}", fontsize=9)
        ax.set_xlabel("pass")
        ax.set_ylabel("AUC")
        _passes_axis(ax, single)
    ax = fig.add_subplot(grid[1, -1])
    values = curves(ax, lambda c: c["train_loss"].get("label_bce", c["train_loss"].get(
        "hard_label", float("nan"))))
    _pad(ax, values, 0.01)
    ax.set_title("training loss: BCE on true labels", fontsize=9)
    ax.set_xlabel("pass")
    ax.set_ylabel("mean over the pass's steps")
    _passes_axis(ax, single)
    fig.legend(handles.values(), handles.keys(), loc="lower center",
               ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"recdistill on {report['dataset']}: teacher "
                 f"{report['teacher']['parameters']:,} params, "
                 f"{max((len(s['curve']) for s in students.values()), default=0)} pass(es)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, path)


def plot_pareto(report: dict[str, Any], path: str | Path) -> str:
    """The sweep's trade-off: serving parameters (log x) vs test AUC of the first task,
    KD and no-KD students, the teacher as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sweep = report["sweep"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kd, style in ((False, dict(color="tab:gray", marker="s", label="no KD")),
                      (True, dict(color="tab:blue", marker="o", label="KD"))):
        pts = sorted((p for p in sweep["points"] if p["kd"] == kd),
                     key=lambda p: p["parameters"])
        ax.scatter([p["parameters"] for p in pts], [p["test_auc"] for p in pts], **style)
        for p in pts:
            ax.annotate(p["group"], (p["parameters"], p["test_auc"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    ax.axhline(sweep["teacher_test_auc"], color="black", ls="--",
               label=f"teacher ({report['teacher']['parameters']:,} params)")
    ax.set_xscale("log")
    ax.set_xlabel("student serving parameters")
    ax.set_ylabel(f"test AUC: {sweep['task']}")
    ax.set_title(f"student size vs quality on {report['dataset']}, one teacher pass")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
