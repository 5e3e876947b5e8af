"""Train's counting pass as a Ray Data aggregation (``recdistill stats``): the same
vocabularies, mean, std and rows as the pass in one process, kept for the jobs; a bad
value in one file fails naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recdistill.data.tabular import load_tabular
from testkit import make_frames, many_files

IDS = ('[ids]\nkind = "hash"\n[ids.workclass]\nkind = "vocab"\n'
       '[ids.genres]\nkind = "vocab"\nmin_count = 300\n'
       '[ids.education]\nkind = "vocab"\nmax_size = 2\n')


@pytest.mark.timeout(300)
def test_ray_data_counting_equals_the_pass_in_one_process(ray_cluster, tmp_path: Path,
                                                          capsys) -> None:
    from recdistill.cluster.train_stats import count_with_ray_data
    from recdistill.data.train_stats import CACHE_DIR
    from recdistill.jobs.stats import main
    frames = make_frames(n=800, seed=5)
    toml = many_files(tmp_path, frames, files=4, ids=IDS)
    here = load_tabular(toml, read="stream")  # counted in this process, kept
    shutil.rmtree(tmp_path / CACHE_DIR)
    ray_ = load_tabular(toml, read="stream", count_train=count_with_ray_data)
    a, b = here.transform, ray_.transform
    assert len(here.train) == len(ray_.train) == 800
    for col in ("workclass", "genres", "education"):
        assert a.vocabs[col].values == b.vocabs[col].values, col
    # the rules applied to the counts over every file: genres kept where in >= 300
    # rows, education's 2 most frequent values
    genres = frames["train"]["genres"].str.split("|").explode().value_counts()
    assert b.vocabs["genres"].values == sorted(genres[genres >= 300].index)
    assert len(b.vocabs["genres"]) < 3
    top = frames["train"]["education"].astype(str).value_counts()
    assert b.vocabs["education"].values == sorted(top.index[:2])
    assert b.vocabs["workclass"].values == ["private", "self", "state"]
    np.testing.assert_allclose(b.mean, a.mean, rtol=1e-12)
    np.testing.assert_allclose(b.std, a.std, rtol=1e-12)
    assert ray_.spec == here.spec
    # the job keeps them; a load after it counts nothing
    shutil.rmtree(tmp_path / CACHE_DIR)
    assert main(["--data", str(toml)]) == 0
    kept = next((tmp_path / CACHE_DIR).iterdir())
    out = capsys.readouterr().out
    assert f"dataset.toml: 800 train rows; vocabularies: education 2, genres " \
           f"{len(b.vocabs['genres'])}, workclass 3; " in out
    assert f"train's statistics counted, kept in {kept} (" in out
    assert load_tabular(toml, read="stream").reading.endswith(
        f"train's statistics from {kept}")


@pytest.mark.timeout(300)
def test_a_bad_value_in_one_train_file_fails_the_count_naming_it(ray_cluster, tmp_path: Path,
                                                                 capsys) -> None:
    from recdistill.data.train_stats import CACHE_DIR
    from recdistill.jobs.stats import main
    frames = make_frames(n=400, seed=6)
    toml = many_files(tmp_path, frames, files=4, ids=IDS)
    bad = tmp_path / "train" / "part-00002.parquet"
    frame = pd.read_parquet(bad)
    frame.loc[frame.index[7], "income"] = 7  # same type: the footers pass, the row not
    frame.to_parquet(bad, index=False)
    assert main(["--data", str(toml)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'income'" in err and "label must be 0 or 1" in err, err
    assert not (tmp_path / CACHE_DIR).exists()
