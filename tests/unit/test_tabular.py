"""The TOML dataset path, on small datasets the tests write themselves."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recdistill.data.errors import DataError
from recdistill.data.tabular import load_tabular
from testkit import TOML, make_frames, write_dataset


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_loads_vocab_from_train_and_normalises(tmp_path: Path, ext: str) -> None:
    frames = make_frames()
    frames["test"].loc[0, "workclass"] = "never-seen"
    d = load_tabular(write_dataset(tmp_path, ext, frames))
    assert d.spec.dense == ("age", "hours")
    assert [(f.name, f.cardinality, f.multi_valued) for f in d.spec.sparse] == [
        ("workclass", 4, False), ("education", 4, False), ("genres", 4, True)]
    assert d.spec.tasks == ("income",)
    # vocab sorted from train: private=1, self=2, state=3; unseen -> 0
    wc = d.test.sparse["workclass"][1]
    assert wc[0] == 0
    expect = {"private": 1, "self": 2, "state": 3}
    assert wc[1:].tolist() == [expect[v] for v in frames["test"]["workclass"][1:]]
    # multi-hot "c|a|b" -> ids of c, a, b = 3, 1, 2
    g_off, g_val = d.train.sparse["genres"]
    i = int(np.flatnonzero(frames["train"]["genres"] == "c|a|b")[0])
    assert g_val[g_off[i]:g_off[i + 1]].tolist() == [3, 1, 2]
    # dense standardised with train mean/std
    np.testing.assert_allclose(d.train.dense.mean(axis=0), 0, atol=1e-5)
    age = frames["valid"]["age"].to_numpy(float)
    mu, sd = frames["train"]["age"].mean(), frames["train"]["age"].std(ddof=0)
    np.testing.assert_allclose(d.valid.dense[:, 0], (age - mu) / sd, rtol=1e-4)
    np.testing.assert_array_equal(d.test.labels[:, 0], frames["test"]["income"])
    assert len(set(d.train.ids) | set(d.valid.ids) | set(d.test.ids)) == 60


def test_malformed_csv_row_names_file_and_line(tmp_path: Path) -> None:
    path = write_dataset(tmp_path)
    lines = (tmp_path / "valid.csv").read_text().splitlines()
    lines[3] += ",surplus,fields"
    (tmp_path / "valid.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        load_tabular(path)
    header = len(lines[0].split(","))  # and the row has 2 more
    assert header == 7
    assert str(e.value).endswith("valid.csv, row 4: malformed row: 9 fields where the "
                                 "header has 7 (a stray comma or quote? skip_bad_rows = "
                                 "true leaves such rows out)")


def test_non_numeric_dense_names_row_and_column(tmp_path: Path) -> None:
    frames = make_frames()
    frames["train"]["hours"] = frames["train"]["hours"].astype(object)
    frames["train"].loc[6, "hours"] = "forty"
    path = write_dataset(tmp_path, "csv", frames)
    # data row 6 is line 8 (header is line 1, data row 0 is line 2)
    with pytest.raises(DataError, match=r"train\.csv, row 8, column 'hours': expected a "
                                        r"number, got 'forty'"):
        load_tabular(path)


def test_label_not_zero_one(tmp_path: Path) -> None:
    frames = make_frames()
    frames["test"].loc[2, "income"] = 2
    path = write_dataset(tmp_path, "parquet", frames)
    with pytest.raises(DataError, match=r"test\.parquet, row 3, column 'income': label "
                                        r"must be 0 or 1, got 2"):
        load_tabular(path)


def test_unknown_column_and_unknown_key(tmp_path: Path) -> None:
    path = write_dataset(tmp_path)
    path.write_text(path.read_text().replace('"hours"', '"hours_per_week"'))
    with pytest.raises(DataError, match=r"train\.csv, column 'hours_per_week': unknown "
                                        r"column"):
        load_tabular(path)
    path.write_text(TOML.format(ext="csv") + 'weights = "w"\n')
    with pytest.raises(DataError, match=r"dataset\.toml: unknown key 'weights'"):
        load_tabular(path)
    path.write_text(TOML.format(ext="csv") + 'group_key = "hours"\n')
    with pytest.raises(DataError, match=r"dataset\.toml: group_key: 'hours' must be one "
                                        r"of the 'sparse' columns"):
        load_tabular(path)


def test_missing_file_and_empty_multi_hot(tmp_path: Path) -> None:
    path = write_dataset(tmp_path)
    (tmp_path / "valid.csv").unlink()
    with pytest.raises(DataError, match=r"valid\.csv: file not found \(named by 'valid'\)"):
        load_tabular(path)
    with pytest.raises(DataError, match=r"nowhere\.toml: dataset description not found"):
        load_tabular(tmp_path / "nowhere.toml")
    frames = make_frames()
    frames["train"].loc[1, "genres"] = ""
    path = write_dataset(tmp_path, "csv", frames)
    with pytest.raises(DataError, match=r"train\.csv, row 3, column 'genres': empty "
                                        r"multi-hot value"):
        load_tabular(path)


def test_skip_bad_rows_leaves_them_out_counted_and_keeps_the_rest_exact(tmp_path: Path
                                                                        ) -> None:
    frames = make_frames()
    train = frames["train"]
    train["hours"] = train["hours"].astype(object)
    train.loc[6, "hours"] = "forty"       # non-numeric dense value: line 8
    train.loc[9, "income"] = 3            # label not 0/1: line 11
    train.loc[12, "genres"] = ""          # empty multi-hot value: line 14
    path = write_dataset(tmp_path, "csv", frames)
    lines = (tmp_path / "train.csv").read_text().splitlines()
    lines[21] += ",surplus"               # data row 20: wrong number of fields
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.csv, row 22: malformed row"):
        load_tabular(path)                # the default still fails, naming the place
    path.write_text(path.read_text() + "skip_bad_rows = true\n")
    d = load_tabular(path)
    s = d.skipped["train"]
    assert s["rows"] == 4 and set(d.skipped) == {"train"}
    assert s["reasons"] == {"wrong number of fields": 1, "hours: expected a number, got": 1,
                            "income: label must be 0 or 1, got": 1,
                            "genres: empty multi-hot value": 1}
    # after a dropped CSV line pandas cannot say which line a kept row came from
    assert s["first"][0] == "1 line(s) with the wrong number of fields"
    assert len(d.train) == 36 and len(d.valid) == 10 and len(d.test) == 10

    # the kept rows load exactly as a clean file holding only them
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    clean = make_frames()
    clean["train"] = clean["train"].drop(index=[6, 9, 12, 20]).reset_index(drop=True)
    c = load_tabular(write_dataset(clean_dir, "csv", clean))
    assert c.skipped == {}
    for split in ("train", "valid", "test"):
        got, want = d.split(split), c.split(split)
        np.testing.assert_allclose(got.dense, want.dense, rtol=1e-6)
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_array_equal(got.ids, want.ids)
        for k in want.sparse:
            for a, b in zip(got.sparse[k], want.sparse[k]):
                np.testing.assert_array_equal(a, b)


def test_skip_bad_rows_names_rows_when_no_line_was_dropped(tmp_path: Path) -> None:
    frames = make_frames()
    frames["test"].loc[2, "income"] = 2
    path = write_dataset(tmp_path, "parquet", frames)
    path.write_text(path.read_text() + "skip_bad_rows = true\n")
    d = load_tabular(path)
    assert d.skipped["test"]["rows"] == 1
    assert d.skipped["test"]["first"] == ["row 3, column 'income'"]
    path.write_text(path.read_text().replace("skip_bad_rows = true", 'skip_bad_rows = "yes"'))
    with pytest.raises(DataError, match=r"key 'skip_bad_rows' must be a bool, got str"):
        load_tabular(path)


@pytest.mark.parametrize("shape, sparse, tasks", [
    ("dense_tabular", [("c0", 9, False), ("c1", 21, False), ("c2", 51, False)], ("y",)),
    ("id_heavy", [("user", None, False), ("item", None, False), ("ctx", 7, False)],
     ("y", "z")),
    ("multi_hot", [("item", None, False), ("region", 13, False), ("tags", None, True)],
     ("y", "z")),
    ("id_drift", [("user", None, False), ("item", None, False)], ("y", "z"))])
def test_generated_shapes_load_and_are_seeded(tmp_path: Path, shape, sparse, tasks) -> None:
    from recdistill.data.shapes import frames, write
    d = load_tabular(write(tmp_path, shape, rows=4000, seed=3))
    assert d.spec.tasks == tasks
    assert d.spec.group_key == ("user" if shape.startswith("id_") else "")
    got = [(f.name, f.cardinality, f.multi_valued) for f in d.spec.sparse]
    assert [(n, m) for n, _, m in got] == [(n, m) for n, _, m in sparse]
    assert all(c == want for (_, c, _), (_, want, _) in zip(got, sparse) if want)
    assert (len(d.train), len(d.valid), len(d.test)) == (3200, 400, 400)
    # balanced labels (the planted score is centred), and one seed gives one dataset
    assert np.all(np.abs(d.train.labels.mean(axis=0) - 0.5) < 0.05)
    a, _ = frames(shape, 500, seed=3)
    b, _ = frames(shape, 500, seed=3)
    c, _ = frames(shape, 500, seed=4)
    pd.testing.assert_frame_equal(a["train"], b["train"])
    assert not a["train"].equals(c["train"])
