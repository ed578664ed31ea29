"""One evaluation table: `evaluate(..., metrics=...)` keeps its default output, each extra metric equals its metric
function on the same predictions, per-video predictors are evaluated like networks, and `etc-nb evaluate` prints one
Markdown table for several checkpoints."""
import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch

from etc_nb.cli import main
from etc_nb.config import TrainConfig
from etc_nb.data import get_dataset
from etc_nb.data.cityscapes import write_fixture
from etc_nb.data.synthetic import generate_benchmark
from etc_nb.evaluate import (DEFAULT_METRICS, METRICS, evaluate, evaluation_markdown, evaluation_table, predict,
                             predict_sequence)
from etc_nb.metrics import mean_video_consistency, temporal_consistency, temporal_stability, warping_error
from etc_nb.models import create_model

DEFAULT_KEYS = ["mIoU", "mIoU_all", "pixel_acc", "TC_gt", "TC_dis", "per_class_iou", "ignore_in_miou", "n_sequences",
                "n_frames", "fps"]


class Colours(torch.nn.Module):
    "A random 1x1 convolution: per-pixel 19-class predictions from the colours, which follow the content."
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 19, 1)

    def forward(self, x):
        return {"logits": self.conv(x)}


class HoldFirst:
    "A toy keyframe predictor that never refreshes: `model`'s prediction of frame 0, held for every frame."
    def __init__(self, model):
        self.model = model

    def predict_video(self, frames):
        return predict_sequence(self.model, frames[:1]).repeat(len(frames), 1, 1)


class Truth:
    "A per-video oracle of one sequence: its ground truth (void as class 18) for the frames asked for, from frame 0."
    def __init__(self, labels):
        self.labels = labels.clamp(max=18)

    def predict_video(self, frames):
        return self.labels[:len(frames)]


class VideoLogits:
    "A per-video predictor that returns a network's logits of all the frames at once."
    def __init__(self, net):
        self.net = net

    def predict_video(self, frames):
        return self.net(frames)["logits"]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    "A 10-frame synthetic validation snippet, every frame labelled, moving content, ground-truth flows both ways."
    return generate_benchmark(tmp_path_factory.mktemp("bench"), n_train=1, n_val=1, frames=10, size=(32, 64))


@pytest.fixture(scope="module")
def colours():
    torch.manual_seed(0)
    return Colours().eval()


def _all_metrics(model, root, **kw):
    "`evaluate` with every metric, and the mVC warnings it gave."
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = evaluate(model, root, metrics=METRICS, progress=False, **kw)
    return res, [str(w.message) for w in caught if str(w.message).startswith("mVC")]


def test_default_output_is_unchanged(bench, colours):
    default = evaluate(colours, bench, progress=False)
    assert list(default) == DEFAULT_KEYS and DEFAULT_METRICS == ("mIoU", "TC")
    full, _ = _all_metrics(colours, bench)
    assert list(full) == DEFAULT_KEYS[:5] + ["mVC8", "mVC16", "E_warp", "Tsb"] + DEFAULT_KEYS[5:]
    for k in DEFAULT_KEYS[:-1]:                                          # asking for more changes none of them
        np.testing.assert_array_equal(full[k], default[k])


def test_each_metric_equals_its_function_on_the_same_predictions(bench, colours):
    full, warned = _all_metrics(colours, bench)
    ds = get_dataset("synthetic", bench, "val", mode="sequence", flow="gt")
    item, key = ds[0], list(ds.snippets)[0]
    preds = predict(colours, item["frames"])
    backward = torch.stack([torch.from_numpy(ds.flow(key, t + 1, t)).permute(2, 0, 1) for t in range(9)])
    assert full["TC_gt"] == temporal_consistency(preds, item["flows"], 19)
    assert full["mVC8"] == mean_video_consistency([(preds, item["labels"])], 8, 19)
    assert full["E_warp"] == warping_error(preds, item["flows"], num_classes=19, flows_bw=backward)
    assert full["Tsb"] == temporal_stability(preds, 19)
    assert 0 < full["mVC8"] <= 100 and full["E_warp"] > 0 and full["Tsb"] > 0
    # 10 frames hold no window of 16 (VSPW's windows need 17): NaN, and one warning naming the dataset
    assert math.isnan(full["mVC16"])
    assert warned == [f"mVC16: dataset 'synthetic' at {bench} (split 'val') has no run of more than 16 consecutive"
                      " labelled frames; reported NaN"]


def test_a_video_predictor_is_evaluated_like_a_network(bench, colours):
    frames = get_dataset("synthetic", bench, "val", mode="sequence")[0]["frames"]
    assert torch.equal(predict_sequence(VideoLogits(colours), frames), predict(colours, frames))
    a = evaluate(colours, bench, flows=("gt",), metrics=("mIoU", "TC", "mVC8"), progress=False)
    b = evaluate(VideoLogits(colours), bench, flows=("gt",), metrics=("mIoU", "TC", "mVC8"), progress=False)
    assert {k: a[k] for k in ("mIoU", "TC_gt", "mVC8")} == {k: b[k] for k in ("mIoU", "TC_gt", "mVC8")}
    bad = VideoLogits(colours)
    bad.predict_video = lambda frames: torch.zeros(len(frames), 8, 8, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"predict_video: expected class ids \(T,H,W\) = \(10, 32, 64\)"):
        evaluate(bad, bench, progress=False)


def test_keyframe_predictor_is_steady_but_loses_accuracy_on_moving_content(bench, colours, tmp_path):
    truth = Truth(get_dataset("synthetic", bench, "val", mode="sequence")[0]["labels"])
    per_frame, _ = _all_metrics(truth, bench)
    held, _ = _all_metrics(HoldFirst(truth), bench)
    assert per_frame["mIoU"] == 100.0 and per_frame["mVC8"] == 100.0
    assert held["mVC8"] == 100.0 and held["Tsb"] == 0.0
    assert held["mIoU"] < 90                                              # the scene moved away from frame 0
    # where nothing moves (zero flows) TC is 100 and E_warp 0; one labelled frame per snippet: mVC is NaN, warned
    still_root = write_fixture(tmp_path, snippets=1, split="val")
    still, warned = _all_metrics(HoldFirst(colours), still_root, split="val", dataset="cityscapes", flows=("gt",))
    assert (still["TC_gt"], still["E_warp"], still["Tsb"]) == (100.0, 0.0, 0.0)
    assert math.isnan(still["mVC8"]) and math.isnan(still["mVC16"])
    assert len(warned) == 2 and all("dataset 'cityscapes'" in w for w in warned)


def test_bad_metrics_and_missing_flows_are_one_line_errors(bench, colours):
    with pytest.raises(ValueError, match="metrics: unknown 'TSB'; expected names among mIoU, TC, mVC8, mVC16, E_warp, Tsb"):
        evaluate(colours, bench, metrics=("mIoU", "TSB"), progress=False)
    with pytest.raises(ValueError, match="flows: metric E_warp needs a flow source"):
        evaluate(colours, bench, flows=(), metrics=("E_warp",), progress=False)


def test_table_has_models_as_rows_and_metrics_with_units_as_columns(bench, colours):
    full, _ = _all_metrics(colours, bench)
    default = evaluate(colours, bench, progress=False)
    table = evaluation_table({"all": full, "default": default})
    assert list(table.columns) == ["mIoU (%)", "TC_gt (%)", "TC_dis (%)", "mVC8 (%)", "mVC16 (%)", "E_warp (×10⁻³)", "Tsb"]
    assert table.index.name == "model" and table.index.tolist() == ["all", "default"]
    assert table.loc["all", "E_warp (×10⁻³)"] == 1e3 * full["E_warp"] and table.loc["all", "Tsb"] == full["Tsb"]
    assert table.loc["default", ["mVC8 (%)", "E_warp (×10⁻³)", "Tsb"]].isna().all()
    md = evaluation_markdown({"all": full, "default": default}).splitlines()
    assert md[0] == "| model | " + " | ".join(table.columns) + " |" and len(md) == 4
    assert md[2].startswith(f"| all | {table.loc['all', 'mIoU (%)'].round(2)} | ")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    "Two tiny checkpoints of different weights, runs/a/last.pt and runs/b/last.pt, on a 4-frame benchmark."
    tmp = tmp_path_factory.mktemp("cli")
    root = generate_benchmark(tmp / "bench", n_train=1, n_val=1, frames=4, size=(32, 64))
    paths = []
    for seed, name in enumerate("ab"):
        torch.manual_seed(seed)
        net = create_model("pspnet_mbv2", num_classes=19).eval()
        (tmp / "runs" / name).mkdir(parents=True)
        torch.save({"model": net.state_dict(),
                    "config": dataclasses.asdict(TrainConfig(model="pspnet_mbv2", root=str(root)))},
                   tmp / "runs" / name / "last.pt")
        paths.append((tmp / "runs" / name / "last.pt", net))
    return root, paths


def test_cli_prints_one_table_for_two_checkpoints(checkpoints, tmp_path, capsys):
    root, ((a, net_a), (b, net_b)) = checkpoints
    out = tmp_path / "r.json"
    assert main(["evaluate", "--checkpoint", str(a), "--checkpoint", str(b), "--flows", "gt",
                 "--metrics", "mIoU,TC,mVC8,E_warp", "--json", str(out)]) == 0
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert lines[0] == "| model | mIoU (%) | TC_gt (%) | mVC8 (%) | E_warp (×10⁻³) |"
    assert [ln.split(" | ")[0] for ln in lines[2:]] == ["| a", "| b"]
    # 4 frames hold no window of 8: a one-line warning (Python shows a repeated one once, by default)
    warned = [ln for ln in cap.err.splitlines() if "warning:" in ln]
    assert warned and all(ln.startswith("etc-nb evaluate: warning: mVC8: dataset 'synthetic'") for ln in warned)
    res = json.loads(out.read_text())
    assert list(res) == ["a", "b"]
    for name, net in (("a", net_a), ("b", net_b)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            direct = evaluate(net, root, flows=("gt",), metrics=("mIoU", "TC", "mVC8", "E_warp"), progress=False)
        assert {k: res[name][k] for k in ("mIoU", "TC_gt", "E_warp")} == {k: direct[k] for k in ("mIoU", "TC_gt", "E_warp")}
        assert res[name]["mVC8"] != res[name]["mVC8"] and len(res[name]["per_class_iou"]) == 19    # NaN


def test_cli_json_of_one_checkpoint_keeps_its_format(checkpoints, tmp_path, capsys):
    _, ((a, _), _) = checkpoints
    assert main(["evaluate", "--checkpoint", str(a), "--flows", "gt", "--json", str(tmp_path / "r.json")]) == 0
    assert list(json.loads((tmp_path / "r.json").read_text())) == \
        ["mIoU", "mIoU_all", "pixel_acc", "TC_gt", "ignore_in_miou", "n_sequences", "n_frames", "fps", "per_class_iou"]
    assert capsys.readouterr().out.splitlines()[0] == "| model | mIoU (%) | TC_gt (%) |"


def test_cli_bad_metrics_is_one_line_and_status_2(checkpoints, capsys):
    _, ((a, _), _) = checkpoints
    assert main(["evaluate", "--checkpoint", str(a), "--metrics", "mIoU,VC8"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "etc-nb evaluate: error: metrics: unknown 'VC8'; expected names among mIoU, TC, mVC8, mVC16, E_warp, Tsb"]
    assert main(["evaluate", "--checkpoint", str(a), "--checkpoint", str(a)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"etc-nb evaluate: error: --checkpoint: {a} given twice"]
