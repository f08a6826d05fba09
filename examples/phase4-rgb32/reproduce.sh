#!/usr/bin/env bash
# Phase 4: 32x32 RGB on the emoji32 image folder; a grid of samples and of the training data.
set -euo pipefail
run=runs/phase4-emoji32
ddpmctl data show imagefolder -o root=../shared/data/emoji32 -o size=32 --out docs/figures/phase4-data.png
[ -f "$run/latest" ] || ddpmctl train --config examples/phase4-rgb32/config.toml
ddpmctl sample "$run" --n 64 --steps 250 --grid docs/figures/phase4-samples.png --trajectory --out "$run/samples"
# Small data is easy to memorise: compare samples with their nearest training images before judging.
