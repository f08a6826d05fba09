#!/usr/bin/env bash
# Phase 1: train on the 2-D spiral, then plot samples over the data and the reverse trajectory.
set -euo pipefail
run=runs/phase1-spiral
[ -f "$run/latest" ] || ddpmctl train --config examples/phase1-2d/config.toml
ddpmctl data show spiral --noise --out docs/figures/phase1-forward.png
ddpmctl sample "$run" --n 5000 --trajectory --out docs/figures/phase1
ddpmctl eval "$run" --metric wasserstein --metric kl --n 2000
