#!/usr/bin/env bash
# Phase 2: train on MNIST zeros at 16x16; a grid of the data, of 64 samples with their denoising
# trajectory and of the training grids; then how the MNIST classifier reads 1,000 samples (the
# share of zeros is the phase's bar in docs/benchmarks.md) and their classifier FID.
# Sizes can be reduced (tests/test_examples.py does): RUNS, FIGURES, N, STEPS, TRAIN_ARGS.
set -euo pipefail
runs=${RUNS:-runs}
figures=${FIGURES:-docs/figures}
n=${N:-1000}
steps=${STEPS:-100}  # respaced ancestral sampling on every tenth timestep
run=$runs/phase2-mnist16-digit0
mkdir -p "$figures"
[ -f "${DDPMCTL_DATA_DIR:-$HOME/.cache/ddpmctl/data}/MNIST/raw/train-images-idx3-ubyte" ] \
  || ddpmctl data fetch mnist --from ../shared/data/mnist || ddpmctl data fetch mnist
ddpmctl data show mnist16 --digits 0 --out "$figures/phase2-data.png"
read -r -a extra <<< "${TRAIN_ARGS:-}"  # flags added to the training command, e.g. a smaller --steps
[ -f "$run/latest" ] || ddpmctl train --config examples/phase2-mnist16-digit0/config.toml --runs-dir "$runs" ${extra[@]+"${extra[@]}"}
ddpmctl sample "$run" --n 64 --steps "$steps" --grid "$figures/phase2-samples.png" --trajectory --out "$run/samples"
cp "$run"/grids/step-*.png "$figures/" 2>/dev/null || true  # convergence: one grid every 500 steps
ddpmctl eval "$run" --metric class-coverage --metric classifier-fid --n "$n" --steps "$steps"
