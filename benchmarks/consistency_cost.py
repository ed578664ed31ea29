"""Cost of the consistency metrics of other benchmarks on one full-resolution video.

Times, for one 9-frame 1024x2048 video of 19 classes, VSPW's video consistency (`video_consistency`, VC_8),
Lai et al.'s warping error (`warping_error`, on label maps, class probabilities and RGB frames, with a given
visibility mask or with Lai et al.'s mask computed from the backward flows) and DAVIS's temporal stability
(`temporal_stability`, every class), next to this project's TC (`temporal_consistency`) for scale. Prints a
Markdown table of the median time of `--runs` runs after one warm-up run; `--out FILE` also writes it
(atomically).

    python benchmarks/consistency_cost.py [--size 1024x2048] [--frames 9] [--runs 3] [--threads 1] [--out FILE]

Inputs: a clean snippet of the synthetic benchmark (`etc_nb.data.synthetic.render_snippet`) at that size, with its
true forward and backward flows and visibility; the predictions are its labels with blobs over ~10 % of every
frame relabelled (a per-frame model's flicker), the probabilities those predictions smoothed (0.8 on the predicted
class). The CPU is often shared: the header gives the CPU model, the threads and the load average.
"""
import argparse
import os

import cv2
import numpy as np
import torch

from etc_nb.autotune import cpu_info
from etc_nb.data.synthetic import render_snippet
from etc_nb.metrics import (_contour_points, temporal_consistency, temporal_stability, video_consistency,
                            warping_error, warping_error_mask)
from common import emit, median_time


def flickering(labels: np.ndarray, num_classes: int, share: float = 0.1, seed: int = 0) -> np.ndarray:
    "`labels` `(T,H,W)` with smooth random blobs over about `share` of each frame moved to another class."
    rng = np.random.default_rng(seed)
    T, H, W = labels.shape
    out = labels.copy()
    for t in range(T):
        noise = cv2.resize(rng.standard_normal((H // 64 + 2, W // 64 + 2)).astype(np.float32), (W, H),
                           interpolation=cv2.INTER_CUBIC)
        hit = noise > np.quantile(noise, 1 - share)
        out[t][hit] = (labels[t][hit] + rng.integers(1, num_classes)) % num_classes
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="1024x2048", help="HxW")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the table to this Markdown file")
    a = p.parse_args(argv)
    H, W = (int(v) for v in a.size.lower().split("x"))
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    K, T = a.classes, a.frames

    snip = render_snippet(0, size=(H, W), frames=T, nuisance=0)
    labels = snip.labels.astype(np.uint8)
    preds = torch.from_numpy(flickering(labels, K))
    gt = torch.from_numpy(labels)
    fw = torch.from_numpy(snip.forward_flows())
    bw = torch.from_numpy(np.stack([snip.flow(t + 1, t).transpose(2, 0, 1) for t in range(T - 1)]))
    visible = torch.from_numpy(np.stack([snip.visible(t, t + 1) for t in range(T - 1)]))
    rgb = torch.from_numpy(snip.clean).permute(0, 3, 1, 2).float().div_(255)
    probs = torch.full((T, K, H, W), 0.2 / K)
    probs.scatter_add_(1, preds[:, None].long(), torch.full((T, 1, H, W), 0.8))
    del snip

    rows = [
        ("VC_8 (`video_consistency`, n=8)", "label maps + ground truth",
         lambda: video_consistency(preds, gt, n=8, num_classes=K)),
        ("E_warp (`warping_error`), given mask", "label maps",
         lambda: warping_error(preds, fw, occlusion=visible, num_classes=K)),
        ("E_warp, Lai et al.'s mask from `flows_bw`", "label maps",
         lambda: warping_error(preds, fw, num_classes=K, flows_bw=bw)),
        ("E_warp, given mask", f"probabilities ({K} ch.)", lambda: warping_error(probs, fw, occlusion=visible)),
        ("E_warp, Lai et al.'s mask from `flows_bw`", "RGB frames", lambda: warping_error(rgb, fw, flows_bw=bw)),
        ("`warping_error_mask` alone, pair by pair", "forward + backward flows",
         lambda: [warping_error_mask(fw[t:t + 1], bw[t:t + 1]) for t in range(T - 1)]),
        ("T (`temporal_stability`, every class)", "label maps", lambda: temporal_stability(preds, num_classes=K)),
        ("TC (`temporal_consistency`), for scale", "label maps",
         lambda: temporal_consistency(preds, fw, K, occlusion=visible)),
    ]
    timed = [(name, what, median_time(fn, a.runs)) for name, what, fn in rows]

    frames = preds.numpy()
    sizes = [len(pts) for c in range(K) for f in frames if (pts := _contour_points(f == c)) is not None]
    present = len({c for c in range(K) if (frames == c).any()})
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    lines = [
        f"Consistency metrics on one {T}-frame {H}x{W} video, {K} classes ({present} present); {cpu_info()[0]},"
        f" {os.cpu_count()} cores shared with other work, {torch.get_num_threads()} torch thread(s) (torch"
        f" {torch.__version__}, OpenCV {cv2.__version__}); load average {load}; median of {a.runs} runs after a"
        " warm-up.",
        "",
        "| measure | input | s per video | ms per frame pair |",
        "|---|---|---:|---:|",
        *(f"| {name} | {what} | {s:.3f} | {1000 * s / (T - 1):.1f} |" for name, what, s in timed),
        "",
        f"T compares {len(sizes)} contours (class x frame) of {np.mean(sizes):.0f} points on average, {max(sizes)}"
        " at most: its cost grows with the square of the contour length, not with the pixels.",
    ]
    table = "\n".join(lines) + "\n"
    emit(table, a.out)


if __name__ == "__main__":
    main()
