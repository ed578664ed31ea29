"Tests of etc_nb.tracking: flow-warped Hungarian linking of per-frame instances, and YouTube-VIS results."
import json
import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from etc_nb.tracking import InstanceTracker, Track, track_video, tracks_to_ytvis, write_ytvis_results
from etc_nb.vis_eval import evaluate_ytvis


def square_video(objects, T, size=(40, 64), side=10):
    """Per-frame instance outputs and the T-1 exact flows (numpy (H,W,2), from frame t back to t-1) of squares.
    `objects`: [(label, score, y0, x0, dy, dx, frames the model sees it in or None)], the first in front: an
    object's mask is its visible part, its pixels carry minus its motion, the background 0."""
    H, W = size
    outputs, flows = [], []
    for t in range(T):
        taken, masks, scores, labels = np.zeros(size, bool), [], [], []
        flow = np.zeros((H, W, 2), np.float32)
        for label, score, y0, x0, dy, dx, frames in objects:
            m = np.zeros(size, bool)
            y, x = y0 + dy * t, x0 + dx * t
            m[max(y, 0):y + side, max(x, 0):x + side] = True
            m &= ~taken
            taken |= m
            flow[m] = (-dx, -dy)
            if frames is None or t in frames:
                masks.append(np.where(m, 0.9, 0.1))
                scores.append(score)
                labels.append(label)
        outputs.append({"masks": np.array(masks).reshape(-1, H, W), "scores": np.array(scores),
                        "labels": np.array(labels, dtype=np.int64)})
        flows.append(flow)
    return outputs, flows[1:]


def ids_per_frame(outputs, flows=None, **kw):
    tracker = InstanceTracker(**kw)
    return [tracker.step(o["masks"], o["scores"], o["labels"], None if flows is None or t == 0 else flows[t - 1]).tolist()
            for t, o in enumerate(outputs)]


MOVING = [(1, 0.9, 4, 2, 0, 6, None), (2, 0.8, 18, 50, 1, -5, None)]   # frame-to-frame IoU 0.25 and 0.29 unwarped


def test_translation_keeps_ids():
    outputs, flows = square_video(MOVING, T=6)
    assert ids_per_frame(outputs, flows) == [[1, 2]] * 6
    broken = [[2 * t + 1, 2 * t + 2] for t in range(6)]
    assert ids_per_frame(outputs) == broken                            # identity flow: below min_iou every frame
    assert ids_per_frame(outputs, [-f for f in flows]) == broken       # the forward flow moves masks the wrong way
    tracks = track_video(outputs, flows)
    assert [(tr.id, tr.category, tr.frames) for tr in tracks] == [(1, 1, list(range(6))), (2, 2, list(range(6)))]
    assert tracks[0].score == pytest.approx(0.9) and tracks[1].score == pytest.approx(0.8)
    for t in range(6):
        np.testing.assert_array_equal(tracks[1].mask(t), outputs[t]["masks"][1] > 0.5)
    assert tracks[0].mask(6) is None


def test_torch_inputs_same_as_numpy():
    outputs, flows = square_video(MOVING, T=4)
    tracker = InstanceTracker()
    for t, o in enumerate(outputs):
        flow = None if t == 0 else torch.from_numpy(flows[t - 1]).permute(2, 0, 1)      # (2,H,W)
        ids = tracker.step(torch.from_numpy(o["masks"]).float(), torch.from_numpy(o["scores"]),
                           torch.from_numpy(o["labels"]), flow[None] if t == 2 else flow)  # (1,2,H,W) too
        assert ids.tolist() == [1, 2]
    bools = [dict(o, masks=o["masks"] > 0.5) for o in outputs]
    assert [tr.frames for tr in track_video(bools, flows[:3])] == [[0, 1, 2, 3]] * 2


def test_new_object_gets_new_id():
    objs = MOVING + [(1, 0.7, 28, 20, 0, 0, range(3, 6))]
    outputs, flows = square_video(objs, T=6)
    assert ids_per_frame(outputs, flows) == [[1, 2]] * 3 + [[1, 2, 3]] * 3


def test_gaps_and_ids_never_reused():
    # object 1 missed in frames 2, 3 while moving: carried by the flow, taken back in frame 4 (gap 2 = max_gap)
    objs = [(1, 0.9, 4, 2, 0, 6, [0, 1, 4, 5]), (2, 0.8, 18, 50, 1, -5, None), (1, 0.7, 28, 20, 0, 0, range(3, 6))]
    outputs, flows = square_video(objs, T=6)
    assert ids_per_frame(outputs, flows) == [[1, 2], [1, 2], [2], [2, 3], [1, 2, 3], [1, 2, 3]]
    assert ids_per_frame(outputs, flows, max_gap=1) == [[1, 2], [1, 2], [2], [2, 3], [4, 2, 3], [4, 2, 3]]
    assert ids_per_frame(outputs, flows, max_gap=0)[4][0] == 4
    # static object: unmatched in frames 2-4 (3 > max_gap), so it ends; back in frame 5 it is track 2, not 1
    static = [(1, 0.9, 4, 2, 0, 0, [0, 1, 5]), (1, 0.8, 20, 30, 0, 0, [6])]
    outputs, _ = square_video(static, T=7)
    assert ids_per_frame(outputs) == [[1], [1], [], [], [], [2], [3]]
    assert ids_per_frame(outputs, max_gap=3) == [[1], [1], [], [], [], [1], [2]]


def test_crossing_same_category():
    "Two category-1 squares cross (one partly behind the other in frames 4, 5): the flow keeps both ids."
    crossing = [(1, 0.9, 10, 10, 0, 4, None), (1, 0.85, 14, 44, 0, -4, None)]
    outputs, flows = square_video(crossing, T=9)
    assert ids_per_frame(outputs, flows) == [[1, 2]] * 9
    no_flow = ids_per_frame(outputs)
    assert no_flow[:5] == [[1, 2]] * 5 and no_flow[5] == [1, 3]         # the hidden object's track breaks


def test_category_vote_and_filters():
    outputs, flows = square_video(MOVING[:1], T=6)
    outputs[2]["labels"] = np.array([2])
    assert ids_per_frame(outputs, flows) == [[1], [1], [2], [1], [1], [1]]   # other category: its own track
    tracks = track_video(outputs, flows, same_category=False)
    assert len(tracks) == 1 and tracks[0].labels == [1, 1, 2, 1, 1, 1] and tracks[0].category == 1
    assert Track(1, [0, 1, 2], [None] * 3, [0.9, 0.2, 0.3], [4, 5, 5]).category == 4      # 0.9 vs 0.5
    assert Track(1, [0, 1], [None] * 2, [0.5, 0.5], [3, 2]).category == 2                 # tie: smaller label
    # below min_score, or an empty mask: not tracked
    outputs, flows = square_video(MOVING, T=3)
    outputs[1]["scores"] = np.array([0.9, 0.1])
    assert ids_per_frame(outputs, flows, min_score=0.5) == [[1, 2], [1, -1], [1, 2]]
    empty = dict(masks=np.zeros((1, 40, 64)), scores=np.ones(1), labels=np.ones(1, int))
    assert InstanceTracker().step(**empty).tolist() == [-1]


def ground_truth(path, objects, T, size=(40, 64), video_id=4):
    outputs, _ = square_video([o[:6] + (None,) for o in objects], T, size)
    def rle(m):
        return {"size": list(size), "counts": mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()}
    anns = [{"id": k + 1, "video_id": video_id, "category_id": o[0], "iscrowd": 0,
             "segmentations": [rle(outputs[t]["masks"][k] > 0.5) if o[6] is None or t in o[6] else None
                               for t in range(T)]} for k, o in enumerate(objects)]
    path.write_text(json.dumps({
        "videos": [{"id": video_id, "height": size[0], "width": size[1], "length": T,
                    "file_names": [f"v/{t:05d}.jpg" for t in range(T)]}],
        "categories": [{"id": c, "name": str(c)} for c in (1, 2)], "annotations": anns}))
    return path


def test_ytvis_round_trip(tmp_path):
    objs = MOVING + [(1, 0.7, 28, 20, 0, 0, range(3, 6))]
    gt = ground_truth(tmp_path / "gt.json", objs, T=6)
    entries = tracks_to_ytvis(track_video(*square_video(objs, T=6)), video_id=4, num_frames=6)
    assert json.loads(json.dumps(entries)) == entries
    assert [e["category_id"] for e in entries] == [1, 2, 1] and entries[2]["segmentations"][:3] == [None] * 3
    assert all(isinstance(s["counts"], str) for e in entries for s in e["segmentations"] if s is not None)
    path = write_ytvis_results(tmp_path / "out" / "results.json", entries)
    assert json.loads(path.read_text()) == entries
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]     # no temporary file left
    res = evaluate_ytvis(gt, path)
    assert res["AP"] == pytest.approx(100.0, abs=1e-9) and res["AR10"] == pytest.approx(100.0, abs=1e-9)
    assert res["AR1"] == pytest.approx(75.0, abs=1e-9)      # 1 prediction per video and category: 1 of 2 in cat 1
    # without flow the moving objects break into 1-frame tracks (IoU 1/6): 6 FPs (0.9) before object 3 (0.7)
    # in category 1, precision 1/7 up to recall 1/2; category 2: 0
    res = evaluate_ytvis(gt, tracks_to_ytvis(track_video(square_video(objs, T=6)[0]), 4, 6))
    assert res["AP"] == pytest.approx(100 * 51 / 101 / 7 / 2, abs=1e-9)
    mapped = tracks_to_ytvis(track_video(*square_video(objs, T=6)), 4, 6, category_ids={1: 11, 2: 22})
    assert [e["category_id"] for e in mapped] == [11, 22, 11]
    assert [e["category_id"] for e in tracks_to_ytvis(track_video(*square_video(objs, T=6)), 4, 6,
                                                       category_ids=[0, 5, 6])] == [5, 6, 5]


def test_errors():
    tracker = InstanceTracker()
    ok = dict(masks=np.zeros((1, 4, 6)), scores=np.ones(1), labels=np.ones(1, int))
    cases = [(lambda: tracker.step(np.zeros((4, 6)), [], []), "masks: expected (N,H,W)"),
             (lambda: tracker.step(ok["masks"], np.ones(2), ok["labels"]), "scores: expected shape (1,)"),
             (lambda: tracker.step(ok["masks"], ok["scores"], np.ones((1, 1), int)), "labels: expected shape (1,)"),
             (lambda: tracker.step(ok["masks"], ok["scores"], np.ones(1)), "labels: expected integer")]
    for fn, msg in cases:
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            fn()
    tracker.step(**ok)
    with pytest.raises(ValueError, match="frame 1 is 5x6, the video's frames are 4x6"):
        tracker.step(np.zeros((1, 5, 6)), ok["scores"], ok["labels"])
    for bad in (np.zeros((4, 6, 3)), np.zeros((2, 4, 6)), torch.zeros(2, 4, 5), torch.zeros(2, 2, 4, 6)):
        with pytest.raises(ValueError, match="flow: expected a flow of the 4x6 frame"):
            tracker.step(**ok, flow=bad)
    for kw, msg in ((dict(min_iou=0), "min_iou"), (dict(min_iou=1.5), "min_iou"), (dict(max_gap=-1), "max_gap"),
                    (dict(max_gap=1.5), "max_gap")):
        with pytest.raises(ValueError, match=msg):
            InstanceTracker(**kw)
    with pytest.raises(ValueError, match="flows: 0 flows for 2 frames; expected 1"):
        track_video([ok, ok], flows=[])
    with pytest.raises(ValueError, match=r"outputs\[1\]: no scores, labels"):
        track_video([ok, {"masks": 1}])
    tracks = track_video(*square_video(MOVING, T=6))
    with pytest.raises(ValueError, match=r"track 1 has frame 5; expected frames 0..3 \(num_frames=4\)"):
        tracks_to_ytvis(tracks, 1, num_frames=4)
    with pytest.raises(ValueError, match="category_ids: no category id for label 2"):
        tracks_to_ytvis(tracks, 1, 6, category_ids={1: 7})
    assert not math.isnan(tracks[0].score)
