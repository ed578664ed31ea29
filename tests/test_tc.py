"Tests of the fast TC counting (etc_nb.metrics backends, etc_nb.warp.warp_labels), etc_nb.tc.video_tc and `etc-nb tc`."
import json
import math

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import etc_nb.flow
from etc_nb.cli import main
from etc_nb.flow import flow_to_tensor
from etc_nb.metrics import pair_confusions, temporal_consistency
from etc_nb.models import create_model
from etc_nb.tc import _pair_ids, tc_flow_cache, video_tc
from etc_nb.warp import warp_labels


# ---------------------------------------------------------------- slow reference

def slow_pair_confusions(preds, flows, K, ignore=255, masks=(), exclude_out_of_frame=True):
    """Per-pair confusions `(T-1,K,K)` written out pixel-list by pixel-list with numpy: float32 `x + dx`, round
    half to even, out-of-frame samples dropped (or read at the clamped border pixel), `np.add.at` counting."""
    T, H, W = preds.shape
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    out = np.zeros((T - 1, K, K), np.int64)
    for t in range(T - 1):
        xt = np.rint(xs + flows[t, 0].astype(np.float32))
        yt = np.rint(ys + flows[t, 1].astype(np.float32))
        inside = (xt >= 0) & (xt <= W - 1) & (yt >= 0) & (yt <= H - 1)   # NaN compares False: outside
        xc = np.nan_to_num(np.clip(xt, 0, W - 1)).astype(np.int64)
        yc = np.nan_to_num(np.clip(yt, 0, H - 1)).astype(np.int64)
        warped = preds[t + 1][yc, xc]
        keep = (preds[t] != ignore) & (warped != ignore)
        if exclude_out_of_frame:
            keep &= inside
        for m in masks:
            keep &= m[t]
        np.add.at(out[t], (preds[t][keep], warped[keep]), 1)
    return out


def random_case(T=4, H=37, W=53, K=19, seed=0):
    "Random labels with ignored pixels, flows mixing noise, exact .5 ties, large jumps out of the frame and NaN."
    rng = np.random.default_rng(seed)
    preds = rng.integers(0, K, (T, H, W))
    preds[rng.random(preds.shape) < 0.1] = 255
    flows = (rng.normal(size=(T - 1, 2, H, W)) * 4).astype(np.float32)
    ties = rng.random(flows.shape) < 0.2
    flows[ties] = rng.integers(-6, 7, ties.sum()) + 0.5
    flows[rng.random(flows.shape) < 0.02] = 1e6
    flows[:, :, 0, 0] = np.nan
    return preds, flows


# ---------------------------------------------------------------- exact counts

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_counts_equal_the_slow_reference(seed, backend):
    preds, flows = random_case(seed=seed)
    ref = slow_pair_confusions(preds, flows, 19)
    for p in (preds, preds.astype(np.uint8), torch.from_numpy(preds).to(torch.int16)):
        np.testing.assert_array_equal(pair_confusions(p, flows, 19, backend=backend).numpy(), ref)
    rng = np.random.default_rng(seed)
    visible, roi = rng.random((3, 37, 53)) > 0.3, rng.random((37, 53)) > 0.2
    ref = slow_pair_confusions(preds, flows, 19, masks=(visible, np.broadcast_to(roi, visible.shape)))
    got = pair_confusions(preds, flows, 19, occlusion=visible, valid=roi, backend=backend, chunk=2)
    np.testing.assert_array_equal(got.numpy(), ref)


@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_non_contiguous_predictions_without_ignored_pixels(backend):
    preds, flows = random_case(seed=5)
    preds[preds == 255] = 0                          # nothing to re-code: the input itself is read
    wide = torch.from_numpy(np.repeat(preds, 2, axis=2).astype(np.uint8))
    got = pair_confusions(wide[..., ::2], flows, 19, backend=backend)
    np.testing.assert_array_equal(got.numpy(), slow_pair_confusions(preds, flows, 19))


@pytest.mark.parametrize("backend", ["opencv", "torch"])
def test_border_clamping_equals_the_reference(backend):
    preds, flows = random_case(seed=3)
    flows[np.isnan(flows)] = 0          # NaN has no nearest border pixel
    ref = slow_pair_confusions(preds, flows, 19, exclude_out_of_frame=False)
    got = pair_confusions(preds, flows, 19, exclude_out_of_frame=False, backend=backend)
    np.testing.assert_array_equal(got.numpy(), ref)


def test_full_resolution_pair_equals_the_reference():
    rng = np.random.default_rng(4)
    preds = rng.integers(0, 19, (2, 1024, 2048), dtype=np.uint8)
    flows = (rng.normal(size=(1, 2, 1024, 2048)) * 8).astype(np.float32)
    np.testing.assert_array_equal(pair_confusions(preds, flows, 19).numpy(), slow_pair_confusions(preds, flows, 19))


def test_backend_choice_and_errors():
    preds, flows = random_case()
    with pytest.raises(ValueError, match="backend 'opencv' needs .* at most 255 classes"):
        pair_confusions(preds, flows, 300, backend="opencv")
    with pytest.raises(ValueError, match="backend: expected one of"):
        pair_confusions(preds, flows, 19, backend="numba")
    # more classes than uint8 holds: 'auto' falls back to the torch counting, same counts
    np.testing.assert_array_equal(pair_confusions(preds, flows, 300).numpy()[:, :19, :19],
                                  slow_pair_confusions(preds, flows, 19))


def test_warp_labels_fill_and_dtypes():
    g = torch.Generator().manual_seed(0)
    lbl = torch.randint(0, 5, (2, 9, 11), generator=g, dtype=torch.uint8)
    flow = torch.zeros(2, 2, 9, 11)
    flow[:, 0] = 3.0                                   # every pixel looks 3 to the right
    for x in (lbl, lbl.to(torch.int16), lbl.long()):  # remap, remap, gather
        out = warp_labels(x, flow, fill=7)
        assert out.dtype == x.dtype
        assert torch.equal(out[..., :8], x[..., 3:]) and (out[..., 8:] == 7).all()
        border = warp_labels(x, flow)
        assert torch.equal(border[..., 8:], x[..., 10:].expand(-1, -1, 3))


# ---------------------------------------------------------------- analytic TC of files

def write_video(folder, labels, size=None):
    "Frames (any content: flows come from the cache) and label PNGs `f{t}.png` for the label maps `labels`."
    (folder / "frames").mkdir(parents=True)
    (folder / "labels").mkdir()
    H, W = size or labels[0].shape
    for t, lab in enumerate(labels):
        Image.fromarray(np.full((H, W, 3), 30 * t, np.uint8)).save(folder / "frames" / f"f{t}.png")
        Image.fromarray(lab.astype(np.uint8)).save(folder / "labels" / f"f{t}.png")
    return folder / "frames", folder / "labels"


def put_flows(frames, cache_dir, flows):
    "Store `flows` `(T-1,H,W,2)` as the cached flows of `frames`."
    cache = tc_flow_cache(frames, cache_dir)
    for t, f in enumerate(flows):
        cache.put(*_pair_ids(t), f)


def test_shifted_labels_with_the_exact_flow_score_100(tmp_path):
    g = np.random.default_rng(0)
    H, W, shifts = 24, 32, [(3, -2), (-1, 4), (5, 0)]
    labels, flows = [g.integers(0, 6, (H, W))], []
    for dx, dy in shifts:
        labels.append(np.roll(labels[-1], (dy, dx), axis=(0, 1)))
        flows.append(np.broadcast_to(np.array([dx, dy], np.float32), (H, W, 2)))
    frames, lab_dir = write_video(tmp_path, labels)
    put_flows(frames, tmp_path / "cache", flows)
    for mode in ("pair", "global"):
        r = video_tc(frames, labels=lab_dir, cache_dir=tmp_path / "cache", mode=mode, num_classes=6, progress=False)
        assert r["TC"] == 100.0 and r["flows_computed"] == 0 and r["num_classes"] == 6
    # flows off by one pixel: no longer consistent
    put_flows(frames, tmp_path / "cache", [f + 1 for f in flows])
    assert video_tc(frames, labels=lab_dir, cache_dir=tmp_path / "cache", num_classes=6, progress=False)["TC"] < 50


def test_known_disagreement_gives_the_known_tc(tmp_path):
    # still frames; frame 1 relabels a 4x8 block of class 0 as class 2 (of 3 classes, 16x16 pixels)
    a = np.zeros((16, 16), np.uint8)
    a[:, 8:] = 1
    b = a.copy()
    b[0:4, 0:8] = 2
    frames, lab_dir = write_video(tmp_path, [a, b, b])
    put_flows(frames, tmp_path / "cache", np.zeros((2, 16, 16, 2), np.float32))
    r = video_tc(frames, labels=lab_dir, cache_dir=tmp_path / "cache", num_classes=3, progress=False)
    # pair 0: IoU_0 = 96/128, IoU_1 = 1, IoU_2 = 0/32 -> mean 7/12; pair 1: identical -> 100
    assert r["per_pair_tc"] == pytest.approx([100 * (96 / 128 + 1 + 0) / 3, 100.0])
    assert r["TC"] == pytest.approx((100 * 7 / 12 + 100) / 2)
    # per class (pair mode): the mean over pairs of the class IoU; class 2 scores 0 then 1
    assert r["per_class_tc"] == pytest.approx([100 * (96 / 128 + 1) / 2, 100.0, 50.0])
    assert r["pixels"] == [256, 256]
    # global: class 0 has 96+96 / 128+96, class 1 is 1, class 2 is 32/64
    g = video_tc(frames, labels=lab_dir, cache_dir=tmp_path / "cache", num_classes=3, mode="global", progress=False)
    assert g["TC"] == pytest.approx(100 * (192 / 224 + 1 + 32 / 64) / 3)


# ---------------------------------------------------------------- model, DIS flow, cache reuse

def test_model_on_a_video_file_equals_temporal_consistency_and_reuses_the_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8), (7, 7), 2)
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    for t in range(4):
        writer.write(base[t:t + 64, 2 * t:2 * t + 96])
    writer.release()
    calls = []
    compute = etc_nb.flow.DISFlow.compute
    monkeypatch.setattr(etc_nb.flow.DISFlow, "compute", lambda self, a, b: calls.append(1) or compute(self, a, b))
    torch.manual_seed(0)
    net = create_model("pspnet18", num_classes=3).eval()
    r1 = video_tc(video, model=net, out=tmp_path / "out", backend="eager", progress=False)
    assert (r1["frames"], r1["num_classes"], r1["flows_computed"], len(calls)) == (4, 3, 3, 3)
    from etc_nb.segment import open_frames
    from etc_nb.data.augment import to_tensor
    from etc_nb.losses import upsample_like
    frames = list(open_frames(video)[0])
    with torch.inference_mode():
        preds = upsample_like(net(torch.stack([to_tensor(f) for f in frames]))["logits"], (64, 96)).argmax(1)
    cache = tc_flow_cache(video, tmp_path / "out" / "flow_cache")
    flows = torch.cat([flow_to_tensor(cache.get(*_pair_ids(t))) for t in range(3)])     # as stored (16-bit PNG)
    assert r1["TC"] == pytest.approx(temporal_consistency(preds, flows, 3), abs=1e-9)
    r2 = video_tc(video, model=net, out=tmp_path / "out", backend="eager", progress=False)
    assert r2["flows_computed"] == 0 and len(calls) == 3 and r2["TC"] == r1["TC"]


# ---------------------------------------------------------------- the command line

def test_cli_on_label_pngs_writes_files_and_reuses_flows(tmp_path, capsys):
    rng = np.random.default_rng(1)
    frames_dir, labels_dir = tmp_path / "frames", tmp_path / "labels"
    frames_dir.mkdir(); labels_dir.mkdir()
    base = cv2.GaussianBlur(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8), (5, 5), 1.5)
    for t in range(5):
        im = base[t:t + 48, t:t + 64]
        Image.fromarray(im).save(frames_dir / f"frame{t}.png")
        lab = (im[..., 0] // 64).astype(np.uint8)
        lab[rng.random(lab.shape) < 0.05] = t % 4                       # flicker
        Image.fromarray(lab).save(labels_dir / f"frame{t}.png")
    args = ["tc", "--labels", str(labels_dir), "--frames", str(frames_dir), "--out", str(tmp_path / "out"),
            "--class-names", "a,b,c,d"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("TC ") and "| 3 | d |" in first and "(4 flows computed, 0 read from the cache)" in first
    out = tmp_path / "out"
    pairs = pd.read_csv(out / "tc.csv")
    assert list(pairs.columns) == ["pair", "frame", "next_frame", "tc", "pixels"] and len(pairs) == 4
    assert pairs["frame"].tolist() == [f"frame{t}.png" for t in range(4)]
    summary = json.loads((out / "tc.json").read_text())
    assert summary["TC"] == pytest.approx(pairs["tc"].mean()) and 0 < summary["TC"] < 100
    assert pd.read_csv(out / "tc_per_class.csv")["name"].tolist() == ["a", "b", "c", "d"]
    assert (out / "tc.png").read_bytes()[:4] == b"\x89PNG"
    flo = sorted((out / "flow_cache").rglob("*.png"))          # the compact 16-bit PNG cache
    stamps = [p.stat().st_mtime_ns for p in flo]
    assert len(flo) == 4
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "(0 flows computed, 4 read from the cache)" in second
    assert [p.stat().st_mtime_ns for p in flo] == stamps
    assert second.splitlines()[0] == first.splitlines()[0]


@pytest.mark.parametrize("setup, msg", [
    ("fewer", "3 label PNGs but"),
    ("size", "f1.png: label is 16x16 but label"),
    ("corrupt", "f1.png: not a readable image"),
    ("rgb", "f2.png: expected a single-channel label PNG"),
    ("nolabels", "no label PNGs (*.png) in this folder"),
    ("noframes", "no such video file or frame folder"),
    ("both", "not both"),
])
def test_cli_errors_are_one_line_naming_the_file(tmp_path, capsys, setup, msg):
    frames, labels = write_video(tmp_path, [np.zeros((16, 16))] * 4)
    if setup == "fewer":
        (labels / "f3.png").unlink()
    elif setup == "size":
        Image.fromarray(np.zeros((10, 20), np.uint8)).save(labels / "f0.png")
    elif setup == "corrupt":
        (labels / "f1.png").write_bytes(b"not a png")
    elif setup == "rgb":
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(labels / "f2.png")
    elif setup == "nolabels":
        for p in labels.iterdir():
            p.unlink()
    elif setup == "noframes":
        frames = tmp_path / "missing"
    extra = ["--model", "pspnet18"] if setup == "both" else []
    assert main(["tc", "--labels", str(labels), "--frames", str(frames), "--out", str(tmp_path / "o"), "--num-classes", "2",
                 *extra]) == 2
    err = capsys.readouterr().err.splitlines()[-1]     # after the progress bar, if it started
    assert err.startswith("etc-nb tc: error: ") and msg in err, err
    assert not (tmp_path / "o" / "tc.csv").exists()
