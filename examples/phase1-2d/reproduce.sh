#!/usr/bin/env bash
# Phase 1: train on the 2-D spiral; plot the forward process, the samples over the data and the
# reverse trajectory; print W2 and KL of 2,000 samples beside their real-vs-real floors.
# Sizes can be reduced (tests/test_examples.py does): RUNS, FIGURES, N, STEPS, TRAIN_ARGS.
set -euo pipefail
runs=${RUNS:-runs}
figures=${FIGURES:-docs/figures}
n=${N:-2000}
run=$runs/phase1-spiral
mkdir -p "$figures"
ddpmctl data show spiral --noise --out "$figures/phase1-forward.png"
read -r -a extra <<< "${TRAIN_ARGS:-}"  # flags added to the training command, e.g. a smaller --steps
[ -f "$run/latest" ] || ddpmctl train --config examples/phase1-2d/config.toml --runs-dir "$runs" ${extra[@]+"${extra[@]}"}
ddpmctl sample "$run" --n 5000 ${STEPS:+--steps "$STEPS"} --trajectory --out "$figures/phase1"
ddpmctl eval "$run" --metric wasserstein --metric kl --n "$n" ${STEPS:+--steps "$STEPS"}
