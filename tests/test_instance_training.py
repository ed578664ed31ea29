"""Training an instance model (SOLOv2) through `etc_nb.train.train` on a YouTube-VIS tree: the instance objective
with the temporal loss, checkpoints that rebuild the model with its constructor arguments, and the errors of
configs an instance model cannot train with."""

from __future__ import annotations

import pytest
import torch

from etc_nb.checkpoint import load_checkpoint
from etc_nb.config import TrainConfig
from etc_nb.data.ytvis import write_fixture
from etc_nb.train import train

torch.set_num_threads(1)
GRIDS = [8, 6, 4, 3, 2]     # grids for 48×64 frames (the release's 40..12 are for ~800 px)


def _cfg(root, **kw) -> TrainConfig:
    base = dict(dataset="ytvis", root=str(root), model="solov2_light_r18", model_kw={"num_grids": GRIDS},
                num_classes=3, scheme="tl", flow="dis", crop=None, scale=(1.0, 1.0), steps=3, batch_size=2, lam=1.0)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("ytvis") / "ytvis", size=(48, 64))


def test_trains_with_temporal_loss_and_reloads(root, tmp_path):
    ckpt = train(_cfg(root), tmp_path / "run", progress=False, workers=0)
    model, meta = load_checkpoint(ckpt)
    assert model.num_grids == tuple(GRIDS)                      # model_kw came back from the checkpoint
    (row,) = meta["history"]
    assert {"cls", "mask", "tl"} <= set(row) and row["tl"] > 0 and all(map(lambda v: v == v, row.values()))
    out = model(torch.randn(2, 3, 48, 64))
    assert len(out) == 2 and out[0]["masks"].shape[-2:] == (48, 64)
    assert all(((o["labels"] >= 0) & (o["labels"] < 3)).all() for o in out)
    # resuming the finished run trains nothing and returns the same checkpoint
    before = torch.load(ckpt, weights_only=False)["model"]
    train(_cfg(root), tmp_path / "run", progress=False, workers=0)
    after = torch.load(ckpt, weights_only=False)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_baseline_has_no_temporal_term(root, tmp_path):
    ckpt = train(_cfg(root, scheme="baseline", steps=2), tmp_path / "b", progress=False, workers=0)
    (row,) = load_checkpoint(ckpt)[1]["history"]
    assert "tl" not in row and row["mask"] > 0


def test_category_count_is_checked(root, tmp_path):
    # the fixture has 3 categories (person, dog, surfboard) and a background class that SOLOv2 does not predict
    with pytest.raises(ValueError, match=r"has 3 categories \('person', 'dog', 'surfboard'\); set num_classes=3"):
        train(_cfg(root, num_classes=4), tmp_path / "c", progress=False, workers=0)
    assert not (tmp_path / "c").exists()


def test_distillation_terms_are_refused(root, tmp_path, monkeypatch):
    cfg = _cfg(root, scheme="tl+pf", teacher="any.pt")
    monkeypatch.setattr("etc_nb.train.load_teacher", lambda *a, **k: None)   # no teacher is needed to fail
    with pytest.raises(ValueError, match="instance model trains with rs and tl only, not pf"):
        train(cfg, tmp_path / "d", progress=False, workers=0)


def test_model_kw_must_be_a_dict():
    with pytest.raises(ValueError, match="model_kw: expected a dict"):
        TrainConfig(model_kw="num_grids=8")
    assert TrainConfig(model_kw={"num_grids": (8, 6)}) == TrainConfig.from_dict({"model_kw": {"num_grids": [8, 6]}})


def test_init_weights_start_the_model_from_another_class_count(root, tmp_path):
    from etc_nb.models import create_model
    torch.manual_seed(1)
    coco = create_model("solov2_light_r18", num_classes=80, num_grids=GRIDS)    # stands in for COCO weights
    torch.save({"state_dict": coco.state_dict()}, tmp_path / "coco.pth")
    ckpt = train(_cfg(root, steps=0, init_weights=str(tmp_path / "coco.pth")), tmp_path / "i", progress=False, workers=0)
    model, _ = load_checkpoint(ckpt)
    assert torch.equal(model.backbone.conv1.weight, coco.backbone.conv1.weight)
    assert torch.equal(model.mask_head.conv_kernel.weight, coco.mask_head.conv_kernel.weight)
    assert model.mask_head.conv_cls.weight.shape[0] == 3                     # the class layer: initialised afresh
