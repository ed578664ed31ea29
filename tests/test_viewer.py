"""Tests of etc_nb.viewer: the state (`SequenceView`, `flicker_map`) without a browser — index clamping, panels and
titles, flicker maps on analytic cases and against the TC counts, the TC curve against etc_nb.metrics/etc_nb.tc, label
folders and video files, errors — the widget driven from Python, and the widget rendered by JupyterLab in headless
Chromium (skipped without Chromium or JupyterLab)."""
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from etc_nb.flow import FlowCache, get_flow_estimator
from etc_nb.metrics import pair_confusions, temporal_consistency
from etc_nb.tc import video_tc
from etc_nb.viewer import SequenceView, flicker_image, flicker_map, viewer

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
JUPYTER = Path(sys.executable).with_name("jupyter")


# ---------------------------------------------------------------- sequences with known answers

def translation(T=4, H=12, W=20, dx=2):
    "Labels (a 5x6 block of class 1) and frames translating `dx` px right per frame, and their exact flows (T-1,2,H,W)."
    labels = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        labels[t, 3:8, 2 + dx * t:8 + dx * t] = 1
    frames = np.repeat(labels[..., None] * 200, 3, -1).astype(np.uint8)
    flows = np.zeros((T - 1, 2, H, W), np.float32)
    flows[:, 0] = dx
    return frames, labels, flows


def still(T=5, H=16, W=24, flip=2):
    "A still textured scene; labels 0 with a 4x6 region of class 1, flipped to class 2 in frame `flip` only."
    frames = np.repeat(np.random.default_rng(0).integers(0, 255, (1, H, W, 3), dtype=np.uint8), T, 0)
    labels = np.zeros((T, H, W), np.uint8)
    labels[:, 4:8, 5:11] = 1
    labels[flip, 4:8, 5:11] = 2
    region = np.zeros((H, W), bool)
    region[4:8, 5:11] = True
    return frames, labels, region


def textured(T=6, H=32, W=48, seed=0):
    "Random smooth frames moving 1 px right per frame and two label sequences with some flicker, for DIS."
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 255, (H // 4, (W + T) // 4, 3), dtype=np.uint8), ((W + T), H))
    frames = np.stack([base[:, T - t:T - t + W] for t in range(T)])
    gt = np.stack([(f[..., 0] > 128).astype(np.uint8) + (f[..., 1] > 160) for f in frames])
    pred = gt.copy()
    pred[1::2, 5:12, 10:20] = 2
    return frames, gt, pred


# ---------------------------------------------------------------- state

def test_index_is_clamped_and_steps_stop_at_the_ends():
    frames, labels, flows = translation(T=4)
    v = SequenceView(frames, {"p": labels}, flow=flows, index=10)
    assert (len(v), v.index) == (4, 3)
    assert [v.prev(), v.prev(2), v.prev(), v.next(), v.next(5), v.next()] == [2, 0, 0, 1, 3, 3]
    v.index = -5
    assert v.index == 0
    v.index = 2.9                                  # a slider may hand over floats: truncated, then clamped
    assert v.index == 2
    with pytest.raises(IndexError, match=r"t: frame 4 of a 4-frame sequence; expected 0..3"):
        v.panels(4)
    with pytest.raises(IndexError, match=r"p: pair 3 of a 4-frame sequence"):
        v.pair_flow(3)


def test_panels_have_the_titles_in_order_and_the_frame_size():
    frames, labels, flows = translation()
    v = SequenceView(frames, {"ground truth": labels, "teacher": labels, "student": labels[::-1].copy()}, flow=flows)
    want = ["frame", "ground truth", "teacher", "student", "flicker: ground truth", "flicker: teacher", "flicker: student"]
    assert v.titles == want
    for t in range(len(v)):
        p = v.panels(t)
        assert list(p) == want
        assert all(a.shape == (12, 20, 3) and a.dtype == np.uint8 for a in p.values())
        np.testing.assert_array_equal(p["frame"], frames[t])
    assert v.num_classes == 2 and v.class_names == ["0", "1"]                 # guessed from the arrays


def test_flicker_of_a_translation_followed_by_its_flow_is_empty():
    frames, labels, flows = translation(dx=2)
    v = SequenceView(frames, {"p": labels}, flow=torch.from_numpy(flows))
    for t in range(1, len(v)):
        fl, compared = v.flicker("p", t)
        assert not fl.any()
        assert compared[:, :-2].all() and not compared[:, -2:].any()          # the flow leaves the frame there
        assert not (v.panels(t)["flicker: p"] == [255, 32, 32]).all(-1).any()
    assert v.tc()["p"] == 100.0


def test_flicker_without_flow_is_the_covered_and_uncovered_columns():
    frames, labels, _ = translation(dx=2)
    fl, compared = SequenceView(frames, {"p": labels}).flicker("p", 1)
    assert compared.all()
    assert np.flatnonzero(fl.any(0)).tolist() == [2, 3, 8, 9] and fl.sum() == 4 * 5


def test_flicker_of_a_flipped_region_is_exactly_that_region():
    frames, labels, region = still(flip=2)
    v = SequenceView(frames, {"p": labels})
    maps = [v.flicker("p", t)[0] for t in range(len(v))]
    for t, m in enumerate(maps):
        np.testing.assert_array_equal(m, region if t in (2, 3) else np.zeros_like(region))
    img = v.panels(2)["flicker: p"]
    np.testing.assert_array_equal((img == [255, 32, 32]).all(-1), region)   # drawn red exactly there
    np.testing.assert_array_equal(v.tc_curve()["p"][[0, 3]], [100.0, 100.0])


def test_ignored_pixels_are_not_compared():
    frames, labels, region = still()
    labels[3, 0] = 255
    fl, compared = SequenceView(frames, {"p": labels}).flicker("p", 3)
    assert not compared[0].any() and compared[1:].all()
    fl, compared = flicker_map(labels[2], labels[3], torch.zeros(1, 2, 16, 24), ignore_index=None)
    assert compared.all() and fl[0].all()                                    # no ignore label: 255 is a class


def test_flicker_image_marks_flicker_red_and_darkens_what_is_not_compared():
    frame = np.full((2, 3, 3), 100, np.uint8)
    fl = np.array([[True, False, False], [False, False, False]])
    compared = np.array([[True, True, False], [True, True, True]])
    img = flicker_image(frame, fl, compared)
    assert img[0, 0].tolist() == [255, 32, 32] and img[0, 1].tolist() == [114] * 3 and img[0, 2].tolist() == [38] * 3


def test_flicker_maps_are_the_tc_counts_and_the_curve_is_the_library_tc():
    frames, gt, pred = textured()
    v = SequenceView(frames, {"gt": gt, "pred": pred}, flow="dis_fast", num_classes=3)
    est = get_flow_estimator("dis_fast")
    flows = torch.cat([torch.from_numpy(est(a, b).transpose(2, 0, 1).copy())[None] for a, b in zip(frames, frames[1:])])
    curve, tcs = v.tc_curve(), v.tc()
    for name, labels in (("gt", gt), ("pred", pred)):
        ref = temporal_consistency(labels, flows, 3, per_class=True)
        np.testing.assert_allclose(curve[name], ref["per_pair_tc"], rtol=0, atol=1e-12)
        assert abs(tcs[name] - ref["TC"]) < 1e-12
        assert abs(v.tc("global")[name] - temporal_consistency(labels, flows, 3, mode="global")) < 1e-12
        cms = pair_confusions(labels, flows, 3)
        for t in range(1, len(v)):
            fl, compared = v.flicker(name, t)
            cm = cms[t - 1]
            assert (int(fl.sum()), int(compared.sum())) == (int(cm.sum() - cm.trace()), int(cm.sum()))
    assert tcs["pred"] < tcs["gt"]
    fig = v.tc_figure(2)
    np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(), curve["pred"])
    assert list(fig.axes[0].lines[-1].get_xdata()) == [2, 2]                 # the cursor
    assert v.status(0)[1].startswith("no pair") and v.status(3)[2] == f"pred: TC {curve['pred'][2]:.2f} %"
    m = v.montage(3)
    assert m.shape[1] == 3 * 48 and m.shape[0] > 2 * 32


def test_each_flow_is_computed_once():
    frames, gt, pred = textured()
    calls = []

    class Counting(type(get_flow_estimator("dis_fast"))):
        def compute(self, ref, tgt):
            calls.append(1)
            return super().compute(ref, tgt)
    v = SequenceView(frames, {"gt": gt, "pred": pred}, flow=Counting("fast"), num_classes=3)
    v.tc_curve(); v.panels(3); v.panels(3); v.flicker("gt", 5)
    assert len(calls) == len(frames) - 1


def test_label_folders_match_video_tc_and_share_its_flow_cache(tmp_path):
    frames, gt, pred = textured(T=5)
    for name, labels in (("frames", frames), ("gt", gt), ("pred", pred)):
        (tmp_path / name).mkdir()
        for t, x in enumerate(labels):
            Image.fromarray(x).save(tmp_path / name / f"f{t}.png")
    v = SequenceView(tmp_path / "frames", {"gt": tmp_path / "gt", "pred": tmp_path / "pred"}, flow="dis_fast",
                     cache_dir=tmp_path / "cache", num_classes=3)
    assert v.frames.names == [f"f{t}.png" for t in range(5)]
    np.testing.assert_array_equal(v.labels("pred", 3), pred[3])
    tcs = v.tc()
    assert np.flatnonzero(v.sources["pred"].present).tolist() == np.unique(pred).tolist()   # read: all files, for TC
    r = video_tc(tmp_path / "frames", labels=tmp_path / "pred", cache_dir=tmp_path / "cache", num_classes=3,
                 progress=False)
    assert r["flows_computed"] == 0                                           # the viewer's flows, read back
    np.testing.assert_allclose(v.tc_curve()["pred"], r["per_pair_tc"], rtol=0, atol=1e-12)
    assert abs(tcs["pred"] - r["TC"]) < 1e-12


def test_stored_flows_of_a_frame_folder(tmp_path):
    frames, labels, flows = translation(T=3)
    (tmp_path / "frames").mkdir()
    cache = FlowCache(tmp_path / "flows")
    for t, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / "frames" / f"x{t}.png")
    for t in range(2):
        cache.put(f"x{t}.png", f"x{t + 1}.png", flows[t].transpose(1, 2, 0))
    v = SequenceView(tmp_path / "frames", {"p": labels}, flow=cache)
    assert v.flow_name == "stored" and v.tc()["p"] == 100.0
    frames, gt, pred = textured(T=3)                                          # in memory: keyed by frame index
    v = SequenceView(frames, {"p": pred}, flow=FlowCache(tmp_path / "dis", "dis_fast"))
    v.tc()
    assert sorted(p.name for p in (tmp_path / "dis").iterdir()) == ["000000__000001.flo", "000001__000002.flo"]


def test_frames_from_a_video_file(tmp_path):
    frames, labels, _ = translation(T=5, H=32, W=48)
    path = tmp_path / "clip.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 32))
    if not out.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG .avi files")
    for f in frames:
        out.write(f[..., ::-1])
    out.release()
    v = SequenceView(path, {"p": labels})
    assert (len(v), v.frames.size, v.frames.fps) == (5, (32, 48), 10.0)
    assert np.abs(v.frame(2).astype(int) - frames[2]).mean() < 10             # JPEG-compressed
    with pytest.raises(ValueError, match="cache_dir: only with a flow estimator"):
        SequenceView(path, {"p": labels}, flow=None, cache_dir=tmp_path)


F, L, FL = translation()  # frames (4,12,20,3), labels (4,12,20), flows (3,2,12,20) for the error cases
BAD = {
    "short labels": (lambda: SequenceView(F, {"gt": L[:3]}),
                     r"labels\['gt'\]: 3 label maps but 4 frames; expected one label map per frame"),
    "narrow labels": (lambda: SequenceView(F, {"gt": L[..., :19]}),
                      r"labels\['gt'\]: label maps are 19x12 but the frames are 20x12; expected the same size"),
    "float labels": (lambda: SequenceView(F, {"gt": L.astype(np.float32)}),
                     r"labels\['gt'\]: expected integer class ids \(T,H,W\), got float32"),
    "ids beyond 255": (lambda: SequenceView(F, {"gt": L.astype(int) * 300}), r"expected class ids in 0..255"),
    "no labels": (lambda: SequenceView(F, {}), r"labels: expected a dict \{title: label maps"),
    "labels not a dict": (lambda: SequenceView(F, L), r"labels: expected a dict .*got ndarray"),
    "unknown id": (lambda: SequenceView(F, {"gt": L}, class_names=["bg"]),
                   r"labels\['gt'\]: label ids \[1\] are no class \(expected 0..0 or 255\)"),
    "names and count": (lambda: SequenceView(F, {"gt": L}, class_names=["a", "b"], num_classes=3),
                        r"class_names: expected 3 names \(num_classes\), got 2"),
    "flow shape": (lambda: SequenceView(F, {"gt": L}, flow=np.zeros((4, 2, 12, 20))),
                   r"flow: expected shape \(T-1,2,H,W\) = \(3, 2, 12, 20\)"),
    "flow name": (lambda: SequenceView(F, {"gt": L}, flow="sintel"), r"unknown flow estimator 'sintel'"),
    "flow type": (lambda: SequenceView(F, {"gt": L}, flow=1.5), r"flow: expected None, an estimator name"),
    "cache of arrays": (lambda: SequenceView(F, {"gt": L}, flow="dis", cache_dir="x"),
                        r"cache_dir: needs frames from a file or folder"),
    "float frames": (lambda: SequenceView(F.astype(np.float64), {"gt": L}),
                     r"frames: expected uint8 RGB frames \(T,H,W,3\), got float64"),
    "one frame": (lambda: SequenceView(F[:1], {"gt": L[:1]}), r"frames: 1 frame; the viewer needs at least 2"),
    "labels of prev and cur": (lambda: flicker_map(L[0], L[1][:5], torch.zeros(1, 2, 12, 20)),
                               r"prev \(12, 20\) and cur \(5, 20\): expected label maps \(H,W\) of one size"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_naming_the_argument(case):
    make, message = BAD[case]
    with pytest.raises(ValueError, match=message) as e:
        make()
    assert "\n" not in str(e.value)


def test_missing_folders_name_the_path(tmp_path):
    frames, labels, _ = translation()
    with pytest.raises(FileNotFoundError, match="nowhere: no such folder of label PNGs"):
        SequenceView(frames, {"gt": tmp_path / "nowhere"}, num_classes=2)
    with pytest.raises(FileNotFoundError, match="nothing: no such video file or frame folder"):
        SequenceView(tmp_path / "nothing", {"gt": labels})
    (tmp_path / "labs").mkdir()
    for t in range(3):
        Image.fromarray(labels[t]).save(tmp_path / "labs" / f"{t}.png")
    with pytest.raises(ValueError, match=r"labels\['gt'\]: 3 label PNGs in .* but 4 frames"):
        SequenceView(frames, {"gt": tmp_path / "labs"}, num_classes=2)
    with pytest.raises(ValueError, match="a folder of label PNGs needs class_names or num_classes"):
        SequenceView(frames[:3], {"gt": tmp_path / "labs"})
    Image.fromarray(np.full((12, 20), 7, np.uint8)).save(tmp_path / "labs" / "2.png")
    v = SequenceView(frames[:3], {"gt": tmp_path / "labs"}, num_classes=2)
    with pytest.raises(ValueError, match=r"2.png: label ids \[7\] are no class"):
        v.labels("gt", 2)                                                     # a folder's ids: checked when read


# ---------------------------------------------------------------- the widget, from Python

def test_widget_follows_the_slider_and_buttons():
    pytest.importorskip("ipywidgets")
    frames, labels, region = still(T=4, flip=2)
    ui = viewer(frames, {"gt": labels, "student": labels[::-1].copy()}, class_names=["bg", "a", "b"], width=64)
    assert list(ui.images) == ui.view.titles and ui.slider.max == 3 and ui.view.index == 0
    first = {k: im.value for k, im in ui.images.items()}
    assert all(Image.open(io.BytesIO(v)).size == (24, 16) for v in first.values())
    ui.slider.value = 2
    assert ui.view.index == 2 and "frame 2/3" in ui.status.value and "gt: TC" in ui.status.value
    assert ui.images["flicker: gt"].value != first["flicker: gt"]
    red = (np.array(Image.open(io.BytesIO(ui.images["flicker: gt"].value)).convert("RGB")) == [255, 32, 32]).all(-1)
    np.testing.assert_array_equal(red, region)
    curve = ui.curve.value
    ui.buttons[1].click(); ui.buttons[1].click()                              # ▶ twice: stops at the last frame
    assert (ui.slider.value, ui.view.index) == (3, 3) and ui.curve.value != curve
    for _ in range(5):
        ui.buttons[0].click()
    assert ui.slider.value == 0
    assert viewer(ui.view).view is ui.view                                    # a SequenceView is used as it is


# ---------------------------------------------------------------- the widget, in a browser

NOTEBOOK_SOURCE = """\
import numpy as np
from etc_nb.viewer import viewer
rng = np.random.default_rng(0)
frames = np.repeat(rng.integers(0, 255, (1, 48, 64, 3), dtype=np.uint8), 5, 0)
gt = np.zeros((5, 48, 64), np.uint8); gt[:, 10:30, 10:40] = 1
pred = gt.copy(); pred[2, 10:30, 10:40] = 2
ui = viewer(frames, {"ground truth": gt, "student": pred}, class_names=["background", "box", "other"], width=160)
ui"""

STATE_JS = """(() => {
  const app = window.jupyterapp, nb = app && Array.from(app.shell.widgets('main')).find(w => w.sessionContext);
  const kernel = nb && nb.sessionContext && nb.sessionContext.session && nb.sessionContext.session.kernel;
  const imgs = Array.from(document.querySelectorAll('.jp-OutputArea .jupyter-widgets img'));
  const box = document.querySelector('.jp-OutputArea .widget-vbox');
  const r = box && box.getBoundingClientRect();
  return {app: !!app, notebook: !!(nb && nb.content), kernel: kernel ? kernel.status : null,
          sliders: document.querySelectorAll('.jp-OutputArea .widget-slider').length,
          images: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
          srcs: imgs.map(i => i.src), status: Array.from(document.querySelectorAll('.jp-OutputArea .widget-html'))
                                          .map(e => e.innerText).join(' | '),
          errors: Array.from(document.querySelectorAll('.jp-OutputArea-output[data-mime-type*="error"]'))
                  .map(e => e.innerText.slice(0, 300)),
          rect: r ? {x: r.left, y: r.top, width: r.width, height: r.height} : null};
})()"""


def _reddish(img: np.ndarray) -> int:
    "Pixels of a screenshot `(H,W,3)` close to the flicker red (the browser scales the images: not exactly it)."
    return int((np.abs(img.astype(int) - [255, 32, 32]).sum(-1) < 40).sum())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, cond, timeout: float, interval: float = 0.25):
    "Poll `cond()` until it returns something truthy; its last value, or an AssertionError saying `what` after `timeout`."
    end, last = time.time() + timeout, None
    while time.time() < end:
        try:
            last = cond()
        except Exception as e:  # noqa: BLE001 - the server or page is not up yet
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium: apt-get install -y chromium")
def test_browser_renders_the_widget_and_steps_it(tmp_path):
    pytest.importorskip("jupyterlab", reason="needs JupyterLab (the [dev] extra)")
    pytest.importorskip("websocket", reason="needs websocket-client (the [dev] extra)")
    from test_docs import DevTools                # the docs check's DevTools client
    if not JUPYTER.exists():
        pytest.skip(f"no {JUPYTER} beside the Python running the tests")
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "c0", "metadata": {}, "outputs": [],
                     "source": NOTEBOOK_SOURCE}],
          "metadata": {"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}},
          "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "view.ipynb").write_text(json.dumps(nb))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTER_DATA_DIR=str(tmp_path / "data"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"),
               IPYTHONDIR=str(tmp_path / "ipython"), PYTHONPATH=str(ROOT))
    port, token = _free_port(), "viewer-test"
    server = subprocess.Popen(
        [str(JUPYTER), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1", f"--IdentityProvider.token={token}", "--allow-root",
         f"--ServerApp.root_dir={tmp_path / 'nb'}", "--expose-app-in-browser", "--LabApp.news_url=",
         "--ServerApp.port_retries=0"], cwd=tmp_path / "nb", env=env, stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "server.log", "wb"), start_new_session=True)
    prof, base = tempfile.mkdtemp(prefix="viewer-chromium-"), f"http://127.0.0.1:{port}"
    chrome = subprocess.Popen(                                                # starts while the server does
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={prof}", "--remote-debugging-port=0",
         "--window-size=1280,1200", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait("jupyter lab to answer", lambda: urllib.request.urlopen(f"{base}/api/status?token={token}",
                                                                      timeout=5).status == 200, 60)
        port_file = Path(prof) / "DevToolsActivePort"
        _wait("Chromium to start", lambda: port_file.exists() and port_file.read_text().strip(), 30)
        dev = int(port_file.read_text().split()[0])
        tab = next(t for t in json.load(urllib.request.urlopen(f"http://127.0.0.1:{dev}/json/list", timeout=10))
                   if t["type"] == "page")
        dt = DevTools(tab["webSocketDebuggerUrl"])
        dt.call("Page.enable"); dt.call("Runtime.enable")
        dt.call("Emulation.setDeviceMetricsOverride", width=1280, height=1200, deviceScaleFactor=1, mobile=False)
        dt.call("Page.navigate", url=f"{base}/lab/tree/view.ipynb?token={token}&reset")
        _wait("the notebook and its kernel", lambda: (s := dt.evaluate(STATE_JS))["notebook"] and s["kernel"] == "idle", 60)
        dt.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")   # the notebook tracker's current
        state = _wait("the widget's slider and its 7 images", lambda: (s := dt.evaluate(STATE_JS))["errors"] or (
            s if s["sliders"] and s["images"] >= 7 and s["rect"] and s["rect"]["height"] > 100 else None), 60)
        assert not state["errors"], state["errors"]
        assert "frame 0/4" in state["status"], state["status"]
        r = state["rect"]
        shot = dt.call("Page.captureScreenshot", format="png",
                       clip=dict(x=r["x"], y=r["y"], width=min(r["width"], 1280), height=min(r["height"], 1200), scale=1))
        (tmp_path / "frame0.png").write_bytes(base64.b64decode(shot["data"]))
        img = np.array(Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB"))
        assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 200, "the widget area is blank"
        assert _reddish(img) < 20, "flicker drawn at frame 0"
        dt.evaluate("Array.from(document.querySelectorAll('.jp-OutputArea .jupyter-widgets button'))"
                    ".find(b => b.innerText.includes('▶')).click()")
        dt.evaluate("Array.from(document.querySelectorAll('.jp-OutputArea .jupyter-widgets button'))"
                    ".find(b => b.innerText.includes('▶')).click()")
        stepped = _wait("the kernel to redraw frame 2", lambda: (s := dt.evaluate(STATE_JS))["status"].count(
            "frame 2/4") and s["images"] >= 7 and s, 30)
        assert stepped["srcs"] != state["srcs"]                               # new images
        shot = dt.call("Page.captureScreenshot", format="png", clip=dict(x=r["x"], y=r["y"], width=min(r["width"], 1280),
                                                                         height=min(r["height"], 1200), scale=1))
        (tmp_path / "frame2.png").write_bytes(base64.b64decode(shot["data"]))
        img = np.array(Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB"))
        assert _reddish(img) > 100, "no flicker drawn at frame 2"                # the flipped box, 30x20 px
    finally:
        try:                                                                  # the server stops its kernel
            urllib.request.urlopen(urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST"),
                                   timeout=10)
        except OSError:
            pass
        chrome.terminate()
        try:
            chrome.wait(10)
        except subprocess.TimeoutExpired:
            chrome.kill()
        for sig in (signal.SIGTERM, signal.SIGKILL):                          # if the shutdown did not answer
            try:
                server.wait(10)
                break
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, sig)
        shutil.rmtree(prof, ignore_errors=True)
