import numpy as np
import psutil
import pytest

from recdistill.data.errors import ConfigError
from recdistill.data.synthetic import (SyntheticConfig, generate_chunk, iter_chunks,
                                       synthetic_dataset)


def test_same_seed_same_batches_other_seed_differs() -> None:
    cfg = SyntheticConfig(rows=5000, chunk_rows=2048, seed=7)
    a = synthetic_dataset(cfg)
    b = synthetic_dataset(cfg)
    ba = next(a.train.iter_batches(512, shuffle=True, seed=1))
    bb = next(b.train.iter_batches(512, shuffle=True, seed=1))
    for name in ("dense", "labels", "ids", "values", "lengths"):
        np.testing.assert_array_equal(getattr(ba, name), getattr(bb, name))
    other = generate_chunk(SyntheticConfig(rows=5000, chunk_rows=2048, seed=8), 0)
    assert not np.array_equal(other.sparse["c0"][1], generate_chunk(cfg, 0).sparse["c0"][1])
    # a chunk regenerated alone equals the same chunk from the stream
    np.testing.assert_array_equal(generate_chunk(cfg, 2).dense, list(iter_chunks(cfg))[2].dense)


def test_shape_zipf_and_correlated_tasks() -> None:
    cfg = SyntheticConfig(rows=60_000, chunk_rows=60_000)
    t = generate_chunk(cfg, 0)
    assert t.dense.shape == (60_000, 13) and t.labels.shape == (60_000, 3)
    assert len(t.sparse) == 26
    counts = np.bincount(t.sparse["c2"][1])
    assert counts.argmax() == 1 and counts[1] > 10 * counts[50]  # heavy head
    assert counts[0] == 0  # id 0 is reserved for OOV
    y = t.labels
    assert 0.1 < y[:, 0].mean() < 0.6
    assert np.corrcoef(y[:, 0], y[:, 1])[0, 1] > 0.12  # measured 0.16; independent: ~0
    assert np.all(y[:, 2] <= y[:, 0])  # conversions only after clicks
    with pytest.raises(ConfigError, match="synthetic.n_tasks"):
        SyntheticConfig(n_tasks=5)


@pytest.mark.slow
def test_ten_million_rows_stream_in_bounded_memory() -> None:
    cfg = SyntheticConfig(rows=10_000_000, chunk_rows=65_536)
    proc = psutil.Process()
    rows, positives = 0, 0.0
    rss_after_first = None
    for chunk in iter_chunks(cfg):
        batch = chunk.take(np.arange(min(len(chunk), 4096)))  # batches are cut as usual
        rows += len(chunk)
        positives += float(batch.labels[:, 0].sum())
        if rss_after_first is None:
            rss_after_first = proc.memory_info().rss
    assert rows == 10_000_000
    # One 65k-row chunk is ~15 MB; 10 M rows held at once would be ~2.4 GB.
    assert proc.memory_info().rss - rss_after_first < 150 * 2**20


def test_stream_dataset_chunks_and_fixed_eval_sets() -> None:
    from recdistill.data.synthetic import SyntheticStream, synthetic_stream_dataset
    cfg = SyntheticConfig(rows=5000, chunk_rows=2048, seed=3)
    d = synthetic_stream_dataset(cfg, eval_rows=300)
    assert isinstance(d.train, SyntheticStream) and len(d.train) == 5000
    assert d.train.num_batches(512, 2) == 5  # 2500 rows per rank -> 5 batches of <= 512
    # validation and test: eval_rows each, ids after the training ids, distinct draws
    assert d.valid.ids.tolist() == list(range(5000, 5300))
    assert d.test.ids.tolist() == list(range(5300, 5600))
    assert not np.array_equal(d.valid.dense, d.test.dense)
    assert d.spec == cfg.spec()
    # a chunk shuffled for a pass holds the same rows, in a seed-determined order
    plain, shuffled = d.train.chunk(1), d.train.chunk(1, seed=11)
    order = np.argsort(shuffled.ids)
    np.testing.assert_array_equal(shuffled.ids[order], plain.ids)
    np.testing.assert_array_equal(shuffled.dense[order], plain.dense)
    np.testing.assert_array_equal(shuffled.sparse["c5"][1][order], plain.sparse["c5"][1])
    assert not np.array_equal(shuffled.ids, plain.ids)
    np.testing.assert_array_equal(d.train.chunk(1, seed=11).ids, shuffled.ids)
    # the default cap reproduces the in-memory dataset's rows and spec
    np.testing.assert_array_equal(plain.dense, generate_chunk(cfg, 1).dense)


def test_criteo_cardinalities_make_a_billion_parameter_teacher_at_dim_32() -> None:
    small = SyntheticConfig().cardinalities()
    big = SyntheticConfig(max_cardinality=10_000_000).cardinalities()
    assert max(small) == 100_001 and sum(small) == 840_569  # as before the uncapped table
    assert max(big) == 10_000_001 and sum(big) * 32 >= 1e9
