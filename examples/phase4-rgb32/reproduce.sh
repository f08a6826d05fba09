#!/usr/bin/env bash
# Phase 4: 32x32 RGB on the emoji32 image folder; a grid of the data and of 64 samples with their
# trajectory; then memorisation (look at its closest pairs first: 1,401 images can be learnt by
# heart) and FID against the training images, each beside its real-vs-real floor.
# Sizes can be reduced (tests/test_examples.py does): RUNS, FIGURES, N, STEPS, TRAIN_ARGS.
set -euo pipefail
runs=${RUNS:-runs}
figures=${FIGURES:-docs/figures}
n=${N:-500}
steps=${STEPS:-250}
run=$runs/phase4-emoji32
mkdir -p "$figures"
ddpmctl data show imagefolder -o root=../shared/data/emoji32 -o size=32 --out "$figures/phase4-data.png"
read -r -a extra <<< "${TRAIN_ARGS:-}"  # flags added to the training command, e.g. a smaller --steps
[ -f "$run/latest" ] || ddpmctl train --config examples/phase4-rgb32/config.toml --runs-dir "$runs" ${extra[@]+"${extra[@]}"}
ddpmctl sample "$run" --n 64 --steps "$steps" --grid "$figures/phase4-samples.png" --trajectory --out "$run/samples"
ddpmctl eval "$run" --metric memorisation --metric fid --n "$n" --steps "$steps"
