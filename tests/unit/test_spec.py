import numpy as np
import pytest
import torch

from recdistill.data.spec import ExampleTable, FeatureSpec, SparseFeature


def _table() -> ExampleTable:
    # 5 rows; "bag" is ragged: [10], [], [11, 12], [13], [14, 15, 16]
    return ExampleTable(
        dense=np.arange(10, dtype=np.float32).reshape(5, 2),
        labels=np.array([[0], [1], [0], [1], [1]], np.float32),
        ids=np.array([100, 101, 102, 103, 104]),
        sparse={"one": (np.arange(6), np.array([1, 2, 3, 4, 5])),
                "bag": (np.array([0, 1, 1, 3, 4, 7]), np.array([10, 11, 12, 13, 14, 15, 16]))})


def test_take_gathers_ragged_rows_in_order() -> None:
    b = _table().take(np.array([4, 1, 2]))
    assert b.keys == ("one", "bag")
    np.testing.assert_array_equal(b.lengths, [1, 1, 1, 3, 0, 2])
    np.testing.assert_array_equal(b.values, [5, 2, 3, 14, 15, 16, 11, 12])
    np.testing.assert_array_equal(b.ids, [104, 101, 102])
    kjt = b.to_batch().sparse
    assert kjt["bag"].to_dense()[0].tolist() == [14, 15, 16]
    assert kjt["bag"].to_dense()[1].tolist() == []


def test_batch_numpy_round_trip() -> None:
    arrays = _table().take(np.array([0, 3]))
    back = arrays.to_batch().to_numpy()
    for name in ("dense", "labels", "ids", "values", "lengths"):
        np.testing.assert_array_equal(getattr(back, name), getattr(arrays, name))
    assert back.keys == arrays.keys


def test_sharded_iteration_equal_sizes_and_disjoint() -> None:
    t = _table()
    shares = [[b.ids.tolist() for b in t.iter_batches(2, rank=r, world=2)] for r in range(2)]
    # 5 rows over 2 ranks without padding: 2 rows each, row 104 left out.
    assert shares == [[[100, 101]], [[102, 103]]]
    for world, bs in ((1, 2), (2, 1), (2, 2), (3, 1)):
        assert t.num_batches(bs, world) == len(list(t.iter_batches(bs, world=world)))


def test_padded_iteration_covers_every_row() -> None:
    t = _table()
    shares = [[b.ids.tolist() for b in t.iter_batches(2, rank=r, world=2, pad=True)]
              for r in range(2)]
    # array_split gives 3 + 2 rows; rank 1 pads with its first row.
    assert shares == [[[100, 101], [102]], [[103, 104], [103]]]


def test_spec_student_view_drops_privileged() -> None:
    spec = FeatureSpec(dense=("d",), sparse=(SparseFeature("item", 10),
                                             SparseFeature("hist", 10, True, table="item")),
                       tasks=("y",), privileged=("hist",))
    assert spec.student_view().sparse_names == ("item",)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="one cardinality"):
        FeatureSpec(dense=(), sparse=(SparseFeature("a", 3), SparseFeature("b", 4, table="a")),
                    tasks=("y",))
    assert torch.is_tensor(_table().take(np.array([0])).to_batch().dense)
