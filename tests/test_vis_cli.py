"""`etc-nb evaluate` and `etc-nb segment` with an instance checkpoint (SOLOv2) on the embedded benchmark's YouTube-VIS
tree: the VIS table, the tracked overlay video, track-id PNGs and results JSON, and the errors of what does not apply."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from etc_nb.cli import main
from etc_nb.config import TrainConfig
from etc_nb.data.augment import to_image
from etc_nb.data.synthetic_vis import write_ytvis_benchmark
from etc_nb.train import train
from etc_nb.vis_eval import evaluate_ytvis

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("viscli")
    root = write_ytvis_benchmark(d / "bench", n_train=2, n_val=1, frames=4, size=(48, 96))
    cfg = TrainConfig(dataset="ytvis", root=str(root), model="solov2_light_r18", num_classes=2,
                      model_kw={"num_grids": [8, 6, 4, 3, 2]}, class_names=("person", "car"), crop=(48, 96),
                      scale=(1.0, 1.0), steps=2, batch_size=2, flow="dis", scheme="tl", lam=1.0)
    ckpt = train(cfg, d / "run", progress=False, workers=0)
    frames = d / "frames"
    frames.mkdir()
    for t, img in enumerate(sorted((root / "valid" / "JPEGImages" / "synth_000000").glob("*.jpg"))):
        cv2.imwrite(str(frames / f"{t:03d}.png"), cv2.imread(str(img)))
    return root, ckpt, frames, d


def test_evaluate_prints_the_vis_table(setup, capsys):
    root, ckpt, _, d = setup
    assert main(["evaluate", "--checkpoint", str(ckpt), "--json", str(d / "vis.json")]) == 0
    out = capsys.readouterr().out
    assert "| model | AP | AP50 | AP75 | AR1 | AR10 | TC | latency_ms | fps |" in out and "| run |" in out
    res = json.loads((d / "vis.json").read_text())
    assert res["n_videos"] == 1 and res["n_frames"] == 4 and 0 <= res["AP"] <= 100
    assert main(["evaluate", "--checkpoint", str(ckpt), "--backend", "onnxruntime"]) == 2
    assert "instance models (solov2_light_r18) run eagerly only" in capsys.readouterr().err


def test_segment_writes_tracked_overlays_ids_and_results(setup, capsys):
    root, ckpt, frames, d = setup
    out = d / "seg"
    out.mkdir()
    code = main(["segment", str(frames), "--checkpoint", str(ckpt), "--out", str(out / "v.mp4"),
                 "--labels", str(out / "ids"), "--results", str(out / "r.json")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "4 frames" in printed and "tracks" in printed
    cap = cv2.VideoCapture(str(out / "v.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    ids = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((out / "ids").glob("*.png"))]
    assert len(ids) == 4 and all(m.dtype == np.uint16 and m.shape == (48, 96) for m in ids)
    results = json.loads((out / "r.json").read_text())
    assert all(len(r["segmentations"]) == 4 and r["category_id"] in (1, 2) for r in results)
    # the track-id PNGs agree with the results, track by track (where masks overlap, the higher id is drawn)
    from pycocotools import mask as mask_utils
    for k, r in enumerate(results, 1):
        for t, seg in enumerate(r["segmentations"]):
            drawn = ids[t] == k
            if seg is None:
                assert not drawn.any()
            else:
                assert not (drawn & ~mask_utils.decode(dict(seg, counts=seg["counts"].encode())).astype(bool)).any()
    assert sorted(p.name for p in out.iterdir()) == ["ids", "r.json", "v.mp4"]      # nothing partial left


def test_segment_results_is_for_instance_models(setup, capsys, tmp_path):
    _, _, frames, _ = setup
    code = main(["segment", str(frames), "--model", "espnetv2", "--num-classes", "3", "--out", str(tmp_path / "v.mp4"),
                 "--results", str(tmp_path / "r.json"), "--flow", "none"])
    assert code == 2 and "--results: the tracks of an instance model" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
