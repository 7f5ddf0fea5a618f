"""Corrupted-set evaluation vs clean evaluation, time per image, side by side in one run.

    python tools/benchmark_robustness.py --data_dir=/tmp/digits --split=test \
        [--model_dir=DIR] [--batch_size=64] [--max_batches=8] [--severity=3]

Both sides run the same model (`nst.eval_robustness.Scorer`) on the same
split through the same pipeline (`nst.robustness.inputs`: eval view, batch,
parallel map, prefetch); the corrupted side only adds the corruption map. The
model's traces are warmed up first. Without --model_dir a random-weight tiny
digits EfficientNet (width/depth 0.25, 32x32) is used: the cost per image is
that of the architecture, not of its weights. Prints ms/image per family, the
ratio to clean, and the overall ratio (issue 15 target: <= 1.5x).
"""

import argparse
import os
import time

import nst  # noqa: F401

from nst import eval_robustness as er
from nst.data import input_pipeline as ip
from nst.models import saving
from nst.models.efficientnet import build_model
from nst.robustness import corruptions, inputs


def _time(scorer, dataset) -> tuple:
    start, count = time.perf_counter(), 0
    for batch in dataset:
        count += int(scorer.correct(batch["image"], batch["label"])[1])
    return time.perf_counter() - start, count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--model_dir", default="")
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_batches", type=int, default=8)
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--corruptions", default=",".join(corruptions.CORRUPTIONS))
    args = parser.parse_args()
    names = er.parse_names(args.corruptions)
    corruptions.check(names, [args.severity])
    if args.model_dir:
        model = saving.load_model(args.model_dir)
    else:
        model, _ = build_model("efficientnet-b0", args.num_classes, width=0.25, depth=0.25,
                               resolution=32, small_image=True, normalization="svhn")
    view = ip.ViewConfig(image_size=model.image_size, small_image=model.config.small_image)
    pattern = os.path.join(args.data_dir, f"{args.split}*")
    scorer = er.Scorer(model, args.num_classes)

    def clean():
        return inputs.record_batches(pattern, args.num_classes, args.batch_size,
                                     view).take(args.max_batches)

    _time(scorer, inputs.prefetched(clean()))  # warm-up: traces, file cache
    clean_s, count = _time(scorer, inputs.prefetched(clean()))
    clean_ms = 1e3 * clean_s / count
    print(f"{count} images, batch {args.batch_size}, {model.config.name} at "
          f"{model.image_size}px, severity {args.severity}")
    print(f"{'clean':18s} {clean_ms:8.3f} ms/image")
    total = 0.0
    for name in names:
        dataset = inputs.corrupt_batches(clean(), name, args.severity, 0, args.batch_size)
        seconds, _ = _time(scorer, inputs.prefetched(dataset))
        total += seconds
        ms = 1e3 * seconds / count
        print(f"{name:18s} {ms:8.3f} ms/image  {ms / clean_ms:5.2f}x clean")
    overall = 1e3 * total / (count * len(names))
    print(f"{'all corruptions':18s} {overall:8.3f} ms/image  {overall / clean_ms:5.2f}x clean "
          f"(target <= 1.5x)")


if __name__ == "__main__":
    main()
