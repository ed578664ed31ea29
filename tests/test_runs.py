"The papermill run notebooks execute end to end with tiny parameters, and the CLI writes the demo contract."
from pathlib import Path

import pandas as pd
import papermill as pm

from etc_nb.cli import main

NBS = Path(__file__).resolve().parents[1] / "nbs"
COLUMNS = {"scheme", "seed", "model", "mIoU", "pixel_acc", "TC_gt", "TC_dis", "params_M", "train_s"}


def _check_results(out: Path, seeds: int):
    df = pd.read_csv(out / "results.csv")
    assert COLUMNS <= set(df.columns)
    assert len(df) == 2 * seeds and set(df.scheme) == {"baseline", "tl+rs"}
    assert df[["mIoU", "TC_gt", "TC_dis"]].apply(lambda c: c.between(0, 100)).all().all()
    md = (out / "results.md").read_text()
    assert "baseline" in md and "±" in md
    assert (out / "results.png").stat().st_size > 0


def test_demo_notebook_with_papermill(tmp_path):
    pm.execute_notebook(str(NBS / "runs" / "demo.ipynb"), str(tmp_path / "demo_out.ipynb"),
                        parameters=dict(out=str(tmp_path / "res"), quick=True, seeds=1, steps=2,
                                        root=str(tmp_path / "bench")), progress_bar=False)
    _check_results(tmp_path / "res", seeds=1)


def test_cli_demo_resumes_and_rewrites(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path / "res"), "--quick", "--seeds", "2", "--steps", "1",
            "--root", str(tmp_path / "bench")]
    assert main(args) == 0
    _check_results(tmp_path / "res", seeds=2)
    first = pd.read_csv(tmp_path / "res" / "results.csv")
    assert main(args) == 0                          # finished runs are re-evaluated, not retrained
    again = pd.read_csv(tmp_path / "res" / "results.csv")
    pd.testing.assert_frame_equal(first.drop(columns=["fps_eval"]), again.drop(columns=["fps_eval"]))
    assert "baseline" in capsys.readouterr().out


def test_adapt_real_video_notebook(tmp_path):
    "The videos-in-the-wild job on one real clip with a tiny budget; needs the teachers extra (mediapipe)."
    import pytest
    pytest.importorskip("mediapipe", reason="the teachers need mediapipe: pip install 'etc_nb[teachers]'")
    out = tmp_path / "adapt"
    pm.execute_notebook(str(NBS / "runs" / "adapt.ipynb"), str(tmp_path / "adapt_out.ipynb"),
                        parameters=dict(out=str(out), work=str(tmp_path / "work"), videos=["carphone_pristine.mp4"],
                                        seeds=1, steps=2, crop=[64, 64]), progress_bar=False)
    df = pd.read_csv(out / "results.csv")
    assert list(df.scheme) == ["pl", "pl+tl+rs"] and {"IoU_background", "IoU_person", "fps_teacher"} <= set(df.columns)
    assert df[["mIoU", "TC_student", "TC_teacher"]].apply(lambda c: c.between(0, 100)).all().all()
    assert "±" in (out / "results.md").read_text()
    for name in ("tc.png", "side_by_side.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_int8_notebook_with_papermill(tmp_path):
    "The backend-accuracy job: trains (tiny) checkpoints and evaluates every backend against eager fp32."
    from etc_nb.data.synthetic import generate_benchmark
    root = generate_benchmark(tmp_path / "bench", n_train=4, n_val=1, frames=3, size=(32, 64))
    out = tmp_path / "int8"
    pm.execute_notebook(str(NBS / "runs" / "int8.ipynb"), str(tmp_path / "int8_out.ipynb"),
                        parameters=dict(out=str(out), root=str(root), models=["pspnet_mbv2"], steps=2,
                                        backends=["onnxruntime", "onnx-int8"]), progress_bar=False)
    df = pd.read_csv(out / "backend_accuracy.csv")
    assert list(df.backend) == ["eager", "onnxruntime", "onnx-int8"] and set(df.model) == {"pspnet_mbv2"}
    assert df.loc[0, "agree"] == 1.0 and df.loc[1, "agree"] > 0.999
    assert (out / "backend_accuracy.md").read_text().count("pspnet_mbv2") == 3
