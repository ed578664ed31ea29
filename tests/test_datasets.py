"""Tests of the dataset readers for official layouts (etc_nb.data.camvid, vw300mask, ytvis, videomatting, video)
and their registration: labels against independent decodings of the files, sequences/clips/triplets, flows,
and the errors for a missing root, split or file and a corrupt image."""
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from etc_nb.data import DATASETS, get_dataset
from etc_nb.data import camvid, videomatting, video, vw300mask, ytvis
from etc_nb.data.augment import VideoAugment, to_tensor
from etc_nb.data.camvid import CamVid
from etc_nb.data.video import Video, decode_video
from etc_nb.data.videomatting import VideoMatting
from etc_nb.data.vw300mask import VW300Mask
from etc_nb.data.ytvis import YouTubeVIS

torch.set_num_threads(1)


def rgb(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def grey(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def copy(tree, tmp_path):
    "A private copy of a module-scoped fixture tree, for tests that damage it."
    dst = tmp_path / tree.name
    shutil.copytree(tree, dst)
    return dst


# ---------------------------------------------------------------- CamVid

@pytest.fixture(scope="module")
def cam(tmp_path_factory):
    return camvid.write_fixture(tmp_path_factory.mktemp("cam") / "CamVid")


def test_camvid_labels_map_void_to_ignore(cam):
    ds = CamVid(cam, "train", margin=2)
    assert len(ds) == 2 and ds.num_classes == 11
    for i in range(len(ds)):
        it = ds[i]
        raw = grey(cam / "trainannot" / f"{it['name']}.png")
        assert (raw == 11).any()                                    # the fixture draws void pixels
        expected = np.where(raw == 11, 255, raw).astype(np.int64)
        assert it["label"].dtype == torch.int64 and np.array_equal(it["label"].numpy(), expected)


def test_camvid_uses_the_still_at_labelled_frames_and_decoded_frames_around(cam):
    ds = CamVid(cam, "train", margin=2)
    frames = ds.snippets[("0001TP", 0)]
    assert [p.name for p in frames.values()] == [f"0001TP_{n:06d}.png" for n in range(6688, 6697)]
    assert frames[2] == cam / "train" / "0001TP_006690.png"
    assert frames[3] == cam / "sequences" / "0001TP" / "0001TP_006691.png"
    it = ds[0]
    assert torch.equal(it["image"], to_tensor(rgb(cam / "train" / "0001TP_006690.png")))
    assert not torch.equal(it["image"], to_tensor(rgb(cam / "sequences/0001TP/0001TP_006690.png")))


def test_camvid_splits_see_only_their_own_labels(cam):
    val = CamVid(cam, "val", mode="sequence", clip=None, margin=2)
    it = val[0]
    assert it["names"][it["labelled"].nonzero().item()] == "0001TP_006698"
    assert it["names"][0] == "0001TP_006696" and len(it["names"]) == 5   # 6696..6700 only


def test_camvid_triplets_random_gaps_and_reproducible(cam):
    ds = CamVid(cam, "train", mode="triplet", gap=2, margin=2)
    gaps = {tuple(ds[(0, s)]["gaps"].tolist()) for s in range(30)}
    assert gaps == {(-2, 1), (-2, 2), (-1, 1), (-1, 2)}          # RS: both gaps drawn from 1..2
    assert torch.equal(ds[(1, 5)]["frames"], ds[(1, 5)]["frames"])


def test_camvid_sequence_clips_count_every_label_once_with_flows(cam, tmp_path):
    seq = CamVid(cam, "test", mode="sequence", clip=4, margin=2, flow="dis_ultrafast", cache_dir=tmp_path)
    items = [seq[i] for i in range(len(seq))]
    assert [len(it["frames"]) for it in items] == [4, 4, 3]       # Seq05VD frames 0..10
    assert sum(int(it["labelled"].sum()) for it in items) == 3     # the three test stills
    assert all(it["flows"].shape == (len(it["frames"]) - 1, 2, 24, 32) for it in items)
    cached = sorted((tmp_path / "dis_ultrafast" / "test" / "Seq05VD").glob("*.png"))
    assert len(cached) == 3 + 3 + 2
    again = CamVid(cam, "test", mode="sequence", clip=4, margin=2, flow="dis_ultrafast", cache_dir=tmp_path)
    assert torch.equal(again[1]["flows"], items[1]["flows"])        # read back from the cache


@pytest.mark.parametrize("reader, fixture, root_says, split, split_says", [
    ("CamVid", "cam", "annot", "trainval", "trainval"),
    ("VW300Mask", "vw", "images_orig", "trainval", "trainval_per10.txt"),
    ("YouTubeVIS", "yt", "JPEGImages", "test", "test.json"),
])
def test_missing_root_or_split_names_what_was_expected(reader, fixture, root_says, split, split_says, tmp_path, request):
    reader = globals()[reader]
    with pytest.raises(FileNotFoundError, match=root_says):
        reader(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=split_says):
        reader(request.getfixturevalue(fixture), split)


def test_camvid_errors(cam, tmp_path):
    stills = camvid.write_fixture(tmp_path / "stills", video=False)
    with pytest.raises(FileNotFoundError, match="sequences/0001TP"):
        CamVid(stills, "train", mode="triplet")
    assert len(CamVid(stills, "test", mode="sequence")[0]["frames"]) == 3   # stills alone still give mIoU
    bad = copy(cam, tmp_path)
    (bad / "testannot" / "Seq05VD_f00004.png").unlink()
    with pytest.raises(FileNotFoundError, match="Seq05VD_f00004.png"):
        CamVid(bad, "test")
    cv2.imwrite(str(bad / "trainannot" / "0001TP_006690.png"), np.full((24, 32), 12, np.uint8))
    with pytest.raises(ValueError, match=r"0001TP_006690.png: unknown class ids \[12\]"):
        CamVid(bad, "train")[0]
    (bad / "train" / "0001TP_006694.png").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="0001TP_006694.png"):
        CamVid(bad, "train", margin=2)[1]
    cv2.imwrite(str(bad / "sequences" / "0001TP" / "0001TP_006688.png"), np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="0001TP_006688.png is \\(64, 48\\)"):
        CamVid(bad, "train")


# ---------------------------------------------------------------- 300VW-Mask

@pytest.fixture(scope="module")
def vw(tmp_path_factory):
    return vw300mask.write_fixture(tmp_path_factory.mktemp("vw") / "300VW-Mask-Dataset")


COLOURS = {(0, 0, 0): 0, (255, 0, 0): 1, (0, 255, 0): 2, (0, 255, 255): 3, (0, 0, 255): 4}


def test_vw300mask_colour_and_id_masks(vw):
    ds = VW300Mask(vw, "train")
    assert VW300Mask.ignore_in_miou == (0,) and ds.classes[0] == "background" and ds.num_classes == 5
    for i in range(len(ds)):
        it = ds[i]
        png = rgb(vw / "labels_orig" / f"{it['name']}.png")       # video 001: colour masks
        ref = np.array([[COLOURS[tuple(px)] for px in row] for row in png])
        assert np.array_equal(it["label"].numpy(), ref)
        assert set(np.unique(ref)) == {0, 1, 2, 3, 4}
    val = VW300Mask(vw, "val", mode="sequence")[0]                 # video 002: class-id masks
    ref = np.stack([grey(vw / "labels_orig" / f"{n}.png") for n in val["names"]])
    assert np.array_equal(val["labels"].numpy(), ref) and bool(val["labelled"].all())


def test_vw300mask_sequences_are_runs_of_listed_frames(vw):
    ds = VW300Mask(vw, "train", mode="sequence")
    assert list(ds.snippets) == [("001_000001", 0), ("001_000005", 0)]
    assert [ds[i]["names"] for i in range(2)] == [["001_000001", "001_000002", "001_000003"],
                                                 ["001_000005", "001_000006"]]       # frames 4 and 7: not listed
    tri = VW300Mask(vw, "train", mode="triplet", gap=1, random_gap=False)
    assert [tri[i]["gaps"].tolist() for i in range(5)] == [[0, 1], [-1, 1], [-1, 0], [0, 1], [-1, 0]]
    assert len(VW300Mask(vw, "A")) == 3


def test_vw300mask_errors(vw, tmp_path):
    varied = vw300mask.write_fixture(tmp_path / "varied", vary_size=True)
    assert VW300Mask(varied, "train")[2]["image"].shape == (3, 43, 39)      # native crop size in frame mode
    with pytest.raises(ValueError, match="differ"):
        VW300Mask(varied, "train", mode="triplet")[0]
    bad = copy(vw, tmp_path)
    (bad / "images_orig" / "002_000004.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="002_000004.jpg"):
        VW300Mask(bad, "val")
    img = cv2.imread(str(bad / "labels_orig" / "001_000002.png"))
    img[0, 0] = (10, 20, 30)
    cv2.imwrite(str(bad / "labels_orig" / "001_000002.png"), img)
    ds = VW300Mask(bad, "train")
    with pytest.raises(ValueError, match="001_000002.png: colours"):
        ds[1]
    (bad / "images_orig" / "001_000003.jpg").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="001_000003.jpg"):
        ds[2]
    (bad / "data_splits" / "split_1" / "test_per10.txt").write_text("/images_orig/003_000001.jpg\n")
    with pytest.raises(ValueError, match="test_per10.txt:1"):
        VW300Mask(bad, "test")


# ---------------------------------------------------------------- YouTube-VIS

@pytest.fixture(scope="module")
def yt(tmp_path_factory):
    return ytvis.write_fixture(tmp_path_factory.mktemp("yt") / "ytvis_2019")


def rle_decode(counts, h, w):
    "Reference decoder of an uncompressed COCO RLE: alternating runs of 0 and 1, column by column."
    flat, pos = np.zeros(h * w, bool), 0
    for i, c in enumerate(counts):
        flat[pos:pos + c] = i % 2 == 1
        pos += c
    return flat.reshape(w, h).T


def test_ytvis_instances_from_rle_polygons_and_none(yt):
    ds = YouTubeVIS(yt, "train")
    data = json.loads((yt / "train.json").read_text())
    person, surf = data["annotations"][0], data["annotations"][2]
    assert ds.classes == ("background", "person", "dog", "surfboard") and ds.category_ids == (1, 8, 27)
    names = [ds[i]["name"] for i in range(len(ds))]
    assert names == ["a1/00000", "a1/00005", "a1/00010", "b2/00000", "b2/00005"]
    for t in range(3):                                             # person = instance 1, class 1, in every frame
        it = ds[t]
        ref = rle_decode(person["segmentations"][t]["counts"], 24, 32)
        dog = it["instances"].numpy() == 2
        assert np.array_equal((it["instances"].numpy() == 1), ref & ~dog)
        assert it["categories"] == [1, 2]
        assert np.array_equal(it["label"].numpy(), it["instances"].numpy())   # classes 1, 2 = instances 1, 2 here
    poly = ds[0]["instances"].numpy() == 2                         # polygon 18..26 x 14..20
    assert poly[15:20, 19:26].all() and not poly[:13].any() and not poly[22:].any() and not poly[:, :17].any()
    assert not (ds[1]["instances"] == 2).any()                     # segmentation None: dog not visible
    late = ds[2]["instances"].numpy()
    box = np.zeros((24, 32), bool)
    box[10:18, 16:24] = True
    assert np.array_equal(late == 2, box)                          # compressed RLE, drawn over the person
    for t in (3, 4):
        it = ds[t]
        ref = rle_decode(surf["segmentations"][t - 3]["counts"], 24, 32)
        assert np.array_equal(it["label"].numpy(), np.where(ref, 3, 0)) and it["categories"] == [3]


def test_ytvis_triplets_sequences_and_augmentation(yt):
    tri = YouTubeVIS(yt, "train", mode="triplet", gap=3, random_gap=False)
    assert [tri[i]["gaps"].tolist() for i in range(5)] == [[0, 3], [-3, 3], [-3, 0], [0, 1], [-1, 0]]
    assert torch.equal(tri[1]["frames"][0], to_tensor(rgb(yt / "train_all_frames/JPEGImages/a1/00002.jpg")))
    seq = YouTubeVIS(yt, "train", mode="sequence", clip=None)
    s = seq[0]
    assert s["labelled"].nonzero().flatten().tolist() == [0, 5, 10]
    assert (s["instances"][~s["labelled"]] == 255).all() and (s["labels"][~s["labelled"]] == 255).all()
    assert torch.equal(s["instances"][5], YouTubeVIS(yt, "train")[1]["instances"])
    aug = YouTubeVIS(yt, "train", mode="triplet", augment=VideoAugment(scale=(0.6, 1.4), crop=(20, 28)))
    lut = torch.tensor([0, 1, 2] + [255] * 253)
    for s in range(5):
        a = aug[(0, s)]
        assert torch.equal(a["label"], lut[a["instances"]]) and a["frames"].shape == (3, 3, 20, 28)


def test_ytvis_errors(yt, tmp_path):
    assert not YouTubeVIS(yt, "valid", mode="sequence")[0]["labelled"].any()
    with pytest.raises(FileNotFoundError, match="no labelled frames"):
        YouTubeVIS(yt, "valid")
    bad = copy(yt, tmp_path)
    (bad / "valid.json").write_text("{oops")
    with pytest.raises(ValueError, match="valid.json"):
        YouTubeVIS(bad, "valid")
    data = json.loads((bad / "train.json").read_text())
    data["annotations"][2]["segmentations"][1]["counts"] = [3, 4]
    (bad / "train.json").write_text(json.dumps(data))
    ds = YouTubeVIS(bad, "train")
    with pytest.raises(ValueError, match="annotation 3, frame 1"):
        ds[4]
    (bad / "train/JPEGImages/a1/00005.jpg").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="a1/00005.jpg"):
        ds[1]
    data["annotations"][0]["category_id"] = 99
    (bad / "train.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="category_id 99"):
        YouTubeVIS(bad, "train")
    (bad / "valid/JPEGImages/c3/00005.jpg").unlink()
    (bad / "valid.json").write_text((yt / "valid.json").read_text())
    with pytest.raises(FileNotFoundError, match="c3/00005.jpg"):
        YouTubeVIS(bad, "valid", mode="sequence")


# ---------------------------------------------------------------- VideoMatting

@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    return videomatting.write_fixture(tmp_path_factory.mktemp("vm") / "videomatting")


def test_videomatting_trimap_levels(vm):
    counts = {}
    for level in ("narrow", "middle", "wide"):
        ds = VideoMatting(vm, "test", trimap=level)
        assert len(ds) == 8 and ds.classes == ("background", "unknown", "foreground")
        for i in (0, 5):
            it = ds[i]
            png = grey(vm / it["name"].split("/")[0] / "trimap" / level / f"{it['name'].split('/')[1]}.png")
            assert set(np.unique(png)) == {0, 128, 255}
            assert np.array_equal(it["label"].numpy(), png.astype(np.int64) * 2 // 255)   # 0, 128, 255 -> 0, 1, 2
        counts[level] = ((ds[0]["label"] == 1).sum().item(), (ds[0]["label"] == 2).sum().item())
    assert counts["narrow"][0] < counts["middle"][0] < counts["wide"][0]          # a wider unknown band ...
    assert counts["narrow"][1] > counts["middle"][1] > counts["wide"][1]          # ... eats into the foreground
    assert VideoMatting(vm, "test", trimap="medium").label_paths == VideoMatting(vm, "test").label_paths


def test_videomatting_sequences_and_errors(vm, tmp_path):
    seq = VideoMatting(vm, "test", mode="sequence", sequences=["alex"])
    assert len(seq) == 1 and seq[0]["names"] == [f"alex/{i:05d}" for i in range(4)]
    with pytest.raises(ValueError, match="one split"):
        VideoMatting(vm, "val")
    with pytest.raises(FileNotFoundError, match="input"):
        VideoMatting(tmp_path / "missing")
    with pytest.raises(ValueError, match="available"):
        VideoMatting(vm, sequences=["dmitriy"])
    bad = copy(vm, tmp_path)
    (bad / "plant" / "trimap" / "narrow" / "00003.png").unlink()
    with pytest.raises(FileNotFoundError, match="00003.png"):
        VideoMatting(bad, trimap="narrow")
    (bad / "alex" / "input" / "00002.png").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="00002.png"):
        VideoMatting(bad)[2]


# ---------------------------------------------------------------- any video

@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    return video.write_fixture(tmp_path_factory.mktemp("vid") / "videos")


def test_video_file_decoded_losslessly_and_frames_unlabelled(vids):
    ds = Video(vids, mode="frame")
    assert sorted(ds.snippets) == [("clip", 0), ("walk", 0)] and len(ds) == 12
    cap, ref = cv2.VideoCapture(str(vids / "clip.avi")), []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        ref.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    assert len(ref) == 6
    for i in range(6):
        it = ds[i]
        assert "label" not in it and it["name"] == f"clip/{i:06d}"
        assert torch.equal(it["image"], to_tensor(ref[i]))
    assert torch.equal(ds[6 + 3]["image"], to_tensor(rgb(vids / "walk" / "3.png")))
    seq = Video(vids, mode="sequence", clip=5)
    assert [len(seq[i]["frames"]) for i in range(len(seq))] == [5, 1, 5, 1]
    assert (seq[0]["labels"] == 255).all() and not seq[0]["labelled"].any()


def test_video_triplet_flow_follows_motion(vids, tmp_path):
    tri = Video(vids / "walk", mode="triplet", gap=1, random_gap=False, flow="dis_fast", cache_dir=tmp_path)
    it = tri[2]
    assert "label" not in it and it["gaps"].tolist() == [-1, 1] and it["name"] == "walk/2"
    fwd, bwd = it["flows"][1, 0, 8:13, 6:12].mean().item(), it["flows"][0, 0, 8:13, 6:12].mean().item()
    assert abs(fwd - 1) < 0.35 and abs(bwd + 1) < 0.35             # the square moves 1 px right per frame


def test_video_natural_order_and_errors(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in (1, 2, 10):
        cv2.imwrite(str(frames / f"f{i}.png"), np.full((16, 16, 3), i, np.uint8))
    assert [it for it in Video(frames, mode="sequence")[0]["names"]] == ["frames/f1", "frames/f2", "frames/f10"]
    with pytest.raises(FileNotFoundError, match="a video file"):
        Video(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no video or frames"):
        Video(tmp_path / "empty")
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="broken.mp4"):
        Video(tmp_path / "broken.mp4")
    assert not (tmp_path / "broken_cache" / "frames" / "broken").exists()   # no partial decode left
    (frames / "f2.png").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="f2.png"):
        Video(frames)[1]


def test_decode_video_reuses_a_finished_decode(vids, tmp_path):
    out = decode_video(vids / "clip.avi", tmp_path / "dec")
    assert len(out) == 6
    assert decode_video(vids / "not-there.avi", tmp_path / "dec") == out


# ---------------------------------------------------------------- registry

def test_registry_names_the_readers(cam, vw, yt, vm, vids):
    expected = {"camvid": (CamVid, cam, "test"), "vw300mask": (VW300Mask, vw, "val"), "ytvis": (YouTubeVIS, yt, "train"),
                "videomatting": (VideoMatting, vm, "test"), "video": (Video, vids, "train")}
    assert set(expected) <= set(DATASETS)
    for name, (cls, root, split) in expected.items():
        ds = get_dataset(name, root, split, mode="sequence")
        assert type(ds) is cls and ds[0]["frames"].ndim == 4


@pytest.mark.parametrize("name", ["camvid", "videomatting"])
def test_pseudo_root_reaches_the_base_reader(name, cam, tmp_path, request):
    "CamVid and VideoMatting pass `pseudo_root` on: a missing one is reported with the pseudo-label layout."
    root = cam if name == "camvid" else request.getfixturevalue("vm")
    split = "train" if name == "camvid" else "test"
    with pytest.raises((FileNotFoundError, ValueError), match="_label.png"):
        get_dataset(name, root, split, pseudo_root=tmp_path / "missing")
