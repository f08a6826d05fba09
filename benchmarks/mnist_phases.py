"""Issue 3's bars, measured through the command line.

    python benchmarks/mnist_phases.py digit0        # phase 2: `ddpmctl train --data mnist16 --digits 0`
    python benchmarks/mnist_phases.py conditional   # phase 3: `ddpmctl train --data mnist16 --cond class`

digit0: trains the default config (timed; the bar is 15 minutes on 2 CPU cores), draws 1,000
samples, and has the project's MNIST classifier (trained here on first use; its test accuracy
is printed and must be >= 99%) say how many are zeros (bar: >= 97%).

conditional: trains the class-conditional default, draws 100 samples of each class with
guidance, and reports per-class accuracy (bar: >= 97% for every class).

MNIST is imported from ../shared/data/mnist into the data directory when it is not there.
Results go to benchmarks/out/<phase>/ (JSON, sample grid) and are printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ddpmctl.config import data_dir
from ddpmctl.metrics.classifier import classify, test_accuracy

REPO = Path(__file__).resolve().parents[1]


def ddpmctl(*args) -> str:
    r = subprocess.run([sys.executable, "-m", "ddpmctl", *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ddpmctl {' '.join(map(str, args))} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def ensure_mnist() -> None:
    if not (data_dir() / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        ddpmctl("data", "fetch", "mnist", "--from", REPO.parent / "shared" / "data" / "mnist")


def load_samples(path: Path) -> tuple[torch.Tensor, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as f:
        x = torch.from_numpy(f["samples"]).float() / 127.5 - 1
        labels = f["labels"] if "labels" in f else None
    return x, labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=["digit0", "conditional"])
    p.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--steps", type=int, default=100, help="denoising steps (respaced ancestral by default)")
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--train-args", default="", help="extra flags for ddpmctl train (default: none, the default config)")
    args = p.parse_args()
    ensure_mnist()
    runs = args.out / args.phase
    name = "mnist16-digit0" if args.phase == "digit0" else "mnist16-cond"
    run = runs / name
    if run.exists():
        import shutil

        shutil.rmtree(run)

    acc = test_accuracy("mnist")  # trains the classifier on first use
    flags = ["--digits", "0"] if args.phase == "digit0" else ["--cond", "class"]
    t0 = time.perf_counter()
    ddpmctl("train", "--data", "mnist16", *flags, "--name", name, "--runs-dir", runs, *args.train_args.split())
    train_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    if args.phase == "digit0":
        ddpmctl("sample", run, "--n", 1000, "--sampler", args.sampler, "--steps", args.steps, "--out", run / "samples")
        x, _ = load_samples(run / "samples" / f"{args.sampler}-{args.steps}steps-seed0.npz")
        probs, _ = classify(x)
        pred = probs.argmax(1)
        result = {"zeros": float((pred == 0).mean()), "histogram": np.bincount(pred, minlength=10).tolist()}
        passed = train_s <= 900 and result["zeros"] >= 0.97
    else:
        ddpmctl("sample", run, "--n", 1000, "--sampler", args.sampler, "--steps", args.steps, "--guidance", args.guidance,
                "--class", ",".join(map(str, range(10))), "--out", run / "samples")
        x, labels = load_samples(run / "samples" / f"{args.sampler}-{args.steps}steps-seed0-class{'_'.join(map(str, range(10)))}-w{args.guidance:g}.npz")
        probs, _ = classify(x)
        pred = probs.argmax(1)
        per_class = {int(c): float((pred[labels == c] == c).mean()) for c in range(10)}
        result = {"per_class_accuracy": per_class, "min": min(per_class.values())}
        passed = result["min"] >= 0.97
        ddpmctl("sample", run, "--n", 100, "--sampler", args.sampler, "--steps", args.steps, "--guidance", args.guidance,
                "--class", ",".join(map(str, range(10))), "--grid", runs / "grid-10x10.png", "--out", run / "grid")
    sample_s = time.perf_counter() - t0

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""  # `ddpmctl train` picks CUDA when present
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}{gpu}"
    record = {"phase": args.phase, "machine": machine, "train_seconds": round(train_s, 1), "sample_seconds": round(sample_s, 1),
              "sampler": args.sampler, "steps": args.steps, "classifier_test_accuracy": acc, **result, "bar_met": passed}
    (runs / "result.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
