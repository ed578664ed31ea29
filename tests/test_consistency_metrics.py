"""Tests of the consistency metrics of other benchmarks in etc_nb.metrics: VSPW's video consistency (VC_n),
Lai et al.'s warping error (E_warp) and DAVIS 2016's temporal stability (T).

Each is checked on cases counted by hand and against a deliberately naive re-implementation written from the
reference's description (loops, explicit warps, Dijkstra with a heap), not from the vectorised code."""
import heapq
import math

import cv2
import numpy as np
import pytest
import torch

from etc_nb.metrics import (_contour_points, _matching_cost, _shape_context, mean_video_consistency,
                            temporal_stability, temporal_stability_pair, vc_windows, video_consistency,
                            warping_error, warping_error_mask)
from etc_nb.warp import fb_consistency_mask


# ---------------------------------------------------------------- VC: references and data

def ref_vc_windows(gt, pred, n, ignore=None, all_windows=False):
    "Per-window VC by VSPW's recipe: AND the frame-to-frame equalities of each window, ratio of the two counts."
    out = []
    for i in range(len(gt) - n + (1 if all_windows else 0)):
        gt_same = np.ones(gt[0].shape, bool)
        pred_same = np.ones(gt[0].shape, bool)
        for j in range(1, n):
            gt_same &= gt[i] == gt[i + j]
            pred_same &= pred[i] == pred[i + j]
        if ignore is not None:
            gt_same &= gt[i] != ignore
        den = gt_same.sum()
        out.append((gt_same & pred_same).sum() / den if den else np.nan)
    return np.array(out, dtype=np.float64)


def slowly_changing(T, H, W, K, rate, rng, void=0.0):
    "Label maps `(T,H,W)` that keep each pixel's class and change a fraction `rate` of pixels per frame."
    x = [rng.integers(0, K, (H, W))]
    for _ in range(T - 1):
        nxt = x[-1].copy()
        hit = rng.random((H, W)) < rate
        nxt[hit] = rng.integers(0, K, hit.sum())
        x.append(nxt)
    x = np.stack(x)
    if void:
        x[rng.random(x.shape) < void] = 255
    return x


HAND_GT = np.array([[[0, 0, 1], [1, 2, 255]],
                    [[0, 0, 1], [2, 2, 255]],
                    [[0, 1, 1], [2, 2, 255]]])
HAND_PRED = np.array([[[0, 1, 1], [1, 2, 0]],
                      [[0, 1, 0], [1, 2, 0]],
                      [[0, 1, 0], [2, 1, 0]]])


# ---------------------------------------------------------------- VC

def test_vc_hand_counted():
    # frames 0-1: 4 steady non-void gt pixels, the prediction steady at 3 of them; frames 1-2: 4 and 2
    assert vc_windows(HAND_PRED, HAND_GT, n=2).tolist() == [0.75]
    assert vc_windows(HAND_PRED, HAND_GT, n=2, all_windows=True).tolist() == [0.75, 0.5]
    assert video_consistency(HAND_PRED, HAND_GT, n=2) == 75.0
    assert video_consistency(HAND_PRED, HAND_GT, n=2, all_windows=True) == 62.5
    assert vc_windows(HAND_PRED, HAND_GT, n=2, ignore_index=None).tolist() == [0.8]   # the void corner counts
    assert video_consistency(HAND_PRED, HAND_GT, n=3, all_windows=True) == pytest.approx(100 / 3)


@pytest.mark.parametrize("T,n", [(3, 3), (2, 8), (8, 8)])
def test_vc_shorter_than_n_is_nan(T, n):
    gt = np.zeros((T, 4, 5), np.int64)
    assert vc_windows(gt, gt, n=n).numel() == 0
    assert math.isnan(video_consistency(gt, gt, n=n))


def test_vc_window_without_steady_pixel_is_nan_and_skipped():
    gt = np.stack([np.zeros((2, 2)), np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2))]).astype(np.int64)
    w = vc_windows(gt, gt, n=2)                                     # windows 0-1 (all change) and 1-2
    assert math.isnan(w[0]) and w[1] == 1.0
    assert video_consistency(gt, gt, n=2) == 100.0


def test_vc_constant_and_flickering():
    rng = np.random.default_rng(0)
    gt = np.repeat(rng.integers(0, 7, (1, 16, 20)), 10, 0)
    assert video_consistency(gt, gt, n=8) == 100.0
    assert video_consistency((gt + 3) % 7, gt, n=8) == 100.0     # steady but wrong: VSPW counts it
    pred = gt.copy()
    pred[1::2, :, :4] = (gt[1::2, :, :4] + 1) % 7                   # 4 of 20 columns flip every other frame
    for n in (2, 5, 8):
        assert video_consistency(pred, gt, n=n) == pytest.approx(80.0)


@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("all_windows", [False, True])
def test_vc_matches_reference(n, all_windows):
    rng = np.random.default_rng(n)
    gt = slowly_changing(12, 17, 23, 6, 0.05, rng, void=0.1)
    pred = slowly_changing(12, 17, 23, 6, 0.1, rng)
    for ignore in (None, 255):
        ours = vc_windows(torch.from_numpy(pred), torch.from_numpy(gt), n, ignore_index=ignore, all_windows=all_windows)
        np.testing.assert_allclose(ours.numpy(), ref_vc_windows(gt, pred, n, ignore, all_windows))


def test_mean_video_consistency_pools_windows_like_vspw():
    rng = np.random.default_rng(3)
    videos = [(slowly_changing(T, 9, 11, 4, 0.1, rng), slowly_changing(T, 9, 11, 4, 0.05, rng)) for T in (5, 12, 3)]
    refs = [ref_vc_windows(gt, pred, 4) for pred, gt in videos]       # the 3-frame video has no window
    assert mean_video_consistency(videos, n=4) == pytest.approx(100 * np.nanmean(np.concatenate(refs)))
    per_video = [100 * np.nanmean(r) for r in refs[:2]]
    assert mean_video_consistency(videos, n=4, pool="videos") == pytest.approx(np.mean(per_video))
    assert mean_video_consistency(iter(videos), n=4) == mean_video_consistency(videos, n=4)   # any iterable


@pytest.mark.parametrize("call,message", [
    (lambda: video_consistency(HAND_PRED[0], HAND_GT[0]), "preds: expected label maps (T,H,W)"),
    (lambda: video_consistency(HAND_PRED, HAND_GT[:2]), "labels: expected the shape of preds"),
    (lambda: video_consistency(HAND_PRED, HAND_GT, n=0), "n: expected an integer window length >= 2"),
    (lambda: video_consistency(HAND_PRED, HAND_GT, n=2.0), "n: expected an integer window length >= 2"),
    (lambda: video_consistency(HAND_PRED * 1.0, HAND_GT), "preds: expected integer class ids"),
    (lambda: video_consistency(HAND_PRED + 5, HAND_GT, num_classes=3), "preds: unknown class ids"),
    (lambda: mean_video_consistency([(HAND_PRED, HAND_GT)], pool="mean"), "pool: expected 'windows' or 'videos'"),
    (lambda: mean_video_consistency([]), "videos: expected at least one"),
])
def test_vc_bad_input(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert message in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- E_warp: references

def ref_bilinear(x, flow):
    "Backward bilinear warp of `x` `(C,H,W)` by `flow` `(2,H,W)` with border taps clamped, and the in-frame mask."
    C, H, W = x.shape
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    sx, sy = xs + flow[0], ys + flow[1]
    inside = (sx > -0.5) & (sx < W - 0.5) & (sy > -0.5) & (sy < H - 0.5)
    x0, y0 = np.floor(sx), np.floor(sy)
    wx, wy = sx - x0, sy - y0
    x0, y0 = x0.astype(int), y0.astype(int)
    tap = lambda yy, xx: x[:, np.clip(yy, 0, H - 1), np.clip(xx, 0, W - 1)]
    out = ((1 - wy) * ((1 - wx) * tap(y0, x0) + wx * tap(y0, x0 + 1))
           + wy * ((1 - wx) * tap(y0 + 1, x0) + wx * tap(y0 + 1, x0 + 1)))
    return out, inside


def ref_lai_occlusion(fw, bw):
    "Lai et al.'s occlusion (True = occluded) of frame t from `fw` (t -> t+1) and `bw` (t+1 -> t), each `(2,H,W)`."
    bw_w, _ = ref_bilinear(bw.astype(np.float64), fw)
    fb = ((fw + bw_w) ** 2).sum(0)
    mask1 = fb > 0.01 * ((bw_w ** 2).sum(0) + (fw ** 2).sum(0)) + 0.5
    grad = np.zeros(fw.shape[1:])
    for c in range(2):
        du = np.zeros(fw.shape[1:]); du[:, :-1] = fw[c, :, :-1] - fw[c, :, 1:]
        dv = np.zeros(fw.shape[1:]); dv[:-1, :] = fw[c, :-1, :] - fw[c, 1:, :]
        grad += du ** 2 + dv ** 2
    mask2 = grad > 0.01 * (fw ** 2).sum(0) + 0.002
    return mask1 | mask2


def ref_warping_error(frames, flows, visible):
    "E_warp by Lai et al.'s script: per pair, masked squared differences over (channels x visible pixels)."
    errs = []
    for t in range(len(frames) - 1):
        warped, inside = ref_bilinear(frames[t + 1].astype(np.float64), flows[t])
        m = visible[t] & inside
        diff = (warped - frames[t]) * m
        n = frames.shape[1] * m.sum()
        errs.append((diff ** 2).sum() / n if n else 0.0)
    return float(np.mean(errs))


def ref_label_warping_error(labels, flows, K, ignore=255):
    "E_warp of label maps as explicit one-hot maps, warped with nearest sampling (round half to even)."
    T, H, W = labels.shape
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    errs = []
    for t in range(T - 1):
        xt, yt = np.rint(xs + flows[t, 0]).astype(int), np.rint(ys + flows[t, 1]).astype(int)
        inside = (xt >= 0) & (xt < W) & (yt >= 0) & (yt < H)
        nxt = labels[t + 1][yt.clip(0, H - 1), xt.clip(0, W - 1)]
        m = inside & (labels[t] != ignore) & (nxt != ignore)
        a = np.eye(K)[np.where(m, labels[t], 0)]
        b = np.eye(K)[np.where(m, nxt, 0)]
        n = K * m.sum()
        errs.append((((a - b) ** 2).sum(-1) * m).sum() / n if n else 0.0)
    return float(np.mean(errs))


def smooth_flows(T, H, W, scale, seed):
    "Random smooth flows `(T-1,2,H,W)` float32 of about `scale` pixels."
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(T - 1, 2, H // 8 + 2, W // 8 + 2, generator=g) * scale
    return torch.nn.functional.interpolate(coarse, size=(H, W), mode="bicubic", align_corners=False).numpy()


# ---------------------------------------------------------------- E_warp

def test_warping_error_hand_counted():
    a = np.array([[[0, 1, 2, 1]], [[0, 2, 2, 255]]])               # one pair of 1x4 label maps, no motion
    still = np.zeros((1, 2, 1, 4), np.float32)
    assert warping_error(a, still, num_classes=3) == pytest.approx(2 / 9)   # 1 of 3 compared pixels changes
    f = np.array([[[[0.0, 0.5, 1.0]]], [[[0.0, 1.0, 1.0]]]], np.float32)    # (T=2, C=1, 1, 3)
    still3 = np.zeros((1, 2, 1, 3), np.float32)
    assert warping_error(f, still3) == pytest.approx(0.25 / 3)
    vis = np.array([[[True, False, True]]])
    assert warping_error(f, still3, occlusion=vis) == 0.0
    assert warping_error(f, still3, occlusion=~np.ones_like(vis)) == 0.0     # nothing compared: 0, as Lai's script
    r = warping_error(np.concatenate([f, f[:1]]), np.zeros((2, 2, 1, 3), np.float32), per_pair=True)
    assert r["per_pair"] == pytest.approx([0.25 / 3, 0.25 / 3]) and r["E_warp"] == pytest.approx(0.25 / 3)


def test_warping_error_of_shifted_maps_is_zero():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 4, (10, 14))
    labels = np.stack([base, np.roll(base, 2, 1), np.roll(base, (3, 2), (0, 1))])   # moves (+2, 0), then (0, +3)
    flows = np.zeros((2, 2, 10, 14), np.float32)
    flows[0, 0], flows[1, 1] = 2, 3
    assert warping_error(labels, flows, num_classes=4) == 0.0
    one_hot = np.eye(4, dtype=np.float32)[labels].transpose(0, 3, 1, 2)
    assert warping_error(one_hot, flows) == 0.0


def test_warping_error_labels_match_reference():
    rng = np.random.default_rng(2)
    labels = slowly_changing(5, 30, 40, 6, 0.1, rng, void=0.05)
    flows = smooth_flows(5, 30, 40, 3.0, seed=2)
    expected = ref_label_warping_error(labels, flows, 6)
    assert 0.01 < expected and warping_error(labels, flows, num_classes=6) == pytest.approx(expected)
    assert warping_error(torch.from_numpy(labels).to(torch.uint8), torch.from_numpy(flows), num_classes=6) == \
        pytest.approx(expected)


def test_warping_error_mask_matches_lai():
    H, W = 48, 64
    fw = smooth_flows(2, H, W, 0.4, seed=3)[0] + np.array([3.0, -2.0], np.float32)[:, None, None]
    fw[0, 10:30, 20:40] += 5                                        # a block moving faster: motion boundaries
    bw = -fw + smooth_flows(2, H, W, 0.4, seed=4)[0]                # roughly consistent, with disagreements
    ours = warping_error_mask(torch.from_numpy(fw)[None], torch.from_numpy(bw)[None])[0].numpy()
    fb_only = fb_consistency_mask(torch.from_numpy(fw)[None], torch.from_numpy(bw)[None])[0].numpy()
    ys, xs = np.mgrid[0:H, 0:W]
    inside = (xs + fw[0] > -0.5) & (xs + fw[0] < W - 0.5) & (ys + fw[1] > -0.5) & (ys + fw[1] < H - 0.5)
    theirs = ~ref_lai_occlusion(fw, bw) & inside
    assert 0.2 < theirs.mean() < inside.mean() - 0.1 and (fb_only & ~ours).sum() > 20   # both tests bite
    assert (ours == theirs).mean() > 0.999


def test_warping_error_rgb_matches_reference_with_lai_mask():
    rng = np.random.default_rng(5)
    frames = rng.random((4, 3, 24, 32)).astype(np.float32)
    fw = smooth_flows(4, 24, 32, 2.0, seed=5)
    bw = -fw
    visible = np.stack([warping_error_mask(torch.from_numpy(fw[t:t + 1]), torch.from_numpy(bw[t:t + 1]))[0].numpy()
                        for t in range(3)])
    expected = ref_warping_error(frames, fw, visible)
    assert warping_error(frames, fw, flows_bw=bw) == pytest.approx(expected, rel=1e-5)
    assert warping_error(frames, fw, occlusion=visible) == pytest.approx(expected, rel=1e-5)
    assert warping_error(frames, fw) == pytest.approx(ref_warping_error(frames, fw, np.ones_like(visible)), rel=1e-5)


@pytest.mark.parametrize("call,message", [
    (lambda: warping_error(np.zeros((3, 4, 5), np.int64), np.zeros((2, 2, 4, 5))), "num_classes: required"),
    (lambda: warping_error(np.zeros((1, 4, 5), np.int64), np.zeros((0, 2, 4, 5)), num_classes=2), "frames_or_preds: expected"),
    (lambda: warping_error(np.zeros((3, 4, 5)), np.zeros((2, 2, 4, 5))), "frames_or_preds: expected float maps (T,C,H,W)"),
    (lambda: warping_error(np.zeros((3, 4, 5), np.int64), np.zeros((2, 4, 5, 2)), num_classes=2),
     "flows: expected shape (T-1,2,H,W) = (2, 2, 4, 5)"),
    (lambda: warping_error(np.zeros((3, 4, 5), np.int64), np.zeros((2, 2, 4, 5)), num_classes=2,
                           flows_bw=np.zeros((3, 2, 4, 5))), "flows_bw: expected shape"),
    (lambda: warping_error(np.zeros((3, 4, 5), np.int64), np.zeros((2, 2, 4, 5)), num_classes=2,
                           occlusion=np.ones((2, 5, 4), bool)), "occlusion: expected a boolean mask"),
    (lambda: warping_error(np.full((3, 4, 5), 7), np.zeros((2, 2, 4, 5)), num_classes=2),
     "frames_or_preds: unknown class ids [7]"),
])
def test_warping_error_bad_input(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert message in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------- T: reference

def ref_shape_context(pts):
    "Shape contexts with loops: 12 sectors x 5 log rings (1/8..2 x the mean distance), each row normalised."
    n = len(pts)
    r = np.array([[math.dist(pts[a], pts[b]) for b in range(n)] for a in range(n)])
    mean = r.mean()
    edges = np.logspace(math.log10(1 / 8), math.log10(2), 5)
    h = np.zeros((n, 60))
    for a in range(n):
        for b in range(n):
            ring = sum(r[a, b] / mean < e for e in edges)
            if ring == 0:
                continue
            ang = math.fmod(math.fmod(math.atan2(pts[b][1] - pts[a][1], pts[b][0] - pts[a][0]), 2 * math.pi)
                            + 2 * math.pi, 2 * math.pi)
            h[a, min(int(ang // (2 * math.pi / 12)), 11) * 5 + ring - 1] += 1
    return h / (h.sum(1, keepdims=True) + 2.2204e-16)


def ref_dijkstra(costs):
    "DAVIS's matching path: Dijkstra from (0,0) to the last cell; edges right, down, diagonal cost their target."
    n1, n2 = costs.shape
    dist, parent = {(0, 0): 0.0}, {}
    heap, done = [(0.0, (0, 0))], set()
    while heap:
        d, (i, j) = heapq.heappop(heap)
        if (i, j) in done:
            continue
        done.add((i, j))
        for a, b in ((i + 1, j), (i, j + 1), (i + 1, j + 1)):
            if a < n1 and b < n2 and d + costs[a, b] < dist.get((a, b), np.inf):
                dist[(a, b)] = d + costs[a, b]
                parent[(a, b)] = (i, j)
                heapq.heappush(heap, (dist[(a, b)], (a, b)))
    path, node = [], (n1 - 1, n2 - 1)
    while node != (0, 0):
        path.append(node)
        node = parent[node]
    return path + [(0, 0)]                                          # from the last cell back, like DAVIS


def ref_matching_cost(h1, h2):
    "DAVIS's t_stability_single after the shape contexts: match, find the cheapest pair, roll, match, bijection."
    costs = np.array([[0.5 * np.sum((a - b) ** 2 / (a + b + 2.2204e-16)) for b in h2] for a in h1])
    n1, n2 = costs.shape
    path = ref_dijkstra(costs)
    best, mx, my = np.inf, n1 - 1, n2 - 1
    for i, j in path[:-1]:                                          # scanned from the end, origin excluded
        if costs[i, j] < best:
            best, mx, my = costs[i, j], i, j
    rolled = np.roll(np.roll(costs, -(my + 1), axis=1), -(mx + 1), axis=0)
    pairs = [((i + mx + 1) % n1, (j + my + 1) % n2) for i, j in ref_dijkstra(rolled)]
    for side in (0, 1):
        kept = []
        for p in sorted({q[side] for q in pairs}):
            cands = [q for q in pairs if q[side] == p]
            kept.append(cands[int(np.argmin([costs[q] for q in cands]))])
        pairs = kept
    return float(np.mean([costs[q] for q in pairs]))


def place(mask, y, x, canvas=(80, 200)):
    "`mask` pasted at row `y`, column `x` of an empty boolean canvas."
    out = np.zeros(canvas, bool)
    out[y:y + mask.shape[0], x:x + mask.shape[1]] = mask
    return out


def blob(seed, size=(60, 70)):
    "A random smooth blob: a thresholded low-frequency noise field, its largest component."
    rng = np.random.default_rng(seed)
    noise = cv2.resize(rng.standard_normal((6, 7)).astype(np.float32), size[::-1], interpolation=cv2.INTER_CUBIC)
    mask = (noise > 0.3).astype(np.uint8)
    mask[:3], mask[-3:], mask[:, :3], mask[:, -3:] = 0, 0, 0, 0
    n, lab, stats, _ = cv2.connectedComponentsWithStats(mask)
    return lab == 1 + np.argmax(stats[1:, cv2.CC_STAT_AREA])


# ---------------------------------------------------------------- T

def test_shape_context_matches_loops():
    pts = _contour_points(blob(0))
    expected = ref_shape_context(pts)
    np.testing.assert_allclose(_shape_context(pts).numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(_shape_context(pts, chunk=3 * len(pts)).numpy(), expected, atol=1e-12)  # 3-row blocks


@pytest.mark.parametrize("seeds", [(1, 2), (3, 4), (5, 5), (6, 7)])
def test_matching_cost_matches_davis_recipe(seeds):
    h1, h2 = (_shape_context(_contour_points(blob(s))) for s in seeds)
    expected = ref_matching_cost(h1.numpy(), h2.numpy())
    assert _matching_cost(h1, h2) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert temporal_stability_pair(blob(seeds[0]), blob(seeds[1])) == pytest.approx(5 * expected, rel=1e-9, abs=1e-12)


def test_t_identical_translated_changed_empty():
    m = place(blob(8), 10, 20)
    assert temporal_stability_pair(m, m) == 0.0
    assert temporal_stability_pair(m, place(blob(8), 3, 91)) == 0.0             # moved by whole pixels
    assert temporal_stability_pair(torch.from_numpy(m), torch.from_numpy(place(blob(8), 12, 20))) == 0.0
    dilated = cv2.dilate(m.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0   # rounder: a different shape
    other = place(blob(9), 10, 20)
    t_dilated, t_other = temporal_stability_pair(m, dilated), temporal_stability_pair(m, other)
    assert 0 < t_dilated < t_other, (t_dilated, t_other)
    assert math.isnan(temporal_stability_pair(m, np.zeros_like(m)))
    assert math.isnan(temporal_stability_pair(np.zeros_like(m), m))


def test_t_sequence_binary_and_per_class():
    m = blob(10)
    moving = np.stack([place(m, 5, 5 + 2 * t) for t in range(4)])
    assert temporal_stability(moving) == 0.0                                    # bool: one object
    changing = np.stack([place(b, 5, 125) for b in (m, blob(11), m, m)])
    pairs = [temporal_stability_pair(a, b) for a, b in zip(changing[:-1], changing[1:])]
    r = temporal_stability(changing, per_class=True)
    assert r["per_pair"][:, 0].tolist() == pytest.approx(pairs) and r["T"] == pytest.approx(np.mean(pairs))
    assert r["per_class"].shape == (1,)
    # label maps: class 1 moves, class 2 changes, class 3 appears in one frame only (NaN, left out), 255 is void
    labels = np.zeros((4, 80, 200), np.uint8)
    labels[moving] = 1
    labels[changing] = 2
    labels[1, 70:75, :5] = 3
    labels[:, -2:, :] = 255
    r = temporal_stability(labels, num_classes=5, per_class=True)
    per_class = r["per_class"].numpy()
    assert per_class[1] == 0.0 and per_class[2] > 0 and np.isnan(per_class[3]) and np.isnan(per_class[4])
    assert r["T"] == pytest.approx(np.nanmean(per_class))
    assert r["per_pair"].shape == (3, 5) and r["per_pair"][:, 3].isnan().all()
    assert temporal_stability(labels) == pytest.approx(r["T"])                  # K from the ids, 255 no class
    assert math.isnan(temporal_stability(np.zeros((3, 8, 8), bool)))             # never an object


@pytest.mark.parametrize("call,message", [
    (lambda: temporal_stability(np.zeros((8, 8), np.uint8)), "masks: expected masks or label maps (T,H,W)"),
    (lambda: temporal_stability(np.zeros((1, 8, 8), np.uint8)), "masks: expected masks or label maps (T,H,W)"),
    (lambda: temporal_stability(np.zeros((2, 8, 8), np.float32)), "masks: expected integer class ids"),
    (lambda: temporal_stability(np.full((2, 8, 8), 4, np.uint8), num_classes=3), "masks: unknown class ids [4]"),
    (lambda: temporal_stability_pair(np.zeros((2, 8, 8), bool), np.zeros((8, 8), bool)), "mask_a: expected a boolean mask (H,W)"),
])
def test_t_bad_input(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert message in str(e.value) and "\n" not in str(e.value)
