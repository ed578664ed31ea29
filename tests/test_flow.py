"Tests of etc_nb.flow: .flo I/O (OpenCV compatibility, malformed files, atomic writes) and the flow cache."
import os
import pickle

import cv2
import numpy as np
import pytest

from etc_nb.flow import (DISFlow, FlowCache, FlowEstimator, flow_to_numpy, flow_to_tensor, frame_id,
                         get_flow_estimator, read_flo, write_flo)

MAGIC = np.array([202021.25], "<f4").tobytes()


def header(w, h):
    return MAGIC + np.array([w, h], "<i4").tobytes()


@pytest.fixture
def flow():
    return np.random.default_rng(0).uniform(-40, 40, (9, 14, 2)).astype(np.float32)


def test_round_trip(tmp_path, flow):
    p = write_flo(tmp_path / "a" / "b" / "f.flo", flow)
    assert p.stat().st_size == 12 + 8 * 9 * 14
    back = read_flo(p)
    assert back.dtype == np.float32 and back.flags.writeable
    np.testing.assert_array_equal(back, flow)


def test_non_finite_values_survive(tmp_path, flow):
    flow[0, 0] = [np.nan, 1e10]
    np.testing.assert_array_equal(read_flo(write_flo(tmp_path / "f.flo", flow)), flow)


def test_byte_identical_to_opencv(tmp_path, flow):
    assert cv2.writeOpticalFlow(str(tmp_path / "cv.flo"), flow)
    write_flo(tmp_path / "ours.flo", flow)
    assert (tmp_path / "ours.flo").read_bytes() == (tmp_path / "cv.flo").read_bytes()


def test_opencv_reads_ours_and_we_read_opencvs(tmp_path, flow):
    write_flo(tmp_path / "ours.flo", flow)
    np.testing.assert_array_equal(cv2.readOpticalFlow(str(tmp_path / "ours.flo")), flow)
    cv2.writeOpticalFlow(str(tmp_path / "cv.flo"), flow)
    np.testing.assert_array_equal(read_flo(tmp_path / "cv.flo"), flow)


@pytest.mark.parametrize("content, msg", [
    (b"HEIP" + header(2, 2)[4:] + bytes(32), "magic"),
    (b"", "truncated .flo header"),
    (header(2, 2)[:11], "truncated .flo header"),
    (header(2, 2) + bytes(31), "truncated data"),
    (header(2, 2) + bytes(40), "trailing bytes"),
    (header(0, 2), "implausible"),
    (header(2, -1) + bytes(16), "implausible"),
    (header(100_000, 3), "implausible"),
    (header(2**31 - 1, 2**31 - 1), "implausible"),
])
def test_malformed_files_raise_value_error_naming_the_file(tmp_path, content, msg):
    bad = tmp_path / "bad.flo"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=msg) as e:
        read_flo(bad)
    assert str(bad) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.flo"):
        read_flo(tmp_path / "nope.flo")


@pytest.mark.parametrize("bad", [np.zeros((2, 4, 5), np.float32), np.zeros((4, 5)), np.zeros((4, 5, 2), bool),
                                 np.zeros((4, 0, 2), np.float32), np.zeros((1, 4, 5, 2), np.float32)])
def test_write_refuses_non_flows(tmp_path, bad):
    with pytest.raises(ValueError, match="x.flo"):
        write_flo(tmp_path / "x.flo", bad)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, flow, monkeypatch):
    p = write_flo(tmp_path / "f.flo", flow)
    before = p.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_flo(p, flow * 2)
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["f.flo"]


def test_frame_id():
    assert frame_id("x/aachen_000000_000019_leftImg8bit.png") == "aachen_000000_000019"
    assert frame_id("clip/000042.jpg") == "000042"


def test_tensor_conversion(flow):
    t = flow_to_tensor(flow)
    assert t.shape == (1, 2, 9, 14) and t[0, 0, 3, 5].item() == flow[3, 5, 0]
    assert flow_to_tensor(np.stack([flow, flow])).shape == (2, 2, 9, 14)
    np.testing.assert_array_equal(flow_to_numpy(t), flow)


def test_registry_and_pickling():
    assert get_flow_estimator("dis").name == "dis_medium"
    assert get_flow_estimator("dis_ultrafast").preset == "ultrafast"
    with pytest.raises(ValueError, match="dis_fast"):
        get_flow_estimator("raft")
    with pytest.raises(ValueError, match="preset"):
        DISFlow("slow")
    assert pickle.loads(pickle.dumps(DISFlow("fast"))).name == "dis_fast"


def texture(h=96, w=128, seed=0):
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(rng.random((h // 8 + 1, w // 8 + 1, 3), dtype=np.float32), (w, h),
                        interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.random((h, w, 3), dtype=np.float32), (0, 0), 1.5)
    return np.clip((0.7 * coarse + 1.2 * (fine - fine.mean()) + 0.15) * 255, 0, 255).astype(np.uint8)


def shift(img, tx, ty):
    h, w = img.shape[:2]
    return cv2.warpAffine(img, np.float32([[1, 0, tx], [0, 1, ty]]), (w, h), borderMode=cv2.BORDER_REFLECT)


def test_dis_recovers_translation():
    ref = texture()
    f = DISFlow("medium")(ref, shift(ref, 1.7, -2.4))
    assert f.shape == (96, 128, 2) and f.dtype == np.float32
    assert np.median(np.linalg.norm(f[16:-16, 16:-16] - [1.7, -2.4], axis=-1)) < 0.2


def test_estimator_input_checks():
    ref = texture()
    with pytest.raises(ValueError, match="same shape"):
        DISFlow()(ref, ref[:50])
    with pytest.raises(ValueError, match="uint8"):
        DISFlow()(ref.astype(np.float32), ref)


class Counting(FlowEstimator):
    name = "counting"

    def __init__(self):
        self.calls = 0

    def compute(self, ref, tgt):
        self.calls += 1
        return np.full(ref.shape[:2] + (2,), self.calls, np.float32)


def test_cache_computes_once(tmp_path):
    est, img = Counting(), texture(32, 48)
    cache = FlowCache(tmp_path / "cache", est)
    a, b = "s/aachen_000000_000019_leftImg8bit.png", "s/aachen_000000_000020_leftImg8bit.png"
    assert cache.path(a, b) == tmp_path / "cache" / "aachen_000000_000019__aachen_000000_000020.flo"
    first = cache.get(a, b, img, img)
    assert est.calls == 1 and cache.path(a, b).is_file()
    np.testing.assert_array_equal(cache.get(a, b), first)                      # no images needed now
    np.testing.assert_array_equal(FlowCache(tmp_path / "cache", est).get(a, b, img, img), first)
    assert est.calls == 1
    np.testing.assert_array_equal(read_flo(cache.path(a, b)), first)


def test_cache_reads_images_from_paths_as_rgb(tmp_path):
    ref = texture(64, 96)
    tgt = shift(ref, 2.0, 1.0)
    for name, im in (("r.png", ref), ("t.png", tgt)):
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    f = FlowCache(tmp_path / "c", DISFlow("fast")).get(tmp_path / "r.png", tmp_path / "t.png")
    np.testing.assert_array_equal(f, DISFlow("fast")(ref, tgt))


def test_cache_image_errors(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    cache = FlowCache(tmp_path / "c", Counting())
    with pytest.raises(ValueError, match="broken.png"):
        cache.get(tmp_path / "broken.png", tmp_path / "broken.png")
    with pytest.raises(FileNotFoundError, match="gone.png"):
        cache.get(tmp_path / "gone.png", tmp_path / "broken.png")
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())


def test_ground_truth_cache_without_estimator(tmp_path, flow):
    gt = FlowCache(tmp_path / "flow_gt" / "val" / "city")
    gt.put("a.png", "b.png", flow)
    np.testing.assert_array_equal(gt.get("a.png", "b.png"), flow)
    with pytest.raises(FileNotFoundError, match="b__a.flo"):
        gt.get("b.png", "a.png")
