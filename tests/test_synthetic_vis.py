"""Tests of etc_nb.data.synthetic_vis: instance maps from the z-buffer, the YouTube-VIS 2019 files (RLE, areas,
boxes, None where absent) against re-rendered snippets, reading them with the unchanged `ytvis` reader, the
regeneration skip, and `etc-nb synth --layout ytvis`."""
import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from etc_nb.cli import main
from etc_nb.data import get_dataset
from etc_nb.data.synthetic import CLASSES, render_snippet
from etc_nb.data.synthetic_vis import CATEGORIES, _SPLIT_CODE, _tracks, instance_maps, write_ytvis_benchmark

SIZE, T = (32, 64), 4
KW = dict(n_train=2, n_val=1, frames=T, size=SIZE)
CODES = {"train": 10, "valid": 11}
CATEGORY_ID = {c["name"]: c["id"] for c in CATEGORIES}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_ytvis_benchmark(tmp_path_factory.mktemp("vis") / "vis", seed=0, **KW)


def tree(root):
    "Every file under `root` as {relative path: bytes}, without the flows the reader cached."
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != "flow_cache"}


def rendered(split, index, seed=0):
    return render_snippet((seed, CODES[split], index), SIZE, T, 1.0)


def as_read(split, index):
    """`instance_maps` of a written video as the reader numbers them: instance ids `(T,H,W)` (annotations 1..n in
    order, i.e. the visible objects in layer order) and class ids `(T,H,W)`."""
    ids, info = instance_maps(rendered(split, index))
    visible = [k for k in range(1, len(info) + 1) if (ids == k).any()]
    relabel = np.zeros(len(info) + 1, np.int64)
    relabel[visible] = np.arange(1, len(visible) + 1)
    category = np.array([0] + [CATEGORY_ID[i["category"]] for i in info])
    return relabel[ids], category[ids]


def test_split_codes_are_not_the_semantic_benchmarks():
    from etc_nb.data.synthetic import _SPLIT_CODE as SEMANTIC
    assert _SPLIT_CODE == CODES and not set(CODES.values()) & set(SEMANTIC.values())


@pytest.mark.parametrize("index", range(6))
def test_instance_maps_partition_the_object_pixels(index):
    snip = render_snippet((3, 10, index), (48, 96), 5)
    ids, info = instance_maps(snip)
    assert ids.shape == snip.labels.shape and ids.dtype == np.int32
    objects = [(i, n) for i, n in enumerate(snip.names) if n.startswith(("person", "car"))]
    assert [i["layer"] for i in info] == [n for _, n in objects]             # back to front, 1-based
    assert np.array_equal(ids > 0, np.isin(snip.labels, [CLASSES["person"], CLASSES["car"]]))
    for k, ((layer, name), inst) in enumerate(zip(objects, info), 1):
        assert inst["category"] == name.rstrip("0123456789")
        assert np.array_equal(ids == k, snip.zbuf == layer)
        assert set(np.unique(snip.labels[ids == k]).tolist()) <= {CLASSES[inst["category"]]}


def test_tracks_none_where_absent_and_no_empty_track():
    ids = np.zeros((3, 6, 8), np.int32)
    ids[0, 1:3, 2:5] = 1                                                    # instance 1 absent in frame 1
    ids[2, 4:6, 0:1] = 1
    ids[:, 0, 7] = 3                                                        # instance 2 never visible
    info = [{"layer": "person0", "category": "person"}, {"layer": "person1", "category": "person"},
            {"layer": "car0", "category": "car"}]
    a, c = _tracks(ids, info)
    assert (a["category_id"], c["category_id"]) == (1, 2)
    assert a["segmentations"][1] is None and a["areas"][1] is None and a["bboxes"][1] is None
    assert a["areas"][0] == 6 and a["bboxes"][0] == [2.0, 1.0, 3.0, 2.0] and a["bboxes"][2] == [0.0, 4.0, 1.0, 2.0]
    assert c["areas"] == [1, 1, 1] and all(isinstance(s["counts"], str) for s in c["segmentations"])


def test_layout_and_round_trip(bench):
    left_out = 0
    assert (json.loads((bench / "synthetic_vis.json").read_text())["size"]) == list(SIZE)
    for split, n in (("train", 2), ("valid", 1)):
        data = json.loads((bench / f"{split}.json").read_text())
        assert data["categories"] == CATEGORIES
        assert [v["id"] for v in data["videos"]] == list(range(1, n + 1))
        assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
        for v in data["videos"]:
            name = f"synth_{v['id'] - 1:06d}"
            assert (v["width"], v["height"], v["length"]) == (SIZE[1], SIZE[0], T)
            assert v["file_names"] == [f"{name}/{t:05d}.jpg" for t in range(T)]
            snip = rendered(split, v["id"] - 1)
            for t, f in enumerate(v["file_names"]):                         # the frame, RGB as BGR JPEG quality 95
                _, jpeg = cv2.imencode(".jpg", snip.frames[t][..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
                assert (bench / split / "JPEGImages" / f).read_bytes() == jpeg.tobytes()
            ids, info = instance_maps(snip)
            visible = [k for k in range(1, len(info) + 1) if (ids == k).any()]
            anns = [a for a in data["annotations"] if a["video_id"] == v["id"]]
            assert len(anns) == len(visible)                               # no track for an object never in view
            left_out += len(info) - len(visible)
            for a, k in zip(anns, visible):
                assert a["category_id"] == CATEGORY_ID[info[k - 1]["category"]]
                assert (a["iscrowd"], a["height"], a["width"], a["length"]) == (0, SIZE[0], SIZE[1], 1)
                assert len(a["segmentations"]) == len(a["areas"]) == len(a["bboxes"]) == T
                for t in range(T):
                    m, seg = ids[t] == k, a["segmentations"][t]
                    if not m.any():
                        assert seg is None and a["areas"][t] is None and a["bboxes"][t] is None
                        continue
                    rle = {"size": seg["size"], "counts": seg["counts"].encode()}
                    assert seg["size"] == list(SIZE)
                    assert np.array_equal(mask_utils.decode(rle).astype(bool), m)
                    assert a["areas"][t] == int(mask_utils.area(rle)) == int(m.sum())
                    assert a["bboxes"][t] == mask_utils.toBbox(rle).tolist()
    assert left_out == 1                                                    # valid video 0's person0 never enters


def test_reader_sequence_and_triplet(bench):
    seq = get_dataset("ytvis", bench, "valid", mode="sequence")
    assert len(seq) == 1 and seq.classes == ("background", "person", "car")
    item = seq[0]
    instances, labels = as_read("valid", 0)
    assert item["names"] == [f"synth_000000/{t:05d}" for t in range(T)] and item["labelled"].all()
    assert np.array_equal(item["instances"].numpy(), instances)
    assert np.array_equal(item["labels"].numpy(), labels)
    tri = get_dataset("ytvis", bench, "train", mode="triplet", flow="dis", gap=1, random_gap=False)
    assert len(tri) == 2 * T                                                # every frame of every video labelled
    it = tri[T + 1]
    instances, labels = as_read("train", 1)
    assert it["name"] == "synth_000001/00001" and it["gaps"].tolist() == [-1, 1]
    assert it["frames"].shape == (3, 3, *SIZE) and it["flows"].shape == (2, 2, *SIZE)
    assert np.array_equal(it["instances"].numpy(), instances[1]) and np.array_equal(it["label"].numpy(), labels[1])
    assert it["flows"].abs().max() > 0                                      # DIS ran on the frames
    assert len(list(bench.glob("flow_cache/*/train/synth_000001/*.png"))) == 2   # cached: centre -> before, after


def test_reuse_and_rewrite(tmp_path):
    root = write_ytvis_benchmark(tmp_path / "v", **KW)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert write_ytvis_benchmark(tmp_path / "v", workers=2, **KW) == root   # workers is not a parameter
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps
    get_dataset("ytvis", root, "valid", mode="sequence", flow="dis_ultrafast")[0]   # caches flows of the old frames
    before = tree(root)
    write_ytvis_benchmark(root, **dict(KW, n_train=1, nuisance=0.0))
    after = tree(root)
    assert (root / "valid.json").stat().st_mtime_ns != stamps[root / "valid.json"]
    assert sorted(p.name for p in (root / "train" / "JPEGImages").iterdir()) == ["synth_000000"]
    assert not list(root.glob("flow_cache/*/*/synth_*"))                  # flows of the old frames are stale
    assert after["valid/JPEGImages/synth_000000/00000.jpg"] != before["valid/JPEGImages/synth_000000/00000.jpg"]
    assert json.loads(after["synthetic_vis.json"])["nuisance"] == 0.0


def test_workers_give_the_same_bytes(bench, tmp_path):
    assert tree(write_ytvis_benchmark(tmp_path / "w", workers=2, **KW)) == tree(bench)


def test_empty_split_is_not_written(tmp_path):
    root = write_ytvis_benchmark(tmp_path / "v", **dict(KW, n_train=1, n_val=0))
    assert not (root / "valid.json").exists() and not (root / "valid").exists()
    with pytest.raises(FileNotFoundError, match="valid.json"):
        get_dataset("ytvis", root, "valid")
    assert len(get_dataset("ytvis", root, "train")) == T


@pytest.mark.parametrize("bad, name", [(dict(frames=1), "frames"), (dict(size=(64, 32)), "size"),
                                       (dict(seed=-1), "seed"), (dict(workers=0), "workers"),
                                       (dict(nuisance=-1.0), "nuisance"), (dict(n_train=0, n_val=0), "n_train")])
def test_bad_arguments(tmp_path, bad, name):
    with pytest.raises(ValueError, match=name):
        write_ytvis_benchmark(tmp_path / "x", **dict(KW, **bad))
    assert not (tmp_path / "x").exists()


def test_cli(bench, tmp_path, capsys):
    args = ["synth", "--layout", "ytvis", "--root", str(tmp_path / "cli"), "--seed", "0", "--n-train", "2",
            "--n-val", "1", "--frames", str(T), "--size", f"{SIZE[0]}x{SIZE[1]}", "--nuisance", "1.0"]
    assert main(args) == 0
    assert tree(tmp_path / "cli") == tree(bench)
    assert get_dataset("ytvis", tmp_path / "cli", "valid").classes == ("background", "person", "car")
    capsys.readouterr()
    assert main(["synth", "--layout", "ytvis", "--root", str(tmp_path / "no"), "--n-pretrain", "2"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("etc-nb synth: error: --n-pretrain:")
    assert not (tmp_path / "no").exists()
