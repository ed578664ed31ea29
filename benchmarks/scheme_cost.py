"""Training cost of each scheme: median step time and peak memory at the demo's training size.

    python benchmarks/scheme_cost.py [--out results/scheme_cost.md] [--steps 10] [--threads 1]

Setting: the quick demo benchmark (`etc_nb.demo.DEMO_SETTINGS['quick']`, 64x128 frames, ground-truth flow
read from the cached `flow_gt/` files: no flow is ever computed during a step), student pspnet18, batch 4,
crops 64x106, the teacher of the distillation terms a randomly initialised pspnet50 checkpoint (the cost
of a teacher does not depend on its weights). `baseline x2 frames` is the baseline at batch 8: as many
frames per forward as `tl` (labelled frame + one neighbour per item), the reference for the cost TL adds
beyond its second frame.

Method. Every scheme runs in a fresh Python process (`--one SCHEME`), so no scheme inherits another's
allocator state or memory high-water mark. tracemalloc does not see torch's allocations and
`getrusage().ru_maxrss` is inherited from the parent process (the one that built the teacher), so memory
is read from Linux's per-process counters in `/proc/self/status`: after building the training state
(student, teacher, optimiser, dataset) the process resets its high-water mark (`echo 5 >
/proc/self/clear_refs`) and notes its resident set (`setup MiB`, VmRSS); after `warmup + steps` training
steps, `step MiB` = high-water mark (VmHWM) − that resident set: the memory a step adds at its peak
(activations, gradients, SGD momentum, the teacher's activations). Times are per step with
`time.perf_counter`: `data` (reading, augmenting and collating the batch, as `train` does in-process) and
`compute` (forward, backward, SGD step, ConvLSTM clipping); the table gives medians over the timed steps
(warm-up excluded). On a shared CPU the times vary between runs by some percent; the ratios are the
figures to read.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCHEMES = ("baseline", "baseline x2 frames", "tl", "pf", "mf", "sf", "tl+pf+mf")


def _config(scheme: str, root: str, teacher: str | None, threads: int):
    from etc_nb.config import DISTILL_TERMS, TrainConfig, parse_scheme
    batch = 8 if scheme == "baseline x2 frames" else 4
    name = "baseline" if scheme.startswith("baseline") else scheme
    return TrainConfig(root=root, model="pspnet18", batch_size=batch, crop=(64, 106), scheme=name, flow="gt",
                       teacher=teacher if parse_scheme(name) & DISTILL_TERMS else None, threads=threads, steps=1000)


def _status_mib(field: str) -> float:
    "`VmRSS` (resident set) or `VmHWM` (its high-water mark) of this process in MiB, from /proc/self/status."
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024                                   # the file gives kB
    raise RuntimeError(f"/proc/self/status has no {field}: this benchmark measures memory on Linux only")


def _reset_peak() -> None:
    "Reset this process's VmHWM to its current resident set (Linux >= 4.0)."
    Path("/proc/self/clear_refs").write_text("5")


def measure_one(scheme: str, root: str, teacher: str | None, steps: int, warmup: int, threads: int) -> dict:
    "Build the state of `scheme`, time `warmup + steps` steps; medians and the peak-RSS growth (runs in-process)."
    import torch
    from etc_nb.loader import batch_keys, collate, training_set
    from etc_nb.train import TrainState
    cfg = _config(scheme, root, teacher, threads)
    torch.set_num_threads(threads)
    state, ds = TrainState.create(cfg), training_set(cfg)
    _reset_peak()
    setup = _status_mib("VmRSS")
    data, compute = [], []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        batch = collate([ds[k] for k in batch_keys(len(ds), cfg.batch_size, cfg.seed, step)])
        t1 = time.perf_counter()
        state.step(batch)
        t2 = time.perf_counter()
        if step >= warmup:
            data.append(t1 - t0); compute.append(t2 - t1)
    student = cfg.batch_size * (3 if "mf" in cfg.terms else 2 if cfg.terms & {"tl", "pf"} else 1)
    return {"scheme": scheme, "frames_per_forward": student,
            "step_ms": 1000 * statistics.median(d + c for d, c in zip(data, compute)),
            "data_ms": 1000 * statistics.median(data), "compute_ms": 1000 * statistics.median(compute),
            "setup_MiB": setup, "step_MiB": _status_mib("VmHWM") - setup}


def markdown(rows: list[dict], meta: str) -> str:
    base = next(r for r in rows if r["scheme"] == "baseline")
    lines = [meta, "", "| scheme | student frames / step | step ms | data ms | compute ms | step × baseline | "
             "compute × baseline | setup MiB | step MiB | step MiB × baseline |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scheme']} | {r['frames_per_forward']} | {r['step_ms']:.0f} | {r['data_ms']:.0f} | "
                     f"{r['compute_ms']:.0f} | {r['step_ms'] / base['step_ms']:.2f} | "
                     f"{r['compute_ms'] / base['compute_ms']:.2f} | {r['setup_MiB']:.0f} | {r['step_MiB']:.0f} | "
                     f"{r['step_MiB'] / base['step_MiB']:.2f} |")
    by = {r["scheme"]: r for r in rows}
    if "tl" in by and "baseline x2 frames" in by:
        same = by["baseline x2 frames"]
        lines += ["", f"TL step / baseline step on as many frames (batch 8): {by['tl']['step_ms'] / same['step_ms']:.2f} "
                      f"(compute {by['tl']['compute_ms'] / same['compute_ms']:.2f}); TL step / baseline step (batch 4): "
                      f"{by['tl']['step_ms'] / base['step_ms']:.2f}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="data/synthetic_quick", help="where the quick demo benchmark is (generated if needed)")
    p.add_argument("--out", default=None, help="also write the Markdown table to this file")
    p.add_argument("--schemes", default=",".join(SCHEMES))
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--teacher-model", default="pspnet50")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)              # child process: measure one scheme
    p.add_argument("--teacher", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        print(json.dumps(measure_one(a.one, a.root, a.teacher, a.steps, a.warmup, a.threads)))
        return 0
    from etc_nb.demo import DEMO_SETTINGS
    from etc_nb.data.synthetic import generate_benchmark
    from etc_nb.config import TrainConfig
    from etc_nb.train import train
    generate_benchmark(a.root, **DEMO_SETTINGS["quick"]["bench"])
    with tempfile.TemporaryDirectory() as tmp:
        teacher = str(train(TrainConfig(root=a.root, model=a.teacher_model, steps=0), tmp, progress=False))
        rows = []
        for scheme in a.schemes.split(","):
            cmd = [sys.executable, __file__, "--one", scheme, "--root", a.root, "--teacher", teacher,
                   "--steps", str(a.steps), "--warmup", str(a.warmup), "--threads", str(a.threads)]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode:
                raise RuntimeError(f"scheme {scheme}: measurement failed:\n{run.stderr}")
            rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(f"{scheme}: {rows[-1]['step_ms']:.0f} ms/step", file=sys.stderr)
    meta = (f"Training cost per scheme: pspnet18 student, batch 4, crop 64x106, quick demo benchmark with cached "
            f"ground-truth flow, teacher {a.teacher_model} (random weights), {a.threads} CPU thread(s); medians of "
            f"{a.steps} steps after {a.warmup} warm-up steps, each scheme in a fresh process (`benchmarks/scheme_cost.py`).")
    table = markdown(rows, meta)
    print(table)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
