"""Training schemes: each scheme flag selects exactly its loss terms, distillation needs a frozen teacher, MF
resumes exactly, pseudo labels and non-synthetic datasets train, evaluate honours `ignore_in_miou`."""
from dataclasses import replace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from etc_nb.data import camvid, get_dataset, video, vw300mask
from etc_nb.data.synthetic import generate_benchmark
from etc_nb.evaluate import evaluate
from etc_nb.losses import segmentation_loss
from etc_nb.models import create_model
from etc_nb.checkpoint import load_teacher
from etc_nb.config import SCHEME_TERMS, TrainConfig, parse_scheme
from etc_nb.loader import batch_keys, collate, training_set
from etc_nb.objective import training_loss
from etc_nb.train import TrainState, train

torch.set_num_threads(1)
LAMS = dict(lam=0.5, lam_pf=2.0, lam_mf=3.0, lam_sf=4.0)          # distinct weights: the sum can be checked
WEIGHT = {"tl": 0.5, "pf": 2.0, "mf": 3.0, "mf_reg": 3.0, "sf": 4.0}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return generate_benchmark(tmp_path_factory.mktemp("synth"), n_train=3, n_val=1, frames=5, size=(32, 48))


@pytest.fixture(scope="module")
def base(synth):
    return TrainConfig(root=str(synth), batch_size=2, crop=(32, 32), steps=2, ckpt_every=1, seed=3, **LAMS)


@pytest.fixture(scope="module")
def teacher(base, tmp_path_factory):
    "A teacher checkpoint written by `train`: another architecture (HRNet, stride 4, 270 feature channels)."
    return str(train(replace(base, model="hrnet_w18s", steps=0), tmp_path_factory.mktemp("teacher"), progress=False))


def _batch(cfg, step=0):
    ds = training_set(cfg)
    return collate([ds[k] for k in batch_keys(len(ds), cfg.batch_size, cfg.seed, step)])


def test_parse_scheme_and_its_errors():
    assert parse_scheme("baseline") == frozenset()
    assert parse_scheme("tl+pf+mf+pl") == {"tl", "pf", "mf", "pl"}
    assert set(SCHEME_TERMS) == {"sf", "pf", "mf", "tl", "pl", "rs"}
    with pytest.raises(ValueError, match="unknown terms.*'xx'.*mf, pf, pl, rs, sf, tl"):
        parse_scheme("tl+xx")
    with pytest.raises(ValueError, match="tl\\+rs"):                  # random gaps are the scheme term 'rs'
        TrainConfig(scheme="tl", random_gap=True)
    assert TrainConfig(scheme="tl+rs").random_gap and not TrainConfig(scheme="tl").random_gap


@pytest.mark.parametrize("scheme, terms", [
    ("baseline", set()), ("tl", {"tl"}), ("tl+pf", {"tl", "pf"}), ("pf+rs", {"pf"}), ("mf", {"mf", "mf_reg"}),
    ("sf", {"sf"}), ("tl+pf+mf+sf", {"tl", "pf", "mf", "mf_reg", "sf"})])
def test_scheme_flags_select_exactly_their_losses(base, teacher, scheme, terms):
    cfg = replace(base, scheme=scheme, teacher=teacher)
    st = TrainState.create(cfg)
    calls = []                                                      # every frame of a step in one student forward
    st.model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    losses = training_loss(st.model, _batch(cfg), cfg, teacher=st.teacher, mf=st.mf)
    assert set(losses) == {"loss", "ce"} | terms
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"] = losses["loss"].detach()
    assert float(losses["loss"]) == pytest.approx(float(losses["ce"]) + sum(WEIGHT[k] * float(losses[k]) for k in terms),
                                                  rel=1e-5)
    frames = 3 if "mf" in terms else 2 if terms & {"tl", "pf"} else 1
    assert calls == [cfg.batch_size * frames]


def test_train_log_has_one_column_per_active_term(base, teacher, tmp_path):
    train(replace(base, scheme="tl+pf", teacher=teacher), tmp_path, progress=False)
    log = pd.read_csv(tmp_path / "train_log.csv")
    assert set(log.columns) == {"epoch", "step", "lr", "seconds", "loss", "ce", "tl", "pf", "data_s", "compute_s"}
    assert (log[["tl", "pf"]] > 0).all().all()


@pytest.mark.parametrize("scheme", ["pf", "mf", "sf", "tl+pf+mf+pl"])
def test_distillation_without_teacher_is_an_error(base, scheme):
    with pytest.raises(ValueError, match="teacher"):
        replace(base, scheme=scheme, pseudo_root="x")


def test_teacher_errors(base, teacher):
    cfg = replace(base, scheme="tl+pf", teacher=teacher)
    with pytest.raises(ValueError, match="need a teacher"):
        training_loss(create_model("pspnet18"), _batch(cfg), cfg)
    with pytest.raises(ValueError, match="teacher.*num_classes=19, expected 11"):
        load_teacher(teacher, num_classes=11)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        TrainState.create(replace(cfg, teacher=str(cfg.root) + "/missing.pt"))


def test_teacher_is_frozen_and_unchanged_by_training(base, teacher):
    st = TrainState.create(replace(base, scheme="tl+pf+mf+sf", teacher=teacher))
    before = {k: v.clone() for k, v in st.teacher.state_dict().items()}
    assert any("running_mean" in k for k in before)                # batch-norm statistics: they would move in train mode
    student = [p.detach().clone() for p in st.model.parameters()]
    for step in range(2):
        st.step(_batch(st.cfg, step))
    assert not st.teacher.training
    assert all(p.grad is None and not p.requires_grad for p in st.teacher.parameters())
    assert all(torch.equal(v, st.teacher.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(a, b) for a, b in zip(student, st.model.parameters()))


def test_resume_with_mf_is_exact(base, teacher, tmp_path):
    cfg = replace(base, scheme="mf+rs", teacher=teacher, steps=3)
    train(cfg, tmp_path / "full", progress=False)
    train(cfg, tmp_path / "split", stop_after=2, progress=False)
    train(cfg, tmp_path / "split", progress=False)
    full, split = (torch.load(tmp_path / r / "last.pt", weights_only=False) for r in ("full", "split"))
    init = TrainState.create(cfg).mf.state_dict()
    assert any(not torch.equal(init[k], full["mf"][k]) for k in init)      # the ConvLSTM trained ...
    for part in ("mf", "model"):                                           # ... and resumed exactly, as the student
        assert all(torch.equal(full[part][k], split[part][k]) for k in full[part]), part
    timing = ["seconds", "data_s", "compute_s"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "full/train_log.csv").drop(columns=timing),
                                  pd.read_csv(tmp_path / "split/train_log.csv").drop(columns=timing))


def test_pl_without_pseudo_root_is_an_error(base, tmp_path):
    with pytest.raises(ValueError, match="pseudo_root"):
        replace(base, scheme="tl+pl")
    with pytest.raises(FileNotFoundError, match="pseudo"):
        training_set(replace(base, scheme="pl", pseudo_root=str(tmp_path)))          # an empty folder


def test_pl_trains_unlabelled_video_on_pseudo_labels(tmp_path):
    root = video.write_fixture(tmp_path / "vids", size=(24, 32), frames=6)
    seqs = get_dataset("video", root, mode="sequence")
    walk = [k for k in seqs.snippets if k[0] == "walk"][0]
    for n in range(1, 5):                                          # frames 1..4 of one of the two videos
        p = tmp_path / "pl" / seqs.pseudo_file(walk, n)
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), np.full((24, 32), n % 3, np.uint8))
    cfg = TrainConfig(dataset="video", root=str(root), num_classes=3, scheme="tl+pl", pseudo_root=str(tmp_path / "pl"),
                      flow="dis_ultrafast", gap=1, batch_size=2, crop=(24, 32), scale=(1, 1), steps=2)
    with pytest.warns(UserWarning, match="pseudo labels for 4 of the 12 frames"):
        ds = training_set(cfg)
    assert len(ds) == 4 and sorted(ds[i]["label"].unique().tolist() for i in range(4)) == [[0], [1], [1], [2]]
    with pytest.warns(UserWarning):
        train(cfg, tmp_path / "run", progress=False)
    log = pd.read_csv(tmp_path / "run/train_log.csv")
    assert {"ce", "tl"} <= set(log.columns) and np.isfinite(log[["loss", "ce", "tl"]].to_numpy()).all()


def test_train_and_evaluate_on_camvid(tmp_path):
    root = camvid.write_fixture(tmp_path / "camvid", size=(24, 32))
    cfg = TrainConfig(dataset="camvid", root=str(root), num_classes=11, scheme="tl+rs", flow="dis_ultrafast",
                      gap=2, batch_size=2, crop=(24, 32), steps=2)
    ckpt = train(cfg, tmp_path / "run", progress=False)
    assert np.isfinite(pd.read_csv(tmp_path / "run/train_log.csv")[["loss", "ce", "tl"]].to_numpy()).all()
    with pytest.raises(ValueError, match="has 11 classes.*num_classes=11"):
        train(replace(cfg, num_classes=19), tmp_path / "run19", progress=False)
    with pytest.raises(ValueError, match="ground-truth flow"):
        training_set(replace(cfg, flow="gt"))
    model = torch.load(ckpt, weights_only=False)
    net = create_model("pspnet18", num_classes=11)
    net.load_state_dict(model["model"])
    res = evaluate(net, root, "val", dataset="camvid", progress=False)
    assert 0 <= res["mIoU"] <= 100 and 0 <= res["TC_dis"] <= 100 and "TC_gt" not in res
    assert res["mIoU"] == res["mIoU_all"]                           # CamVid leaves no class out


class _Fixed(torch.nn.Module):
    "Returns one-hot logits of a fixed label sequence, frame after frame."
    def __init__(self, labels, K):
        super().__init__()
        self.labels, self.K, self.i = labels, K, 0

    def forward(self, x):
        lab = self.labels[self.i:self.i + len(x)]
        self.i += len(x)
        return {"logits": F.one_hot(lab, self.K).permute(0, 3, 1, 2).float()}


def test_evaluate_honours_ignore_in_miou(tmp_path):
    root = vw300mask.write_fixture(tmp_path / "vw")
    labels = get_dataset("vw300mask", root, "val", mode="sequence")[0]["labels"]
    pred = labels.clone()
    pred[labels == 2] = 1                                           # eyes predicted as skin
    pred[(labels == 0) & (torch.arange(labels.shape[-1]) < 3)] = 4  # a strip of background predicted as inner mouth
    res = evaluate(_Fixed(pred, 5), root, "val", dataset="vw300mask", flows=(), progress=False)
    t, p = labels.numpy().ravel(), pred.numpy().ravel()
    iou = np.array([((t == c) & (p == c)).sum() / ((t == c) | (p == c)).sum() for c in range(5)])
    assert iou[2] == 0 and 0 < iou[0] < 1 and 0 < iou[4] < 1
    assert res["mIoU"] == pytest.approx(100 * iou[1:].mean())
    assert res["mIoU_all"] == pytest.approx(100 * iou.mean())
    assert res["ignore_in_miou"] == [0]
    np.testing.assert_allclose(res["per_class_iou"], 100 * iou)


def test_segmentation_loss_with_a_tuple_of_auxiliary_heads():
    torch.manual_seed(0)
    net = create_model("bisenetv2", num_classes=3).train()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert isinstance(out["aux"], tuple) and len(out["aux"]) > 1
    label = torch.randint(0, 3, (2, 32, 32))
    label[:, :4] = 255
    up = lambda z: F.interpolate(z, size=(32, 32), mode="bilinear", align_corners=False)
    ce = lambda z: F.cross_entropy(up(z), label, ignore_index=255)
    want = ce(out["logits"]) + 0.4 * sum(ce(a) for a in out["aux"])
    assert float(segmentation_loss(out, label, aux_weight=0.4)) == pytest.approx(float(want), rel=1e-6)
    assert float(segmentation_loss(out, label, aux_weight=0)) == pytest.approx(float(ce(out["logits"])), rel=1e-6)
