"""Raw values -> ids: the hash rule's golden values, the vocabulary pass's counting rules,
and datasets whose splits are directories, globs and URIs of many files."""

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recdistill.data.errors import DataError
from recdistill.data.ids import Counter, IdRule, as_text, hash_ids
from recdistill.data.tabular import load_tabular
from testkit import TOML, make_frames, many_files, write_dataset


def test_hash_ids_are_golden_and_do_not_depend_on_how_a_value_is_stored() -> None:
    text = as_text(np.array(["a", "5", None, "", "user_123"], dtype=object))
    # pinned: SipHash-2-4 (pandas' hash_array, its fixed key) of the text, mod buckets,
    # plus 1; a missing value is id 0. A change here re-maps every trained table.
    assert hash_ids(text, 1000).tolist() == [505, 904, 0, 775, 367]
    assert hash_ids(text, 1 << 20).tolist() == [507857, 938576, 0, 408135, 665191]
    # the integer 5, the string "5" and 5.0 of an integer column with nulls: one id
    stored = [pd.Series([5, 12345678901]), pd.Series(["5", "12345678901"]),
              pd.Series([5.0, 12345678901.0, None])]
    assert [hash_ids(as_text(s), 1 << 20)[:2].tolist() for s in stored] == \
        [[938576, 90851]] * 3


def test_vocabulary_counts_across_blocks_with_min_count_and_max_size() -> None:
    blocks = [np.array(["b", "a", "c", None], object), np.array(["a", "b", "a", "d", "e",
                                                                 "e"], object)]
    c = Counter()
    for b in blocks:
        c.add(b)
    # counts: a 3, b 2, e 2, c 1, d 1 (None is not a value)
    assert c.vocabulary(IdRule()).values == ["a", "b", "c", "d", "e"]
    assert c.vocabulary(IdRule(min_count=2)).values == ["a", "b", "e"]
    # the two most frequent: a, then b before e (a tie, broken by text)
    v = c.vocabulary(IdRule(max_size=2))
    assert v.values == ["a", "b"]
    assert v.ids(np.array(["b", "e", None, "a"], object)).tolist() == [2, 0, 0, 1]


@pytest.mark.parametrize("kind", ["vocab", "hash"])
def test_a_directory_of_files_loads_as_the_one_file(tmp_path: Path, kind: str) -> None:
    frames = make_frames(n=400, seed=3)
    ids = f'[ids]\nkind = "{kind}"\nbuckets = 97\n'
    write_dataset(tmp_path, "parquet", frames)
    (tmp_path / "dataset.toml").write_text(TOML.format(ext="parquet") + ids)
    one = load_tabular(tmp_path / "dataset.toml", block_rows=13)
    many = load_tabular(many_files(tmp_path / "many", frames, ids=ids), block_rows=13)
    glob = tmp_path / "glob.toml"
    glob.write_text((tmp_path / "many" / "dataset.toml").read_text().replace(
        '"train"', '"many/train/part-*.parquet"').replace('"valid"', '"many/valid"')
        .replace('"test"', f'"file://{tmp_path}/many/test"'))
    for d in (many, load_tabular(glob)):
        assert d.spec == one.spec
        for split in ("train", "valid", "test"):
            a, b = one.split(split), d.split(split)
            np.testing.assert_array_equal(a.dense, b.dense)
            np.testing.assert_array_equal(a.labels, b.labels)
            for k in a.sparse:
                np.testing.assert_array_equal(a.sparse[k][1], b.sparse[k][1])
                np.testing.assert_array_equal(a.sparse[k][0], b.sparse[k][0])
    if kind == "hash":
        assert [f.cardinality for f in one.spec.sparse] == [98, 98, 98]


def test_ids_default_to_vocab_for_one_file_and_hash_for_a_directory(tmp_path: Path) -> None:
    frames = make_frames(n=80)
    one = load_tabular(write_dataset(tmp_path, "parquet", frames))
    assert [f.cardinality for f in one.spec.sparse] == [4, 4, 4]
    many = load_tabular(many_files(tmp_path / "many", frames, files=2))
    assert [f.cardinality for f in many.spec.sparse] == [(1 << 20) + 1] * 3
    per = load_tabular(many_files(tmp_path / "per", frames, files=2, ids=(
        '[ids]\nbuckets = 50\n[ids.education]\nkind = "vocab"\n')))
    assert [f.cardinality for f in per.spec.sparse] == [51, 4, 51]


def test_a_wrong_column_type_in_the_middle_of_train_names_file_and_column(
        tmp_path: Path) -> None:
    frames = make_frames(n=400)
    toml = many_files(tmp_path, frames)
    bad = tmp_path / "train" / "part-00004.parquet"
    frame = pd.read_parquet(bad)
    frame["hours"] = frame["hours"].astype(str)
    frame.to_parquet(bad, index=False)
    with pytest.raises(DataError, match=r"train/part-00004\.parquet, column 'hours': "
                       r"column type (large_)?string where the split's first file "
                       r".*/train/part-00000\.parquet has double"):
        load_tabular(toml)


def test_bad_id_rules_name_their_key(tmp_path: Path) -> None:
    path = write_dataset(tmp_path)
    base = path.read_text()
    for ids, message in (('[ids]\nkind = "md5"\n', r"ids: kind must be one of"),
                         ('[ids.genre]\nkind = "hash"\n', r"ids\.genre: not a sparse or "
                                                          r"multi_hot column"),
                         ('[ids.genres]\nbuckets = 0\n', r"ids\.genres: buckets must be"),
                         ('[ids]\nbucket = 10\n', r"ids\.bucket: unknown key")):
        path.write_text(base + ids)
        with pytest.raises(DataError, match=r"dataset\.toml: " + message):
            load_tabular(path)


def test_a_bad_row_in_a_directory_of_csv_names_the_file_and_its_line(
        tmp_path: Path) -> None:
    frames = make_frames(n=120)
    for split, frame in frames.items():
        (tmp_path / split).mkdir()
        for i, part in enumerate(np.array_split(np.arange(len(frame)), 3)):
            frame.iloc[part].to_csv(tmp_path / split / f"p{i}.csv", index=False)
    lines = (tmp_path / "train" / "p1.csv").read_text().splitlines()
    lines[5] = lines[5].replace(lines[5].split(",")[1], "forty", 1)  # hours, line 6
    (tmp_path / "train" / "p1.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "dataset.toml").write_text(TOML.format(ext="csv").replace(".csv", ""))
    with pytest.raises(DataError, match=r"train/p1\.csv, row 6, column 'hours': expected "
                       r"a number, got 'forty'"):
        load_tabular(tmp_path / "dataset.toml", block_rows=4)


def test_the_saved_transform_turns_raw_test_rows_into_the_loaded_examples(
        tmp_path: Path) -> None:
    """What a student artifact keeps (``transform.json`` and its vocabulary files) maps
    the raw test file to exactly the examples the job trained and evaluated on."""
    from recdistill.data.files import blocks, resolve
    from recdistill.data.transform import RowTransform
    frames = make_frames(n=200, seed=4)
    frames["test"].loc[3, "workclass"] = "never-seen"
    toml = write_dataset(tmp_path, "parquet", frames)
    toml.write_text(toml.read_text() + '[ids.genres]\nkind = "hash"\nbuckets = 64\n')
    d = load_tabular(toml)
    (tmp_path / "artifact").mkdir()
    d.transform.save(tmp_path / "artifact")
    t = RowTransform.load(tmp_path / "artifact")
    assert t.rules == d.transform.rules and t.vocabs["workclass"].values == [
        "private", "self", "state"]
    (_, frame, _), = blocks(resolve("test.parquet", tmp_path, "test"), t.columns)
    got = t.table(frame, first_id=int(d.test.ids[0]))
    np.testing.assert_array_equal(got.dense, d.test.dense)
    np.testing.assert_array_equal(got.ids, d.test.ids)
    for k, (offsets, values) in d.test.sparse.items():
        np.testing.assert_array_equal(got.sparse[k][0], offsets)
        np.testing.assert_array_equal(got.sparse[k][1], values)
    assert got.sparse["workclass"][1][3] == 0  # unseen in train


def test_a_streamed_split_is_the_in_memory_split_chunk_by_chunk(tmp_path: Path) -> None:
    """``read = "stream"``: train is planned into row groups from the footers and each
    chunk is read where asked; the chunks hold exactly the in-memory rows (same ids,
    same encoding, train's stats from sums within float error), a seeded chunk is a
    seeded permutation of it, and valid/test stream too, their blocks the in-memory
    rows."""
    from recdistill.data.file_stream import FileStream
    frames = make_frames(n=400, seed=5)
    toml = many_files(tmp_path, frames, files=3)
    for split in ("train",):  # row groups of 50 rows: 3 files of 134/133/133 -> 9 chunks
        for f in sorted((tmp_path / split).iterdir()):
            pd.read_parquet(f).to_parquet(f, index=False, row_group_size=50)
    whole = load_tabular(toml, read="memory")
    streamed = load_tabular(toml, read="stream")
    assert isinstance(streamed.train, FileStream) and len(streamed.train) == 400
    assert streamed.train.n_chunks == 9 and streamed.spec == whole.spec
    rules = "ids: hash into 1,048,576 buckets (workclass, education, genres)"
    assert streamed.reading.startswith(
        "train: 3 file(s), 400 rows, streamed (read = 'stream'); " + rules +
        "; train's statistics counted, kept in ")
    assert whole.reading == ("train: 3 file(s), 400 rows, in memory (read = 'memory'); "
                             + rules)
    got = [streamed.train.chunk(c) for c in range(9)]
    ids = np.concatenate([g.ids for g in got])
    np.testing.assert_array_equal(ids, np.arange(400))
    np.testing.assert_allclose(np.concatenate([g.dense for g in got]), whole.train.dense,
                               atol=1e-5)
    for k, (_, values) in whole.train.sparse.items():
        np.testing.assert_array_equal(np.concatenate([g.sparse[k][1] for g in got]), values)
    shuffled = streamed.train.chunk(4, seed=7)
    assert sorted(shuffled.ids.tolist()) == got[4].ids.tolist()
    assert shuffled.ids.tolist() != got[4].ids.tolist()
    assert streamed.train.chunk(4, seed=7).ids.tolist() == shuffled.ids.tolist()
    for split in ("valid", "test"):
        s, w = streamed.split(split), whole.split(split)
        assert isinstance(s, FileStream) and len(s) == len(w) and s.n_blocks == 3  # files
        blocks = [s.block(b) for b in range(3)]
        np.testing.assert_array_equal(np.concatenate([b.ids for b in blocks]), w.ids)
        np.testing.assert_allclose(np.concatenate([b.dense for b in blocks]), w.dense,
                                   atol=1e-5)
        for k, (_, values) in w.sparse.items():
            np.testing.assert_array_equal(
                np.concatenate([b.sparse[k][1] for b in blocks]), values)
    # a streamed dataset's teacher: its first 150 train rows in memory, the same ids
    # and transform as the stream
    first = load_tabular(toml, read="memory", train_rows=150)
    np.testing.assert_array_equal(first.train.ids, np.arange(150))
    np.testing.assert_allclose(first.train.dense, whole.train.dense[:150], atol=1e-5)
    np.testing.assert_array_equal(first.valid.ids, whole.valid.ids)
    assert first.spec == whole.spec
    # what the teacher's job asks for: those rows only where train would stream, with
    # one pass over train for its stats (not a streamed load first)
    cut = load_tabular(toml, read="stream", instead_of_stream=150)
    np.testing.assert_array_equal(cut.train.dense, first.train.dense)
    # (train's statistics: those the streamed load counted, reused)
    assert cut.reading == ("train: 3 file(s), 400 rows, in memory (its first 150 rows "
                           f"instead of a stream); {rules}; train's statistics from "
                           f"{next((tmp_path / '.recdistill-stats').iterdir())}")
    assert len(load_tabular(toml, instead_of_stream=150).train) == 400  # no stream: all


def test_a_directory_source_takes_partitions_and_leaves_out_marker_files(
        tmp_path: Path) -> None:
    from recdistill.data.files import resolve
    frame = make_frames(n=8)["train"]
    for day in (2, 1):
        (tmp_path / "logs" / f"day={day}").mkdir(parents=True)
        frame.to_parquet(tmp_path / "logs" / f"day={day}" / "part-0.parquet")
    (tmp_path / "logs" / "_SUCCESS").write_text("")
    frame.to_parquet(tmp_path / "logs" / ".part-9.parquet")  # a writer's temporary file
    source = resolve("logs", tmp_path, "train")
    assert [Path(p).relative_to(tmp_path / "logs").as_posix() for p in source.paths] == [
        "day=1/part-0.parquet", "day=2/part-0.parquet"]
    with pytest.raises(DataError, match=r"empty: no \.parquet or \.csv files \(named by "
                                        r"'valid'\)"):
        (tmp_path / "empty").mkdir()
        resolve("empty", tmp_path, "valid")


def test_a_bad_label_in_a_streamed_split_fails_at_load_naming_its_place(
        tmp_path: Path) -> None:
    """A streamed train split is read once before any pass (its stats): a label other
    than 0/1 in the sixth file fails there, naming file, row and column, before the job
    starts anything."""
    toml = many_files(tmp_path, make_frames(n=400), ids='read = "stream"\n')
    bad = tmp_path / "train" / "part-00005.parquet"
    frame = pd.read_parquet(bad)
    frame.loc[frame.index[6], "income"] = 2
    frame.to_parquet(bad, index=False)
    with pytest.raises(DataError, match=r"train/part-00005\.parquet, row 7, column "
                                        r"'income': label must be 0 or 1, got 2"):
        load_tabular(toml)


def test_a_streamed_splits_statistics_are_counted_once_per_version_of_its_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The counting pass of a streamed train (vocabularies, dense mean and std, rows)
    runs once: a second load reuses what it kept beside the TOML, bit for bit; a train
    file rewritten is counted again."""
    from recdistill.data import tabular
    from recdistill.data.train_stats import CACHE_DIR
    frames = make_frames(n=400, seed=9)
    toml = many_files(tmp_path, frames, files=3,
                       ids='[ids]\nkind = "hash"\n[ids.workclass]\nkind = "vocab"\n')
    passes: list[int] = []
    count = tabular._stats
    monkeypatch.setattr(tabular, "_stats", lambda *a: passes.append(1) or count(*a))
    first = load_tabular(toml, read="stream")
    again = load_tabular(toml, read="stream")
    assert len(passes) == 1 and len(again.train) == 400
    kept = next((tmp_path / CACHE_DIR).iterdir())
    assert first.reading.endswith(f"train's statistics counted, kept in {kept}")
    assert again.reading.endswith(f"train's statistics from {kept}")
    a, b = first.transform, again.transform
    assert a.vocabs["workclass"].values == b.vocabs["workclass"].values == \
        ["private", "self", "state"]
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)
    assert again.spec == first.spec
    # one train file rewritten with fewer rows: another key, counted again
    part = sorted((tmp_path / "train").iterdir())[0]
    pd.read_parquet(part).iloc[:100].to_parquet(part, index=False)
    third = load_tabular(toml, read="stream")
    assert len(passes) == 2 and len(third.train) == 400 - 134 + 100
    assert len(list((tmp_path / CACHE_DIR).iterdir())) == 2


def test_precompute_labels_a_streamed_split_chunk_by_chunk(tmp_path: Path) -> None:
    """``jobs.precompute``'s parts: an in-memory split in ``part_rows`` slices, a
    streamed split one chunk (row group) at a time, together every row once."""
    from recdistill.jobs.precompute import _part, _part_rows
    frames = make_frames(n=400, seed=11)
    toml = many_files(tmp_path, frames, files=3)
    streamed, whole = load_tabular(toml, read="stream"), load_tabular(toml, read="memory")
    assert _part_rows(streamed.train, 150) == [134, 133, 133]  # one row group per file
    assert _part_rows(whole.train, 150) == [150, 150, 100]
    for split, first in (("train", 0), ("valid", 400), ("test", 500)):
        got = [_part(streamed.split(split), i, 150)
               for i in range(len(_part_rows(streamed.split(split), 150)))]
        ids = np.concatenate([g.ids for g in got])
        np.testing.assert_array_equal(ids, whole.split(split).ids)
        assert ids[0] == first
        np.testing.assert_allclose(np.concatenate([g.dense for g in got]),
                                   whole.split(split).dense, atol=1e-5)
    np.testing.assert_array_equal(_part(whole.train, 2, 150).ids, np.arange(300, 400))


def test_ids_bench_counts_lookups_whose_bucket_another_value_shares() -> None:
    """The ids benchmark's collision share, by hand: values 1 and 2 hash to bucket 5,
    3 to 7; of the test lookups (buckets 5, 7, 5) two hit a shared bucket."""
    from types import SimpleNamespace

    from recdistill.jobs.bench.ids import _collisions

    def split(values: list[int]) -> SimpleNamespace:
        return SimpleNamespace(sparse={"f": (np.arange(len(values) + 1),
                                             np.array(values))})

    vocab = SimpleNamespace(train=split([1, 2, 3, 1]), valid=split([2]),
                            test=split([1, 3, 2]))
    hashed = SimpleNamespace(train=split([5, 5, 7, 5]), valid=split([5]),
                             test=split([5, 7, 5]))
    assert _collisions(vocab, hashed, ("f",)) == pytest.approx(2 / 3)
    assert _collisions(vocab, vocab, ("f",)) == 0.0


def test_ids_bench_renumbering_is_one_permutation_per_table(movielens: Any) -> None:
    """The renumbered control: ids 1..V of a table map one to one onto 1..V (0 stays
    0), ``user_history`` (on ``item_id``'s table) gets ``item_id``'s map, and the seed
    fixes the map."""
    from recdistill.jobs.bench.ids import _relabelled
    data = movielens
    shared = [f for f in data.spec.sparse if f.table != f.name]
    assert [f.name for f in shared] == ["user_history"]
    a, b = _relabelled(data, 3), _relabelled(data, 3)
    for f in data.spec.sparse:
        old = np.concatenate([getattr(data, s).sparse[f.name][1]
                              for s in ("train", "valid", "test")])
        new = np.concatenate([getattr(a, s).sparse[f.name][1]
                              for s in ("train", "valid", "test")])
        pairs = set(zip(old.tolist(), new.tolist()))
        assert len({o for o, _ in pairs}) == len(pairs) == len({n for _, n in pairs})
        assert all((o == 0) == (n == 0) for o, n in pairs)
        assert max(n for _, n in pairs) < data.spec.feature(f.table).cardinality
        np.testing.assert_array_equal(new, np.concatenate(
            [getattr(b, s).sparse[f.name][1] for s in ("train", "valid", "test")]))
    for f in shared:  # one map per table: the feature and its table's own agree
        m = dict(zip(data.train.sparse[f.table][1].tolist(),
                     a.train.sparse[f.table][1].tolist()))
        v, w = data.train.sparse[f.name][1], a.train.sparse[f.name][1]
        assert all(m.get(x, y) == y for x, y in zip(v.tolist(), w.tolist()))
    assert not np.array_equal(a.train.sparse[data.spec.sparse[0].name][1],
                              data.train.sparse[data.spec.sparse[0].name][1])
