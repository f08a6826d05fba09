#!/usr/bin/env bash
# Phase 3: ten digits, class-conditional; a 10 x 10 grid (one row per class) with and without guidance.
set -euo pipefail
run=runs/phase3-mnist16-conditional
[ -f "${DDPMCTL_DATA_DIR:-$HOME/.cache/ddpmctl/data}/MNIST/raw/train-images-idx3-ubyte" ] \
  || ddpmctl data fetch mnist --from ../shared/data/mnist || ddpmctl data fetch mnist
[ -f "$run/latest" ] || ddpmctl train --config examples/phase3-mnist16-conditional/config.toml
for w in 1 2; do
  ddpmctl sample "$run" --n 100 --class 0,1,2,3,4,5,6,7,8,9 --guidance "$w" --steps 100 \
    --grid "docs/figures/phase3-classes-w$w.png" --out "$run/samples"
done
# For the benchmark: 100 samples of each class with guidance, labels saved in the .npz.
ddpmctl sample "$run" --n 1000 --guidance 2 --seed 0 --out "$run/samples"
