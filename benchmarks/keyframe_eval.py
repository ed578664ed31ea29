"""Accuracy and consistency of keyframe methods against the per-frame model they are built on.

Evaluates a trained per-frame checkpoint (default: the PSPNet-18 baseline that `nbs/runs/int8.ipynb` trains) on
the embedded benchmark's validation split on every frame, and as `LabelPropagation` and `FeaturePropagation`
(Deep Feature Flow) with a keyframe every `--k` frames (`etc_nb.keyframe`, DIS flow between frames), with every
metric of `etc_nb.evaluate` but mVC16 (the snippets have 10 frames). Prints the Markdown table of
`etc_nb.evaluate.evaluation_markdown`; `--out FILE` also writes it (atomically).

    python benchmarks/keyframe_eval.py [--checkpoint C] [--root data/synthetic] [--k 5] [--out FILE]
"""
import argparse

from etc_nb.checkpoint import load_checkpoint
from etc_nb.evaluate import evaluate, evaluation_markdown
from etc_nb.keyframe import FeaturePropagation, LabelPropagation
from common import emit

METRICS = ("mIoU", "TC", "mVC8", "E_warp", "Tsb")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="results/int8/runs/pspnet18_baseline_seed0/last.pt")
    p.add_argument("--root", default="data/synthetic")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--out", help="also write the table to this Markdown file")
    a = p.parse_args(argv)
    model, _ = load_checkpoint(a.checkpoint)
    predictors = {"per-frame": model, f"LabelPropagation k={a.k}": LabelPropagation(model, k=a.k),
                  f"FeaturePropagation k={a.k}": FeaturePropagation(model, k=a.k)}
    results = {name: evaluate(net, a.root, "val", metrics=METRICS, progress=False) for name, net in predictors.items()}
    table = (f"{a.checkpoint} on {a.root} (val), keyframe every {a.k} frames, DIS flow for propagation; "
             f"TC with ground-truth and DIS flow.\n\n" + evaluation_markdown(results))
    emit(table, a.out)


if __name__ == "__main__":
    main()
