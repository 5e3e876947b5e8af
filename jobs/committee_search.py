"""Which teachers make the best committee: every candidate member, and every committee of
2 or more of them, scored on validation and test (the mean of the members' logits, as
the students see it).

    python -m jobs.committee_search [--data movielens] [--root runs/committee_search]

Candidates (each trained into ``<root>/<name>`` first if missing, in this process):
DCN-v2 from seeds 0 and 1, DCN-v2 reading the privileged features (seed 3), DLRM-style
dot interactions (seed 5), DeepFM-style FM term (seed 6), all other settings the
defaults. The job's default committee was chosen from this table by validation AUC.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recdistill.data.errors import ConfigError, DataError
from recdistill.jobs.common import (add_data_arguments, in_memory, load_dataset,
                                    quiet_library_warnings)
from recdistill.teacher.checkpoint import CheckpointError
from recdistill.teacher.config import TeacherConfig

CANDIDATES = {"dcn": {}, "dcn_seed1": {"seed": 1},
              "dcn_priv": {"use_privileged": True, "seed": 3},
              "dlrm": {"interaction": "dot", "seed": 5},
              "deepfm": {"interaction": "fm", "seed": 6}}


def search(data_name: str, split: str, rows: int, root: str) -> dict[str, Any]:
    from recdistill.jobs.train_teacher import run
    from recdistill.teacher.loop import TrainTeacherArgs
    from recdistill.student.metrics import task_metrics
    from recdistill.teacher.checkpoint import load_teacher_state, read_meta, versions
    from recdistill.teacher.model import TeacherModel
    from recdistill.teacher.train import predict
    torch.set_num_threads(1)
    data = in_memory(load_dataset(data_name, split=split, rows=rows),
                     "jobs.committee_search")
    logits: dict[str, dict[str, np.ndarray]] = {}
    labels: dict[str, np.ndarray] = {}
    for name, over in CANDIDATES.items():
        path = Path(root) / name
        if not versions(path):
            t0 = time.perf_counter()
            run(TrainTeacherArgs(data=data_name, split=split, rows=rows,
                                 checkpoint=str(path), report=""),
                dataclasses.replace(TeacherConfig(), **over), dataset=data, summary=False)
            print(f"trained {name} in {time.perf_counter() - t0:.0f}s", flush=True)
        spec, cfg, _ = read_meta(path)
        model = TeacherModel(spec, cfg, device="cpu")
        load_teacher_state(model, path)
        logits[name] = {}
        for split_name in ("valid", "test"):
            p = predict(model, data.split(split_name), model.feature_names, 4096,
                        torch.device("cpu"))
            logits[name][split_name], labels[split_name] = p.logits, p.labels

    def score(names: tuple[str, ...]) -> dict[str, dict[str, float]]:
        out = {}
        for split_name in ("valid", "test"):
            mean = np.mean([logits[n][split_name] for n in names], axis=0)
            m = task_metrics(torch.from_numpy(mean), torch.from_numpy(labels[split_name]),
                             data.spec.tasks)
            out[split_name] = {t: v["auc"] for t, v in m.items()}
        return out

    rows_out = [{"members": list(c), **score(c)} for k in range(1, len(CANDIDATES) + 1)
                for c in itertools.combinations(CANDIDATES, k)]
    return {"dataset": data.name, "tasks": list(data.spec.tasks), "committees": rows_out}


def main(argv: list[str] | None = None) -> int:
    quiet_library_warnings()
    p = argparse.ArgumentParser(prog="recdistill committee-search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p)
    p.add_argument("--root", default="runs/committee_search",
                   help="where the candidates' checkpoints are (trained if missing)")
    p.add_argument("--json", help="write the table here")
    a = p.parse_args(argv)
    try:
        r = search(a.data or "movielens", a.split or "user_time", a.rows or 100_000, a.root)
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tasks = r["tasks"]
    print(f"| members | {' | '.join(f'valid {t}' for t in tasks)} | "
          f"{' | '.join(f'test {t}' for t in tasks)} |")
    print("|---|" + "---:|" * (2 * len(tasks)))
    for row in sorted(r["committees"], key=lambda x: (len(x["members"]),
                                                      -float(np.mean(list(x["valid"].values()))))):
        print(f"| {' + '.join(row['members'])} | "
              + " | ".join(f"{row['valid'][t]:.4f}" for t in tasks) + " | "
              + " | ".join(f"{row['test'][t]:.4f}" for t in tasks) + " |")
    if a.json:
        from recdistill.jobs.common import write_json_atomic
        write_json_atomic(a.json, r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
