"""Distributed data-parallel training: two gloo processes launched by torchrun end with identical weights, equal to
those of one process training on the same global batch; only rank 0 writes; a distributed run resumes, also in a
single process.

The scheme is `tl+mf+rs`, so one launch covers the triplets and flows of `tl`, the triplet sides drawn for the global
batch (`neighbours=1`), the MF ConvLSTM (trained under DDP with the student) and a frozen teacher. The student is
ESPNetv2: no dropout (dropout masks are drawn per shard, see the notebook), batch norms (synchronised on the CPU by
`CPUSyncBatchNorm`) and three parameters unused in training (DDP's static graph). The default scale range 0.75-1.5
with 32x32 crops pads some items with ignore pixels, so the CE weighting of `etc_nb.distributed.global_ce` matters.

Both runs train in float64, so that the comparison is sharp. In float32 the two runs differ by float rounding,
amplified by training from random weights (at 32x32 the deepest batch norms normalise a handful of values: the float32
gradient of one step is 0.5% (norm; up to 3% per tensor) from the float64 one, for one process as much as for two).
Measured after 3 steps of tl+rs at 64x106 crops: the weights of one and two processes differ by 3e-5 (relative,
all weights), less than one process with 1 and with 2 threads (1.3e-4). In float64 the two runs agree to 2e-14
(relative, per tensor); the tolerance leaves a 1e4 margin. Without the synchronised batch norm, the CE weighting or
the global draw of the triplet sides, they differ by 35% to 250% (relative, max over tensors)."""
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch

import etc_nb.loader as L
import etc_nb.train as T
from etc_nb.data.synthetic import generate_benchmark
from etc_nb.config import TrainConfig
from etc_nb.loader import batch_keys, training_set
from etc_nb.train import train

torch.set_num_threads(1)
ATOL, RTOL = 1e-9, 1e-7
TIMING = ["seconds", "data_s", "compute_s"]                      # wall times differ between runs

# Train in float64: networks are built in the default dtype, batches are cast when collated.
FLOAT64 = """
torch.set_default_dtype(torch.float64)
L.collate = lambda items, collate=L.collate: {k: v.double() if v.is_floating_point() else v
                                              for k, v in collate(items).items()}
"""

# Run by torchrun in each process: trains, then saves what this rank holds in memory (student, ConvLSTM, the kinds of
# batch norm) and the files it wrote, to DUMP/rank{RANK}.pt.
SCRIPT = """
import json, os, sys
from pathlib import Path
import torch
import etc_nb.checkpoint as C
import etc_nb.loader as L
import etc_nb.train as T
""" + FLOAT64 + """
cfg, out, stop_after, dump = T.TrainConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], int(sys.argv[3]), sys.argv[4]
states, writes = [], []
create, save, write = T.TrainState.create, C.atomic_save, T.atomic_write
T.TrainState.create = staticmethod(lambda *a, **k: states.append(create(*a, **k)) or states[-1])
C.atomic_save = lambda obj, path: writes.append(Path(path).name) or save(obj, path)
T.atomic_write = lambda path, *chunks: writes.append(Path(path).name) or write(path, *chunks)
T.train(cfg, out, stop_after=stop_after)
st = states[0]
torch.save({"model": st.model.state_dict(), "mf": st.mf.state_dict(), "writes": sorted(set(writes)),
            "bn": sorted({type(m).__name__ for m in st.model.modules() if isinstance(m, torch.nn.BatchNorm2d)})},
           f"{dump}/rank{os.environ['RANK']}.pt")
"""


@contextmanager
def float64():
    "Train in float64 in this process (as FLOAT64 does in the launched ones)."
    collate = L.collate
    try:
        exec(FLOAT64, {"torch": torch, "L": L})
        yield
    finally:
        torch.set_default_dtype(torch.float32)
        L.collate = collate


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = generate_benchmark(tmp_path_factory.mktemp("synth"), n_train=5, n_val=1, frames=5, size=(32, 48))
    base = TrainConfig(root=str(root), model="espnetv2", batch_size=4, crop=(32, 32), steps=5, ckpt_every=2, seed=1)
    with float64():
        teacher = train(replace(base, steps=0), tmp_path_factory.mktemp("teacher"), progress=False)
    return replace(base, scheme="tl+mf+rs", teacher=str(teacher))


@pytest.fixture(scope="module")
def single(cfg, tmp_path_factory):
    "The single-process reference: its checkpoints after 3 and after 5 steps."
    out = tmp_path_factory.mktemp("single")
    with float64():
        ckpt3 = torch.load(train(cfg, out, stop_after=3, progress=False), weights_only=False)
        return ckpt3, torch.load(train(cfg, out, progress=False), weights_only=False)


def launch(cfg, out: Path, stop_after: int, dump: Path, nproc: int = 2) -> None:
    "Train `cfg` up to step `stop_after` with `nproc` gloo processes (torchrun; each process's output in dump/logs)."
    dump.mkdir(parents=True, exist_ok=True)
    (dump / "script.py").write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "--log-dir", str(dump / "logs"), "--redirects", "3", str(dump / "script.py"),
           json.dumps(asdict(cfg)), str(out), str(stop_after), str(dump)]
    res = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((dump / "logs").rglob("*.log")))
    assert res.returncode == 0, f"{res.stderr[-3000:]}\n{logs}"


def assert_close(a: dict, b: dict, exact: bool = False):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=RTOL, msg=k)


def test_shards_differ_in_labelled_pixels(cfg):
    "The setting makes the CE weighting matter: some step gives the two ranks different numbers of labelled pixels."
    ds = training_set(cfg)
    counts = [[int((ds[k]["label"] != 255).sum()) for k in batch_keys(len(ds), 4, cfg.seed, s)] for s in range(5)]
    assert any(c[0] + c[2] != c[1] + c[3] for c in counts)


def test_two_processes_train_like_one_and_resume(cfg, single, tmp_path):
    ref3, ref5 = single
    with float64():
        init = T.TrainState.create(cfg).state_dict()
    out = tmp_path / "ddp"
    launch(cfg, out, 3, tmp_path / "dump3")
    r0, r1 = (torch.load(tmp_path / f"dump3/rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["bn"] == r1["bn"] == ["CPUSyncBatchNorm"]
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["step"] == 3
    for part in ("model", "mf"):
        assert_close(r0[part], r1[part], exact=True)    # the ranks hold identical weights and batch-norm statistics,
        assert_close(ckpt[part], r0[part], exact=True)  # which rank 0 saved,
        assert_close(ckpt[part], ref3[part])            # and which are the single process's
        assert max((ckpt[part][k] - init[part][k]).abs().max() for k in init[part]) > 1e-4   # after training
    assert r0["writes"] == ["config.json", "last.pt", "train_log.csv"] and r1["writes"] == []
    bars = {r: next((tmp_path / "dump3/logs").rglob(f"{r}/stderr.log")).read_text() for r in (0, 1)}
    assert "tl+mf+rs s1" in bars[0] and "tl+mf+rs s1" not in bars[1]   # the progress bar: rank 0's only
    (tmp_path / "one").mkdir()
    shutil.copy(out / "last.pt", tmp_path / "one/last.pt")

    launch(cfg, out, 5, tmp_path / "dump5")          # resume for the last 2 steps
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["step"] == 5 and ckpt["done"]
    for part in ("model", "mf"):
        assert_close(ckpt[part], ref5[part])
    assert_close(torch.load(tmp_path / "dump5/rank1.pt", weights_only=False)["model"], ckpt["model"], exact=True)
    log = pd.read_csv(out / "train_log.csv").drop(columns=TIMING)         # the losses of the global batches
    assert set(log.columns) == {"epoch", "step", "lr", "loss", "ce", "tl", "mf", "mf_reg"}
    pd.testing.assert_frame_equal(log, pd.DataFrame(ref5["history"]).drop(columns=TIMING), atol=ATOL, rtol=RTOL)

    with float64():                                  # a distributed checkpoint is a single-process one
        ckpt = torch.load(train(cfg, tmp_path / "one", progress=False), weights_only=False)
    for part in ("model", "mf"):
        assert_close(ckpt[part], ref5[part])


@contextmanager
def _launched(world):
    "What `distributed` yields to process 0 of `world`."
    yield 0, world, torch.device("cpu")


def test_batch_size_must_split_over_the_processes(cfg, tmp_path):
    with mock.patch.object(T, "distributed", lambda device=None: _launched(3)):
        with pytest.raises(ValueError, match="batch_size=4 is the global batch.*3 processes.*multiple of 3"):
            train(cfg, tmp_path, progress=False)
    assert not (tmp_path / "last.pt").exists()
