"The per-dataset papermill notebooks run end to end on the loaders' fixtures and score with each dataset's convention."
import json
from pathlib import Path

import numpy as np
import pandas as pd
import papermill as pm
import pytest
import torch

from etc_nb.data import camvid, cityscapes, get_dataset, videomatting, vspw, vw300mask, ytvis
from etc_nb.evaluate import predict
from etc_nb.metrics import confusion_matrix, iou_from_confusion, temporal_consistency
from etc_nb.checkpoint import load_checkpoint
from etc_nb.config import TrainConfig
from etc_nb.train import train

NBS = Path(__file__).resolve().parents[1] / "nbs" / "runs"
TINY = dict(steps=1, seeds=1, batch_size=2)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    "One torch thread per kernel: tiny models on a shared 2-core machine run several times faster than with two."
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(name: str, tmp_path: Path, **params) -> Path:
    out = tmp_path / "res"
    pm.execute_notebook(str(NBS / f"{name}.ipynb"), str(tmp_path / f"{name}_out.ipynb"),
                        parameters=dict(out=str(out), **params), progress_bar=False)
    return out


def _check(out: Path, note: str) -> pd.DataFrame:
    "One row per scheme of the recipe, percentages in range, and the protocol named in results.md."
    df = pd.read_csv(out / "results.csv")
    assert list(df.scheme) == ["baseline", "tl+rs"] and (df.steps == 1).all()
    assert df[["mIoU", "mIoU_all", "pixel_acc", "TC_dis"]].apply(lambda c: c.between(0, 100)).all().all()
    md = (out / "results.md").read_text()
    assert note in md and "| baseline | 1 |" in md
    return df


def _reference(ckpt: Path, dataset: str, root, split: str, k: int, tc_of=None, **kw):
    """Confusion matrix over the labelled frames and mean per-clip TC (DIS; over the sequences named in `tc_of`,
    default all), recomputed from the checkpoint."""
    model, _ = load_checkpoint(ckpt)
    ds = get_dataset(dataset, root, split, mode="sequence", flow="dis", **kw)
    cm, tcs = torch.zeros(k, k, dtype=torch.int64), []
    for i, key in enumerate(ds.snippets):
        it = ds[i]
        p = predict(model, it["frames"])
        cm += confusion_matrix(p[it["labelled"]], it["labels"][it["labelled"]], k)
        if tc_of is None or key[0] in tc_of:
            tcs.append(temporal_consistency(p, it["flows"], k))
    return cm, float(np.nanmean(tcs))


def test_cityscapes_notebook(tmp_path):
    root = cityscapes.write_fixture(tmp_path / "cs")
    cityscapes.write_fixture(root, split="val")
    out = _run("cityscapes", tmp_path, root=str(root), crop=[24, 24], **TINY)
    _check(out, "labelled val frames")
    cfg = json.loads((out / "runs" / "tl+rs_seed0" / "config.json").read_text())
    assert (cfg["model"], cfg["lr"], cfg["flow"], cfg["gap"], cfg["crop"]) == ("pspnet18", 0.01, "dis", 3, [24, 24])


def test_camvid_notebook_tc_on_seq05vd(tmp_path):
    root = camvid.write_fixture(tmp_path / "cv")
    # a second test sequence whose TC must not count: the paper measures TC on Seq05VD only
    for d in ("test", "testannot"):
        (root / d / "0001TP_009000.png").write_bytes((root / d / "Seq05VD_f00000.png").read_bytes())
    seq = root / "sequences" / "0001TP"
    for n in range(8998, 9003):
        (seq / f"0001TP_{n:06d}.png").write_bytes((root / "test" / "Seq05VD_f00000.png").read_bytes())
    out = _run("camvid", tmp_path, root=str(root), crop=[24, 24], **TINY)
    df = _check(out, "Seq05VD")
    assert set(df.model) == {"pspnet_mbv2"}
    cm, tc_seq05 = _reference(out / "runs" / "baseline_seed0" / "last.pt", "camvid", root, "test", 11, tc_of={"Seq05VD"})
    row = df.iloc[0]
    assert row.TC_dis == pytest.approx(tc_seq05)
    assert row.mIoU == pytest.approx(100 * np.nanmean(iou_from_confusion(cm).numpy()))


def test_vw300mask_notebook_miou_without_background(tmp_path):
    root = vw300mask.write_fixture(tmp_path / "vw")
    out = _run("vw300mask", tmp_path, root=str(root), crop=[32, 32], **TINY)
    df = _check(out, "without the background")
    cm, tc = _reference(out / "runs" / "tl+rs_seed0" / "last.pt", "vw300mask", root, "test", 5)
    iou = iou_from_confusion(cm).numpy() * 100
    row = df.iloc[1]
    assert row.mIoU == pytest.approx(np.nanmean(iou[1:])) and row.mIoU_all == pytest.approx(np.nanmean(iou))
    assert row.TC_dis == pytest.approx(tc)


def test_ytvis_notebook_trains_solov2_on_held_out_train_videos(tmp_path):
    root = ytvis.write_fixture(tmp_path / "yv")
    out = _run("ytvis", tmp_path, root=str(root), steps=1, seeds=1, batch_size=2,
               overrides={"num_classes": 3, "crop": [24, 32], "model": "solov2_light_r18",   # the recipe's R50, lighter
                          "model_kw": {"num_grids": [8, 6, 4, 3, 2]}})
    df = pd.read_csv(out / "results.csv")
    assert list(df.scheme) == ["baseline", "tl"] and (df.steps == 1).all() and (df.model == "solov2_light_r18").all()
    assert df[["AP", "AP50", "AP75", "AR1", "AR10", "TC"]].apply(lambda c: c.between(0, 100) | c.isna()).all().all()
    split = {s: {v["file_names"][0].split("/")[0] for v in json.loads((out / "data" / f"{s}.json").read_text())["videos"]}
             for s in ("train", "holdout")}
    assert split["train"] | split["holdout"] == {"a1", "b2"} and not split["train"] & split["holdout"]
    scores = json.loads((out / "runs" / "tl_seed0" / "vis_eval.json").read_text())
    assert scores["n_videos"] == 1 and scores["checkpoint_step"] == 1      # scored on the held-out video only
    assert "holdout" in (out / "results.md").read_text()


def test_vspw_notebook_scores_every_val_frame(tmp_path):
    root = vspw.write_fixture(tmp_path / "vspw")
    out = _run("vspw", tmp_path, root=str(root), crop=[24, 24], **TINY)
    df = _check(out, "124 classes")
    cfg = json.loads((out / "runs" / "tl+rs_seed0" / "config.json").read_text())
    assert (cfg["num_classes"], cfg["lr"], cfg["dataset"]) == (124, 0.002, "vspw")
    cm, tc = _reference(out / "runs" / "baseline_seed0" / "last.pt", "vspw", root, "val", 124)
    assert cm.sum() == 5 * 336          # every val frame: the fixture's 336 class pixels, 'others' and void left out
    row = df.iloc[0]
    assert row.mIoU == pytest.approx(100 * np.nanmean(iou_from_confusion(cm).numpy()))
    assert row.TC_dis == pytest.approx(tc)


def test_videomatting_notebook_scores_checkpoints(tmp_path):
    root = videomatting.write_fixture(tmp_path / "vm")
    # a stand-in 3-class model: the benchmark is a test set, the notebook only evaluates
    ckpt = train(TrainConfig(dataset="videomatting", root=str(root), split="test", num_classes=3, steps=1,
                             batch_size=2, crop=(24, 24)), tmp_path / "run", progress=False)
    out = _run("videomatting", tmp_path, root=str(root), checkpoints={"baseline": str(ckpt)}, sequences=["plant"])
    df = pd.read_csv(out / "results.csv")
    assert list(df.trimap) == ["narrow", "middle", "wide", "mean"]
    mean = df.set_index("trimap").loc["mean"]
    assert mean.IoU_FG == pytest.approx(df.IoU_FG[:3].mean()) and 0 <= mean.TC_dis <= 100
    for lv in ("narrow", "middle", "wide"):
        cm, _ = _reference(ckpt, "videomatting", root, "test", 3, trimap=lv, sequences=["plant"])
        got = df.set_index("trimap").loc[lv, ["IoU_BG", "IoU_Tri", "IoU_FG"]].to_numpy(float)
        np.testing.assert_allclose(got, 100 * iou_from_confusion(cm).numpy(), equal_nan=True)
    assert "sequences: plant" in (out / "results.md").read_text()
