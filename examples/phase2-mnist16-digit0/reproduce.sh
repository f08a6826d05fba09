#!/usr/bin/env bash
# Phase 2: train on MNIST zeros at 16x16; sample 1,000 for the benchmark and a grid for the docs.
set -euo pipefail
run=runs/phase2-mnist16-digit0
[ -f "${DDPMCTL_DATA_DIR:-$HOME/.cache/ddpmctl/data}/MNIST/raw/train-images-idx3-ubyte" ] \
  || ddpmctl data fetch mnist --from ../shared/data/mnist || ddpmctl data fetch mnist
ddpmctl data show mnist16 --digits 0 --out docs/figures/phase2-data.png
[ -f "$run/latest" ] || ddpmctl train --config examples/phase2-mnist16-digit0/config.toml
ddpmctl sample "$run" --n 64 --seed 0 --grid docs/figures/phase2-samples.png --trajectory --out "$run/samples"
cp "$run"/grids/step-*.png docs/figures/ 2>/dev/null || true   # convergence: one grid every 500 steps
# For the benchmark: 1,000 samples as uint8 .npz (add --steps 250 for a 4x faster respaced sampler).
ddpmctl sample "$run" --n 1000 --seed 1 --out "$run/samples"
