"""What the image metrics cost on this machine.

    python benchmarks/metric_costs.py [--n 200] [--batch-size 50]

Times FID Inception pool3 feature extraction (images/s, after one warm-up batch) on n real
mnist16 images, and reports the project's MNIST classifier's test accuracy (training it first
when it is not cached, and timing that). MNIST must be in the data directory
(`ddpmctl data fetch mnist --from ../shared/data/mnist`).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from ddpmctl import registry
from ddpmctl.metrics.classifier import classifier_path, test_accuracy
from ddpmctl.metrics.inception import inception_features


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=50)
    args = p.parse_args()
    images = registry.build("dataset", "mnist16", {}).x[: args.n + args.batch_size]
    inception_features(images[: args.batch_size], batch_size=args.batch_size)  # warm-up: weights load, first batch
    t0 = time.perf_counter()
    inception_features(images[args.batch_size :], batch_size=args.batch_size)
    per_s = args.n / (time.perf_counter() - t0)

    cached = classifier_path("mnist").exists()
    t0 = time.perf_counter()
    acc = test_accuracy("mnist")
    record = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "inception_images_per_s": round(per_s, 2), "n": args.n, "batch_size": args.batch_size,
        "classifier_test_accuracy": acc,
        "classifier_seconds": None if cached else round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
