"""Tests of offline pseudo labels (etc_nb.pseudo: tta_probs, pseudo_label, write_pseudo_labels) and of the
ground-truth + pseudo-label datasets (CityscapesVideo / FrameSequences with pseudo_root): analytic TTA cases,
an independent re-computation of the TTA average, the files written and resumed, and the errors."""
import json
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import etc_nb.pseudo as pseudo
from etc_nb.data import get_dataset
from etc_nb.data import video as video_data
from etc_nb.data.augment import to_tensor
from etc_nb.data.cityscapes import CityscapesVideo, write_fixture
from etc_nb.data.video import Video
from etc_nb.evaluate import predict
from etc_nb.io import read_image, read_label
from etc_nb.models import create_model
from etc_nb.pseudo import PL_SCALES, pseudo_label, tta_probs, write_pseudo_labels
from etc_nb.teachers import Teacher

torch.set_num_threads(1)


class Pointwise(nn.Module):
    "A 1×1 convolution: per-pixel logits, exactly equivariant to mirroring."
    def __init__(self, classes=19, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, classes, 1)
        with torch.no_grad():
            self.conv.weight *= 8                                # confident on some pixels, not on others

    def forward(self, x):
        return {"logits": self.conv(x)}


class Local(nn.Module):
    "A 3×3 convolution at stride 2 (not equivariant to anything): logits at half resolution."
    def __init__(self, classes=4):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, classes, 3, stride=2, padding=1)

    def forward(self, x):
        return {"logits": self.conv(x)}


class Constant(nn.Module):
    "Logits that ignore the image: one fixed score per class, at stride 8."
    def __init__(self, scores):
        super().__init__()
        self.scores = nn.Parameter(torch.tensor(scores))

    def forward(self, x):
        B, _, H, W = x.shape
        return {"logits": self.scores[None, :, None, None].expand(B, -1, max(H // 8, 1), max(W // 8, 1))}


class LeftThird(Teacher):
    "A teacher that calls the left third of every frame 'person', whatever it shows (so not flip-equivariant)."
    name, classes = "left_third", ("background", "person")

    def __init__(self, found_when_flipped=True):
        self.found_when_flipped, self.calls = found_when_flipped, 0

    def predict(self, frames, video):
        self.calls += 1
        T, (H, W) = len(frames), frames[0].shape[:2]
        person = np.zeros((T, H, W), np.float32)
        person[:, :, : W // 3] = 1
        found = np.full(T, self.calls == 1 or self.found_when_flipped)
        return np.stack([1 - person, person], 1), found


@pytest.fixture(scope="module")
def cs(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("cs") / "cityscapes")


def unlabelled_frames(root):
    "(city, seq, frame) of every frame of the fixture's train split without a gtFine file, from the file names."
    frames = {tuple(p.name.split("_")[:3]) for p in (root / "leftImg8bit_sequence/train").rglob("*_leftImg8bit.png")}
    labelled = {tuple(p.name.split("_")[:3]) for p in (root / "gtFine/train").rglob("*_gtFine_label*.png")}
    return sorted(frames - labelled)


# ---------------------------------------------------------------- pseudo_label / tta_probs

def test_tta_off_is_the_plain_prediction():
    net = create_model("pspnet18", num_classes=19)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 48)
    label, conf = pseudo_label(net, x, scales=(1.0,), flip=False, threshold=0)
    assert label.dtype == torch.int64 and torch.equal(label, predict(net, x))
    logits = F.interpolate(net(x)["logits"], size=(32, 48), mode="bilinear", align_corners=False)
    assert torch.allclose(conf, logits.softmax(1).amax(1), atol=1e-6)
    one, one_conf = pseudo_label(net, x[1], scales=(1.0,), flip=False, threshold=0)
    assert torch.equal(one, label[1]) and one_conf.shape == (32, 48)


def test_flip_changes_nothing_for_a_flip_equivariant_model():
    x = torch.randn(3, 3, 20, 30)
    plain, _ = tta_probs(Pointwise(), x, scales=(1.0,), flip=False)
    both, found = tta_probs(Pointwise(), x, scales=(1.0,), flip=True)
    assert torch.allclose(both, plain, atol=1e-6) and found.all()
    assert torch.equal(pseudo_label(Pointwise(), x, scales=(1.0,), threshold=0)[0], predict(Pointwise(), x))


def test_full_tta_of_an_image_independent_model_is_its_softmax():
    scores = [0.3, 2.0, -1.0, 1.2]
    label, conf = pseudo_label(Constant(scores), torch.randn(1, 3, 37, 45), scales=PL_SCALES, flip=True, threshold=0)
    assert label.shape == (1, 37, 45) and (label == 1).all()
    assert torch.allclose(conf, torch.tensor(scores).softmax(0).max().expand(1, 37, 45), atol=1e-6)


def test_tta_average_matches_an_independent_computation():
    model, x = Local(), torch.randn(2, 3, 27, 35)
    members = []
    for s in (0.5, 1.0, 1.5):
        xs = F.interpolate(x, size=(round(27 * s), round(35 * s)), mode="bilinear", align_corners=False)
        for mirrored in (False, True):
            inp = torch.flip(xs, dims=[3]) if mirrored else xs
            logits = F.interpolate(model(inp)["logits"], size=(27, 35), mode="bilinear", align_corners=False)
            p = torch.softmax(logits, dim=1)
            members.append(torch.flip(p, dims=[3]) if mirrored else p)
    expected = torch.stack(members).mean(0).detach()
    probs, _ = tta_probs(model, x, scales=(0.5, 1.0, 1.5), flip=True)
    assert probs.shape == (2, 4, 27, 35) and torch.allclose(probs, expected, atol=1e-5)
    assert torch.allclose(probs.sum(1), torch.ones(2, 27, 35), atol=1e-5)


def test_confidence_threshold_ignores_pixels():
    model, x = Local(), torch.randn(1, 3, 40, 40)
    probs, _ = tta_probs(model, x, scales=(1.0, 0.5))
    for threshold in (0.0, 0.35, 0.5, 1.0):
        label, conf = pseudo_label(model, x, scales=(1.0, 0.5), threshold=threshold)
        assert torch.allclose(conf, probs.amax(1))
        assert torch.equal(label == 255, conf < threshold)
        assert torch.equal(label[label != 255], probs.argmax(1)[label != 255])
    assert 0 < (pseudo_label(model, x, scales=(1.0, 0.5), threshold=0.35)[0] == 255).sum() < 1600
    label, _ = pseudo_label(model, x, scales=(1.0, 0.5), threshold=0.35, ignore_index=99)
    assert (label == 99).any() and not (label == 255).any()


def test_teacher_predictions_are_mirrored_back_and_missing_subjects_ignored():
    x = torch.zeros(2, 3, 12, 18)
    probs, found = tta_probs(LeftThird(), x)                                # default for a teacher: flip only
    assert found.all()
    # the mirrored pass says "person" on the right third once mirrored back: each third gets one vote of two
    assert torch.allclose(probs[:, 1, :, :6], torch.full((2, 12, 6), 0.5))
    assert torch.allclose(probs[:, 1, :, 12:], torch.full((2, 12, 6), 0.5))
    assert torch.equal(probs[:, 0, :, 6:12], torch.ones(2, 12, 6))
    # a pass that does not find the subject does not vote
    label, conf = pseudo_label(LeftThird(found_when_flipped=False), x)
    assert (label[:, :, :6] == 1).all() and (label[:, :, 6:] == 0).all() and (conf == 1).all()
    label, conf = pseudo_label(LeftThird(), x, flip=False)
    assert (label[:, :, :6] == 1).all()
    with pytest.raises(ValueError, match="resizes every frame"):
        tta_probs(LeftThird(), x, scales=(0.5, 1.0))


def test_pseudo_label_errors():
    with pytest.raises(ValueError, match="images: expected"):
        pseudo_label(Pointwise(), torch.zeros(5, 20, 30))
    with pytest.raises(ValueError, match="scales"):
        pseudo_label(Pointwise(), torch.zeros(3, 20, 30), scales=(1.0, -0.5))
    with pytest.raises(ValueError, match="threshold"):
        pseudo_label(Pointwise(), torch.zeros(3, 20, 30), threshold=2)


# ---------------------------------------------------------------- write_pseudo_labels + combined datasets

def test_write_labels_exactly_the_unlabelled_frames_resumes_and_feeds_the_dataset(cs, tmp_path, monkeypatch):
    out, model = tmp_path / "pl", Pointwise()
    calls, real = [], pseudo.tta_probs

    def interrupted(*a, **kw):                                   # the run dies on its third batch
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(pseudo, "tta_probs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_pseudo_labels(model, cs, "train", out, scales=(1.0, 0.75), batch_size=2, progress=False)
    assert json.loads((out / "pseudo_labels_train.json").read_text())["complete"] is False
    assert len(list(out.rglob("*_labelTrainIds.png"))) == 4
    monkeypatch.setattr(pseudo, "tta_probs", real)
    done = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    man = write_pseudo_labels(model, cs, "train", out, scales=(1.0, 0.75), batch_size=2, progress=False)
    assert (man["written"], man["skipped"], man["pseudo_frames"], man["gt_frames"]) == (8, 4, 12, 2)
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())       # resumed: nothing rewritten

    expected = unlabelled_frames(cs)
    assert len(expected) == 12
    for kind in ("labelTrainIds", "confidence"):
        got = sorted(tuple(p.name.split("_")[:3]) for p in out.rglob(f"*_gtFine_{kind}.png"))
        assert got == expected

    # each file holds what pseudo_label gives for that frame, computed here from the image file
    labels, confs = [], []
    for city, seq, frame in expected:
        img = read_image(cs / f"leftImg8bit_sequence/train/{city}/{city}_{seq}_{frame}_leftImg8bit.png")
        lab, conf = pseudo_label(model, to_tensor(img), scales=(1.0, 0.75))
        stem = out / f"gtFine/train/{city}/{city}_{seq}_{frame}_gtFine_"
        assert np.array_equal(read_label(f"{stem}labelTrainIds.png"), lab.numpy())
        assert np.array_equal(read_label(f"{stem}confidence.png"), np.round(conf.numpy() * 255))
        labels.append(lab.numpy()); confs.append(np.round(conf.numpy() * 255) / 255)
    labels, confs = np.stack(labels), np.stack(confs)
    assert man["ignored_fraction"] == pytest.approx((labels == 255).mean())
    assert man["mean_confidence"] == pytest.approx(confs.mean())
    kept = labels[labels != 255]
    assert man["class_fraction"] == pytest.approx(np.bincount(kept, minlength=19) / kept.size, abs=1e-6)
    assert (man["scales"], man["flip"], man["threshold"], man["teacher"], man["complete"]) == \
        ([1.0, 0.75], True, 0.5, "Pointwise", True)

    # a fresh run reports the same statistics
    fresh = write_pseudo_labels(model, cs, "train", tmp_path / "fresh", scales=(1.0, 0.75), progress=False)
    assert {k: v for k, v in fresh.items() if k not in ("written", "skipped", "label_files")} == \
        {k: v for k, v in man.items() if k not in ("written", "skipped", "label_files")}

    # the combined dataset: ground truth kept, every other frame pseudo-labelled
    gt_only = get_dataset("cityscapes", cs, "train")
    both = get_dataset("cityscapes", cs, "train", pseudo_root=out)
    assert (len(gt_only), len(both)) == (2, 14)
    names = {both[i]["name"]: bool(both[i]["pseudo"]) for i in range(len(both))}
    assert {n for n, p in names.items() if p} == {"_".join(f) for f in expected}
    assert {n for n, p in names.items() if not p} == {gt_only[0]["name"], gt_only[1]["name"]}
    gt_item = both[[i for i in range(14) if both[i]["name"] == gt_only[0]["name"]][0]]
    assert torch.equal(gt_item["label"], gt_only[0]["label"])
    first = both[0]
    assert torch.equal(first["label"], torch.from_numpy(labels[0]).long())      # 255 stays ignored
    tri = get_dataset("cityscapes", cs, "train", mode="triplet", gap=2, flow="gt", pseudo_root=out)
    assert len(tri) == 14 and tri[(0, 3)]["pseudo"] and tri[(0, 3)]["frames"].shape == (3, 3, 24, 32)
    seq = get_dataset("cityscapes", cs, "train", mode="sequence", pseudo_root=out)[0]
    assert seq["labelled"].tolist() == [False] * 3 + [True] + [False] * 3
    assert seq["pseudo"].tolist() == [True] * 3 + [False] + [True] * 3

    # other settings on the same folder are refused; so is a model with the wrong number of classes
    with pytest.raises(ValueError, match="other settings"):
        write_pseudo_labels(model, cs, "train", out, scales=(1.0,), progress=False)
    with pytest.raises(ValueError, match="predicts 5 classes"):
        write_pseudo_labels(Pointwise(5), cs, "train", tmp_path / "five", progress=False)


def test_pseudo_root_errors(cs, tmp_path):
    with pytest.raises(FileNotFoundError, match="pseudo_root not found.*gtFine_labelTrainIds.png"):
        CityscapesVideo(cs, pseudo_root=tmp_path / "missing")
    other = tmp_path / "other_layout" / "train" / "fixcity"                     # FrameSequences' layout
    other.mkdir(parents=True)
    (other / "fixcity_000000_000000_leftImg8bit_label.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no pseudo label for any of the 12 frames.*gtFine"):
        CityscapesVideo(cs, pseudo_root=tmp_path / "other_layout")


def test_datasets_pickle_with_flows_and_pseudo_labels(cs, tmp_path):
    out = tmp_path / "pl"
    write_pseudo_labels(Constant([0.0, 5.0] + [-1.0] * 17), cs, "train", out, scales=(1.0,), flip=False,
                        progress=False)
    for flow in ("gt", "dis_ultrafast"):
        ds = CityscapesVideo(cs, mode="triplet", flow=flow, cache_dir=tmp_path / "cache", pseudo_root=out)
        again = pickle.loads(pickle.dumps(ds))
        a, b = ds[(4, 1)], again[(4, 1)]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k]))
        assert a["pseudo"] and (a["label"] == 1).all()
    vids = video_data.write_fixture(tmp_path / "videos")
    v = Video(vids, mode="triplet", flow="dis_ultrafast")
    assert torch.equal(pickle.loads(pickle.dumps(v))[(3, 0)]["flows"], v[(3, 0)]["flows"])


def test_video_pseudo_labels_in_the_common_layout(tmp_path):
    vids = video_data.write_fixture(tmp_path / "videos")
    out = tmp_path / "pl"
    man = write_pseudo_labels(LeftThird(), vids, "", out, dataset="video", batch_size=4, progress=False)
    assert (man["pseudo_frames"], man["gt_frames"], man["teacher"], man["scales"]) == (12, 0, "left_third", [1.0])
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*_label.png")) == \
        [f"clip/{i:06d}_label.png" for i in range(6)] + [f"walk/{i}_label.png" for i in range(6)]
    ds = Video(vids, mode="frame", pseudo_root=out)
    item = ds[7]
    assert item["pseudo"] and item["name"] == "walk/1"
    # left third: 0.5/0.5 (tie → background) — the mirrored pass voted for the right third
    assert item["label"].unique().tolist() == [0]
    plain = write_pseudo_labels(LeftThird(), vids, "", tmp_path / "noflip", dataset="video", flip=False,
                                progress=False)
    assert plain["class_fraction"] == pytest.approx([22 / 32, 10 / 32])            # W // 3 = 10 of 32 columns
