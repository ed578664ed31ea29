"Keyframe baselines (label propagation, Deep Feature Flow) and per-frame latency on a translating-square video."
import math

import numpy as np
import pytest
import torch

from etc_nb.data.augment import to_tensor
from etc_nb.data.synthetic import generate_benchmark
from etc_nb.evaluate import evaluate, predict
from etc_nb.flow import FlowEstimator
from etc_nb.keyframe import FeaturePropagation, LabelPropagation, frame_latencies
from etc_nb.models import create_model

STEP = (2, 1)          # the square's motion (dx, dy) per frame


class Threshold(torch.nn.Module):
    "Class 1 where the normalised red channel is positive; `feat` = that channel, `logits` = a 1x1 `classifier` of it."
    def __init__(self):
        super().__init__()
        self.classifier = torch.nn.Conv2d(1, 2, 1, bias=False)
        self.classifier.weight.data = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1)

    def forward(self, x):
        return {"logits": self.classifier(x[:, :1]), "feat": x[:, :1]}


class Shift(FlowEstimator):
    "The known flow between two frames `i` and `j` of the toy video, `sign` * (j - i) * STEP everywhere (found by the square's corner)."
    name = "shift"

    def __init__(self, sign: int = 1):
        self.sign = sign

    def compute(self, ref, tgt):
        corner = lambda im: np.argwhere(im[..., 0] >= 160)[0]            # (y, x) of the square's top-left pixel
        dy, dx = self.sign * (corner(tgt) - corner(ref))
        return np.broadcast_to(np.float32([dx, dy]), ref.shape[:2] + (2,)).copy()


@pytest.fixture(scope="module")
def video():
    "Normalised frames (T,3,H,W) of a textured 16x16 square moving STEP per frame over a static texture, and its labels."
    rng = np.random.default_rng(1)
    H, W, T = 48, 80, 7
    background, square = rng.integers(0, 100, (H, W, 3)), rng.integers(160, 256, (16, 16, 3))
    frames, labels = [], []
    for t in range(T):
        x0, y0 = 8 + STEP[0] * t, 8 + STEP[1] * t
        img, lbl = background.astype(np.uint8), np.zeros((H, W), np.int64)
        img[y0:y0 + 16, x0:x0 + 16] = square
        lbl[y0:y0 + 16, x0:x0 + 16] = 1
        frames.append(to_tensor(img))
        labels.append(torch.from_numpy(lbl))
    return torch.stack(frames), torch.stack(labels)


@pytest.fixture(scope="module")
def toy():
    return Threshold().eval()


@pytest.mark.parametrize("cls", [LabelPropagation, FeaturePropagation])
def test_k1_is_the_per_frame_model(cls, video, toy):
    frames, truth = video
    p = cls(toy, k=1)
    torch.testing.assert_close(p.predict_video(frames), predict(toy, frames), rtol=0, atol=0)
    assert p.last_keyframes == [True] * len(frames)
    torch.testing.assert_close(predict(toy, frames), truth, rtol=0, atol=0)


@pytest.mark.parametrize("cls", [LabelPropagation, FeaturePropagation])
def test_propagation_follows_the_motion(cls, video, toy):
    frames, truth = video
    p = cls(toy, k=3, flow=Shift())                       # the true flow: exact on every frame
    out = p.predict_video(frames)
    assert p.last_keyframes == [t % 3 == 0 for t in range(len(frames))]
    torch.testing.assert_close(out, truth, rtol=0, atol=0)
    dis = cls(toy, k=3).predict_video(frames)              # DIS: close to the truth, exact on keyframes
    torch.testing.assert_close(dis[::3], predict(toy, frames[::3]), rtol=0, atol=0)
    assert (dis == truth).float().mean((1, 2)).min() > 0.97


def test_label_propagation_warps_backward(video, toy):
    "The flow from the current frame to the previous one moves the labels with the scene; its opposite does not."
    frames, truth = video
    p = LabelPropagation(toy, k=len(frames), flow=Shift())
    p.step(frames[0])
    torch.testing.assert_close(p.step(frames[1]), truth[1], rtol=0, atol=0)
    shifted = torch.roll(truth[0], shifts=(STEP[1], STEP[0]), dims=(0, 1))   # the square STEP further on
    torch.testing.assert_close(truth[1], shifted, rtol=0, atol=0)
    forward = LabelPropagation(toy, k=len(frames), flow=Shift(-1))         # flow previous -> current: wrong way
    forward.step(frames[0])
    wrong = (forward.step(frames[1]) != truth[1]).sum().item()          # two squares 2 * STEP apart
    assert wrong == 2 * (16 * 16 - (16 - 2 * STEP[0]) * (16 - 2 * STEP[1]))


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_k(k, toy):
    for cls in (LabelPropagation, FeaturePropagation):
        with pytest.raises(ValueError, match=r"^k: expected") as e:
            cls(toy, k=k)
        assert "\n" not in str(e.value)


def test_feature_propagation_needs_a_head():
    with pytest.raises(ValueError, match=r"^head:"):
        FeaturePropagation(create_model("bisenetv2", num_classes=3))


def test_evaluate_both(tmp_path):
    root = generate_benchmark(tmp_path, n_train=1, n_val=1, frames=6, size=(32, 64))
    torch.manual_seed(0)
    net = create_model("pspnet18", num_classes=19).eval()
    for p in (LabelPropagation(net, k=2), FeaturePropagation(net, k=2)):
        res = evaluate(p, root, metrics=("mIoU", "TC", "E_warp", "Tsb"), progress=False)
        for m in ("mIoU", "TC_gt", "TC_dis", "E_warp", "Tsb"):
            assert math.isfinite(res[m]), (type(p).__name__, m, res[m])
        assert p.last_keyframes == [True, False] * 3


def test_frame_latencies(video, toy):
    frames, _ = video
    lat = frame_latencies(LabelPropagation(toy, k=3), frames)
    assert lat["keyframe"] == [t % 3 == 0 for t in range(len(frames))]
    assert len(lat["latency_ms"]) == len(frames) and min(lat["latency_ms"]) > 0
    assert lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"] == max(lat["latency_ms"])
    assert lat["min_ms"] == min(lat["latency_ms"])
    assert lat["max_min_ratio"] == pytest.approx(lat["max_ms"] / lat["min_ms"])
    ms, key = np.array(lat["latency_ms"]), np.array(lat["keyframe"])
    assert lat["mean_keyframe_ms"] == pytest.approx(ms[key].mean())
    assert lat["mean_other_ms"] == pytest.approx(ms[~key].mean())
    per_frame = frame_latencies(toy, frames, warmup=0)
    assert per_frame["keyframe"] == [True] * len(frames) and math.isnan(per_frame["mean_other_ms"])
    with pytest.raises(ValueError, match=r"^frames:"):
        frame_latencies(toy, frames[:0])
