"Tests of etc_nb.metrics: confusion matrix, IoU/mIoU/pixel accuracy, SegMetrics, temporal consistency (TC)."
import math

import numpy as np
import pytest
import torch

from etc_nb.metrics import (SegMetrics, confusion_matrix, iou_from_confusion, mean_tc, miou, pair_confusions,
                            per_class_iou, pixel_accuracy, temporal_consistency)


# ---------------------------------------------------------------- references (deliberately naive)

def loop_confusion(pred, target, K, ignore=255):
    "Confusion matrix by a loop over (target class, predicted class) pairs."
    keep = target != ignore
    return np.array([[np.sum((target[keep] == i) & (pred[keep] == j)) for j in range(K)] for i in range(K)])


def ref_pair_confusions(preds, flows, K, ignore=255, visible=None, exclude_out_of_frame=True):
    "Per-pair confusions `(T-1,K,K)` by explicit numpy nearest warping (float32 coordinates, round half to even)."
    T, H, W = preds.shape
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    out = np.zeros((T - 1, K, K), np.int64)
    for t in range(T - 1):
        xt = np.rint(xs + flows[t, 0]).astype(np.int64)
        yt = np.rint(ys + flows[t, 1]).astype(np.int64)
        inside = (xt >= 0) & (xt < W) & (yt >= 0) & (yt < H)
        warped = preds[t + 1][np.clip(yt, 0, H - 1), np.clip(xt, 0, W - 1)]
        keep = (preds[t] != ignore) & (warped != ignore)
        if exclude_out_of_frame:
            keep &= inside
        if visible is not None:
            keep &= visible[t]
        np.add.at(out[t], (preds[t][keep], warped[keep]), 1)
    return out


def ref_tc(cms, mode):
    "TC in percent from per-pair confusions, written out with plain numpy."
    def iou(cm):
        inter = np.diag(cm).astype(float)
        union = cm.sum(0) + cm.sum(1) - inter
        present = union > 0
        return inter[present] / union[present]
    if mode == "pair":
        return 100 * np.mean([iou(cm).mean() for cm in cms])
    return 100 * iou(cms.sum(0)).mean()


def moving_sequence(T=5, H=48, W=64, K=5, seed=0):
    "Random labels shifted by a different integer displacement each frame, and the matching flows."
    g = torch.Generator().manual_seed(seed)
    frames, flows = [torch.randint(0, K, (H, W), generator=g)], []
    for _ in range(T - 1):
        dx, dy = torch.randint(-4, 5, (2,), generator=g).tolist()
        frames.append(frames[-1].roll((dy, dx), dims=(0, 1)))
        flows.append(torch.tensor([float(dx), float(dy)]).view(2, 1, 1).expand(2, H, W))
    return torch.stack(frames), torch.stack(flows)


def flicker(preds, frac, K, seed=0):
    "Relabel a random fraction `frac` of the pixels of every frame at random."
    g = torch.Generator().manual_seed(seed)
    hit = torch.rand(preds.shape, generator=g) < frac
    return torch.where(hit, torch.randint(0, K, preds.shape, generator=g), preds)


# ---------------------------------------------------------------- confusion matrix, IoU, mIoU

def test_confusion_matrix_hand_counted():
    target = np.array([[0, 0, 1], [2, 2, 255]])
    pred = np.array([[0, 1, 1], [2, 0, 2]])
    expected = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 1]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.dtype == torch.int64 and torch.equal(cm, expected)


@pytest.mark.parametrize("tdtype, pdtype", [(np.uint8, np.int64), (np.int64, np.int32), (np.int32, np.uint8)])
def test_confusion_matrix_matches_independent_counts(tdtype, pdtype):
    rng = np.random.default_rng(1)
    K = 11
    target = rng.integers(0, K, (3, 29, 37)).astype(tdtype)
    target[rng.random(target.shape) < 0.25] = 255
    pred = rng.integers(0, K, target.shape).astype(pdtype)
    keep = target != 255
    hist, _, _ = np.histogram2d(target[keep], pred[keep], bins=K, range=[[0, K], [0, K]])
    for p, t in [(pred, target), (torch.from_numpy(pred), torch.from_numpy(target))]:
        cm = confusion_matrix(p, t, K).numpy()
        np.testing.assert_array_equal(cm, hist.astype(np.int64))
        np.testing.assert_array_equal(cm, loop_confusion(pred, target, K))
    assert confusion_matrix(pred, target, K).sum() == keep.sum()


def test_confusion_matrix_ignore_index_none_and_custom():
    t = torch.tensor([0, 1, 2, 2])
    p = torch.tensor([0, 1, 1, 2])
    assert confusion_matrix(p, t, 3, ignore_index=None).sum() == 4
    assert torch.equal(confusion_matrix(p, t, 3, ignore_index=2), torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0]]))
    assert confusion_matrix(p, torch.tensor([0, 1, -1, -1]), 3, ignore_index=-1).sum() == 2


@pytest.mark.parametrize("pred, target, msg", [
    ([[0, 3]], [[0, 1]], r"pred: unknown class ids \[3\]"),
    ([[0, -1]], [[0, 1]], r"pred: unknown class ids \[-1\]"),
    ([[0, 1]], [[0, 9]], r"target: unknown class ids \[9\]"),
    ([[0, 1]], [[0, 1, 2]], "same shape"),
    (np.zeros((1, 2), np.float32), [[0, 1]], "pred: expected integer class ids"),
])
def test_confusion_matrix_rejects_bad_input(pred, target, msg):
    with pytest.raises(ValueError, match=msg):
        confusion_matrix(np.asarray(pred), np.asarray(target), 3)


def test_miou_of_hand_written_confusion_matrix():
    # rows = target, columns = prediction; class 3 appears nowhere and must not count.
    cm = torch.tensor([[5, 1, 0, 0],
                       [2, 3, 1, 0],
                       [0, 0, 4, 0],
                       [0, 0, 0, 0]])
    # IoU_0 = 5/(6+7-5) = 5/8, IoU_1 = 3/(6+4-3) = 3/7, IoU_2 = 4/(4+5-4) = 4/5
    iou = iou_from_confusion(cm)
    assert iou.dtype == torch.float64
    np.testing.assert_allclose(iou[:3].numpy(), [5 / 8, 3 / 7, 4 / 5])
    assert math.isnan(iou[3])
    assert miou(cm) == pytest.approx(100 * (5 / 8 + 3 / 7 + 4 / 5) / 3)
    assert pixel_accuracy(cm) == pytest.approx(100 * 12 / 16)
    table = per_class_iou(cm, ["road", "car", "sky", "bus"])
    assert table["sky"] == pytest.approx(80) and math.isnan(table["bus"])


def test_predicted_but_absent_class_scores_zero():
    cm = torch.tensor([[3, 1], [0, 0]])          # class 1 never in the target but predicted once
    np.testing.assert_allclose(iou_from_confusion(cm).numpy(), [3 / 4, 0])


def test_empty_and_malformed_confusions():
    assert math.isnan(miou(torch.zeros(4, 4, dtype=torch.int64)))
    assert math.isnan(pixel_accuracy(torch.zeros(4, 4, dtype=torch.int64)))
    with pytest.raises(ValueError, match="cm"):
        iou_from_confusion(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="class_names"):
        per_class_iou(torch.eye(3), ["a", "b"])


def test_seg_metrics_accumulates_like_one_big_batch():
    rng = np.random.default_rng(2)
    pred, target = rng.integers(0, 6, (4, 20, 30)), rng.integers(0, 6, (4, 20, 30))
    target[:, :3] = 255
    m = SegMetrics(6)
    for i in range(4):
        m.update(pred[i], target[i])
    whole = confusion_matrix(pred, target, 6)
    assert torch.equal(m.cm, whole)
    r = m.compute()
    assert r["mIoU"] == pytest.approx(miou(whole)) and r["pixel_acc"] == pytest.approx(pixel_accuracy(whole))
    assert r["per_class_iou"].shape == (6,)
    m.reset()
    assert m.cm.sum() == 0


# ---------------------------------------------------------------- temporal consistency

def test_pair_confusions_match_numpy_reference():
    rng = np.random.default_rng(3)
    T, H, W, K = 6, 23, 31, 7
    preds = rng.integers(0, K, (T, H, W))
    preds[rng.random(preds.shape) < 0.1] = 255
    flows = (rng.normal(size=(T - 1, 2, H, W)) * 3).astype(np.float32)
    visible = rng.random((T - 1, H, W)) > 0.2
    for exclude in (True, False):
        ref = ref_pair_confusions(preds, flows, K, visible=visible, exclude_out_of_frame=exclude)
        for chunk in (1, 2, 5, 100):
            got = pair_confusions(preds, flows, K, occlusion=visible, exclude_out_of_frame=exclude, chunk=chunk)
            np.testing.assert_array_equal(got.numpy(), ref)
        for mode in ("pair", "global"):
            assert temporal_consistency(preds, flows, K, occlusion=visible, exclude_out_of_frame=exclude,
                                        mode=mode) == pytest.approx(ref_tc(ref, mode))


def test_many_classes_take_the_wide_index_path():
    rng = np.random.default_rng(4)
    T, H, W, K = 4, 16, 20, 300     # (K+1)^2 does not fit int16
    preds = rng.integers(0, K, (T, H, W))
    flows = (rng.normal(size=(T - 1, 2, H, W)) * 2).astype(np.float32)
    np.testing.assert_array_equal(pair_confusions(preds, flows, K, chunk=3).numpy(),
                                  ref_pair_confusions(preds, flows, K))


def test_ignore_index_variants_and_input_not_modified():
    rng = np.random.default_rng(5)
    preds = rng.integers(0, 4, (3, 10, 12))
    flows = np.zeros((2, 2, 10, 12), np.float32)
    ref = ref_pair_confusions(preds, flows, 4, ignore=0)
    p16 = torch.from_numpy(preds).to(torch.int16)
    copy = p16.clone()
    np.testing.assert_array_equal(pair_confusions(p16, flows, 4, ignore_index=0).numpy(), ref)
    assert torch.equal(p16, copy)
    with_neg = np.where(preds == 0, -1, preds)
    np.testing.assert_array_equal(pair_confusions(with_neg, flows, 4, ignore_index=-1).numpy(), ref)
    assert pair_confusions(preds, flows, 4, ignore_index=None).sum() == 2 * 10 * 12


def test_tc_is_100_for_predictions_that_move_with_the_flow():
    preds, flows = moving_sequence()
    for mode in ("pair", "global"):
        assert temporal_consistency(preds, flows, 5, mode=mode) == 100.0
        assert temporal_consistency(preds.numpy().astype(np.uint8), flows.numpy(), 5, mode=mode) == 100.0
    # Counting the pixels that scrolled out of view against the border penalises them.
    assert temporal_consistency(preds, flows, 5, exclude_out_of_frame=False) < 100


def test_tc_falls_as_flicker_grows():
    preds, flows = moving_sequence(T=6, H=64, W=80)
    tcs = [temporal_consistency(flicker(preds, f, 5), flows, 5) for f in (0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8)]
    assert tcs[0] == 100.0
    assert all(a > b for a, b in zip(tcs, tcs[1:])), tcs
    assert tcs[-1] < 30


def test_pair_and_global_agree_on_identical_pairs_and_differ_otherwise():
    still = torch.zeros(3, 2, 8, 8)
    a = torch.zeros(8, 8, dtype=torch.long)
    b = a.clone()
    b[3, 3] = 1
    alternating = torch.stack([a, b, a, b])        # every pair has the same per-class IoUs
    assert temporal_consistency(alternating, still, 2) == pytest.approx(
        temporal_consistency(alternating, still, 2, mode="global"))
    seq = torch.stack([a, a, b])                    # pair 1 perfect, pair 2 flickers one pixel to class 1
    pair = temporal_consistency(seq, still[:2], 2)
    glob = temporal_consistency(seq, still[:2], 2, mode="global")
    assert pair == pytest.approx((100 + 100 * (63 / 64) / 2) / 2)
    assert glob == pytest.approx(100 * (127 / 128) / 2)
    assert pair != pytest.approx(glob)


def test_occlusion_mask_excludes_the_only_disagreements():
    preds, _ = moving_sequence()
    seq = preds[:1].repeat(5, 1, 1)
    seq[1:, 10:20, 20:30] = (seq[1:, 10:20, 20:30] + 1) % 5
    still = torch.zeros(4, 2, 48, 64)
    visible = np.ones((4, 48, 64), bool)
    visible[0, 10:20, 20:30] = False
    plain = temporal_consistency(seq, still, 5)
    masked = temporal_consistency(seq, still, 5, occlusion=visible)
    assert plain < masked == 100.0
    assert temporal_consistency(seq, still, 5, valid=visible[0]) == 100.0


def test_per_class_tc_of_a_class_that_never_flickers_is_100():
    preds, flows = moving_sequence()
    noisy = flicker(preds, 0.3, 5)
    noisy = torch.where((preds == 0) | (noisy == 0), preds, noisy)   # class 0 neither lost nor gained
    for mode in ("pair", "global"):
        r = temporal_consistency(noisy, flows, 5, mode=mode, per_class=True)
        assert r["per_class_tc"][0] == 100.0
        assert (r["per_class_tc"][1:] < 100).all() and r["TC"] < 100
        assert len(r["per_pair_tc"]) == 4
    r = temporal_consistency(noisy, flows, 5, per_class=True)
    assert r["TC"] == pytest.approx(np.mean(r["per_pair_tc"]))


def test_absent_class_and_empty_pairs_are_nan():
    preds = torch.zeros(3, 6, 6, dtype=torch.long)
    flows = torch.zeros(2, 2, 6, 6)
    flows[1] = 100.0                                  # the second pair leaves the frame entirely
    r = temporal_consistency(preds, flows, 3, per_class=True)
    assert r["TC"] == 100.0 and math.isnan(r["per_pair_tc"][1])
    assert r["per_class_tc"][0] == 100.0 and r["per_class_tc"][1:].isnan().all()
    flows[0] = 100.0
    assert math.isnan(temporal_consistency(preds, flows, 3))


@pytest.mark.parametrize("kw, msg", [
    (dict(flows=np.zeros((3, 2, 8, 10), np.float32)), r"flows: expected shape \(T-1,2,H,W\) = \(4, 2, 8, 10\)"),
    (dict(flows=np.zeros((4, 8, 10, 2), np.float32)), "flows: expected shape"),
    (dict(preds=np.zeros((8, 10), int)), "preds: expected label maps"),
    (dict(preds=np.full((5, 8, 10), 7)), r"preds: unknown class ids \[7\]"),
    (dict(preds=np.zeros((5, 8, 10), np.float32)), "preds: expected integer class ids"),
    (dict(occlusion=np.ones((5, 8, 10), bool)), "occlusion: expected a boolean mask of shape"),
    (dict(valid=np.ones((10, 8), bool)), "valid"),
    (dict(mode="mean"), "mode"),
])
def test_tc_rejects_bad_input(kw, msg):
    args = dict(preds=np.zeros((5, 8, 10), int), flows=np.zeros((4, 2, 8, 10), np.float32))
    args.update(kw)
    with pytest.raises(ValueError, match=msg):
        temporal_consistency(args.pop("preds"), args.pop("flows"), 3, **args)


def test_mean_tc_over_sequences():
    assert mean_tc([80.0, 90.0, math.nan]) == pytest.approx(85.0)
    assert math.isnan(mean_tc([math.nan]))
    with pytest.raises(ValueError, match="at least one"):
        mean_tc([])
