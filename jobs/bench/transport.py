"""transport: soft-label bytes per example and the students' AUC in fp32, fp16, bf16."""

from __future__ import annotations

import argparse
from typing import Any

from recdistill.jobs.bench.common import distill_runs


def bench_transport(teacher: str) -> dict[str, Any]:

    from recdistill.cluster.config import DistillConfig, StreamConfig, default_groups
    groups = tuple(g for g in default_groups() if g.student.name in ("pred_kd", "feat_kd"))
    runs = [(d, DistillConfig(groups=groups, stream=StreamConfig(logit_dtype=d,
                                                                 feature_dtype=d)))
            for d in ("float32", "float16", "bfloat16")]
    out: dict[str, Any] = {}
    for dtype, report in distill_runs(runs, teacher):
        u = report["teacher"]["usage"]
        first = next(iter(report["students"]["pred_kd"]["test"]))
        out[dtype] = {"label_bytes_per_example": u["label_bytes"] / u["examples"],
                      "input_bytes_per_example": u["input_bytes"] / u["examples"],
                      "task": first,
                      "test_auc": {g: report["students"][g]["test"][first]["auc"]
                                   for g in ("pred_kd", "feat_kd")}}
    f32 = out["float32"]
    for d in ("float16", "bfloat16"):
        out[d]["bytes_ratio"] = f32["label_bytes_per_example"] / out[d]["label_bytes_per_example"]
        out[d]["auc_delta"] = {g: out[d]["test_auc"][g] - f32["test_auc"][g]
                               for g in f32["test_auc"]}
    out["bytes_ratio"] = out["float16"]["bytes_ratio"]
    out["auc_delta"] = max(abs(v) for v in out["float16"]["auc_delta"].values())
    return out


def run(a: argparse.Namespace, teacher: str) -> dict[str, Any]:
    return bench_transport(teacher)


def summary(r: dict[str, Any]) -> None:
    print(f"{'dtype':<10}{'label B/ex':>11}{'input B/ex':>11}{'pred_kd AUC':>13}"
          f"{'feat_kd AUC':>13}")
    for d in ("float32", "float16", "bfloat16"):
        q = r[d]
        print(f"{d:<10}{q['label_bytes_per_example']:>11.1f}"
              f"{q['input_bytes_per_example']:>11.1f}{q['test_auc']['pred_kd']:>13.4f}"
              f"{q['test_auc']['feat_kd']:>13.4f}")
    print(f"fp32 / fp16 bytes: {r['bytes_ratio']:.2f}x; largest |AUC delta| fp16 vs "
          f"fp32: {r['auc_delta']:.4f}")