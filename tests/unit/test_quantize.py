"""Quantized labelling tables (teacher/quantize.py): FBGEMM's inference kernels in place
of the sharded teacher's training kernels, on a fixed seeded batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recdistill.teacher.checkpoint import load_teacher_state, save_teacher
from recdistill.teacher.config import TeacherConfig
from recdistill.teacher.model import TeacherModel
from recdistill.teacher.quantize import quantize_rows, quantize_tables
from recdistill.teacher.sharding import init_distributed, shard_teacher
from testkit import CFG, tiny_dataset

# Seeded golden values: max |logit - fp32 logit| over the 64 test rows of the tiny
# dataset, teacher seeded with torch.manual_seed(3) (the fixture below). FBGEMM's
# row-wise quantization is deterministic, so these reproduce; each is also
# under the bound the quantization step allows (checked separately below).
GOLDEN_MAX_DIFF = {"fp16": 5.1111e-6, "int8": 1.03429e-4, "int4": 1.430869e-3}


def test_int8_row_quantization_by_hand() -> None:
    # one row [0, 1, 2, 3]: scale = (max - min) / 255 = 3 / 255, bias = min = 0, so the
    # codes are round(x / scale) = [0, 85, 170, 255]; scale and bias follow as fp16
    rows, scale_bias = quantize_rows(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), "int8")
    assert rows.dtype == torch.uint8 and rows.tolist() == [[0, 85, 170, 255]]
    sb = scale_bias.view(torch.float16).float()
    assert sb[0, 0].item() == pytest.approx(3 / 255, rel=1e-3)
    assert sb[0, 1].item() == 0.0
    # int4: 15 steps, two codes per byte (low nibble first): [0, 5, 10, 15]
    rows4, _ = quantize_rows(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), "int4")
    assert rows4.tolist() == [[0 | 5 << 4, 10 | 15 << 4]]
    # fp16 / fp32: the values' own bytes, no scale
    half, none = quantize_rows(torch.tensor([[1.5, -2.0]]), "fp16")
    assert none is None and half.view(torch.float16).tolist() == [[1.5, -2.0]]


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object]:
    data = tiny_dataset()
    torch.manual_seed(3)
    plain = TeacherModel(data.spec, CFG, device="cpu")
    ckpt = str(tmp_path_factory.mktemp("q") / "ckpt")
    save_teacher(plain, ckpt, spec=data.spec, cfg=CFG)
    return ckpt, data


def _logits(ckpt: str, data, kind: str, dtype: str) -> tuple[torch.Tensor, dict]:
    cfg = TeacherConfig(**{**CFG.__dict__, "sharding": kind})
    model = TeacherModel(data.spec, cfg)
    dmp = shard_teacher(model, cfg, init_distributed(torch.device("cpu")),
                        torch.device("cpu"))
    load_teacher_state(dmp, ckpt)
    dmp.eval()
    tables = quantize_tables(dmp, dtype)
    b = data.test.take(np.arange(64), keys=model.feature_names).to_batch()
    with torch.no_grad():
        return dmp(b.dense, b.sparse).logits, tables


@pytest.mark.parametrize("kind", ["table_wise", "row_wise", "column_wise"])
def test_quantized_logits_golden_and_within_bound(teacher_ckpt, kind: str) -> None:
    ckpt, data = teacher_ckpt
    ref, t32 = _logits(ckpt, data, kind, "fp32")
    params = 50 * 16 + 80 * 16 + 6 * 16  # user, item (shared with history), genre
    assert t32["parameters"] == params and t32["bytes"] == 4 * params
    for dtype, golden in GOLDEN_MAX_DIFF.items():
        got, tables = _logits(ckpt, data, dtype=dtype, kind=kind)
        diff = (got - ref).abs().max().item()
        # row-wise pools partial sums in another order: float rounding apart
        assert diff == pytest.approx(golden, rel=3e-3), (kind, dtype, diff)
        assert diff < {"fp16": 1e-4, "int8": 1e-3, "int4": 1e-2}[dtype]
        assert tables["parameters"] == params
        # bytes per parameter: 2 (fp16); 1 + 4 / 16 (int8: a 4-byte fp16 scale and bias
        # per 16-wide row); 0.5 + 4 / 16 (int4); plus each table's start aligned
        per_param = {"fp16": 2.0, "int8": 1.25, "int4": 0.75}[dtype]
        assert per_param <= tables["bytes"] / params <= per_param + 3 * 64 / params
    assert ref.abs().max() > 1e-3  # not a degenerate all-zero model


def test_fp16_trained_tables_train_save_and_label_from_int8(tmp_path: Path) -> None:
    """``embedding_precision = "fp16"``: FBGEMM keeps the tables in fp16 while
    training (half the bytes); the checkpoint loads with fp16 tables and quantizes to
    int8 straight from them, within the int8 bound of the fp16 logits."""
    from recdistill.teacher.sharding import make_optimizer
    from recdistill.teacher.train import train_step
    data = tiny_dataset()
    cfg = TeacherConfig(**{**CFG.__dict__, "embedding_precision": "fp16"})
    model = TeacherModel(data.spec, cfg)
    dmp = shard_teacher(model, cfg, init_distributed(torch.device("cpu")),
                        torch.device("cpu"))
    opt = make_optimizer(dmp, cfg)
    losses = [train_step(dmp, opt, a.to_batch())
              for a in data.train.iter_batches(16, keys=model.feature_names)]
    assert all(np.isfinite(losses))
    save_teacher(dmp, str(tmp_path / "ckpt"), spec=data.spec, cfg=cfg, info={"step": 4})
    served = shard_teacher(TeacherModel(data.spec, cfg), cfg,
                           init_distributed(torch.device("cpu")), torch.device("cpu"))
    load_teacher_state(served, str(tmp_path / "ckpt"))
    served.eval()
    b = data.test.take(np.arange(64), keys=model.feature_names).to_batch()
    with torch.no_grad():
        ref = served(b.dense, b.sparse).logits
    tables = quantize_tables(served, "int8")
    params = 50 * 16 + 80 * 16 + 6 * 16
    assert tables["bytes_before"] == 2 * params  # the fp16 training tables
    with torch.no_grad():
        diff = (served(b.dense, b.sparse).logits - ref).abs().max().item()
    assert 1e-6 < diff < 1e-3
