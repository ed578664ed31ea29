"""The ablation notebooks (paper Tables I-III) run end to end with papermill on a tiny benchmark, share their
teachers and common runs, and write a table that the command in its header reproduces; the driver resumes, extends and
keeps teachers of different settings apart."""
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import papermill as pm
import pytest
import torch

from etc_nb.ablation import TABLES, Arm, ablation_base, run_ablation, run_table
from etc_nb.data.synthetic import generate_benchmark

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
TINY = dict(n_train=2, n_val=1, frames=5, size=[32, 64])
# every notebook parameter that differs from its default: one step per run, one seed, a 32x64 benchmark, and
# MobileNetV2 PSPNets as students and teachers (4x smaller checkpoints than the defaults PSPNet18/50, the
# same code path; test_schemes distils across architectures)
SMALL = "pspnet_mbv2"
PARAMS = dict(bench=TINY, steps=1, teacher_steps=1, seeds=1, crop=[32, 48], batch_size=2, model=SMALL,
              teacher_model=SMALL)
METRICS = ["mIoU", "pixel_acc", "TC_gt", "TC_dis"]
HEADER = "| row | scheme | teacher | seeds | mIoU | pixel_acc | TC_gt | TC_dis | train_s | paper mIoU | paper TC |"


@pytest.fixture(scope="module")
def one_thread():
    "Kernels inherit the environment: one torch thread each (2 threads spin-wait on a loaded 2-core machine)."
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def tables(tmp_path_factory, one_thread):
    "Run the three notebooks (I, III, II: III reuses I's teacher) into one folder, sharing teacher and run caches."
    tmp = tmp_path_factory.mktemp("ablation")
    for name in ("table1", "table3", "table2"):
        pm.execute_notebook(str(REPO / "nbs" / "runs" / f"{name}.ipynb"), str(tmp / f"{name}_out.ipynb"),
                            parameters=dict(out=str(tmp / name), root=str(tmp / "bench"),
                                            teacher_dir=str(tmp / "teachers"), runs_dir=str(tmp / "runs"), **PARAMS),
                            progress_bar=False, cwd=str(REPO))
    return tmp


@pytest.mark.parametrize("name", ["table1", "table2", "table3"])
def test_notebook_writes_its_table(tables, name):
    arms = TABLES[name]
    df = pd.read_csv(tables / name / "results.csv", keep_default_na=False)
    assert list(df["row"]) == [a.name for a in arms]                    # teacher rows (Table III) come first
    assert list(df["scheme"]) == [a.scheme for a in arms]
    assert df[METRICS].apply(lambda c: c.between(0, 100)).all().all()
    assert set(df["model"]) == {SMALL} and (df["lam_mf"] == 10).all()      # the CPU benchmark's weights
    assert (df["steps"] == 1).all() and (df["seed"] == 0).all()
    assert list(df["paper_TC"]) == [a.paper[1] for a in arms]
    md = (tables / name / "results.md").read_text()
    assert md.startswith(f"Produced by `mkdir -p {tables / name / 'runs'} && papermill nbs/runs/{name}.ipynb ")
    lines = md.splitlines()
    start = lines.index(HEADER)
    assert [ln.split(" | ")[0][2:] for ln in lines[start + 2:]] == [a.name for a in arms]
    assert (tables / name / "results.png").stat().st_size > 10_000
    executed = (tables / f"{name}_out.ipynb").read_text()
    assert "Produced by" in executed and "image/png" in executed          # the table and the plot are shown


def test_teachers_are_trained_once_and_shared(tables):
    folders = sorted(p.name for p in (tables / "teachers").iterdir())
    assert len(folders) == 2 and re.fullmatch(r"pspnet_mbv2_baseline_[0-9a-f]{10}", folders[0]), folders
    assert folders[1].startswith("pspnet_mbv2_tl+rs_")
    # the student runs the tables have in common are trained once: 12 of Table I, 3 more of Table II, and
    # Table III's student of the CE teacher; its student of the CE+TL teacher is Table I's PF run
    runs = sorted(p.name for p in (tables / "runs").iterdir())
    assert len(runs) == 16 and all(re.fullmatch(r"pspnet_mbv2_[a-z+]+_[0-9a-f]{10}", r) for r in runs), runs
    teachers = [re.search(r'"teacher": "([^"]+)"', (tables / "runs" / r / "config.json").read_text())
                for r in runs if r.startswith("pspnet_mbv2_pf+rs_")]
    assert sorted(Path(t[1]).parent.name for t in teachers) == folders
    rows = {t: pd.read_csv(tables / t / "results.csv").set_index("row") for t in ("table1", "table3")}
    pd.testing.assert_series_equal(rows["table1"].loc["PF", METRICS],
                                   rows["table3"].loc["student ← teacher (CE+TL)", METRICS], check_names=False)
    # only the TL teacher labels frames (PL rows of Tables I and II), once: 2 snippets x 4 unlabelled frames
    pl = list((tables / "teachers").glob("*/pseudo_labels/gtFine/train/*/*_labelTrainIds.png"))
    assert len(pl) == 8 and all(folders[1] in str(p) for p in pl)


def test_the_recorded_command_reproduces_the_table_without_training(tables, one_thread):
    md = (tables / "table2" / "results.md").read_text()
    command = re.match(r"Produced by `(.+?)`\.", md)[1]
    mkdir, papermill = command.split(" && ")
    assert shlex.split(mkdir) == ["mkdir", "-p", str(tables / "table2" / "runs")]
    assert shlex.split(papermill)[:3] == ["papermill", "nbs/runs/table2.ipynb",
                                          str(tables / "table2" / "runs" / "table2.ipynb")]
    ckpts = {p: p.stat().st_mtime_ns for p in (tables / "runs").rglob("last.pt")}
    before = pd.read_csv(tables / "table2" / "results.csv")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"          # the venv's papermill
    subprocess.run(command, shell=True, cwd=REPO, check=True, capture_output=True, env={**os.environ, "PATH": path})
    assert {p: p.stat().st_mtime_ns for p in ckpts} == ckpts             # nothing retrained
    after = pd.read_csv(tables / "table2" / "results.csv")
    pd.testing.assert_frame_equal(before.drop(columns="fps_eval"), after.drop(columns="fps_eval"))
    assert (tables / "table2" / "results.md").read_text() == md


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = generate_benchmark(tmp_path_factory.mktemp("bench"), n_train=2, n_val=1, frames=5, size=(32, 64))
    return ablation_base(root=root, bench=TINY, steps=1, crop=(32, 48), batch_size=2, model=SMALL)


def test_run_ablation_resumes_extends_and_tabulates(base, tmp_path):
    arms = (Arm("TL", "tl+rs", paper=(70.67, 70.46)), Arm("baseline", "baseline"))
    one = run_ablation(tmp_path, arms, base, seeds=1, teacher_model=SMALL, teacher_steps=1, progress=False)
    ckpts = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("last.pt")}
    assert sorted(re.sub("_[0-9a-f]{10}$", "", p.parent.name) for p in ckpts) == [f"{SMALL}_baseline", f"{SMALL}_tl+rs"]
    two = run_ablation(tmp_path, arms, base, seeds=2, teacher_model=SMALL, teacher_steps=1, command="cmd x",
                       progress=False)
    assert {p: p.stat().st_mtime_ns for p in ckpts} == ckpts             # seed 0 is only re-evaluated
    assert list(zip(two["row"], two["seed"])) == [("TL", 0), ("baseline", 0), ("TL", 1), ("baseline", 1)]
    pd.testing.assert_frame_equal(one.drop(columns="fps_eval"), two.iloc[:2].drop(columns="fps_eval"))
    assert not (tmp_path / "runs" / "teachers").exists()                 # no row needed a teacher
    # the markdown table: mean ± population std over the seeds, recomputed here from the csv
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0] == "Produced by `cmd x`."
    start = md.index(HEADER)
    assert md[start + 1] == "|" + "---|" * 11
    cells = {(c := ln[2:-2].split(" | "))[0]: c for ln in md[start + 2:]}
    assert list(cells) == ["TL", "baseline"]
    for row, c in cells.items():
        g = two[two["row"] == row]
        assert c[1:4] == [g["scheme"].iloc[0], "", "2"]
        for m, cell in zip(METRICS, c[4:8]):
            assert cell == f"{round(np.mean(g[m]), 2)} ± {round(np.std(g[m]), 2)}"
    assert cells["TL"][-2:] == ["70.67", "70.46"] and cells["baseline"][-2:] == ["", ""]


def test_a_run_another_process_trains_is_left_for_the_end(base, tmp_path):
    """While another holder has the baseline's run folder, the driver trains the TL run first; the holder lets go
    once TL's checkpoint exists, and the baseline is trained then, once, and tabulated in its place."""
    import threading
    from etc_nb.ablation import run_folder
    from etc_nb.checkpoint import run_lock
    arms = (Arm("baseline", "baseline"), Arm("TL", "tl+rs"))
    folder = run_folder(replace(base, scheme="baseline", seed=0), tmp_path / "runs")
    held, tl_done = threading.Event(), threading.Event()

    def other_process():
        with run_lock(folder):
            held.set()
            deadline = time.time() + 120                # without the deferral the driver would wait here: fail, not hang
            while not list((tmp_path / "runs").glob("*_tl+rs_*/last.pt")) and time.time() < deadline:
                time.sleep(0.05)
            if time.time() < deadline:
                tl_done.set()

    t = threading.Thread(target=other_process)
    t.start()
    held.wait(10)
    df = run_ablation(tmp_path, arms, base, seeds=1, teacher_model=SMALL, progress=False)
    t.join(10)
    assert tl_done.is_set() and list(df["row"]) == ["baseline", "TL"]
    tl_ckpt = next((tmp_path / "runs").glob("*_tl+rs_*/last.pt"))
    assert (folder / "last.pt").stat().st_mtime_ns > tl_ckpt.stat().st_mtime_ns   # trained after TL


def test_run_table_runs_the_rows_asked_for(tmp_path, one_thread):
    kw = dict(root=tmp_path / "bench", teacher_dir=tmp_path / "teachers", runs_dir=tmp_path / "runs", progress=False)
    df = run_table("table1", tmp_path / "t", rows=["PL", "baseline"], **kw, **PARAMS)
    assert list(df["row"]) == ["baseline", "PL"]                       # the table's order, not the request's
    assert """'{"rows": ["PL", "baseline"]}'""" in (tmp_path / "t" / "results.md").read_text().splitlines()[0]
    with pytest.raises(ValueError, match=r"rows: \['Pl'\] are not rows of table1"):
        run_table("table1", tmp_path / "u", rows=["Pl"], **kw, **PARAMS)


def test_teachers_of_other_settings_are_kept_apart(base, tmp_path):
    arms = (Arm("teacher", "baseline", role="teacher"),)
    kw = dict(seeds=1, teacher_model=SMALL, teacher_dir=tmp_path / "t", progress=False)
    a = run_ablation(tmp_path / "a", arms, base, teacher_steps=1, **kw)
    b = run_ablation(tmp_path / "b", arms, base, teacher_steps=2, **kw)
    assert len(list((tmp_path / "t").iterdir())) == 2 and list(a["steps"]) == [1] and list(b["steps"]) == [2]
    assert list(a["seed"]) == [0] and list(a["role"]) == ["teacher"]


def test_errors(base, tmp_path):
    with pytest.raises(ValueError, match="table: expected one of"):
        run_table("table4", tmp_path)
    with pytest.raises(ValueError, match="seeds: expected a positive"):
        run_ablation(tmp_path, TABLES["table2"], base, seeds=0)
    with pytest.raises(ValueError, match="repeated"):
        run_ablation(tmp_path, [Arm("TL", "tl"), Arm("TL", "tl+rs")], base)
    with pytest.raises(ValueError, match="teacher_steps: required"):
        run_table("table1", tmp_path, dataset="cityscapes", root=tmp_path)


def test_table_ii_pairs_differ_only_by_random_sampling():
    arms = TABLES["table2"]
    for off, on in zip(arms[::2], arms[1::2]):
        assert on.scheme == off.scheme + "+rs" and on.name == off.name + "+RS"
