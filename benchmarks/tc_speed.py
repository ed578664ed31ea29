"""Speed of the temporal-consistency (TC) counting with predictions and flows in memory.

Prints a table of pairs per second (median of `--runs` runs over `--frames - 1` pairs) for `pair_confusions` /
`temporal_consistency` with both backends, next to an implementation in the style of the authors' released
evaluation (labels warped bilinearly, one numpy histogram per pair). Inputs are synthetic but shaped like
Cityscapes TC: 19-class predictions made of 16x16-pixel blocks and a smooth flow field of a few pixels.

    python benchmarks/tc_speed.py [--size 1024x2048] [--frames 31] [--classes 19] [--runs 5] [--threads 2]

The CPU is often shared: the load average is printed with the table; numbers under load are lower bounds.
"""
import argparse
import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from etc_nb.metrics import pair_confusions, temporal_consistency
from common import median_time


def released_style(preds: torch.Tensor, flows: torch.Tensor, num_classes: int) -> np.ndarray:
    """Per-pair confusions as the released evaluation computes them: the next label map warped bilinearly
    (`grid_sample`, border padding, like FlowNet2's resampler), rounded, then one `np.bincount` per pair."""
    T, H, W = preds.shape
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    out = []
    for t in range(T - 1):
        grid = torch.stack([(xs + flows[t, 0]) * (2 / (W - 1)) - 1, (ys + flows[t, 1]) * (2 / (H - 1)) - 1], -1)
        warped = F.grid_sample(preds[t + 1][None, None].float(), grid[None], "bilinear", "border", align_corners=True)
        a, b = preds[t].numpy().astype(np.int64), warped[0, 0].round().numpy().astype(np.int64)
        k = (a >= 0) & (a < num_classes)
        out.append(np.bincount(num_classes * a[k] + b[k], minlength=num_classes**2).reshape(num_classes, num_classes))
    return np.stack(out)


def inputs(frames: int, size: tuple[int, int], num_classes: int, seed: int = 0):
    "Block-wise random predictions `(T,H,W)` uint8 and a smooth flow `(T-1,2,H,W)` float32 of a few pixels."
    H, W = size
    g = torch.Generator().manual_seed(seed)
    preds = torch.randint(0, num_classes, (frames, H // 16 + 1, W // 16 + 1), generator=g, dtype=torch.uint8)
    preds = preds.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, :H, :W].contiguous()
    coarse = torch.randn(frames - 1, 2, H // 64 + 2, W // 64 + 2, generator=g) * 4
    flows = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)
    return preds, flows.contiguous()


def rate(fn, pairs: int, runs: int) -> float:
    "Pairs per second of `fn()`: median over `runs` timed runs after one warm-up run."
    return pairs / median_time(fn, runs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1024x2048", help="HxW")
    p.add_argument("--frames", type=int, default=31)
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    H, W = (int(v) for v in a.size.lower().split("x"))
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    K, P = a.classes, a.frames - 1
    preds, flows = inputs(a.frames, (H, W), K)
    preds64 = preds.long()
    reference = pair_confusions(preds, flows, K, backend="torch")
    for backend in ("opencv", "torch"):  # the table compares implementations that count alike
        assert torch.equal(pair_confusions(preds64, flows, K, backend=backend), reference), backend
    few = slice(0, min(a.frames, 6))     # the released style is slow: time fewer pairs
    rows = [
        ("released style: bilinear warp + np.bincount per pair", "int64",
         rate(lambda: released_style(preds64[few], flows[few][:-1], K), len(range(a.frames)[few]) - 1, a.runs)),
        ("pair_confusions(backend='torch')", "int64", rate(lambda: pair_confusions(preds64, flows, K, backend="torch"), P, a.runs)),
        ("pair_confusions(backend='opencv')", "int64", rate(lambda: pair_confusions(preds64, flows, K), P, a.runs)),
        ("pair_confusions(backend='opencv')", "uint8", rate(lambda: pair_confusions(preds, flows, K), P, a.runs)),
        ("temporal_consistency (opencv, per_class=True)", "uint8",
         rate(lambda: temporal_consistency(preds, flows, K, per_class=True), P, a.runs)),
    ]
    base = rows[0][2]
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"TC counting, {P} pairs of {H}x{W}, {K} classes, {a.threads} threads (torch {torch.__version__},"
          f" OpenCV {cv2.__version__}); load average {load}\n")
    print("| implementation | preds | pairs/s | ms/pair | vs released style |")
    print("|---|---|---:|---:|---:|")
    for name, dtype, r in rows:
        print(f"| {name} | {dtype} | {r:.1f} | {1000 / r:.1f} | {r / base:.0f}x |")


if __name__ == "__main__":
    main()
