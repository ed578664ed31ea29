"""Training throughput: input pipeline, data wait vs compute per step, precision, flow storage and estimation.

Prints (and writes to `--out` as `train_throughput.md` and one CSV per table) four tables:

1. loader: triplets/s of the Cityscapes-size training set (frames 1024x2048, crop 769x769, scale 0.5-2, random gaps,
   two flows per triplet) for 0/1/2 DataLoader workers, flows read from the cache (`.flo` ground truth, or DIS
   cached as 16-bit PNG);
2. step: one `tl`/`baseline` training step of pspnet18 split into data wait and compute (medians over `--steps`
   steps after warm-up), at the demo size (batch 4, 64x106 crops) and at 769x769 (batch 1), fp32 vs bf16, with
   `--workers` workers;
3. flow storage: bytes per 1024x2048 flow and read time for `.flo` and 16-bit PNG, and the PNG's error;
4. flow estimation: DIS presets vs RAFT-small (random weights: speed only) per 1024x2048 pair on this CPU.

    python benchmarks/train_throughput.py [--out results/train_throughput] [--steps 8] [--workers 1] [--quick]

The synthetic benchmark is generated at 1024x2048 under `--root` (4 training snippets, about a minute, once).
The CPU's flags and the load average are printed with the tables; on a shared machine the numbers are lower bounds.
"""
import argparse
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from etc_nb.config import TrainConfig
from etc_nb.demo import DEMO_SETTINGS
from etc_nb.report import markdown_table
from etc_nb.data.synthetic import generate_benchmark
from etc_nb.flow import DISFlow, get_flow_estimator, read_flo, read_flow_png, write_flo, write_flow_png
from etc_nb.io import atomic_write, read_image
from etc_nb.loader import training_loader, training_set
from etc_nb.train import TrainState


def cpu_flags() -> str:
    "The SIMD features of this CPU that decide fp32/bf16 speed (from /proc/cpuinfo), and torch's view of them."
    flags = set()
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    keep = sorted(f for f in flags if f in {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"})
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, flags: {' '.join(keep) or 'none listed'}; " \
           f"torch capability {torch.backends.cpu.get_cpu_capability()}"


def big_cfg(root: Path, flow: str) -> TrainConfig:
    "The released Cityscapes training settings on the 1024x2048 synthetic benchmark."
    return TrainConfig(root=str(root), scheme="tl+rs", crop=(769, 769), scale=(0.5, 2.0), batch_size=2, flow=flow)


def loader_table(root: Path, batches: int) -> pd.DataFrame:
    rows = []
    for flow, what in (("gt", ".flo ground truth"), ("dis", "DIS, cached as 16-bit PNG")):
        cfg = big_cfg(root, flow)
        ds = training_set(cfg)
        list(training_loader(ds, cfg, 0, batches + 1, workers=0))     # DIS: compute and cache the flows the rows read
        for workers in (0, 1, 2):
            it = iter(training_loader(ds, cfg, 0, batches + 1, workers=workers))
            next(it)                                        # worker start-up is not throughput
            t0 = time.perf_counter()
            for _ in range(batches):
                next(it)
            dt = time.perf_counter() - t0
            rows.append({"flows": what, "workers": workers, "triplets_per_s": round(batches * cfg.batch_size / dt, 2),
                         "ms_per_triplet": round(1000 * dt / (batches * cfg.batch_size), 1)})
            del it
    return pd.DataFrame(rows)


def step_times(cfg: TrainConfig, steps: int, warmup: int, workers: int) -> dict:
    "Median data wait and compute of training steps of `cfg`, measured as `etc_nb.train.train` does."
    state = TrainState.create(cfg)
    ds = training_set(cfg)
    it = iter(training_loader(ds, cfg, 0, warmup + steps, workers=workers))
    wait, compute = [], []
    for s in range(warmup + steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        state.step(batch)
        t2 = time.perf_counter()
        if s >= warmup:
            wait.append(t1 - t0); compute.append(t2 - t1)
    w, c = statistics.median(wait), statistics.median(compute)
    return {"data_wait_ms": round(1000 * w, 1), "compute_ms": round(1000 * c, 1), "data_wait_pct": round(100 * w / (w + c), 1),
            "images_per_s": round(cfg.batch_size / (w + c), 2)}


def step_table(demo_root: Path, big_root: Path, steps: int, workers: int, quick: bool) -> pd.DataFrame:
    """Rows per size x scheme x precision. bf16 at 769x769 runs only where bf16 was at most 2x slower than fp32 at
    the demo size: a CPU without native bf16 (no AVX-512-BF16/AMX) emulates it, and a 769x769 step would take minutes."""
    rows = []
    sizes = [("demo 64x106, batch 4", TrainConfig(root=str(demo_root), lam=1.0), steps, 2)]
    if not quick:   # batch 2: PSPNet's 1x1 pyramid bin needs more than one value per channel in training
        sizes.append(("769x769, batch 2", replace(big_cfg(big_root, "gt"), batch_size=2), max(2, steps // 4), 1))
    bf16_slowdown = None
    for label, cfg, n, warmup in sizes:
        for scheme in ("baseline", "tl"):
            for precision in ("fp32", "bf16"):
                row = {"size": label, "scheme": scheme, "precision": precision, "workers": workers}
                if precision == "bf16" and bf16_slowdown is not None and bf16_slowdown > 2:
                    rows.append({**row, "note": f"skipped: bf16 {bf16_slowdown:.0f}x slower than fp32 at the demo size"})
                    continue
                c = replace(cfg, scheme=scheme, precision=precision, random_gap=False)
                rows.append({**row, **step_times(c, n, warmup, workers)})
                print(rows[-1], flush=True)
        if bf16_slowdown is None:
            demo = pd.DataFrame(rows)
            bf16_slowdown = (demo[demo.precision == "bf16"].compute_ms.median() /
                             demo[demo.precision == "fp32"].compute_ms.median())
    df = pd.DataFrame(rows)
    fp32 = df[df.precision == "fp32"].set_index(["size", "scheme"]).compute_ms
    df["speed_vs_fp32"] = [round(fp32[(r["size"], r["scheme"])] / r["compute_ms"], 3) for _, r in df.iterrows()]
    return df.fillna("")


def flow_pairs(root: Path):
    frames = sorted((root / "leftImg8bit_sequence" / "train").rglob("*.png"))
    return read_image(frames[0]), read_image(frames[1])


def storage_table(root: Path, tmp: Path, runs: int) -> pd.DataFrame:
    a, b = flow_pairs(root)
    flow = DISFlow("medium")(a, b)
    rows = []
    for fmt, write, read in (("flo", write_flo, read_flo), ("png16", write_flow_png, read_flow_png)):
        p = write(tmp / f"flow.{fmt}", flow)
        t = []
        for _ in range(runs):
            t0 = time.perf_counter(); back = read(p); t.append(time.perf_counter() - t0)
        rows.append({"format": fmt, "MiB_per_flow": round(p.stat().st_size / 2**20, 2),
                     "read_ms": round(1000 * statistics.median(t), 1), "max_error_px": float(np.abs(back - flow).max())})
    df = pd.DataFrame(rows)
    df["smaller_than_flo"] = (df.MiB_per_flow[0] / df.MiB_per_flow).round(1)
    return df


def estimation_table(root: Path, runs: int, quick: bool) -> pd.DataFrame:
    a, b = flow_pairs(root)
    rows = []
    for name in ("dis_ultrafast", "dis_fast", "dis_medium") + (() if quick else ("raft_small",)):
        est = get_flow_estimator(name)
        n = 1 if name.startswith("raft") else runs
        est(a, b)                                            # warm-up
        t = []
        for _ in range(n):
            t0 = time.perf_counter(); est(a, b); t.append(time.perf_counter() - t0)
        rows.append({"estimator": name, "runs": n, "ms_per_pair": round(1000 * statistics.median(t), 1)})
    return pd.DataFrame(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/train_throughput")
    ap.add_argument("--root", default="data/synthetic_1024", help="where the 1024x2048 benchmark is generated")
    ap.add_argument("--demo-root", default="data/synthetic", help="the demo-size benchmark (generated if missing)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per row of the step table")
    ap.add_argument("--batches", type=int, default=6, help="timed batches (of 2 triplets) per loader row")
    ap.add_argument("--workers", type=int, default=1, help="loader workers of the step table")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="skip the 769x769 steps and RAFT (minutes instead of ~20)")
    ap.add_argument("--only", default=None, help="comma-separated tables to run: loader, step, flow_storage, flow_estimation")
    a = ap.parse_args()
    big = generate_benchmark(a.root, n_train=4, n_val=1, frames=7, size=(1024, 2048))
    demo = generate_benchmark(a.demo_root, **DEMO_SETTINGS["full"]["bench"])
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    head = f"Machine: {cpu_flags()}; torch {torch.__version__}, {torch.get_num_threads()} threads; load average at start " \
           f"{os.getloadavg()[0]:.2f}.\n\nCommand: `python benchmarks/train_throughput.py --out {a.out} --root {a.root} --steps {a.steps} " \
           f"--batches {a.batches} --workers {a.workers} --runs {a.runs}{' --quick' if a.quick else ''}" \
           f"{f' --only {a.only}' if a.only else ''}`\n"
    print(head)
    tables = {"loader": ("Loader throughput, 1024x2048 frames, 769x769 crop, tl+rs triplets", lambda: loader_table(big, a.batches)),
              "step": ("Training step: data wait vs compute (pspnet18)", lambda: step_table(demo, big, a.steps, a.workers, a.quick)),
              "flow_storage": ("Flow storage, one DIS flow at 1024x2048", lambda: storage_table(big, out, a.runs)),
              "flow_estimation": ("Flow estimation per 1024x2048 pair on this CPU", lambda: estimation_table(big, a.runs, a.quick))}
    only = set(a.only.split(",")) if a.only else set(tables)
    for name, (title, make) in ((k, v) for k, v in tables.items() if k in only):
        df = make()
        block = f"## {title}\n\n{markdown_table(df.astype(object).set_index(df.columns[0]))}\n"
        print(block, flush=True)
        atomic_write(out / f"{name}.csv", df.to_csv(index=False))
        atomic_write(out / f"{name}.md", f"{head}\n{block}\nLoad average at end {os.getloadavg()[0]:.2f}.\n")
    # the summary holds every table measured so far in out, each with the machine and command that produced it
    parts = [(out / f"{n}.md").read_text() for n in tables if (out / f"{n}.md").is_file()]
    atomic_write(out / "train_throughput.md", "# Training throughput\n\n" + "\n---\n\n".join(parts))
    for f in ("flow.flo", "flow.png16"):
        (out / f).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
