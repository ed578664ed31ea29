"Tests of etc_nb.vis_eval: YouTube-VIS AP/AR against hand-computed cases and pycocotools' COCOeval on 1-frame videos."
import contextlib
import io
import json
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from etc_nb.data.ytvis import write_fixture
from etc_nb.vis_eval import AREA_RANGES, evaluate_ytvis, spatiotemporal_iou

KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]   # COCO's stats order


def box(H, W, y0, y1, x0, x1):
    "Compressed RLE (`counts` str) of the box rows y0:y1, columns x0:x1 of an H×W frame."
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return {"size": [H, W], "counts": mask_utils.encode(np.asfortranarray(m))["counts"].decode()}


def write_gt(path, videos, annotations, categories=(1,)):
    "Ground truth json: `videos` [(id, H, W, frames)], `annotations` [(video, category, segs[, iscrowd[, areas]])]."
    anns = []
    for i, a in enumerate(annotations):
        ann = {"id": i + 1, "video_id": a[0], "category_id": a[1], "segmentations": a[2],
               "iscrowd": a[3] if len(a) > 3 else 0}
        if len(a) > 4:
            ann["areas"] = a[4]
        anns.append(ann)
    data = {"videos": [{"id": v, "height": h, "width": w, "length": n,
                        "file_names": [f"v{v}/{t:05d}.jpg" for t in range(n)]} for v, h, w, n in videos],
            "categories": [{"id": c, "name": f"c{c}"} for c in categories], "annotations": anns}
    path.write_text(json.dumps(data))
    return path


def result(seg, score, video=1, cat=1):
    return {"video_id": video, "category_id": cat, "score": score, "segmentations": seg}


# the tracks of the hand cases, on 10x10 frames
A = [box(10, 10, 0, 1, 0, 4), box(10, 10, 0, 1, 0, 2), None]                           # 4 px, 2 px, absent
P1 = [box(10, 10, 0, 1, 0, 4), box(10, 10, 0, 1, 1, 3), box(10, 10, 9, 10, 9, 10)]     # 4 shared, 1 shared, 1 alone
B = [box(10, 10, 5, 7, 5, 7)] * 3
P2 = [box(10, 10, 8, 10, 0, 2)] * 3


def test_spatiotemporal_iou_hand_case():
    # intersections 4 + 1 + 0 = 5, unions 4 + (2 + 2 - 1) + 1 = 8
    assert spatiotemporal_iou(A, P1) == 5 / 8 == spatiotemporal_iou(P1, A)
    assert spatiotemporal_iou(A + [None, None], P1 + [None, None]) == 5 / 8     # frames where both are absent
    assert spatiotemporal_iou(A, B) == 0.0
    assert spatiotemporal_iou([None] * 2, [None] * 2) == 0.0
    uncompressed = {"counts": [0, 1, 9, 1, 9, 1, 9, 1, 69], "size": [10, 10]}       # row 0, columns 0-3
    assert spatiotemporal_iou([uncompressed, None, None], P1) == 4 / 7       # 4 shared; union 4 + 2 + 1
    assert spatiotemporal_iou([uncompressed], [A[0]]) == 1.0
    with pytest.raises(ValueError, match="3 and 2 frames"):
        spatiotemporal_iou(A, P1[:2])
    with pytest.raises(ValueError, match=r"b\[0\]"):
        spatiotemporal_iou(A, [box(8, 10, 0, 1, 0, 1), None, None])


def test_perfect_predictions(tmp_path):
    "The YouTube-VIS fixture's ground truth (uncompressed RLE, polygons, None, compressed RLE) as results: AP 100."
    gt = write_fixture(tmp_path / "ytvis") / "train.json"
    data = json.loads(gt.read_text())
    size = {v["id"]: (v["height"], v["width"]) for v in data["videos"]}
    from etc_nb.data.ytvis import decode_segmentation
    res = []
    for a in data["annotations"]:
        h, w = size[a["video_id"]]
        segs = [None if s is None else mask_utils.encode(np.asfortranarray(
            decode_segmentation(s, h, w).astype(np.uint8))) for s in a["segmentations"]]
        res.append(result([None if s is None else {"size": s["size"], "counts": s["counts"].decode()} for s in segs],
                          1.0, a["video_id"], a["category_id"]))
    out = evaluate_ytvis(gt, res)
    assert list(out) == KEYS
    for k in ("AP", "AP50", "AP75", "APs", "AR1", "AR10", "AR100", "ARs"):
        assert out[k] == pytest.approx(100.0, abs=1e-9)
    assert all(math.isnan(out[k]) for k in ("APm", "APl", "ARm", "ARl"))      # all objects are small
    (tmp_path / "res.json").write_text(json.dumps(res))
    assert evaluate_ytvis(gt, tmp_path / "res.json") == out
    assert evaluate_ytvis(str(gt), str(tmp_path / "res.json")) == out
    assert evaluate_ytvis(gt, [])["AP"] == 0.0


def test_miss_and_false_positive(tmp_path):
    """Two objects A, B; P1 (0.9) has IoU 5/8 with A, P2 (0.8) overlaps nothing, B is missed.
    At thresholds .50, .55, .60: TP then FP, recall 1/2, precision 1 at the 51 recall points 0..0.50, 0 above:
    AP_t = 51/101. At the 7 thresholds from .65: two FPs, AP_t = 0. AP = 3 * 51/101 / 10 = 15.1485 %;
    AP50 = 51/101 = 50.495 %, AP75 = 0; recall 1/2 at 3 of 10 thresholds: AR1 = AR10 = AR100 = 15 %."""
    gt = write_gt(tmp_path / "gt.json", [(1, 10, 10, 3)], [(1, 1, A), (1, 1, B)])
    out = evaluate_ytvis(gt, [result(P1, 0.9), result(P2, 0.8)])
    assert out["AP"] == pytest.approx(15.148514851485148, abs=1e-9)
    assert out["AP50"] == pytest.approx(100 * 51 / 101, abs=1e-9)
    assert out["AP75"] == 0.0
    assert out["APs"] == pytest.approx(out["AP"], abs=1e-12)                 # areas 3 and 4 px: small
    for k in ("AR1", "AR10", "AR100", "ARs"):
        assert out[k] == pytest.approx(15.0, abs=1e-9)
    assert all(math.isnan(out[k]) for k in ("APm", "APl", "ARm", "ARl"))
    # scores swapped: FP first, then TP; precision 0, 1/2 -> monotone 1/2 up to recall 1/2:
    # AP = 3 * (51 * 0.5 / 101) / 10 = 7.574 %; the single best prediction (AR1) is the FP: 0
    out = evaluate_ytvis(gt, [result(P1, 0.8), result(P2, 0.9)])
    assert out["AP"] == pytest.approx(100 * 3 * 51 * 0.5 / 101 / 10, abs=1e-9)
    assert out["AR1"] == 0.0 and out["AR10"] == pytest.approx(15.0, abs=1e-9)
    # ties in score keep the results' order (stable sort, as the official code)
    tied = evaluate_ytvis(gt, [result(P2, 0.9), result(P1, 0.9)])
    assert tied["AP"] == pytest.approx(out["AP"], abs=1e-12)


def test_crowd(tmp_path):
    """Crowd C (200 px), regular R (25 px); D1 (0.95, IoU .855 with C), D2 (0.9, IoU .675), D3 (0.5, = R).
    t <= .65 (4): D1, D2 match the crowd, ignored; AP_t 1. .70-.85 (4): D2 FP before D3: AP_t 1/2.
    .90, .95: D1, D2 FP: precision 1/3: AP_t 1/3. AP = (4 + 2 + 2/3) / 10 = 66.67 %; AR1 0, AR10 100."""
    gt = write_gt(tmp_path / "gt.json", [(1, 20, 20, 1)],
                  [(1, 1, [box(20, 20, 0, 10, 0, 20)], 1), (1, 1, [box(20, 20, 15, 20, 0, 5)])])
    out = evaluate_ytvis(gt, [result([box(20, 20, 0, 9, 0, 19)], 0.95), result([box(20, 20, 0, 9, 0, 15)], 0.9),
                              result([box(20, 20, 15, 20, 0, 5)], 0.5)])
    assert out["AP"] == pytest.approx(100 * (4 + 4 / 2 + 2 / 3) / 10, abs=1e-9)
    assert out["AR1"] == 0.0 and out["AR10"] == pytest.approx(100.0, abs=1e-9)
    # a crowd alone is no positive: no value at all
    only_crowd = write_gt(tmp_path / "crowd.json", [(1, 20, 20, 1)], [(1, 1, [box(20, 20, 0, 10, 0, 20)], 1)])
    assert math.isnan(evaluate_ytvis(only_crowd, [result([box(20, 20, 0, 9, 0, 19)], 0.95)])["AP"])


def test_area_ranges(tmp_path):
    "Average area over the frames where the object is present; ranges 128² / 256², inclusive; json `areas` used."
    S = [box(300, 300, 10, 60, 10, 60)] * 2                                 # 2,500 px: small
    M = [box(300, 300, 100, 250, 100, 250), None]                           # 22,500 px in its one frame: medium
    L = [box(300, 300, 0, 270, 0, 270)] * 2                                 # 72,900 px: large
    gt = write_gt(tmp_path / "gt.json", [(1, 300, 300, 2)], [(1, 1, S), (1, 2, M), (1, 3, L)], categories=(1, 2, 3))
    preds = lambda *p: [result(seg, s, cat=c) for c, seg, s in p]
    out = evaluate_ytvis(gt, preds((1, S, 1.0), (2, M, 1.0), (3, L, 1.0)))
    for k in ("AP", "APs", "APm", "APl", "ARs", "ARm", "ARl"):
        assert out[k] == pytest.approx(100.0, abs=1e-9)
    out = evaluate_ytvis(gt, preds((1, S, 1.0), (3, L, 1.0)))
    assert (out["APs"], out["APm"], out["APl"]) == pytest.approx((100.0, 0.0, 100.0), abs=1e-9)
    assert out["AP"] == pytest.approx(200 / 3, abs=1e-9)
    # a large false positive above the small object's true one: half its AP in "all", ignored in "small"
    out = evaluate_ytvis(gt, preds((1, [box(300, 300, 40, 300, 40, 300)] * 2, 1.0), (1, S, 0.9), (2, M, 1.0),
                                   (3, L, 1.0)))
    assert out["AP"] == pytest.approx(250 / 3, abs=1e-9) and out["APs"] == pytest.approx(100.0, abs=1e-9)
    # exactly 128² px is small and medium (both bounds inclusive)
    edge = [box(300, 300, 0, 128, 0, 128)]
    gt = write_gt(tmp_path / "edge.json", [(1, 300, 300, 1)], [(1, 1, edge)])
    out = evaluate_ytvis(gt, [result(edge, 1.0)])
    assert out["APs"] == pytest.approx(100.0, abs=1e-9) and out["APm"] == pytest.approx(100.0, abs=1e-9)
    assert math.isnan(out["APl"])
    # the ground truth's json `areas` decide its range (as the official code), not its mask
    gt = write_gt(tmp_path / "areas.json", [(1, 300, 300, 2)], [(1, 1, S, 0, [20000, None])])
    out = evaluate_ytvis(gt, [result(S, 1.0)])
    assert math.isnan(out["APs"]) and out["APm"] == pytest.approx(100.0, abs=1e-9)
    assert AREA_RANGES["small"] == (0, 128 ** 2) and AREA_RANGES["medium"] == (128 ** 2, 256 ** 2)


# ---------------------------------------------------------------- against COCOeval

def random_case(seed, n_images=8, size=320, cats=(1, 2, 5), crowded=14):
    "A random single-frame dataset as YouTube-VIS gt + results and as COCO gt + results (no crowds)."
    rng = np.random.default_rng(seed)

    def rand_box():
        lo, hi = [(8, 120), (130, 250), (260, size)][rng.integers(3)]
        h, w = rng.integers(lo, hi + 1, 2)
        y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        return int(y), int(y + h), int(x), int(x + w)

    def jitter(b):
        y0, y1, x0, x1 = b
        dy = rng.integers(-(y1 - y0) // 4, (y1 - y0) // 4 + 1)
        dx = rng.integers(-(x1 - x0) // 4, (x1 - x0) // 4 + 1)
        return max(0, int(y0 + dy)), min(size, int(y1 + dy)), max(0, int(x0 + dx)), min(size, int(x1 + dx))

    cat_list = [{"id": c, "name": str(c)} for c in cats]
    yv = {"videos": [], "annotations": [], "categories": cat_list}
    coco = {"images": [], "annotations": [], "categories": cat_list}
    yv_res, coco_res = [], []
    for i in range(1, n_images + 1):
        yv["videos"].append({"id": i, "height": size, "width": size, "length": 1, "file_names": [f"{i}/0.jpg"]})
        coco["images"].append({"id": i, "height": size, "width": size})
        for c in cats:
            preds = []
            for _ in range(rng.integers(0, 4)):
                b = rand_box()
                y0, y1, x0, x1 = b
                seg = box(size, size, *b) if rng.random() < 0.7 else [[x0, y0, x1, y0, x1, y1, x0, y1]]
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, size, size)) if isinstance(seg, list) else seg
                area = int(mask_utils.area(rle))
                n = len(coco["annotations"]) + 1
                yv["annotations"].append({"id": n, "video_id": i, "category_id": c, "iscrowd": 0,
                                          "segmentations": [seg], "areas": [area]})
                coco["annotations"].append({"id": n, "image_id": i, "category_id": c, "iscrowd": 0,
                                            "segmentation": seg, "area": area, "bbox": [x0, y0, x1 - x0, y1 - y0]})
                if rng.random() < 0.8:
                    preds.append(jitter(b))
            preds += [rand_box() for _ in range(rng.integers(0, 3) if (i, c) != (1, cats[0]) else crowded)]
            for b in preds:
                s, seg = round(float(rng.random()), 2), box(size, size, *b)
                yv_res.append({"video_id": i, "category_id": c, "score": s, "segmentations": [seg]})
                coco_res.append({"image_id": i, "category_id": c, "score": s, "segmentation": seg})
    return yv, yv_res, coco, coco_res


def cocoeval_stats(coco_gt, coco_res):
    "COCOeval's 12 segm stats with YouTube-VIS's area ranges, x100, NaN for -1."
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(coco_gt))
        gt.createIndex()
        E = COCOeval(gt, gt.loadRes(json.loads(json.dumps(coco_res))), "segm")
        E.params.areaRng = [list(r) for r in AREA_RANGES.values()]
        E.evaluate()
        E.accumulate()
        E.summarize()
    return np.where(E.stats == -1, np.nan, 100 * E.stats)


@pytest.mark.parametrize("seed,crowded", [(0, 14), (1, 14), (2, 14), (3, 14), (4, 130), (5, 130)])
def test_equals_cocoeval_on_single_frame_videos(tmp_path, seed, crowded):
    "A 1-frame video's spatio-temporal IoU is the image mask IoU: all 12 numbers equal COCOeval's x100."
    yv, yv_res, coco_gt, coco_res = random_case(seed, crowded=crowded)    # crowded=130: beyond maxDets 100
    (tmp_path / "gt.json").write_text(json.dumps(yv))
    ours = evaluate_ytvis(tmp_path / "gt.json", yv_res)
    ref = cocoeval_stats(coco_gt, coco_res)
    np.testing.assert_allclose([ours[k] for k in KEYS], ref, rtol=0, atol=1e-9)
    assert not np.isnan(ref).any()


# ---------------------------------------------------------------- errors

def test_errors(tmp_path):
    gt = write_gt(tmp_path / "gt.json", [(1, 10, 10, 3)], [(1, 1, A)])
    r = result(P1, 0.9)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        evaluate_ytvis(tmp_path / "nope.json", [r])
    with pytest.raises(FileNotFoundError, match="res.json"):
        evaluate_ytvis(gt, tmp_path / "res.json")
    cases = [([dict(r, video_id=7)], r"results\[0\]: video_id 7 is not a video of the ground truth; expected one of \[1\]"),
             ([r, dict(r, category_id=3)], r"results\[1\]: category_id 3 is not a category"),
             ([dict(r, segmentations=P1[:2])], "2 segmentations for video 1; expected one per frame, 3"),
             ([dict(r, segmentations=None)], "NoneType segmentations for video 1"),
             ([dict(r, segmentations=[box(9, 10, 0, 1, 0, 1), None, None])], r"results\[0\], frame 0: .*RLE size"),
             ([{"video_id": 1}], r"results\[0\]: no 'category_id'"),
             ([dict(r, score="high")], "expected a finite number"),
             ({"video_id": 1}, "expected a list of dicts")]
    for res, msg in cases:
        with pytest.raises(ValueError, match=msg) as e:
            evaluate_ytvis(gt, res)
        assert "\n" not in str(e.value)
    (tmp_path / "res.json").write_text(json.dumps([dict(r, video_id=9)]))
    with pytest.raises(ValueError, match=r"res.json\[0\]: video_id 9"):
        evaluate_ytvis(gt, tmp_path / "res.json")
    bad = write_gt(tmp_path / "bad.json", [(1, 10, 10, 3)], [(1, 1, A[:2])])
    with pytest.raises(ValueError, match="annotation 1: 2 segmentations, but video 1 has 3 frames"):
        evaluate_ytvis(bad, [])
    bad = write_gt(tmp_path / "bad2.json", [(1, 10, 10, 3)], [(2, 1, A)])
    with pytest.raises(ValueError, match="annotation 1: video_id 2 is not in videos"):
        evaluate_ytvis(bad, [])
    bad = write_gt(tmp_path / "bad3.json", [(1, 10, 10, 3)], [(1, 1, [{"counts": [3], "size": [10, 10]}, None, None])])
    with pytest.raises(ValueError, match="annotation 1, frame 0: .*run lengths sum to 3"):
        evaluate_ytvis(bad, [])
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not a JSON file"):
        evaluate_ytvis(tmp_path / "broken.json", [])
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(ValueError, match="no 'videos'"):
        evaluate_ytvis(tmp_path / "empty.json", [])
