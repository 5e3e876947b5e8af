"""``[sweep]``: a grid of student groups fed by one teacher pass.

The fan-out feeds many groups for about the cost of one; a sweep uses it to answer
"how small can the student be, and how much does the teacher give it at each size?".
Every student size of the grid (``embedding_dim`` x ``hidden``) gets a no-KD student
(``baseline_e8_h64-32``; the smallest size's is also the job's ``baseline``, so the
report's gains and the KD guard have their reference) and one KD student per
(``loss``, ``kd_weight``, ``temperature``).
"""

from __future__ import annotations

import itertools

from recdistill.cluster.config import GroupConfig, SweepConfig
from recdistill.student.config import LossTerm, StudentConfig

def _terms(kind: str, weight: float, temperature: float) -> tuple[LossTerm, ...]:
    if kind == "prediction_kd":
        return (LossTerm("hard_label", round(1.0 - weight, 6)),
                LossTerm("prediction_kd", weight, {"temperature": temperature}))
    return (LossTerm("multitask_kd", 1.0, {"temperature": temperature, "alpha": weight,
                                            "uncertainty": True}),)


def size_name(dim: int, hidden: tuple[int, ...]) -> str:
    return f"e{dim}_h{'-'.join(map(str, hidden))}"


def sweep_groups(s: SweepConfig, replicas: int = 1) -> tuple[GroupConfig, ...]:
    """The grid's groups: per size a no-KD student, then its KD students."""
    out = []
    sizes = list(itertools.product(s.embedding_dim, s.hidden))
    for i, (dim, hidden) in enumerate(sizes):
        size = size_name(dim, hidden)
        common = dict(embedding_dim=dim, hidden=hidden, lr=s.lr, seed=s.seed,
                      sharding=s.sharding)
        out.append(GroupConfig(StudentConfig(
            name="baseline" if i == 0 else f"baseline_{size}",
            losses=(LossTerm("hard_label"),), **common), replicas=replicas))
        for kind, w, t in itertools.product(s.loss, s.kd_weight, s.temperature):
            out.append(GroupConfig(StudentConfig(
                name=f"{kind}_{size}_w{w:g}_t{t:g}", losses=_terms(kind, w, t), **common),
                replicas=replicas))
    return tuple(out)


def pareto(report: dict) -> dict[str, list[dict]]:
    """Per group of the report: its size, serving parameters, KD or not, test AUC of
    the first task and (KD) the gain over the no-KD student of the same size;
    ``frontier`` marks the groups no smaller group beats."""
    students = report["students"]
    first = next(iter(report["teacher"]["test"]))
    sizes = {g["student"]["name"]: size_name(g["student"]["embedding_dim"],
                                             tuple(g["student"]["hidden"]))
             for g in report["config"]["groups"]}
    no_kd = {sizes[n]: s["test"][first]["auc"] for n, s in students.items() if not s["kd"]}
    points = []
    for name, s in students.items():
        auc = s["test"][first]["auc"]
        points.append({"group": name, "size": sizes[name], "parameters": s["parameters"],
                       "kd": bool(s["kd"]), "test_auc": auc,
                       # the KD student's gain over the no-KD student of its own size
                       "gain_vs_same_size": auc - no_kd[sizes[name]]
                       if s["kd"] and sizes[name] in no_kd else None})
    points.sort(key=lambda p: (p["parameters"], -p["test_auc"]))
    best = -1.0
    for p in points:
        p["frontier"] = p["test_auc"] > best
        best = max(best, p["test_auc"])
    return {"task": first, "teacher_test_auc": report["teacher"]["test"][first]["auc"],
            "points": points}
