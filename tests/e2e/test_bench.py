import json
import subprocess
import sys


def test_lookup_suite_runs_and_reports(tmp_path) -> None:
    """A smoke run on tiny tables: the suite runs and its JSON has the compared figures
    (speed targets are checked by the benchmark itself, never by a unit test)."""
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, "-m", "jobs.bench", "--suite", "lookup", "--rows",
                        "1000", "--dim", "16", "--repeats", "2", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())["lookup"]
    assert res["rows"] == 1000 and res["dim"] == 16 and res["repeats"] == 2
    for key in ("fused_examples_per_s", "plain_sparse_examples_per_s",
                "plain_dense_examples_per_s"):
        assert res[key]["min"] <= res[key]["median"] <= res[key]["max"]
    assert res["ratio"] == res["ratio_vs_sparse"]["median"] > 0
