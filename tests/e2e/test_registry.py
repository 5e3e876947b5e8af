"""Teacher architectures by name: TorchRec's own DLRM / DLRM_DCN as towers give the
TorchRec models' logits from the same weights; a tower that breaks the contract fails
in one line; a plugin's tower is distilled end to end; TorchRec's DLRM teaches on
MovieLens-100k."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchrec.models.dlrm import DLRM, DLRM_DCN

from recdistill.data.errors import ConfigError
from recdistill.teacher.model import TeacherModel, feature_dims
from recdistill.teacher.outputs import TeacherOutputs
from recdistill.teacher.registry import TEACHERS, register_student, register_teacher
from testkit import CFG, tiny_dataset
from testkit import SMALL, toml_dataset, job_env

RECDISTILL = Path(sys.executable).parent / "recdistill"


def _tower_vs_torchrec(arch: str, reference: type[nn.Module], **extra: int) -> None:
    data = tiny_dataset(32)
    cfg = dataclasses.replace(CFG, use_privileged=False, arch=arch)
    model = TeacherModel(data.spec, cfg, device="cpu").eval()
    ref = reference(embedding_bag_collection=model.ebc, dense_in_features=len(data.spec.dense),
                    dense_arch_layer_sizes=[*cfg.dense_layers[:-1], cfg.embedding_dim],
                    over_arch_layer_sizes=[*cfg.over_layers, len(data.spec.tasks)],
                    **extra).eval()
    # the tower's arches are TorchRec's: their weights load into the TorchRec model by
    # name, every one of them (its tables are the teacher's own EBC, shared)
    missing, unexpected = ref.load_state_dict(
        {k.removeprefix("tower."): v for k, v in model.state_dict().items()
         if k.startswith("tower.")}, strict=False)
    assert not unexpected and missing and all(k.startswith("sparse_arch.") for k in missing)
    batch = next(iter(data.train.iter_batches(32, keys=model.feature_names))).to_batch()
    with torch.no_grad():
        ours = model(batch.dense, batch.sparse)
        theirs = ref(batch.dense, batch.sparse)
    torch.testing.assert_close(ours.logits, theirs, rtol=0, atol=0)
    assert ours.logits.shape == (32, 2)
    assert feature_dims(data.spec, cfg) == {k: v.shape[1] for k, v in ours.features.items()}


def test_torchrec_dlrm_tower_is_torchrecs_dlrm() -> None:
    _tower_vs_torchrec("torchrec_dlrm", DLRM)


def test_torchrec_dlrm_dcn_tower_is_torchrecs_dlrm_dcn() -> None:
    _tower_vs_torchrec("torchrec_dlrm_dcn", DLRM_DCN, dcn_num_layers=CFG.cross_layers,
                       dcn_low_rank_dim=CFG.cross_rank)


def test_registered_names_and_contract_errors() -> None:
    assert {"builtin", "torchrec_dlrm", "torchrec_dlrm_dcn",
            "torchrec_deepfm"} <= set(TEACHERS.known())
    data = tiny_dataset(8)
    # DeepFM: 3 features of width 16 -> interaction = dense (16) + deep (64) + FM (1)
    assert feature_dims(data.spec, dataclasses.replace(CFG, use_privileged=False,
                                                       arch="torchrec_deepfm")) == {
        "pooled_embeddings": 48, "interaction": 81, "last_hidden": 16}
    with pytest.raises(ConfigError, match=r"^teacher.arch: unknown 'nope'; registered: "
                                          r"\['builtin', "):
        feature_dims(data.spec, dataclasses.replace(CFG, arch="nope"))

    class OneColumn(nn.Module):
        def forward(self, emb: torch.Tensor, dense: torch.Tensor) -> TeacherOutputs:
            return TeacherOutputs(logits=emb[:, :1])

    register_teacher("test_one_column")(lambda spec, cfg, n: OneColumn())
    with pytest.raises(ConfigError) as e:
        feature_dims(data.spec, dataclasses.replace(CFG, arch="test_one_column"))
    assert str(e.value) == ("teacher.arch = 'test_one_column': logits must be [B, 2] (one "
                            "column per task ['click', 'like']), got a (2, 1) tensor")
    register_teacher("test_tuple")(lambda spec, cfg, n: nn.Identity())
    with pytest.raises(ConfigError, match=r"forward\(emb \[2, 64\], dense \[2, 2\]\) failed: "
                                          r"TypeError"):
        feature_dims(data.spec, dataclasses.replace(CFG, arch="test_tuple"))


def test_student_towers() -> None:
    from recdistill.student.config import StudentConfig
    from recdistill.student.model import CrossTower, StudentModel
    data = tiny_dataset(16)
    batch = data.train.take(np.arange(16)).to_batch()
    cfg = StudentConfig(name="s", arch="dcn", hidden=(12, 5), sharding="none",
                        arch_params={"cross_layers": 1, "cross_rank": 3})
    model = StudentModel(data.spec, cfg)
    assert isinstance(model.mlp, CrossTower)
    with torch.no_grad():
        out = model(batch.dense, batch.sparse)
        # by hand: x = [embeddings, dense]; one low-rank cross layer
        # x1 = x0 * (W (V x0) + b) + x0; then the MLP and the heads
        emb = out.features["pooled_embeddings"]
        x0 = torch.cat([emb, batch.dense], dim=1)
        layer_v, layer_w = model.mlp.cross.V_kernels[0], model.mlp.cross.W_kernels[0]
        x1 = x0 * (torch.nn.functional.linear(torch.nn.functional.linear(x0, layer_v),
                                              layer_w) + model.mlp.cross.bias[0]) + x0
        hidden = model.mlp.mlp(x1)
    torch.testing.assert_close(out.features["last_hidden"], hidden)
    torch.testing.assert_close(out.logits, model.heads(hidden))
    assert out.features["last_hidden"].shape == (16, 5)

    register_student("test_flat")(lambda spec, cfg, width: nn.Flatten(0))
    with pytest.raises(ConfigError) as e:
        StudentModel(data.spec, StudentConfig(name="g1", arch="test_flat", sharding="none"))
    assert str(e.value) == ("groups.g1.arch = 'test_flat': forward(x [B, 26]) must return "
                            "last_hidden, a float [B, d] tensor; got a (52,) tensor")
    with pytest.raises(ConfigError, match=r"^groups\.g2\.arch: unknown 'nope'; registered: "
                                          r"\['dcn', 'mlp'"):
        StudentModel(data.spec, StudentConfig(name="g2", arch="nope", sharding="none"))


PLUGIN = '''
"""A team's own teacher tower: embeddings and dense features -> a 2-layer MLP."""
import torch
from torch import nn

from recdistill.teacher.outputs import TeacherOutputs
from recdistill.teacher.registry import register_student, register_teacher


class TinyTower(nn.Module):
    def __init__(self, spec, cfg, n_sparse):
        super().__init__()
        width = cfg.arch_params.get("width", 8)
        self.tasks = spec.tasks
        self.mlp = nn.Sequential(
            nn.Linear(n_sparse * cfg.embedding_dim + len(spec.dense), width), nn.ReLU())
        self.head = nn.Linear(width, len(spec.tasks))

    def forward(self, emb, dense):
        hidden = self.mlp(torch.cat([emb, dense], dim=1))
        return TeacherOutputs(logits=self.head(hidden), features={"last_hidden": hidden})


register_teacher("tiny_mlp")(TinyTower)


@register_student("two_layer")
class TwoLayer(nn.Module):
    """A student tower of the team's: x -> tanh layer -> relu layer."""

    def __init__(self, spec, cfg, in_width):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_width, 16), nn.Tanh(), nn.Linear(16, 6),
                                 nn.ReLU())

    def forward(self, x):
        return self.net(x)
'''


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_plugin_teacher_distilled_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "my_teacher.py").write_text(PLUGIN)
    data = toml_dataset(tmp_path)
    config = tmp_path / "distill.toml"
    # one teacher (no committee), SMALL's [teacher] with the plugin's arch
    config.write_text("teachers = []\n" + SMALL
                      + 'arch = "tiny_mlp"\narch_params = { width = 12 }\n'
                      + textwrap.dedent(f'''
        [teacher_group]
        batch_size = 64
        checkpoint = "{tmp_path / 'teacher'}"
        [[groups]]
        name = "baseline"
        losses = [{{ name = "hard_label", weight = 1.0 }}]
        [[groups]]
        name = "feat_kd"
        arch = "two_layer"
        sharding = "none"
        adapters = {{ last_hidden = "last_hidden" }}
        losses = [{{ name = "hard_label", weight = 1.0 }},
                  {{ name = "feature_kd", weight = 0.3 }}]
        '''))
    p = subprocess.run([str(RECDISTILL), "distill", "--plugin", "my_teacher", "--config",
                        str(config), "--data", str(data), "--passes", "2", "--report",
                        str(tmp_path / "report.json"), "--no-progress"],
                       cwd=tmp_path, capture_output=True, text=True, env=job_env(), timeout=380)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    # the plugin's teacher, trained first (a Ray task, which imported the plugin too)
    # and served by the teacher actor (another process that did); feat_kd adapted its
    # last_hidden (width 12)
    assert report["config"]["teachers"] == [] and \
        report["config"]["teacher"]["arch"] == "tiny_mlp"
    assert json.loads((tmp_path / "teacher_report.json").read_text())["config"]["teacher"][
        "arch_params"] == {"width": 12}
    assert report["students"]["feat_kd"]["examples_trained"] == 2 * 400
    assert report["teacher"]["test"]["income"]["auc"] > 0.6
    assert report["students"]["feat_kd"]["kd"] == ["feature_kd"]
    # the plugin's student tower (16 -> 6 wide): its artifact scored by predict (which
    # imports the plugin) gives the report's test metrics
    assert report["config"]["groups"][1]["student"]["arch"] == "two_layer"
    p = subprocess.run([str(RECDISTILL), "predict", "--plugin", "my_teacher", "--student",
                        str(tmp_path / "students" / "feat_kd"), "--data", str(data),
                        "--report", str(tmp_path / "scored.json")],
                       cwd=tmp_path, capture_output=True, text=True, env=job_env(), timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    scored = json.loads((tmp_path / "scored.json").read_text())
    assert scored["metrics"]["income"]["auc"] == pytest.approx(
        report["students"]["feat_kd"]["test"]["income"]["auc"], abs=1e-5)
    # without the plugin the same config fails in one line before anything runs
    p = subprocess.run([str(RECDISTILL), "distill", "--config", str(config), "--data",
                        str(data), "--passes", "1", "--report", str(tmp_path / "r2.json"),
                        "--teacher-checkpoint", str(tmp_path / "other")],
                       cwd=tmp_path, capture_output=True, text=True, env=job_env(), timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith(
        "error: teacher.arch: unknown 'tiny_mlp'; registered: ['builtin', ")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torchrec_dlrm_teaches_on_movielens(tmp_path: Path) -> None:
    from recdistill.jobs.train_teacher import main
    rc = main(["--arch", "torchrec_dlrm", "--epochs", "2", "--embedding-dim", "16",
               "--checkpoint", str(tmp_path / "t"), "--report", str(tmp_path / "r.json")])
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["config"]["teacher"]["arch"] == "torchrec_dlrm"
    # a real ranking model: MovieLens' `like` well above chance after 2 epochs (the
    # built-in teacher reaches ~0.79 on it)
    assert report["test"]["like"]["auc"] > 0.75
