import dataclasses

import pytest

from recdistill.cluster.report import gains, table


def _m(auc: float) -> dict:
    return {"auc": auc, "logloss": 0.5, "ne": 0.9, "calibration": 1.0}


def test_gain_and_share_of_gap_recovered() -> None:
    report = {"teacher": {"test": {"a": _m(0.80), "b": _m(0.70)}, "parameters": 1000},
              "students": {"baseline": {"test": {"a": _m(0.78), "b": _m(0.72)},
                                        "parameters": 100},
                           "kd": {"test": {"a": _m(0.79), "b": _m(0.73)},
                                  "parameters": 100}}}
    g = gains(report)
    assert g["kd"]["a"]["auc_gain_vs_baseline"] == pytest.approx(0.01)
    assert g["kd"]["a"]["gap_recovered"] == pytest.approx(0.5)  # 0.01 of a 0.02 gap
    assert g["kd"]["b"]["gap_recovered"] is None  # teacher worse than baseline: undefined
    report["gains"] = g
    text = table(report)
    assert "+0.0100       50%" in text and "n/a" in text


def test_report_json_keeps_its_keys_and_derives_gains() -> None:
    from recdistill.cluster.report import DistillReport, DriverTiming
    students = {"baseline": {"test": {"a": _m(0.78)}, "parameters": 100},
                "kd": {"test": {"a": _m(0.79)}, "parameters": 100}}
    report = DistillReport(teacher={"test": {"a": _m(0.80)}, "parameters": 1000},
                           students=students, stream={},
                           timing=DriverTiming(run_wall_s=3.0, train_wall_s=2.0,
                                               busy_s=0.5, driver_cpu_s=0.25,
                                               driver_loop_cpu_s=0.125))
    doc = report.to_json()
    assert set(doc) == {"teacher", "students", "stream", "resumed", "dataset",
                        "data_skipped", "wall_s", "config", "soft_labels", "gains", "seeds",
                        "run_wall_s", "train_wall_s", "driver_busy_s", "driver_cpu_s",
                        "driver_loop_cpu_s", "monitoring"}
    assert (doc["train_wall_s"], doc["driver_busy_s"], doc["driver_loop_cpu_s"]) == \
        (2.0, 0.5, 0.125)
    assert doc["gains"]["kd"]["a"]["gap_recovered"] == pytest.approx(0.5)
    assert report.table() == table(doc)


def test_seed_summary_pairs_each_seed_with_its_baseline() -> None:
    from recdistill.cluster.report import seed_summary
    # teacher 0.80; baselines 0.78, 0.77, 0.79 (mean 0.78: the teacher leads by 0.02);
    # kd gains +0.010, +0.012, +0.008 over its own seed's baseline
    aucs = {"baseline": (0.78, 0.77, 0.79), "kd": (0.79, 0.782, 0.798)}
    students = {(n if k == 0 else f"{n}@{k}"): {"test": {"a": _m(v[k])}, "parameters": 1}
                for n, v in aucs.items() for k in range(3)}
    report = {"teacher": {"test": {"a": _m(0.80)}, "parameters": 10}, "students": students}
    s = seed_summary(report)["kd"]["a"]
    assert s["seeds"] == 3
    assert s["auc_mean"] == pytest.approx(0.79)
    assert s["gain_mean"] == pytest.approx(0.010)
    assert s["gain_paired_sd"] == pytest.approx(0.002)  # sd of (0.010, 0.012, 0.008)
    assert s["gain_over_2_paired_sd"] is True  # 0.010 > 0.004
    assert s["teacher_lead"] == pytest.approx(0.02)
    assert s["eta"] == pytest.approx(0.5)
    # per seed, gains compare with that seed's baseline
    g = gains(report)
    assert g["kd@1"]["a"]["auc_gain_vs_baseline"] == pytest.approx(0.012)
    assert g["kd@2"]["a"]["eta"] == pytest.approx(0.008 / 0.01)
    report["gains"], report["seeds"] = g, seed_summary(report)
    assert "a       kd               0.7900  0.0080  +0.0100    0.0020   0.50  yes" \
        in table(report)


def test_gauc_and_ndcg_are_summarised_paired_and_tabled() -> None:
    """With a user key the summary pairs GAUC and NDCG@10 by seed as AUC, and both
    tables show them."""
    from recdistill.cluster.report import markdown_table, seed_summary

    def m(auc: float, g: float, n: float) -> dict:
        return {**_m(auc), "gauc": g, "ndcg@10": n}

    gaucs = {"baseline": (0.70, 0.71), "kd": (0.72, 0.74)}
    students = {(n if k == 0 else f"{n}@{k}"): {
        "test": {"a": m(0.78, v[k], 0.5 + k / 10)}, "parameters": 1}
        for n, v in gaucs.items() for k in range(2)}
    report = {"teacher": {"test": {"a": m(0.80, 0.75, 0.61)}, "parameters": 10},
              "students": students}
    s = seed_summary(report)["kd"]["a"]["gauc"]
    assert (s["mean"], s["gain_mean"]) == (pytest.approx(0.73), pytest.approx(0.025))
    assert s["gain_paired_sd"] == pytest.approx(0.0070711, abs=1e-6)
    assert s["gain_over_2_paired_sd"] is True
    assert seed_summary(report)["kd"]["a"]["ndcg@10"]["gain_mean"] == pytest.approx(0.0)
    report["seeds"] = seed_summary(report)
    md = markdown_table(report)
    assert "| eta | GAUC (paired gain) | NDCG@10 (paired gain) |" in md
    assert "| 0.7300 (+0.0250 ± 0.0071) | 0.5500 (+0.0000 ± 0.0000) |" in md
    assert "| 0.8000 | | | | | | 0.7500 | 0.6100 |" in md
    assert "    GAUC NDCG@10" in table({**report, "gains": gains(report)})


def test_seeds_expand_groups_into_seeded_copies() -> None:
    from recdistill.jobs.distill_config import load_config
    cfg = load_config(None, seed=4, seeds=3)
    names = [g.name for g in cfg.groups]
    assert names[:5] == ["baseline", "pred_kd", "feat_kd", "multitask_kd", "listwise_kd"]
    assert names[5:10] == ["baseline@1", "pred_kd@1", "feat_kd@1", "multitask_kd@1",
                           "listwise_kd@1"]
    assert [g.student.seed for g in cfg.groups if g.name.startswith("pred_kd")] == [4, 5, 6]
    # on data without a group key the default listwise group and its copies are left
    # out; a config's own listwise group is kept (to fail naming itself)
    from recdistill.cluster.config_groups import keyed_groups
    kept, dropped = keyed_groups(cfg.groups, "", seed=4)
    assert dropped == ["listwise_kd", "listwise_kd@1", "listwise_kd@2"] and len(kept) == 12
    assert keyed_groups(cfg.groups, "user_id", seed=4) == (cfg.groups, [])
    own = dataclasses.replace(cfg.groups[4], student=dataclasses.replace(
        cfg.groups[4].student, losses=cfg.groups[4].student.losses[2:]))
    assert keyed_groups((own,), "")[1] == []
