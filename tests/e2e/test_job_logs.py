"""What the distill job writes when its output is a file (CI, ``ray job submit``,
``| tee``): one line per pass with every group's validation AUC, the teacher's training
progress when it is trained first, every output path, and none of Ray's own lines
unless ``--verbose``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from recdistill.cluster.progress import pass_line
from testkit import SMALL, TWO_GROUPS, toml_dataset, job_env

RECDISTILL = Path(sys.executable).parent / "recdistill"


def test_pass_line_by_hand() -> None:
    valid = {"baseline": {"like": {"auc": 0.71234}, "love": {"auc": 0.8}},
             "kd": {"like": {"auc": 0.75}, "love": {"auc": 0.81116}}}
    # 3 passes of 8: ETA = 5 passes left x mean(10, 14, 12) s = 60 s; the rate is the
    # group that trained most this pass over this pass's wall (1200 / 12)
    assert pass_line(3, 8, [10.0, 14.0, 12.0], {"baseline": 1200, "kd": 1100}, valid) == (
        "pass 3/8: 12.0s, 100 examples/s; valid AUC baseline like 0.7123 love 0.8000; "
        "kd like 0.7500 love 0.8112; ETA 1m00s")
    assert pass_line(2, 2, [3.0, 5.0], {"b": 0}, {"b": {"y": {"auc": 0.5}}}).endswith(
        "ETA 0s")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_log_without_a_terminal(tmp_path: Path) -> None:
    data = toml_dataset(tmp_path)
    config = tmp_path / "distill.toml"
    # the default committee (its members' lines are checked), two groups
    config.write_text(SMALL + f'\n[teacher_group]\nbatch_size = 64\ncheckpoint = '
                      f'"{tmp_path / "teacher"}"\n' + TWO_GROUPS)
    log = tmp_path / "log.txt"
    with log.open("w") as out:  # a file, not a terminal: tqdm's bar switches itself off
        p = subprocess.run([str(RECDISTILL), "distill", "--config", str(config), "--data",
                            str(data), "--passes", "2", "--report",
                            str(tmp_path / "run" / "report.json")],
                           stdout=out, stderr=subprocess.STDOUT, env=job_env(), timeout=380,
                           cwd=tmp_path)
    text = log.read_text()
    assert p.returncode == 0, text[-3000:]
    lines = text.splitlines()
    groups = ("baseline", "pred_kd")
    passes = [ln for ln in lines if ln.startswith("pass ")]
    assert len(passes) == 2, text
    for k, ln in enumerate(passes, start=1):
        assert re.fullmatch(rf"pass {k}/2: [0-9.]+s, [0-9,]+ examples/s; valid AUC "
                            + "; ".join(rf"{g} income 0\.\d{{4}}" for g in groups)
                            + r"; ETA \d+s", ln), ln
    # the committee's three teachers were trained first; their epochs and test tables
    # are in the driver's output, each line naming its member
    for member in ("dcn", "dcn_priv", "dlrm"):
        assert any(ln.startswith(f"teacher {member}: epoch 1: train loss ") for ln in lines)
        assert f"teacher {member}: teacher       income" in text
    assert re.search(r"^Ray dashboard: http://127\.0\.0\.1:\d+; it asks for the auth token",
                     text, re.M)
    assert f"report {tmp_path / 'run' / 'report.json'}, figure " \
           f"{tmp_path / 'run' / 'report.png'}" in text
    # none of Ray's own lines (token auth, "Started a local Ray instance"), nor any
    # library warning
    assert not re.search(r"WARNING|INFO|Token authentication|Started a local Ray", text), \
        [ln for ln in lines if re.search(r"WARNING|INFO|Token|Started a local", ln)]
