#!/usr/bin/env bash
# Phase 3: ten digits, class-conditional; a 10 x 10 grid (one row per class) without and with
# guidance, then how often the MNIST classifier reads the requested digit, per class (the phase's
# bar in docs/benchmarks.md), with the same guidance.
# Sizes can be reduced (tests/test_examples.py does): RUNS, FIGURES, N, STEPS, TRAIN_ARGS.
set -euo pipefail
runs=${RUNS:-runs}
figures=${FIGURES:-docs/figures}
n=${N:-1000}
steps=${STEPS:-100}
run=$runs/phase3-mnist16-conditional
mkdir -p "$figures"
[ -f "${DDPMCTL_DATA_DIR:-$HOME/.cache/ddpmctl/data}/MNIST/raw/train-images-idx3-ubyte" ] \
  || ddpmctl data fetch mnist --from ../shared/data/mnist || ddpmctl data fetch mnist
read -r -a extra <<< "${TRAIN_ARGS:-}"  # flags added to the training command, e.g. a smaller --steps
[ -f "$run/latest" ] || ddpmctl train --config examples/phase3-mnist16-conditional/config.toml --runs-dir "$runs" ${extra[@]+"${extra[@]}"}
for w in 1 2; do
  ddpmctl sample "$run" --n 100 --class 0,1,2,3,4,5,6,7,8,9 --guidance "$w" --steps "$steps" \
    --grid "$figures/phase3-classes-w$w.png" --out "$run/samples"
done
ddpmctl eval "$run" --metric class-accuracy --metric class-coverage --guidance 2 --n "$n" --steps "$steps"
